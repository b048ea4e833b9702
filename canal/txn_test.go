package canal

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// tape records what the source hands over.
type tape struct {
	events  []string
	reloads []string
}

func (t *tape) Row(_ context.Context, r Row) error {
	t.events = append(t.events, fmt.Sprintf("row %d %s %s", r.Txn, r.Change.Key, string(layout.AppendSeq(nil, r.Change.Seq))))
	return nil
}

func (t *tape) Commit(_ context.Context, c Commit) error {
	t.events = append(t.events, fmt.Sprintf("commit %d rows=%d at %s", c.Txn, c.Rows, c.Pos))
	return nil
}

func (t *tape) Heartbeat(context.Context) error { return nil }

func (t *tape) TableChanged(_ context.Context, tb *source.Table, at source.Position, rowsChanged bool) error {
	t.reloads = append(t.reloads, fmt.Sprintf("ddl %s %v", tb.Name, rowsChanged))
	return nil
}

func (t *tape) Reload(_ context.Context, tb *source.Table, at source.Position, reason string) error {
	t.reloads = append(t.reloads, fmt.Sprintf("reload %s %s at %d", tb.Name, reason, at.Pos))
	return nil
}

// stream builds events of one binlog file for a table (id INT PRIMARY KEY, v INT).
type stream struct {
	t   *testing.T
	src *Source
	h   *tape
	pos uint32
	tm  *replication.TableMapEvent
}

