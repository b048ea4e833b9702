package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
)

// Transaction boundaries (issue 11, part 1): only an XID event, a COMMIT query event or
// a DDL ends a transaction; rows rolled back to a savepoint, or of an XA transaction
// rolled back, never reach Redis; rows of a prepared XA transaction reach Redis at its
// XA COMMIT; the checkpoint is never inside a transaction.

// auditDDL is a non-transactional table: a change to it after a savepoint makes MariaDB
// log the transactional rows after the savepoint and then ROLLBACK TO (instead of
// truncating them from the transaction's cache).
const auditDDL = `CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(64)) ENGINE=MyISAM`

// specialSKUs is where the special transactions of these tests write: apart from the
// random workload's SKUs (0..1999), so that their locks do not meet.
const specialSKUBase = 5000

// alongsideWorkload runs the random workload (4 writers, 4,000 transactions) and the
// version watcher while fn runs, then waits until Redis equals MySQL and fails on what
// the watcher saw.
func alongsideWorkload(t *testing.T, e *env, fn func()) {
	t.Helper()
	alongside(t, e, &workload{db: e.db, table: "inventory", skus: 2000, writers: 4, txns: 4000, maxRows: 20}, fn)
}

// alongside is alongsideWorkload with a given workload (run again, its re-inserts keep
// taking higher versions, so the watcher's rule holds across runs).
func alongside(t *testing.T, e *env, wl *workload, fn func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // a test that fails in fn stops the workload
	check := watchingWith(t, newWatcher(e.rdb, e.cfg.Tables[0].KeyPrefix, watchedSKUs), 50)
	werr := make(chan error, 1)
	go func() { werr <- wl.run(ctx) }()
	fn()
	if err := <-werr; err != nil {
		t.Fatalf("workload: %v", err)
	}
	e.waitEqual(60 * time.Second)
	check()
}

func execAll(t *testing.T, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := q.ExecContext(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// Savepoints inside transactions, with writers running: rows rolled back to a savepoint
// (logged, then ROLLBACK TO, because the transaction touched a MyISAM table after the
// savepoint) never reach Redis; rows before and after it do; nested savepoints, RELEASE
// SAVEPOINT and a whole rollback after a savepoint too.
func TestSavepointsInsideTransactions(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	execAll(t, e.db, auditDDL)
	r := e.start(nil)
	waitReady(t, r)
	ctx := context.Background()
	// The special SKUs exist first, with stock 100.
	var vals []string
	for i := 0; i < 200; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 100, 1.00, 'special', 1)", specialSKUBase+i))
	}
	execAll(t, e.db, "INSERT INTO inventory (sku, stock, price, name, version) VALUES "+strings.Join(vals, ","))

	rolledBack := 0
	alongsideWorkload(t, e, func() {
		conn, err := e.db.Conn(ctx)
		testenv.Must(t, err, "conn")
		defer conn.Close()
		rng := rand.New(rand.NewPCG(11, 12))
		for round := 0; round < 60; round++ {
			a := specialSKUBase + rng.IntN(50)
			b := specialSKUBase + 50 + rng.IntN(50)
			c := specialSKUBase + 100 + rng.IntN(50)
			d := specialSKUBase + 150 + rng.IntN(50)
			upd := func(sku, stock int) string {
				return fmt.Sprintf("UPDATE inventory SET stock = %d, version = version + 1 WHERE sku = %d", stock, sku)
			}
			switch round % 4 {
			case 0: // kept, savepoint, rolled back (logged: MyISAM after it), kept
				execAll(t, conn, "BEGIN", upd(a, round), "SAVEPOINT s1", upd(b, -1), upd(c, -1),
					"INSERT INTO audit (note) VALUES ('after s1')", "ROLLBACK TO SAVEPOINT s1", upd(d, round), "COMMIT")
				rolledBack++
			case 1: // nested: back to the outer one drops both inner parts
				execAll(t, conn, "BEGIN", "SAVEPOINT outer_sp", upd(a, round), "SAVEPOINT inner_sp", upd(b, -2),
					"INSERT INTO audit (note) VALUES ('nested')", "ROLLBACK TO inner_sp", upd(c, round),
					"INSERT INTO audit (note) VALUES ('outer')", "ROLLBACK TO SAVEPOINT outer_sp", upd(d, round), "COMMIT")
				rolledBack++
			case 2: // released savepoint: everything stays
				execAll(t, conn, "BEGIN", upd(a, round), "SAVEPOINT s2", upd(b, round), "RELEASE SAVEPOINT s2", upd(c, round), "COMMIT")
			case 3: // savepoint, then the whole transaction rolled back
				execAll(t, conn, "BEGIN", upd(a, -3), "SAVEPOINT s3", upd(b, -3), "INSERT INTO audit (note) VALUES ('then rollback')", "ROLLBACK")
			}
		}
	})
	// No special SKU holds a rolled-back stock (negative), in MySQL or Redis.
	var bad int
	testenv.Must(t, e.db.QueryRow("SELECT COUNT(*) FROM inventory WHERE stock < 0 AND sku >= ?", specialSKUBase).Scan(&bad), "count")
	if bad != 0 {
		t.Fatalf("MySQL itself holds %d rolled-back values: the test's transactions are wrong", bad)
	}
	t.Logf("%d transactions rolled back to a savepoint after logging rows", rolledBack)
}

