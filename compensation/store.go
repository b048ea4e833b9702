package compensation

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/layout"
)

// Status of a compensation row.
const (
	StatusPending = "pending"
	StatusDead    = "dead"
)

// Entry is one compensation row: the newest failed write of one Redis key.
type Entry struct {
	ID          int64
	RedisKey    string
	Table       string // schema.table
	PK          string // the primary key as in the Redis key (parts joined with ':')
	Version     string // newest version that failed
	Seq         string // binlog sequence of the newest change that failed (layout.AppendSeq; "" when unknown)
	Attempts    int
	NextRetryAt time.Time
	LastError   string
	Status      string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Store is the compensation table in the state schema. Times are stored as UTC
// DATETIME(6), written and read by this package, so the session time zone plays no part.
type Store struct {
	db     *sql.DB
	table  string
	sched  atomic.Pointer[Schedule]
	nowUTC func() time.Time
}

const timeLayout = "2006-01-02 15:04:05.000000"

// Open creates the table when missing. now is the clock (injectable for tests).
func Open(ctx context.Context, db *sql.DB, schema string, sched Schedule, now func() time.Time) (*Store, error) {
	table := "`" + schema + "`.compensation"
	q := "CREATE TABLE IF NOT EXISTS " + table + ` (
		id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
		redis_key VARBINARY(1024) NOT NULL,
		table_name VARCHAR(192) NOT NULL,
		pk VARBINARY(1024) NOT NULL,
		version VARCHAR(32) NOT NULL,
		seq VARBINARY(32) NOT NULL DEFAULT '',
		attempts INT NOT NULL DEFAULT 0,
		next_retry_at DATETIME(6) NOT NULL,
		last_error TEXT NOT NULL,
		status ENUM('pending','dead') NOT NULL DEFAULT 'pending',
		created_at DATETIME(6) NOT NULL,
		updated_at DATETIME(6) NOT NULL,
		UNIQUE KEY redis_key (redis_key),
		KEY due (status, next_retry_at)
	) ENGINE=InnoDB`
	if _, err := db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS `"+schema+"`"); err != nil {
		return nil, fmt.Errorf("create state schema %s: %w", schema, err)
	}
	if _, err := db.ExecContext(ctx, q); err != nil {
		return nil, fmt.Errorf("create the compensation table in %s: %w", schema, err)
	}
	// A table made by an older invsync lacks the change's binlog sequence.
	var n int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'compensation' AND COLUMN_NAME = 'seq'", schema).Scan(&n); err != nil {
		return nil, fmt.Errorf("read the compensation table's columns: %w", err)
	}
	if n == 0 {
		if _, err := db.ExecContext(ctx, "ALTER TABLE "+table+" ADD COLUMN seq VARBINARY(32) NOT NULL DEFAULT '' AFTER version"); err != nil &&
			!strings.Contains(err.Error(), "Duplicate column") { // another instance added it meanwhile
			return nil, fmt.Errorf("add column seq to the compensation table: %w", err)
		}
	}
	st := &Store{db: db, table: table, nowUTC: func() time.Time { return now().UTC() }}
	st.SetSchedule(sched)
	return st, nil
}

// Park records a write of table's row that Redis refused (sink.Parker).
func (s *Store) Park(ctx context.Context, table string, c layout.Change, cause error) error {
	pk := c.Key
	if _, inner, ok := layout.InnerOf(c.Key); ok {
		pk = inner
	}
	e := Entry{RedisKey: c.Key, Table: table, PK: pk, Version: c.Version, LastError: truncate(cause.Error(), 2000)}
	if !c.Seq.IsZero() {
		e.Seq = string(layout.AppendSeq(nil, c.Seq))
	}
	return s.Add(ctx, e)
}

// Add records a failed write. A newer failure of the same key updates its row (the
// greater version, the greater binlog sequence and the latest error are kept) instead of adding one; a row that was
// dead becomes pending again, due now, with its attempts reset: the key failed again
// with a newer change, which must not be folded into a row nobody retries.
func (s *Store) Add(ctx context.Context, e Entry) error {
	now := s.nowUTC()
	next, _ := s.sched.Load().Next(now, 0)
	// The assignments run in order: attempts and next_retry_at read the old status.
	_, err := s.db.ExecContext(ctx, "INSERT INTO "+s.table+
		` (redis_key, table_name, pk, version, seq, attempts, next_retry_at, last_error, status, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, 0, ?, ?, 'pending', ?, ?)
		ON DUPLICATE KEY UPDATE
			version = IF(CAST(VALUES(version) AS DECIMAL(65,0)) > CAST(version AS DECIMAL(65,0)), VALUES(version), version),
			seq = GREATEST(seq, VALUES(seq)),
			attempts = IF(status = 'dead', 0, attempts),
			next_retry_at = IF(status = 'dead', VALUES(updated_at), next_retry_at),
			status = 'pending',
			last_error = VALUES(last_error), updated_at = VALUES(updated_at)`,
		e.RedisKey, e.Table, e.PK, e.Version, e.Seq, next.Format(timeLayout), e.LastError, now.Format(timeLayout), now.Format(timeLayout))
	if err != nil {
		return fmt.Errorf("park %s in the compensation table: %w", e.RedisKey, err)
	}
	return nil
}

const columns = "id, redis_key, table_name, pk, version, seq, attempts, next_retry_at, last_error, status, created_at, updated_at"

