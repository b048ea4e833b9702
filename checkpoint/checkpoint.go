// Package checkpoint stores the position up to which every change is in Redis, in a
// table of the state schema. The sink's watermark decides the position; this package
// only persists it (one row, replaced on every write).
package checkpoint

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	mysqldrv "github.com/go-sql-driver/mysql"
	"github.com/invsync/invsync/source"
)

// Store reads and writes the checkpoint.
type Store struct {
	db     *sql.DB
	schema string
	name   string
	// lock and owner, when set, fence writes: a checkpoint is written only while the
	// named lock is held by connection owner.
	lock  string
	owner int64
	// source is the source's identity, written with each checkpoint.
	source string
}

// ErrNotLeader is returned by Save when the store is fenced and its instance no longer
// holds the leader lock.
var ErrNotLeader = errors.New("this instance no longer holds the leader lock")

// Fence makes Save write only while the named lock is held by the state database
// connection owner (the instance's lock connection): an instance that lost the lock
// can never move the checkpoint of the one that took over.
func (s *Store) Fence(lock string, owner int64) { s.lock, s.owner = lock, owner }

// Open creates the state schema and the checkpoint table when missing. name identifies
// the pipeline (one row per name).
func Open(ctx context.Context, db *sql.DB, schema, name string) (*Store, error) {
	stmts := []string{
		"CREATE DATABASE IF NOT EXISTS `" + schema + "`",
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.checkpoint (" +
			"name VARCHAR(64) NOT NULL PRIMARY KEY," +
			"binlog_file VARCHAR(255) NOT NULL," +
			"binlog_pos BIGINT UNSIGNED NOT NULL," +
			"gtid_set TEXT NOT NULL," +
			"epoch INT UNSIGNED NOT NULL DEFAULT 0," +
			"source_id VARCHAR(255) NOT NULL DEFAULT ''," +
			"updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)" +
			") ENGINE=InnoDB",
		// Which table was loaded whole under which key prefix, from which position.
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.loaded_tables (" +
			"name VARCHAR(64) NOT NULL," +
			"table_name VARCHAR(200) NOT NULL," +
			"key_prefix VARBINARY(255) NOT NULL," +
			"binlog_file VARCHAR(255) NOT NULL," +
			"binlog_pos BIGINT UNSIGNED NOT NULL," +
			"gtid_set TEXT NOT NULL," +
			"epoch INT UNSIGNED NOT NULL DEFAULT 0," +
			"loaded_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)," +
			"PRIMARY KEY (name, table_name, key_prefix)" +
			") ENGINE=InnoDB",
		// The pipeline's identity (see PipelineID).
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.pipeline (" +
			"name VARCHAR(64) NOT NULL PRIMARY KEY," +
			"id VARCHAR(64) NOT NULL," +
			"created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)" +
			") ENGINE=InnoDB",
		// The instance that leads (see SetLeader).
		"CREATE TABLE IF NOT EXISTS `" + schema + "`.leader (" +
			"name VARCHAR(64) NOT NULL PRIMARY KEY," +
			"http_addr VARCHAR(255) NOT NULL," +
			"host VARCHAR(255) NOT NULL," +
			"pid INT NOT NULL," +
			"lock_session BIGINT UNSIGNED NOT NULL," +
			"since TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)" +
			") ENGINE=InnoDB",
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return nil, fmt.Errorf("create state schema %s: %w (fix: GRANT ALL ON `%s`.* to the invsync user, or set state.schema)", schema, err, schema)
		}
	}
	// A table made by an older invsync lacks the epoch and the source's identity.
	for col, def := range map[string]string{"epoch": "INT UNSIGNED NOT NULL DEFAULT 0", "source_id": "VARCHAR(255) NOT NULL DEFAULT ''"} {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'checkpoint' AND COLUMN_NAME = ?", schema, col).Scan(&n); err != nil {
			return nil, fmt.Errorf("read the checkpoint table's columns: %w", err)
		}
		if n == 0 {
			if _, err := db.ExecContext(ctx, "ALTER TABLE `"+schema+"`.checkpoint ADD COLUMN "+col+" "+def); err != nil {
				return nil, fmt.Errorf("add column %s to the checkpoint table: %w", col, err)
			}
		}
	}
	return &Store{db: db, schema: schema, name: name}, nil
}

// upsert completes a checkpoint write: the row is updated in place, its updated_at always
// moves (so a fenced write of the same position still affects a row), and a write by a
// store that does not know the source's identity keeps the one recorded.
const upsert = " ON DUPLICATE KEY UPDATE binlog_file = VALUES(binlog_file), binlog_pos = VALUES(binlog_pos), gtid_set = VALUES(gtid_set), epoch = VALUES(epoch), " +
	"source_id = IF(VALUES(source_id) = '', source_id, VALUES(source_id)), updated_at = NOW(6)"

// SetSource names the source's identity (see source.Identity), written with every
// checkpoint from now on.
func (s *Store) SetSource(id string) { s.source = id }

// LoadSource returns the identity of the source the checkpoint was written for ("" when
// unknown: none yet, or written by an older invsync).
func (s *Store) LoadSource(ctx context.Context) (string, error) {
	var id string
	err := s.db.QueryRowContext(ctx, "SELECT source_id FROM `"+s.schema+"`.checkpoint WHERE name = ?", s.name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read checkpoint: %w", err)
	}
	return id, nil
}

// Load returns the stored position; ok is false when there is none yet.
func (s *Store) Load(ctx context.Context) (pos source.Position, ok bool, err error) {
	err = s.db.QueryRowContext(ctx, "SELECT binlog_file, binlog_pos, gtid_set, epoch FROM `"+s.schema+"`.checkpoint WHERE name = ?", s.name).
		Scan(&pos.File, &pos.Pos, &pos.GTID, &pos.Epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return source.Position{}, false, nil
	}
	if err != nil {
		return source.Position{}, false, fmt.Errorf("read checkpoint: %w", err)
	}
	return pos, true, nil
}

// Save replaces the stored position.
func (s *Store) Save(ctx context.Context, pos source.Position) error {
	return s.fencedUpsert(ctx, s.db, "write checkpoint", "checkpoint",
		[]string{"name", "binlog_file", "binlog_pos", "gtid_set", "epoch", "source_id"},
		[]any{s.name, pos.File, pos.Pos, pos.GTID, pos.Epoch, s.source}, upsert)
}

// execer is a *sql.DB or a *sql.Tx.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// fencedUpsert inserts one row into table of the state schema (cols, vals; update is the
// ON DUPLICATE KEY UPDATE clause, leading space included). A fenced store writes only
// while its lock is held by its owner, and returns ErrNotLeader when it is not. what
// names the write in errors.
func (s *Store) fencedUpsert(ctx context.Context, db execer, what, table string, cols []string, vals []any, update string) error {
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ")
	q := "INSERT INTO `" + s.schema + "`." + table + " (" + strings.Join(cols, ", ") + ") "
	if s.lock != "" {
		q += "SELECT " + marks + " FROM DUAL WHERE IS_USED_LOCK(?) = ?"
		vals = append(vals, s.lock, s.owner)
	} else {
		q += "VALUES (" + marks + ")"
	}
	res, err := db.ExecContext(ctx, q+update, vals...)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 && s.lock != "" {
		return fmt.Errorf("%s: %w (lock %s)", what, ErrNotLeader, s.lock)
	}
	return nil
}

// Age returns how long ago the checkpoint was last written (ok false: none yet).
func (s *Store) Age(ctx context.Context) (age time.Duration, ok bool, err error) {
	var us sql.NullInt64
	err = s.db.QueryRowContext(ctx, "SELECT TIMESTAMPDIFF(MICROSECOND, updated_at, NOW(6)) FROM `"+s.schema+"`.checkpoint WHERE name = ?", s.name).Scan(&us)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read the checkpoint: %w", err)
	}
	return time.Duration(us.Int64) * time.Microsecond, true, nil
}