// A large transaction with a savepoint and a ROLLBACK TO SAVEPOINT, the daemon killed
// with SIGKILL while it streams: no checkpoint is ever a position inside the
// transaction, and after the restart every row equals MySQL.
func TestKill9InsideASavepointTransaction(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	execAll(t, e.db, auditDDL)
	httpAddr := freeAddr(t)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = httpAddr })
	p := startProc(t, cfgPath, httpAddr)
	const rows = 60_000
	execAll(t, e.db, "INSERT INTO inventory (sku, stock, price, name, version) SELECT seq, 10, 1.00, 'big', 1 FROM seq_0_to_59999")
	e.waitEqual(60 * time.Second)
	store := e.checkpointStore()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	smp := startSampler(ctx, store, e.rdb, e.cfg.Tables[0].KeyPrefix, 20*time.Millisecond)
	checkWatch := watching(t, e)

	// One transaction: a row, a savepoint, every row updated, a MyISAM row, rolled back
	// to the savepoint (all logged), then every row updated again.
	conn, err := e.db.Conn(ctx)
	testenv.Must(t, err, "conn")
	defer conn.Close()
	before := e.currentPosition()
	execAll(t, conn, "BEGIN", "UPDATE inventory SET stock = 7, version = version + 1 WHERE sku = 0", "SAVEPOINT s1",
		"UPDATE inventory SET stock = -1, version = version + 1", "INSERT INTO audit (note) VALUES ('x')",
		"ROLLBACK TO SAVEPOINT s1", "SAVEPOINT s2", "UPDATE inventory SET stock = stock + 1, version = version + 1", "COMMIT")
	var gtid string
	testenv.Must(t, conn.QueryRowContext(ctx, "SELECT @@last_gtid").Scan(&gtid), "last_gtid")
	end := txnEnd(t, e.db, before, gtid)
	t.Logf("transaction %s from %s to %s", gtid, before, end)

	// Kill once Redis holds part of the transaction (or, at the latest, 3 s after it).
	keys := make([]string, 0, 200)
	for i := 0; i < rows; i += rows / 200 {
		keys = append(keys, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{strconv.Itoa(i)}))
	}
	deadline := time.Now().Add(3 * time.Second)
	partial := false
	for time.Now().Before(deadline) && !partial {
		n := 0
		for _, k := range keys {
			if e.rdb.HGet(ctx, k, "stock").Val() == "11" {
				n++
			}
		}
		partial = n > 0 && n < len(keys)
		time.Sleep(2 * time.Millisecond)
	}
	p.kill(t)
	t.Logf("killed with SIGKILL (Redis held part of the transaction: %v)", partial)
	samples := smp.stop()
	checkNotInside(t, samples, gtid, end)

	p = startProc(t, cfgPath, httpAddr)
	e.waitEqual(90 * time.Second)
	var neg int
	testenv.Must(t, e.db.QueryRow("SELECT COUNT(*) FROM inventory WHERE stock <> 11 AND sku > 0").Scan(&neg), "count")
	if neg != 0 {
		t.Fatalf("MySQL holds %d rows not updated by the transaction", neg)
	}
	checkWatch()
	// And the checkpoint reached the transaction's end.
	for deadline := time.Now().Add(30 * time.Second); ; {
		pos, _, err := store.Load(ctx)
		testenv.Must(t, err, "checkpoint")
		if !less(pos, end) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint %s did not reach the transaction's end %s", pos, end)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.terminate(t)
}

