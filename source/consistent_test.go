package source

import (
	"cmp"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// fakeServer answers beginConsistent's statements and records them.
type fakeServer struct {
	log    []string
	failOn map[string]error
}

func (f *fakeServer) query(q string) ([][]string, error) {
	f.log = append(f.log, q)
	for prefix, err := range f.failOn {
		if strings.HasPrefix(q, prefix) {
			return nil, err
		}
	}
	switch {
	case strings.HasPrefix(q, "SHOW MASTER STATUS"):
		return [][]string{{"binlog.000007", "1234", "", "", "uuid:1-5"}}, nil
	case strings.HasPrefix(q, "SHOW STATUS LIKE 'binlog_snapshot_%'"):
		return [][]string{{"Binlog_snapshot_file", "binlog.000007"}, {"Binlog_snapshot_position", "999"}}, nil
	case strings.HasPrefix(q, "SELECT @@GLOBAL.server_id"):
		return [][]string{{"1", "CRC32", "AFTER_SYNC"}}, nil
	}
	return nil, nil
}

func TestBeginConsistentMySQL(t *testing.T) {
	f := &fakeServer{}
	pos, warning, err := beginConsistent(f.query, "mysql", true)
	if err != nil || warning != nil || pos.File != "binlog.000007" || pos.Pos != 1234 || pos.GTID != "uuid:1-5" {
		t.Fatalf("pos %+v warning %v err %v", pos, warning, err)
	}
	want := []string{"SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SET SESSION lock_wait_timeout", "FLUSH TABLES WITH READ LOCK",
		"START TRANSACTION WITH CONSISTENT SNAPSHOT", "SHOW MASTER STATUS", "UNLOCK TABLES"}
	if len(f.log) != len(want) {
		t.Fatalf("statements %q", f.log)
	}
	for i, w := range want {
		if !strings.HasPrefix(f.log[i], w) {
			t.Fatalf("statement %d: %q, want %q (all: %q)", i, f.log[i], w, f.log)
		}
	}

	// Without RELOAD: the position before the snapshot, and a warning.
	f = &fakeServer{failOn: map[string]error{"FLUSH": errors.New("Error 1227: Access denied; you need (at least one of) the RELOAD privilege(s)")}}
	pos, warning, err = beginConsistent(f.query, "mysql", false)
	if err != nil || !errors.Is(warning, ErrNoExactPosition) || pos.File != "binlog.000007" || pos.GTID != "" {
		t.Fatalf("without RELOAD: pos %+v warning %v err %v", pos, warning, err)
	}
	for _, q := range f.log {
		if q == "UNLOCK TABLES" {
			t.Fatal("UNLOCK TABLES without a lock")
		}
	}

	// A lock that times out is an error to retry, not a reason to go inexact.
	f = &fakeServer{failOn: map[string]error{"FLUSH": errors.New("Error 1205: Lock wait timeout exceeded")}}
	if _, warning, err = beginConsistent(f.query, "mysql", false); err == nil || warning != nil {
		t.Fatalf("lock timeout: warning %v err %v", warning, err)
	}

	// The snapshot fails after the lock: the lock is released all the same.
	f = &fakeServer{failOn: map[string]error{"START": errors.New("boom")}}
	if _, _, err = beginConsistent(f.query, "mysql", false); err == nil || f.log[len(f.log)-1] != "UNLOCK TABLES" {
		t.Fatalf("err %v, statements %q", err, f.log)
	}
}

func TestBeginConsistentMariaDB(t *testing.T) {
	f := &fakeServer{}
	pos, _, err := beginConsistent(f.query, "mariadb", false)
	if err != nil || pos.File != "binlog.000007" || pos.Pos != 999 {
		t.Fatalf("pos %+v err %v", pos, err)
	}
	for _, q := range f.log {
		if strings.Contains(q, "FLUSH") {
			t.Fatal("MariaDB needs no lock")
		}
	}
}

// checkpointServer is a MariaDB whose snapshots report positions[i] (the last one
// from then on), where the event that ends at checkpointEnd is a Binlog_checkpoint event
// and every other position ends an Xid event, and with waits[i] commits waiting for
// semi-sync at the i-th status read.
type checkpointServer struct {
	positions     []uint32
	checkpointEnd uint32
	waits         []string
	checksum      string
	snapshots     int
	statusReads   int
	rollbacks     int
	probes        int
	lastWait      time.Time // when a read last found a commit waiting
}

func (f *checkpointServer) query(q string) ([][]string, error) {
	const events = "SHOW BINLOG EVENTS IN 'binlog.000007' FROM "
	switch {
	case strings.HasPrefix(q, "SELECT @@GLOBAL.server_id"):
		return [][]string{{"1", cmp.Or(f.checksum, "CRC32"), "AFTER_SYNC"}}, nil
	case strings.HasPrefix(q, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'"):
		w := f.waits[min(f.statusReads, len(f.waits)-1)]
		f.statusReads++
		if w != "0" {
			f.lastWait = time.Now()
		}
		return [][]string{{"Rpl_semi_sync_master_wait_sessions", w}}, nil
	case strings.HasPrefix(q, "START TRANSACTION"):
		f.snapshots++
	case strings.HasPrefix(q, "ROLLBACK"):
		f.rollbacks++
	case strings.HasPrefix(q, "SHOW STATUS LIKE 'binlog_snapshot_%'"):
		p := f.positions[min(f.snapshots-1, len(f.positions)-1)]
		return [][]string{{"Binlog_snapshot_file", "binlog.000007"}, {"Binlog_snapshot_position", strconv.Itoa(int(p))}}, nil
	case strings.HasPrefix(q, events):
		f.probes++
		from, _ := strconv.Atoi(strings.Fields(strings.TrimPrefix(q, events))[0])
		p := f.positions[min(f.snapshots-1, len(f.positions)-1)]
		switch {
		case p == f.checkpointEnd && from == int(p)-40: // names binlog.000006: 19 + 4 + 13 + 4 bytes
			return [][]string{{"binlog.000007", strconv.Itoa(from), "Binlog_checkpoint", "1", strconv.Itoa(int(p)), "binlog.000006"}}, nil
		case p != f.checkpointEnd && from == int(p)-31:
			return [][]string{{"binlog.000007", strconv.Itoa(from), "Xid", "1", strconv.Itoa(int(p)), "COMMIT /* xid=5 */"}}, nil
		}
		return nil, &gomysql.MyError{Code: 1220, State: "HY000", Message: "Error when executing command SHOW BINLOG EVENTS: Wrong offset or I/O error"}
	}
	return nil, nil
}

// A snapshot position at the end of a Binlog_checkpoint event may be past a commit on
// its way (see mariaDBSnapshot): it is taken again until the position moves, or it
// stayed for checkpointSettle while no commit waited for semi-sync.
func TestMariaDBSnapshotAfterACheckpointEvent(t *testing.T) {
	trustedCheckpoint.Store(nil)
	// After a commit (an Xid event): taken at once, with one look at the binlog.
	f := &checkpointServer{positions: []uint32{500}, checkpointEnd: 340, waits: []string{"3"}}
	if pos, _, err := mariaDBSnapshot(f.query); err != nil || pos.Pos != 500 || f.snapshots != 1 || f.probes != 1 {
		t.Fatalf("pos %+v err %v after %d snapshots, %d probes", pos, err, f.snapshots, f.probes)
	}
	// After a checkpoint event, then a commit lands: the new position, at once.
	f = &checkpointServer{positions: []uint32{340, 340, 575}, checkpointEnd: 340, waits: []string{"1"}}
	if pos, _, err := mariaDBSnapshot(f.query); err != nil || pos.Pos != 575 || f.snapshots != 3 || f.rollbacks != 2 {
		t.Fatalf("pos %+v err %v after %d snapshots, %d rollbacks", pos, err, f.snapshots, f.rollbacks)
	}
	// After one, with no commit waiting for semi-sync: trusted once the position stayed
	// for checkpointSettle (a commit without semi-sync takes less).
	f = &checkpointServer{positions: []uint32{340}, checkpointEnd: 340, waits: []string{"0"}}
	start := time.Now()
	if pos, _, err := mariaDBSnapshot(f.query); err != nil || pos.Pos != 340 || time.Since(start) < checkpointSettle {
		t.Fatalf("pos %+v err %v after %s", pos, err, time.Since(start))
	}
	// After one, and commits wait for semi-sync a while: trusted only once none waited
	// for checkpointSettle.
	trustedCheckpoint.Store(nil)
	f = &checkpointServer{positions: []uint32{340}, checkpointEnd: 340, waits: []string{"1", "0", "1", "0", "0", "1", "1", "1", "1", "0"}}
	if pos, _, err := mariaDBSnapshot(f.query); err != nil || pos.Pos != 340 || f.statusReads < 10 || time.Since(f.lastWait) < checkpointSettle {
		t.Fatalf("pos %+v err %v after %d status reads, %s after the last wait", pos, err, f.statusReads, time.Since(f.lastWait))
	}
	// Trusted from then on.
	f = &checkpointServer{positions: []uint32{340}, checkpointEnd: 340, waits: []string{"1"}}
	if pos, _, err := mariaDBSnapshot(f.query); err != nil || pos.Pos != 340 || f.snapshots != 1 {
		t.Fatalf("trusted: pos %+v err %v after %d snapshots", pos, err, f.snapshots)
	}
	// Without checksums the event before the position cannot be found cheaply: a warning.
	trustedCheckpoint.Store(nil)
	f = &checkpointServer{positions: []uint32{340}, checkpointEnd: 340, waits: []string{"1"}, checksum: "NONE"}
	if pos, warning, err := mariaDBSnapshot(f.query); err != nil || !errors.Is(warning, ErrNoExactPosition) || pos.Pos != 340 || f.probes != 0 {
		t.Fatalf("NONE: pos %+v warning %v err %v after %d probes", pos, warning, err, f.probes)
	}
	// Other errors of SHOW BINLOG EVENTS are errors.
	if noEventAt(&gomysql.MyError{Code: 1220, Message: "Error when executing command SHOW BINLOG EVENTS: Could not find target log"}) || noEventAt(errors.New("dial tcp 127.0.0.1:31220: connection refused")) {
		t.Fatal("not every 1220 is an offset that starts no event")
	}
}