// Load records: which table was loaded whole into Redis under which key prefix, from
// which position. A table of the config without one (added to the config, or given
// another key prefix, since the last start) has never been loaded: the daemon loads it
// before it streams.

// Load is the record of one table loaded under one key prefix.
type Load struct {
	Table     string // schema.table
	KeyPrefix string
	Pos       source.Position
}

// Loads returns the load records.
func (s *Store) Loads(ctx context.Context) (loads []Load, err error) {
	rows, err := s.db.QueryContext(ctx, "SELECT table_name, key_prefix, binlog_file, binlog_pos, gtid_set, epoch FROM `"+s.schema+"`.loaded_tables WHERE name = ?", s.name)
	if err != nil {
		return nil, fmt.Errorf("read the load records: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var l Load
		if err := rows.Scan(&l.Table, &l.KeyPrefix, &l.Pos.File, &l.Pos.Pos, &l.Pos.GTID, &l.Pos.Epoch); err != nil {
			return nil, fmt.Errorf("read the load records: %w", err)
		}
		loads = append(loads, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the load records: %w", err)
	}
	return loads, nil
}

// RecordLoads records that each table (schema.table with its key prefix) was loaded
// whole from pos. Fenced like Save.
func (s *Store) RecordLoads(ctx context.Context, loads []Load) error {
	if len(loads) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record loaded tables: %w", err)
	}
	defer tx.Rollback()
	for _, l := range loads {
		if err := s.fencedUpsert(ctx, tx, "record loaded table "+l.Table, "loaded_tables",
			[]string{"name", "table_name", "key_prefix", "binlog_file", "binlog_pos", "gtid_set", "epoch"},
			[]any{s.name, l.Table, l.KeyPrefix, l.Pos.File, l.Pos.Pos, l.Pos.GTID, l.Pos.Epoch},
			" ON DUPLICATE KEY UPDATE binlog_file = VALUES(binlog_file), binlog_pos = VALUES(binlog_pos), gtid_set = VALUES(gtid_set), epoch = VALUES(epoch), loaded_at = NOW(6)"); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record loaded tables: %w", err)
	}
	return nil
}

// ForgetLoads removes the records of tables (schema.table with key prefix) the config no
// longer mirrors that way: such a table, added again later, is loaded again (nobody
// mirrored its changes meanwhile).
func (s *Store) ForgetLoads(ctx context.Context, loads []Load) error {
	for _, l := range loads {
		if _, err := s.db.ExecContext(ctx, "DELETE FROM `"+s.schema+"`.loaded_tables WHERE name = ? AND table_name = ? AND key_prefix = ?", s.name, l.Table, l.KeyPrefix); err != nil {
			return fmt.Errorf("forget the load record of %s: %w", l.Table, err)
		}
	}
	return nil
}

// PipelineID returns the identity of this state schema's pipeline, made (random) on its
// first call. Instances that share the state schema (a leader and its standbys) share it;
// another source with a state schema of its own has another. It names who writes under a
// key prefix in Redis (see daemon's claims).
func (s *Store) PipelineID(ctx context.Context) (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	if _, err := s.db.ExecContext(ctx, "INSERT IGNORE INTO `"+s.schema+"`.pipeline (name, id) VALUES (?, ?)", s.name, hex.EncodeToString(b[:])); err != nil {
		return "", fmt.Errorf("record the pipeline's identity: %w", err)
	}
	return ReadPipelineID(ctx, s.db, s.schema, s.name)
}

// ReadPipelineID returns the pipeline identity recorded in schema ("" when there is none:
// no instance ever ran with this state schema), without creating anything.
func ReadPipelineID(ctx context.Context, db *sql.DB, schema, name string) (string, error) {
	var id string
	err := db.QueryRowContext(ctx, "SELECT id FROM `"+schema+"`.pipeline WHERE name = ?", name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if missing(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the pipeline's identity: %w", err)
	}
	return id, nil
}

// Leader is what the leading instance records about itself.
type Leader struct {
	HTTPAddr string // host:port of its HTTP endpoint ("" when off)
	Host     string
	PID      int
	Session  int64 // its lock session on the state database
}

// Endpoint returns where other hosts reach the leader's HTTP endpoint: HTTPAddr, unless
// that is a loopback address and the leader runs on another host than this one (then ""
// and why).
func (l Leader) Endpoint() (addr, why string) {
	host, _, err := net.SplitHostPort(l.HTTPAddr)
	if ip := net.ParseIP(host); err == nil && (host == "localhost" || (ip != nil && ip.IsLoopback())) {
		if me, _ := os.Hostname(); me != l.Host {
			return "", fmt.Sprintf("the leader runs on %s and its HTTP endpoint listens on loopback only (%s): set http.listen (or http.advertise) to an address other hosts reach", l.Host, l.HTTPAddr)
		}
	}
	return l.HTTPAddr, ""
}

// SetLeader records l as the leading instance (fenced like Save).
func (s *Store) SetLeader(ctx context.Context, l Leader) error {
	return s.fencedUpsert(ctx, s.db, "record the leader", "leader",
		[]string{"name", "http_addr", "host", "pid", "lock_session"},
		[]any{s.name, l.HTTPAddr, l.Host, l.PID, l.Session},
		" ON DUPLICATE KEY UPDATE http_addr = VALUES(http_addr), host = VALUES(host), pid = VALUES(pid), lock_session = VALUES(lock_session), since = NOW(6)")
}

// ReadLeader returns the instance recorded as leading the pipeline of schema, if the lock
// named lock is held by the session it recorded (ok false otherwise: none recorded, or a
// record left by an instance that no longer leads).
func ReadLeader(ctx context.Context, db *sql.DB, schema, name, lock string) (l Leader, ok bool, err error) {
	err = db.QueryRowContext(ctx, "SELECT http_addr, host, pid, lock_session FROM `"+schema+"`.leader WHERE name = ? AND lock_session = IS_USED_LOCK(?)", name, lock).
		Scan(&l.HTTPAddr, &l.Host, &l.PID, &l.Session)
	if errors.Is(err, sql.ErrNoRows) || missing(err) {
		return Leader{}, false, nil
	}
	if err != nil {
		return Leader{}, false, fmt.Errorf("read the leader: %w", err)
	}
	return l, true, nil
}

// missing reports a read of a state schema or table that does not exist (yet): a
// state schema no invsync of this version opened.
func missing(err error) bool {
	var me *mysqldrv.MySQLError
	return errors.As(err, &me) && (me.Number == 1146 || me.Number == 1049) // no such table / database
}