// txnEnd finds the position after the commit of transaction gtid, which starts at or
// after from, in the binlog.
func txnEnd(t *testing.T, db *sql.DB, from source.Position, gtid string) source.Position {
	t.Helper()
	file, pos := from.File, from.Pos
	inside := false
	for tries := 0; tries < 50; tries++ {
		rows, err := db.Query(fmt.Sprintf("SHOW BINLOG EVENTS IN '%s' FROM %d", file, pos))
		testenv.Must(t, err, "show binlog events")
		next := ""
		for rows.Next() {
			var name, typ, info string
			var p, sid, endPos uint64
			testenv.Must(t, rows.Scan(&name, &p, &typ, &sid, &endPos, &info), "scan")
			switch {
			case typ == "Gtid" && strings.Contains(info, "GTID "+gtid):
				inside = true
			case inside && (typ == "Xid" || (typ == "Query" && strings.HasPrefix(info, "COMMIT"))):
				rows.Close()
				return source.Position{File: file, Pos: uint32(endPos), GTID: gtid}
			case typ == "Rotate":
				next = strings.SplitN(info, ";", 2)[0]
			}
		}
		rows.Close()
		if next == "" {
			break
		}
		file, pos = next, 4
	}
	t.Fatalf("the end of transaction %s is not in the binlog after %s", gtid, from)
	return source.Position{}
}

// checkNotInside fails when a sampled checkpoint names the transaction gtid (MariaDB
// domain-server-seq) while its file:pos is before the transaction's end: a checkpoint
// inside the transaction.
func checkNotInside(t *testing.T, samples []sample, gtid string, end source.Position) {
	t.Helper()
	parts := strings.Split(gtid, "-")
	if len(parts) != 3 {
		t.Fatalf("unexpected GTID %q", gtid)
	}
	seq, _ := strconv.ParseUint(parts[2], 10, 64)
	for _, s := range samples {
		for _, g := range strings.Split(s.pos.GTID, ",") {
			gp := strings.Split(strings.TrimSpace(g), "-")
			if len(gp) != 3 || gp[0] != parts[0] {
				continue
			}
			n, _ := strconv.ParseUint(gp[2], 10, 64)
			if n >= seq && less(s.pos, end) {
				t.Fatalf("checkpoint %s names the transaction %s but is before its end %s: a checkpoint inside a transaction", s.pos, gtid, end)
			}
		}
	}
	t.Logf("%d checkpoint samples, none inside the transaction", len(samples))
}