func newStream(t *testing.T) *stream {
	tbl := &source.Table{Schema: "s", Name: "t", KeyPrefix: "k:", Columns: []source.ColumnInfo{{Name: "id", DataType: "int", ColumnType: "int(11)"}, {Name: "v", DataType: "int", ColumnType: "int(11)"}}, PK: []string{"id"}}
	src, err := NewSource(config.Source{TimeZone: "UTC", Flavor: "mysql"}, []*source.Table{tbl}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	src.file, src.fileIdx = "bin.000001", 1
	src.txn = 1
	src.lastEnd = source.Position{File: "bin.000001", Pos: 4}
	tm := &replication.TableMapEvent{TableID: 1, Schema: []byte("s"), Table: []byte("t"), ColumnCount: 2,
		ColumnType: []byte{mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_LONG}, ColumnMeta: []uint16{0, 0}}
	return &stream{t: t, src: src, h: &tape{}, pos: 4, tm: tm}
}

func (s *stream) send(ev replication.Event, typ replication.EventType) {
	s.t.Helper()
	s.pos += 100
	gtid := ""
	if err := s.src.event(context.Background(), &replication.BinlogEvent{Header: &replication.EventHeader{EventType: typ, LogPos: s.pos}, Event: ev}, &gtid, s.h); err != nil {
		s.t.Fatal(err)
	}
}

func (s *stream) query(q string) {
	s.send(&replication.QueryEvent{Schema: []byte("s"), Query: []byte(q)}, replication.QUERY_EVENT)
}
func (s *stream) xid() { s.send(&replication.XIDEvent{}, replication.XID_EVENT) }
func (s *stream) insert(ids ...int32) {
	rows := make([][]any, len(ids))
	for i, id := range ids {
		rows[i] = []any{id, int32(1)}
	}
	s.send(&replication.RowsEvent{TableID: 1, Table: s.tm, Rows: rows}, replication.WRITE_ROWS_EVENTv2)
}
func (s *stream) mariaGTID(flags byte) {
	s.send(&replication.MariadbGTIDEvent{Flags: flags}, replication.MARIADB_GTID_EVENT)
}
func (s *stream) prepare(xid string) {
	data := make([]byte, 13+len(xid))
	binary.LittleEndian.PutUint32(data[1:], 1)
	binary.LittleEndian.PutUint32(data[5:], uint32(len(xid)))
	copy(data[13:], xid)
	s.send(&replication.GenericEvent{Data: data}, replication.XA_PREPARE_LOG_EVENT)
}

func (s *stream) want(events ...string) {
	s.t.Helper()
	if got := strings.Join(s.h.events, "\n"); got != strings.Join(events, "\n") {
		s.t.Fatalf("handed over:\n%s\nwant:\n%s", got, strings.Join(events, "\n"))
	}
	s.h.events = nil
}

func TestSavepointDoesNotCommitAndRollbackToDropsRows(t *testing.T) {
	for _, flavour := range []string{"mariadb", "mysql"} {
		s := newStream(t)
		if flavour == "mariadb" {
			s.mariaGTID(0) // not flagged transactional: it touched a MyISAM table
		} else {
			s.query("BEGIN")
		}
		s.insert(1)
		s.query("SAVEPOINT `s1`")
		s.insert(2)
		s.query("SAVEPOINT `s2`")
		s.insert(3)
		s.query("ROLLBACK TO `s1`")
		s.insert(4)
		s.want() // held until the end
		s.xid()
		s.want("row 1 k:{1} 000000000100000002040000000", "row 1 k:{4} 000000000100000008040000000", "commit 1 rows=4 at bin.000001:904")
		if len(s.h.reloads) != 0 {
			t.Fatalf("%s: reloads %v", flavour, s.h.reloads)
		}
	}
}

func TestSavepointInATransactionalGroupStreams(t *testing.T) {
	// MariaDB never logs ROLLBACK TO in a group flagged transactional (its cache is
	// truncated): nothing is held. Should one come all the same, the tables reload.
	s := newStream(t)
	s.mariaGTID(mariadbFlTransactional)
	s.query("SAVEPOINT `s1`")
	s.insert(1)
	s.want("row 1 k:{1} 000000000100000003040000000")
	s.query("ROLLBACK TO `s1`")
	if strings.Join(s.h.reloads, ";") != "reload t rollback at 404" {
		t.Fatalf("reloads %v", s.h.reloads)
	}
}

func TestHoldingIsBoundedAndAnOverflowedRollbackReloads(t *testing.T) {
	defer func(n int) { maxHold = n }(maxHold)
	maxHold = 3
	s := newStream(t)
	s.mariaGTID(0)
	s.insert(1)
	s.query("SAVEPOINT `a`")
	s.insert(2)
	s.want()
	s.insert(3) // the third row: held rows stream
	if len(s.h.events) != 3 {
		t.Fatalf("%d rows handed over past maxHold, want 3", len(s.h.events))
	}
	s.h.events = nil
	s.insert(4)
	s.query("ROLLBACK TO `a`") // rows after it were handed over: reload
	if strings.Join(s.h.reloads, ";") != "reload t rollback at 704" {
		t.Fatalf("reloads %v", s.h.reloads)
	}
	s.xid()
	s.want("row 1 k:{4} 000000000100000006040000000", "commit 1 rows=4 at bin.000001:804")
}

func TestCreateSelectReloadsInsideItsGroup(t *testing.T) {
	s := newStream(t)
	s.mariaGTID(mariadbFlDDL | 8) // MariaDB: CREATE OR REPLACE TABLE t ... SELECT
	s.query("CREATE OR REPLACE TABLE t SELECT * FROM x")
	s.insert(13)
	s.xid()
	s.want("row 1 k:{13} 000000000100000003040000000", "commit 1 rows=1 at bin.000001:404")
	if strings.Join(s.h.reloads, ";") != "ddl t true" {
		t.Fatalf("reloads %v", s.h.reloads)
	}
	// MySQL 8.0.21+: the CREATE opens the transaction its rows and XID end.
	s.query("CREATE TABLE t (id INT PRIMARY KEY, v INT) START TRANSACTION")
	s.insert(14)
	s.want("row 2 k:{14} 000000000100000006040000000") // not committed at the CREATE
	s.xid()
	s.want("commit 2 rows=1 at bin.000001:704")
}

func TestRollbackDropsAHeldTransaction(t *testing.T) {
	s := newStream(t)
	// MariaDB: a group not flagged transactional is held whole.
	s.mariaGTID(0)
	s.insert(1, 2)
	s.query("ROLLBACK")
	s.want("commit 1 rows=2 at bin.000001:304")
	// MySQL: BEGIN, a few rows, ROLLBACK.
	s.query("BEGIN")
	s.insert(3)
	s.query("ROLLBACK")
	s.want("commit 2 rows=1 at bin.000001:604")
	if len(s.h.reloads) != 0 {
		t.Fatalf("reloads %v for transactions whose rows were never handed over", s.h.reloads)
	}
}

func TestRollbackOfAStreamedTransactionReloads(t *testing.T) {
	s := newStream(t)
	s.query("BEGIN")
	ids := make([]int32, holdLimit+1)
	for i := range ids {
		ids[i] = int32(i)
	}
	s.insert(ids...)
	if len(s.h.events) != holdLimit+1 {
		t.Fatalf("%d rows handed over, want %d (a large transaction streams)", len(s.h.events), holdLimit+1)
	}
	s.h.events = nil
	s.query("ROLLBACK")
	if strings.Join(s.h.reloads, ";") != "reload t rollback at 304" {
		t.Fatalf("reloads %v", s.h.reloads)
	}
}

func TestXAPreparedRowsWaitForCommitAndHoldTheCheckpoint(t *testing.T) {
	s := newStream(t)
	s.query("XA START X'6131',X'',1")
	s.insert(1)
	s.query("XA END X'6131',X'',1")
	s.prepare("a1")
	s.want()
	// Another transaction meanwhile: its commit holds the position before the prepare.
	s.query("BEGIN")
	s.insert(2)
	s.xid()
	s.want("row 2 k:{2} 000000000100000006040000000", "commit 2 rows=1 at bin.000001:4")
	s.query("XA ROLLBACK X'6132',X'',1") // an unknown one: nothing
	s.want("commit 3 rows=0 at bin.000001:4")
	s.query("XA COMMIT X'6131',X'',1")
	// The prepared row, with the XA COMMIT's sequence, and the real position again.
	s.want("row 4 k:{1} 000000000100000009040000000", "commit 4 rows=1 at bin.000001:904")
	// XA ROLLBACK drops the rows.
	s.query("XA START X'62',X'',1")
	s.insert(5)
	s.query("XA END X'62',X'',1")
	s.prepare("b")
	s.query("XA ROLLBACK X'62',X'',1")
	s.want("commit 6 rows=0 at bin.000001:1404")
}

func TestDDLEndsOnlyOutsideATransaction(t *testing.T) {
	s := newStream(t)
	s.query("BEGIN")
	s.insert(1)
	s.query("INSERT INTO other VALUES (1)") // a statement-logged statement inside
	s.want()
	s.xid()
	s.want("row 1 k:{1} 000000000100000002040000000", "commit 1 rows=1 at bin.000001:404")
	s.query("TRUNCATE TABLE t")
	s.want("commit 2 rows=0 at bin.000001:504")
	if strings.Join(s.h.reloads, ";") != "ddl t true" {
		t.Fatalf("reloads %v", s.h.reloads)
	}
}

func TestClassifyStatement(t *testing.T) {
	for q, want := range map[string]string{
		"BEGIN":                           "1 ",
		"COMMIT /* implicit */":           "2 ",
		"ROLLBACK":                        "3 ",
		"SAVEPOINT `s 1`":                 "4 s 1",
		"ROLLBACK TO `S1`":                "5 s1",
		"ROLLBACK TO SAVEPOINT s1":        "5 s1",
		"RELEASE SAVEPOINT `x`":           "6 x",
		"XA START X'61',X'',1":            "7 x'61',x'',1",
		"XA COMMIT X'6A',X'',1":           "8 x'6a',x'',1",
		"XA COMMIT X'61',X'',1 ONE PHASE": "8 x'61',x'',1",
		"XA ROLLBACK X'61',X'',1":         "9 x'61',x'',1",
		"XA END X'61',X'',1":              "10 ",
		"ALTER TABLE t ADD c INT":         "0 ",
	} {
		k, arg := classifyStatement(q)
		if got := fmt.Sprintf("%d %s", k, arg); got != want {
			t.Errorf("%q: %q, want %q", q, got, want)
		}
	}
	for q, want := range map[string]bool{
		"truncate table t": true, "truncate t": true, "rename table t to t_old, t_new to t": true,
		"drop table t": true, "drop table if exists t": true, "create table t like x": true, "create or replace table t (id int)": true,
		"alter table t rename to x": true, "alter table t add c int": false, "alter table t truncate partition p1": true,
		"alter table t drop partition p1": true, "alter table t exchange partition p with table t2": true, "alter table t drop column c": false, "create index i on t (c)": false, "optimize table t": false,
	} {
		if got := replacesRows(q); got != want {
			t.Errorf("replacesRows(%q) = %v", q, got)
		}
	}
}
