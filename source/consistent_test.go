package source

import (
	"errors"
	"strings"
	"testing"
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
