package source

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-sql-driver/mysql"
)

// A transaction is written to the binlog (and shows in SHOW MASTER STATUS and in the
// binlog stream) before the storage engine commits it: group commit, and semi-sync
// replication's AFTER_SYNC wait, hold it in between. A read that records the current
// position and then reads rows can therefore miss a transaction before that position.
// Every read whose result is stamped with a position (a snapshot's hand-off position,
// a reload's chunks, the compensation retrier's row, reconcile's re-reads) runs inside a
// consistent snapshot whose binlog position is known exactly instead:
//
//   - MariaDB: START TRANSACTION WITH CONSISTENT SNAPSHOT, then the binlog_snapshot_file
//     and binlog_snapshot_position status variables, which name the position of exactly
//     the transactions that snapshot sees.
//   - MySQL: the same snapshot started under FLUSH TABLES WITH READ LOCK, with SHOW
//     MASTER STATUS read before the lock is released (how mysqldump --single-transaction
//     --source-data does it); it needs the RELOAD privilege. Without it the position is
//     read just before the snapshot starts, which a transaction committing at that moment
//     can still defeat; a warning says so once.
//
// Every transaction before the position is visible to the snapshot's reads and none
// after it.

// query runs a statement and returns its rows as text (NULL as "").
type query func(q string) ([][]string, error)

// noReloadWarned is set once the MySQL fallback was warned about.
var noReloadWarned atomic.Bool

// ErrNoExactPosition wraps the reason a MySQL snapshot's position is not exact (no
// RELOAD privilege); callers log it once.
var ErrNoExactPosition = errors.New("the binlog position of a consistent snapshot cannot be read exactly")

// beginConsistent starts a consistent-snapshot transaction through q and returns its
// binlog position; with gtid, the GTID set at that position too. The caller reads and
// then commits. A non-nil warning (wrapping ErrNoExactPosition) may come with a valid
// position.
func beginConsistent(q query, flavor string, gtid bool) (pos Position, warning, err error) {
	// For the session, not the next transaction only: on MySQL the lock statement
	// below would use up a one-transaction setting.
	if _, err := q("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"); err != nil {
		return pos, nil, err
	}
	if flavor == "mariadb" {
		pos, warning, err := mariaDBSnapshot(q)
		if err == nil && gtid {
			pos.GTID, err = mariaDBGTIDAt(q, pos)
		}
		return pos, warning, err
	}
	// The read lock waits for running statements and blocks writes meanwhile: bound the
	// wait, and fail (the caller retries) rather than stall the server.
	if _, err := q("SET SESSION lock_wait_timeout = 5"); err != nil {
		return pos, nil, err
	}
	locked := true
	if _, err := q("FLUSH TABLES WITH READ LOCK"); err != nil {
		if !isAccessDenied(err) {
			return pos, nil, fmt.Errorf("FLUSH TABLES WITH READ LOCK: %w", err)
		}
		locked = false
		warning = fmt.Errorf("%w: FLUSH TABLES WITH READ LOCK: %v (fix: GRANT RELOAD ON *.* to the invsync user)", ErrNoExactPosition, err)
		if pos, err = masterStatus(q); err != nil {
			return pos, warning, err
		}
	}
	if _, err = q("START TRANSACTION WITH CONSISTENT SNAPSHOT"); err == nil && locked {
		pos, err = masterStatus(q)
	}
	if locked {
		if _, uerr := q("UNLOCK TABLES"); uerr != nil && err == nil {
			err = uerr
		}
	}
	if !gtid {
		pos.GTID = ""
	}
	return pos, warning, err
}

// MariaDB's binlog_snapshot_position is where the server's last commit ended when the
// snapshot began, set after semi-sync's AFTER_SYNC wait, with one exception that matters:
// writing a Binlog_checkpoint event moves it to the end of that event without waiting
// for transactions written to the binlog before it whose commits are still on their way
// (semi-sync holds them for up to rpl_semi_sync_master_timeout; without semi-sync a
// commit spends at most an fsync there). A new binlog file's header ends with such an
// event, and another follows once the previous file's transactions are durable (up to a
// second after a rotation with innodb_flush_log_at_trx_commit=2). A snapshot at such a
// position does not see those transactions. So mariaDBSnapshot checks the event that
// ends at the position and, after a Binlog_checkpoint event, starts the snapshot again
// until a commit moves the position, or until it stayed there for checkpointSettle
// during which no commit waited for semi-sync (AFTER_SYNC).

// checkpointSettle is how long a position at the end of a Binlog_checkpoint event must
// stay the snapshot position, with no commit waiting for semi-sync, before it is
// trusted: longer than a commit takes from the binlog to the storage engine otherwise
// (an fsync of the binlog index at a rotation, a descheduled thread).
const checkpointSettle = 500 * time.Millisecond