func (s *Store) query(ctx context.Context, where string, args ...any) ([]Entry, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+columns+" FROM "+s.table+" "+where, args...)
	if err != nil {
		return nil, fmt.Errorf("read the compensation table: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		var next, created, updated string
		if err := rows.Scan(&e.ID, &e.RedisKey, &e.Table, &e.PK, &e.Version, &e.Seq, &e.Attempts, &next, &e.LastError, &e.Status, &created, &updated); err != nil {
			return nil, err
		}
		e.NextRetryAt, _ = time.Parse(timeLayout, next)
		e.CreatedAt, _ = time.Parse(timeLayout, created)
		e.UpdatedAt, _ = time.Parse(timeLayout, updated)
		out = append(out, e)
	}
	return out, rows.Err()
}

// Due returns up to limit pending rows whose retry time has come, oldest first.
func (s *Store) Due(ctx context.Context, limit int) ([]Entry, error) {
	return s.query(ctx, "WHERE status = 'pending' AND next_retry_at <= ? ORDER BY next_retry_at LIMIT ?", s.nowUTC().Format(timeLayout), limit)
}

// List returns the rows with the given status ("" for all), by id.
func (s *Store) List(ctx context.Context, status string) ([]Entry, error) {
	if status == "" {
		return s.query(ctx, "ORDER BY id")
	}
	return s.query(ctx, "WHERE status = ? ORDER BY id", status)
}

// ErrSuperseded is returned by Done when a newer failure updated the row meanwhile.
var ErrSuperseded = errors.New("compensation row changed since it was read")

// Done deletes a row after its retry succeeded, unless a newer failure updated it since
// e was read (then the row stays for the next retry).
func (s *Store) Done(ctx context.Context, e Entry) error {
	res, err := s.db.ExecContext(ctx, "DELETE FROM "+s.table+" WHERE id = ? AND updated_at = ?", e.ID, e.UpdatedAt.Format(timeLayout))
	if err != nil {
		return fmt.Errorf("delete compensation row %d: %w", e.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrSuperseded
	}
	return nil
}

// SetSchedule changes the retry schedule (a config reload); rows already scheduled keep
// their next retry time.
func (s *Store) SetSchedule(sched Schedule) { s.sched.Store(&sched) }

// Failed records a failed retry: the next retry per the schedule, or dead after
// max_attempts. It reports whether the row is now dead.
func (s *Store) Failed(ctx context.Context, e Entry, cause error) (dead bool, err error) {
	now := s.nowUTC()
	attempts := e.Attempts + 1
	next, dead := s.sched.Load().Next(now, attempts)
	status := StatusPending
	if dead {
		status, next = StatusDead, now
	}
	// Only the row as it was read: a newer failure since (a newer version parked) keeps
	// its own schedule, and is never marked dead by a retry of the older one.
	res, err := s.db.ExecContext(ctx, "UPDATE "+s.table+" SET attempts = ?, next_retry_at = ?, last_error = ?, status = ?, updated_at = ? WHERE id = ? AND updated_at = ?",
		attempts, next.Format(timeLayout), truncate(cause.Error(), 2000), status, now.Format(timeLayout), e.ID, e.UpdatedAt.Format(timeLayout))
	if err != nil {
		return false, fmt.Errorf("update compensation row %d: %w", e.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil
	}
	return dead, nil
}

// Postpone moves a row's next retry to after d without counting an attempt (its change is
// not visible to readers yet), unless a newer failure updated it since e was read.
func (s *Store) Postpone(ctx context.Context, e Entry, d time.Duration) error {
	// updated_at stays: it is when the change last failed (the retrier's clock for
	// giving up on visibility), and a newer failure still changes it.
	_, err := s.db.ExecContext(ctx, "UPDATE "+s.table+" SET next_retry_at = ? WHERE id = ? AND updated_at = ?",
		s.nowUTC().Add(d).Format(timeLayout), e.ID, e.UpdatedAt.Format(timeLayout))
	if err != nil {
		return fmt.Errorf("postpone compensation row %d: %w", e.ID, err)
	}
	return nil
}

// Replay makes dead rows pending again, due now, with their attempts reset: the rows
// with the given ids, or every dead row when ids is empty. It returns how many.
func (s *Store) Replay(ctx context.Context, ids []int64) (int64, error) {
	now := s.nowUTC().Format(timeLayout)
	q := "UPDATE " + s.table + " SET status = 'pending', attempts = 0, next_retry_at = ?, updated_at = ? WHERE status = 'dead'"
	args := []any{now, now}
	if len(ids) > 0 {
		q += " AND id IN (" + strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",") + ")"
		for _, id := range ids {
			args = append(args, id)
		}
	}
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("replay compensation rows: %w", err)
	}
	return res.RowsAffected()
}

// Purge deletes dead rows last updated more than olderThan ago. It returns how many.
func (s *Store) Purge(ctx context.Context, olderThan time.Duration) (int64, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM "+s.table+" WHERE status = 'dead' AND updated_at < ?", s.nowUTC().Add(-olderThan).Format(timeLayout))
	if err != nil {
		return 0, fmt.Errorf("purge compensation rows: %w", err)
	}
	return res.RowsAffected()
}

// Counts returns the number of pending and dead rows, and the age of the oldest pending.
func (s *Store) Counts(ctx context.Context) (pending, dead int64, oldest time.Duration, err error) {
	var first sql.NullString
	err = s.db.QueryRowContext(ctx, "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'dead'), 0), MIN(IF(status = 'pending', created_at, NULL)) FROM "+s.table).
		Scan(&pending, &dead, &first)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("count compensation rows: %w", err)
	}
	if first.Valid {
		if t, perr := time.Parse(timeLayout, first.String); perr == nil {
			oldest = s.nowUTC().Sub(t)
		}
	}
	return pending, dead, oldest, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