// XA transactions, with writers running and other transactions committed between the
// prepare and the commit: an XA COMMIT brings the prepared rows, an XA ROLLBACK none; a
// daemon killed with SIGKILL while a transaction is prepared (its checkpoint may not pass
// the prepare) still applies it at its XA COMMIT after the restart.
func TestXATransactions(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	httpAddr := freeAddr(t)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = httpAddr })
	p := startProc(t, cfgPath, httpAddr)
	ctx := context.Background()
	var vals []string
	for i := 0; i < 100; i++ {
		vals = append(vals, fmt.Sprintf("(%d, 100, 1.00, 'xa', 1)", specialSKUBase+i))
	}
	execAll(t, e.db, "INSERT INTO inventory (sku, stock, price, name, version) VALUES "+strings.Join(vals, ","))
	store := e.checkpointStore()

	xa := func(id string, from, stock int) {
		// Its own connection, closed after XA PREPARE: the prepared transaction is then
		// detached, and committed or rolled back from another connection.
		xdb, err := sql.Open("mysql", testenv.AdminDSN(e.schema))
		testenv.Must(t, err, "open")
		defer xdb.Close()
		xdb.SetMaxOpenConns(1)
		execAll(t, xdb, "XA START '"+id+"'",
			fmt.Sprintf("UPDATE inventory SET stock = %d, version = version + 1 WHERE sku BETWEEN %d AND %d", stock, specialSKUBase+from, specialSKUBase+from+9),
			fmt.Sprintf("DELETE FROM inventory WHERE sku = %d", specialSKUBase+from+10),
			fmt.Sprintf("INSERT INTO inventory (sku, stock, price, name, version) VALUES (%d, %d, 2.00, 'xa-new', 1)", specialSKUBase+1000+from, stock),
			"XA END '"+id+"'", "XA PREPARE '"+id+"'")
	}
	others := func(n int) {
		for i := 0; i < n; i++ {
			execAll(t, e.db, fmt.Sprintf("UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku = %d", specialSKUBase+90+i%10))
		}
	}
	alongsideWorkload(t, e, func() {
		for round := 0; round < 4; round++ {
			from := round * 20
			commitID, rollbackID := testenv.Name("c"), testenv.Name("r")
			xa(commitID, from, 500+round)
			others(20)
			xa(rollbackID, from+11, -7)
			others(20)
			if round == 2 {
				// Kill the daemon while both are prepared and later transactions are done.
				time.Sleep(500 * time.Millisecond)
				pos, _, err := store.Load(ctx)
				testenv.Must(t, err, "checkpoint")
				p.kill(t)
				t.Logf("killed with SIGKILL while %s and %s are prepared; checkpoint %s", commitID, rollbackID, pos)
			}
			execAll(t, e.db, "XA COMMIT '"+commitID+"'")
			others(5)
			execAll(t, e.db, "XA ROLLBACK '"+rollbackID+"'")
			if round == 2 {
				p = startProc(t, cfgPath, httpAddr)
			}
		}
	})
	var n int
	testenv.Must(t, e.db.QueryRow("SELECT COUNT(*) FROM inventory WHERE stock = -7").Scan(&n), "count")
	if n != 0 {
		t.Fatalf("MySQL holds %d rolled-back rows: the test's transactions are wrong", n)
	}
	testenv.Must(t, e.db.QueryRow("SELECT COUNT(*) FROM inventory WHERE name = 'xa-new'").Scan(&n), "count")
	if n != 4 {
		t.Fatalf("MySQL holds %d rows inserted by committed XA transactions, want 4", n)
	}
	p.terminate(t)
}

// A first start (snapshot) while an XA transaction is prepared: the snapshot cannot see
// its rows and the stream would start after its prepare, so the snapshot records its
// position only once no transaction is prepared; the committed rows reach Redis.
func TestSnapshotWhileAnXATransactionIsPrepared(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 200)
	id := testenv.Name("snap")
	xdb, err := sql.Open("mysql", testenv.AdminDSN(e.schema))
	testenv.Must(t, err, "open")
	xdb.SetMaxOpenConns(1)
	execAll(t, xdb, "XA START '"+id+"'", "UPDATE inventory SET stock = 4242, version = version + 1 WHERE sku < 20",
		"INSERT INTO inventory (sku, stock, price, name, version) VALUES (9000, 1, 1.00, 'xa', 1)", "XA END '"+id+"'", "XA PREPARE '"+id+"'")
	xdb.Close()
	committed := false
	t.Cleanup(func() {
		if !committed {
			_, _ = e.db.Exec("XA ROLLBACK '" + id + "'")
		}
	})
	checkWatch := watching(t, e)
	r := e.start(nil)
	time.Sleep(1500 * time.Millisecond) // the snapshot waits for the prepared transaction
	execAll(t, e.db, "XA COMMIT '"+id+"'")
	committed = true
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	var n int
	testenv.Must(t, e.db.QueryRow("SELECT COUNT(*) FROM inventory WHERE stock = 4242").Scan(&n), "count")
	if n != 20 {
		t.Fatalf("MySQL has %d rows of the XA transaction, want 20", n)
	}
	checkWatch()
}