// checkpointPatience bounds how long mariaDBSnapshot waits for a trustworthy position;
// then it fails (the callers retry), naming the likely cause.
const checkpointPatience = 20 * time.Second

// trusted is the last position after a Binlog_checkpoint event found exact (nothing
// written before it was still committing), on the server with that server_id: later
// snapshots at it need no wait. The binlog only grows, so it stays exact (RESET MASTER
// waits for the commits on their way).
type trusted struct {
	pos      Position
	serverID string
}

var trustedCheckpoint atomic.Pointer[trusted]

// mariaDBSnapshot starts a consistent-snapshot transaction on MariaDB and returns its
// exact binlog position (see above). A warning (ErrNoExactPosition) says when it cannot
// tell (binlog_checksum=NONE).
func mariaDBSnapshot(q query) (pos Position, warning, err error) {
	var seen Position // a position after a Binlog_checkpoint event, not yet trusted
	var since time.Time
	var server *serverState
	start := time.Now()
	pause := 2 * time.Millisecond
	for {
		// Read before the snapshot: a commit on its way at the snapshot was on its way
		// then too (it was written before the event).
		quiet := false
		if server != nil {
			if quiet, err = server.noSemiSyncWaits(q); err != nil {
				return pos, nil, err
			}
		}
		if _, err := q("START TRANSACTION WITH CONSISTENT SNAPSHOT"); err != nil {
			return pos, nil, err
		}
		if pos, err = snapshotPosition(q); err != nil {
			return pos, nil, err
		}
		if server == nil {
			if server, err = readServerState(q); err != nil {
				return pos, nil, err
			}
		}
		if !server.checksum {
			return pos, fmt.Errorf("%w: binlog_checksum is NONE, so the binlog event before the position cannot be read cheaply (fix: SET GLOBAL binlog_checksum = CRC32, the default)", ErrNoExactPosition), nil
		}
		after, err := afterCheckpointEvent(q, pos)
		if err != nil || !after {
			return pos, nil, err
		}
		if t := trustedCheckpoint.Load(); t != nil && t.pos == pos && t.serverID == server.id {
			return pos, nil, nil
		}
		switch {
		case pos != seen || !quiet:
			// Every read for checkpointSettle must find the position unchanged and no
			// commit waiting.
			seen, since = pos, time.Now()
		case time.Since(since) >= checkpointSettle:
			trustedCheckpoint.Store(&trusted{pos: pos, serverID: server.id})
			return pos, nil, nil
		}
		if time.Since(start) > checkpointPatience {
			return pos, nil, fmt.Errorf("the binlog position %s of a consistent snapshot stayed uncertain for %s: a commit written to the binlog before it is still on its way (semi-sync waiting for a replica's acknowledgement?); will try again", pos, checkpointPatience)
		}
		if _, err := q("ROLLBACK"); err != nil {
			return pos, nil, err
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// snapshotPosition reads the binlog position of the session's consistent snapshot.
func snapshotPosition(q query) (Position, error) {
	var pos Position
	rows, err := q("SHOW STATUS LIKE 'binlog_snapshot_%'")
	if err != nil {
		return pos, err
	}
	for _, r := range rows {
		switch strings.ToLower(r[0]) {
		case "binlog_snapshot_file":
			pos.File = r[1]
		case "binlog_snapshot_position":
			p, _ := strconv.ParseUint(r[1], 10, 32)
			pos.Pos = uint32(p)
		}
	}
	if pos.File == "" {
		return pos, fmt.Errorf("%w: binlog_snapshot_file is empty: the binary log is off", ErrPermanent)
	}
	return pos, nil
}

// serverState is what mariaDBSnapshot needs to know of the server.
type serverState struct {
	id        string
	checksum  bool // binlog events end in a 4-byte checksum
	afterSync bool // semi-sync waits before the commit (AFTER_SYNC), not after it
}

func readServerState(q query) (*serverState, error) {
	rows, err := q("SELECT @@GLOBAL.server_id, @@GLOBAL.binlog_checksum, @@GLOBAL.rpl_semi_sync_master_wait_point")
	if err != nil {
		return nil, err
	}
	if len(rows) != 1 || len(rows[0]) != 3 {
		return nil, fmt.Errorf("read server_id, binlog_checksum and rpl_semi_sync_master_wait_point: %d rows", len(rows))
	}
	r := rows[0]
	return &serverState{id: r[0], checksum: !strings.EqualFold(r[1], "NONE"), afterSync: !strings.EqualFold(r[2], "AFTER_COMMIT")}, nil
}

// noSemiSyncWaits reports whether no commit waits for a semi-sync acknowledgement before
// its storage engine commit now.
func (s *serverState) noSemiSyncWaits(q query) (bool, error) {
	if !s.afterSync {
		return true, nil // AFTER_COMMIT waits after the commit: visible already
	}
	rows, err := q("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
	if err != nil {
		return false, err
	}
	return len(rows) == 0 || rows[0][1] == "0", nil
}

// Event sizes: a 19-byte header, the body, a 4-byte checksum (binlog_checksum=CRC32).
const (
	xidEventSize        = 19 + 8 + 4
	checkpointEventSize = 19 + 4 + 4 // + the length of the file name it holds
)

// afterCheckpointEvent reports whether the binlog event that ends at pos is a
// Binlog_checkpoint event. Most positions end a commit's Xid event: one SHOW BINLOG
// EVENTS from where it would start says so. Else the same for a checkpoint event, which
// holds the name of a binlog file: of pos's file's length, or one less for the files
// before one whose number has grown past six digits. An offset that is not the start of
// an event is an error 1220 (see noEventAt).
func afterCheckpointEvent(q query, pos Position) (bool, error) {
	if ok, err := eventEndsAt(q, pos, xidEventSize, "Xid"); ok || err != nil {
		return false, err
	}
	lengths := []int{len(pos.File)}
	if dot := strings.LastIndexByte(pos.File, '.'); len(pos.File)-dot-1 > 6 {
		lengths = append(lengths, len(pos.File)-1)
	}
	for _, l := range lengths {
		if ok, err := eventEndsAt(q, pos, checkpointEventSize+l, "Binlog_checkpoint"); ok || err != nil {
			return ok, err
		}
	}
	return false, nil
}

// eventEndsAt reports whether an event of type kind and size bytes ends at pos.
func eventEndsAt(q query, pos Position, size int, kind string) (bool, error) {
	if int(pos.Pos) < 4+size {
		return false, nil
	}
	rows, err := q("SHOW BINLOG EVENTS IN '" + strings.ReplaceAll(pos.File, "'", "''") + "' FROM " + strconv.Itoa(int(pos.Pos)-size) + " LIMIT 1")
	if err != nil {
		if noEventAt(err) {
			return false, nil
		}
		return false, fmt.Errorf("read the binlog event before the snapshot's position %s: %w (fix: GRANT BINLOG MONITOR on MariaDB)", pos, err)
	}
	return len(rows) == 1 && len(rows[0]) >= 5 && rows[0][2] == kind && rows[0][4] == strconv.FormatUint(uint64(pos.Pos), 10), nil
}

// noEventAt reports whether err is SHOW BINLOG EVENTS refusing an offset that is not the
// start of an event (error 1220, "Wrong offset or I/O error" or "Invalid ... pos"), from
// either client library.
func noEventAt(err error) bool {
	var code uint16
	var my *gomysql.MyError
	var drv *mysql.MySQLError
	switch {
	case errors.As(err, &my):
		code = my.Code
	case errors.As(err, &drv):
		code = drv.Number
	}
	m := strings.ToLower(err.Error())
	return code == 1220 && (strings.Contains(m, "wrong offset") || strings.Contains(m, "invalid"))
}

// isAccessDenied reports whether err is the server refusing a privilege (1227, 1045,
// 1142 and the like all say "denied").
func isAccessDenied(err error) bool {
	m := strings.ToLower(err.Error())
	return strings.Contains(m, "denied") || strings.Contains(m, "1227")
}

// mariaDBGTIDAt returns the GTID position at pos. When the server's binlog has not moved
// past pos (nothing committed since the snapshot began), @@gtid_binlog_pos read between
// two equal SHOW MASTER STATUS answers is it; else BINLOG_GTID_POS computes it (it reads
// the binlog file up to pos).
func mariaDBGTIDAt(q query, pos Position) (string, error) {
	a, err := masterStatus(q)
	if err != nil {
		return "", err
	}
	if a.File == pos.File && a.Pos == pos.Pos {
		rows, err := q("SELECT @@GLOBAL.gtid_binlog_pos")
		if err != nil {
			return "", err
		}
		b, err := masterStatus(q)
		if err != nil {
			return "", err
		}
		if b.File == pos.File && b.Pos == pos.Pos && len(rows) == 1 {
			return strings.ReplaceAll(rows[0][0], "\n", ""), nil
		}
	}
	rows, err := q("SELECT BINLOG_GTID_POS('" + strings.ReplaceAll(pos.File, "'", "''") + "', " + strconv.FormatUint(uint64(pos.Pos), 10) + ")")
	if err != nil {
		return "", fmt.Errorf("read the GTID position at %s: %w", pos, err)
	}
	if len(rows) != 1 {
		return "", fmt.Errorf("BINLOG_GTID_POS at %s returned nothing", pos)
	}
	return rows[0][0], nil
}

// masterStatus reads SHOW MASTER STATUS (SHOW BINARY LOG STATUS on MySQL 8.4): file,
// position and, on MySQL, Executed_Gtid_Set.
func masterStatus(q query) (Position, error) {
	var pos Position
	rows, err := q("SHOW MASTER STATUS")
	if err != nil {
		var err2 error
		if rows, err2 = q("SHOW BINARY LOG STATUS"); err2 != nil {
			return pos, fmt.Errorf("read the current binlog position: %w (fix: GRANT REPLICATION CLIENT, or BINLOG MONITOR on MariaDB)", err)
		}
	}
	if len(rows) == 0 {
		return pos, fmt.Errorf("%w: SHOW MASTER STATUS returned nothing: the binary log is off", ErrPermanent)
	}
	r := rows[0]
	pos.File = r[0]
	p, _ := strconv.ParseUint(r[1], 10, 32)
	pos.Pos = uint32(p)
	if len(r) >= 5 {
		pos.GTID = strings.ReplaceAll(r[4], "\n", "")
	}
	return pos, nil
}

// MasterStatus reads the server's current binlog end on conn (file and position).
func MasterStatus(conn *client.Conn) (Position, error) {
	return masterStatus(func(s string) ([][]string, error) { return connRows(conn, s) })
}

// ReadConsistent runs read inside a consistent snapshot on conn (a session of Connect)
// and returns the snapshot's binlog position (without the GTID set; read gets it too,
// with epoch set): every transaction before it is visible to read and none after it.
// warn, if not nil, is called with a warning (see ErrNoExactPosition).
func ReadConsistent(conn *client.Conn, flavor string, epoch uint32, warn func(error), read func(Position) error) (Position, error) {
	q := func(s string) ([][]string, error) { return connRows(conn, s) }
	pos, warning, err := beginConsistent(q, flavor, false)
	pos.Epoch = epoch
	if warning != nil && warn != nil && noReloadWarned.CompareAndSwap(false, true) {
		warn(warning)
	}
	if err != nil {
		_, _ = conn.Execute("ROLLBACK")
		return pos, fmt.Errorf("start a consistent snapshot: %w", err)
	}
	if err := read(pos); err != nil {
		_, _ = conn.Execute("ROLLBACK")
		return pos, err
	}
	if _, err := conn.Execute("COMMIT"); err != nil {
		return pos, err
	}
	return pos, nil
}

func connRows(conn *client.Conn, s string) ([][]string, error) {
	res, err := conn.Execute(s)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	if res.Resultset == nil {
		return nil, nil
	}
	out := make([][]string, len(res.RowDatas))
	for i := range res.Values {
		row := make([]string, len(res.Values[i]))
		for j := range res.Values[i] {
			v, _ := res.GetString(i, j)
			// A copy: the result's buffers go back to go-mysql's pool at Close and
			// are reused by the next statement.
			row[j] = strings.Clone(v)
		}
		out[i] = row
	}
	return out, nil
}

// CurrentPosition returns the source's position as of now, file and offset together
// with the GTID set at exactly that point (from a consistent snapshot, so that they
// agree and every transaction before it is committed): a snapshot's hand-off position.
// The GTID set is empty on a MySQL server without GTIDs.
func CurrentPosition(ctx context.Context, db *sql.DB, flavor string, warn func(error)) (Position, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return Position{}, fmt.Errorf("read the current binlog position: %w", err)
	}
	defer conn.Close()
	// Not cancelled half-way: a cancelled context would skip UNLOCK TABLES and COMMIT
	// and pool the session with the read lock still held. Bounded instead.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	q := func(s string) ([][]string, error) { return sqlRows(qctx, conn, s) }
	pos, warning, err := beginConsistent(q, flavor, true)
	if warning != nil && warn != nil && noReloadWarned.CompareAndSwap(false, true) {
		warn(warning)
	}
	_, _ = conn.ExecContext(qctx, "COMMIT")
	// Never back into the pool: its session settings were changed (isolation, lock
	// timeout), and after an error its lock or transaction state is unknown.
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	if err != nil {
		return pos, fmt.Errorf("read the current binlog position: %w", err)
	}
	return pos, nil
}

func sqlRows(ctx context.Context, conn *sql.Conn, s string) ([][]string, error) {
	rows, err := conn.QueryContext(ctx, s)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out [][]string
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		row := make([]string, len(cols))
		for i, v := range vals {
			row[i] = v.String
		}
		out = append(out, row)
	}
	return out, rows.Err()
}
