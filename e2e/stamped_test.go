package e2e

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/reconcile"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// holdCommits makes the source hold every commit, for up to hold, after its transaction
// is written to the binlog and before the storage engine commits it, the window that
// group commit opens for microseconds: MariaDB's semi-synchronous replication with the
// AFTER_SYNC wait point waits there for a replica's acknowledgement, and with no
// semi-synchronous replica connected it waits for the timeout. SHOW MASTER STATUS and the
// binlog stream show such a transaction while SELECT does not see it yet. The returned
// function ends it; it also ends with the test.
func holdCommits(t *testing.T, admin *sql.DB, hold time.Duration) (end func()) {
	t.Helper()
	var wasPoint string
	var wasTimeout int
	testenv.Must(t, admin.QueryRow("SELECT @@GLOBAL.rpl_semi_sync_master_wait_point, @@GLOBAL.rpl_semi_sync_master_timeout").Scan(&wasPoint, &wasTimeout), "semi-sync settings")
	// Switching it off and on again makes it wait again after a timeout switched it off.
	_, err := admin.Exec("SET GLOBAL rpl_semi_sync_master_enabled = OFF, GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC, GLOBAL rpl_semi_sync_master_wait_no_slave = ON, GLOBAL rpl_semi_sync_master_timeout = ?, GLOBAL rpl_semi_sync_master_enabled = ON", hold.Milliseconds())
	testenv.Must(t, err, "hold commits")
	ended := false
	end = func() {
		if ended {
			return
		}
		ended = true
		_, err := admin.Exec("SET GLOBAL rpl_semi_sync_master_enabled = OFF, GLOBAL rpl_semi_sync_master_wait_point = ?, GLOBAL rpl_semi_sync_master_timeout = ?", wasPoint, wasTimeout)
		testenv.Must(t, err, "stop holding commits")
	}
	t.Cleanup(end)
	return end
}

// binlogEnd is the server's current binlog end (SHOW MASTER STATUS), file and offset.
func binlogEnd(t *testing.T, db *sql.DB) source.Position {
	t.Helper()
	var file, pos, doDB, ignoreDB string
	testenv.Must(t, db.QueryRow("SHOW MASTER STATUS").Scan(&file, &pos, &doDB, &ignoreDB), "SHOW MASTER STATUS")
	p, _ := strconv.ParseUint(pos, 10, 32)
	return source.Position{File: file, Pos: uint32(p)}
}

// stateOutsideTheBinlog points the daemon's state database (checkpoint, compensation
// table) at the same server through a session that does not write the binlog, so that
// held commits (holdCommits) hold only the test's own transactions.
func stateOutsideTheBinlog(e *env) {
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr = testenv.AdminUser(), testenv.AdminPassword(), "tcp", testenv.MySQLAddr()
	c.Params = map[string]string{"sql_log_bin": "0"}
	e.cfg.State.DSN = c.FormatDSN()
}

// inBinlogNotVisible runs stmt (an autocommit statement) while commits are held, and
// returns once its transaction is in the binlog (the server's position moved) while a
// reader still sees the row of sku as before; wait waits for the commit to end.
func inBinlogNotVisible(t *testing.T, e *env, hold time.Duration, stmt string, sku int, before string) (wait func()) {
	t.Helper()
	end := holdCommits(t, e.db, hold)
	binlogEnd := func() source.Position { return binlogEnd(t, e.db) }
	pos0 := binlogEnd()
	done := make(chan error, 1)
	go func() {
		_, err := e.db.Exec(stmt)
		done <- err
	}()
	waitFor(t, "the held transaction in the binlog", hold/2, func() bool { return binlogEnd() != pos0 })
	var stock string
	testenv.Must(t, e.db.QueryRow("SELECT stock FROM inventory WHERE sku = ?", sku).Scan(&stock), "read")
	if stock != before {
		t.Fatalf("the held transaction is visible already (stock %s): the commit was not held", stock)
	}
	return func() {
		testenv.Must(t, <-done, "held statement")
		end()
	}
}

// Issue 12, part 3: every read that stamps a binlog position sees every transaction
// before that position. A transaction is in the binlog (and in SHOW MASTER STATUS)
// before InnoDB commits it; a read that records the position first and reads the row
// after can miss it and stamp the old row with a position after it, so the stream's own
// write of it is skipped as older and the row stays stale. Each path that stamps runs
// here while a transaction sits in that window (held for seconds; see holdCommits).
func TestStampedReadsSeeEverythingBeforeTheirPosition(t *testing.T) {
	const hold = 4 * time.Second
	ctx := context.Background()
	hot := func(e *env, sku int) string {
		return layout.Key(e.cfg.Tables[0].KeyPrefix, []string{strconv.Itoa(sku)})
	}

	// The first snapshot: its hand-off position must not be after a transaction its
	// reads do not see (else the stream starts after it and it is never applied).
	t.Run("snapshot hand-off", func(t *testing.T) {
		e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
		stateOutsideTheBinlog(e)
		loadRows(t, e, 100)
		wait := inBinlogNotVisible(t, e, hold, "UPDATE inventory SET stock = 555, version = 2 WHERE sku = 7", 7, "7")
		r := e.start(nil)
		waitReady(t, r)
		wait()
		e.waitEqual(10 * time.Second)
	})

	// The compensation retrier: a write parked for its key is retried by reading the row
	// again; the read must see the parked change.
	t.Run("compensation retrier", func(t *testing.T) {
		e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
		stateOutsideTheBinlog(e)
		e.cfg.Compensation.PollInterval = 50 * time.Millisecond
		e.cfg.Compensation.InitialBackoff = 100 * time.Millisecond
		loadRows(t, e, 100)
		r := e.start(nil)
		waitReady(t, r)
		e.waitEqual(10 * time.Second)
		k := hot(e, 7)
		testenv.Must(t, e.rdb.Del(ctx, k).Err(), "del")
		testenv.Must(t, e.rdb.Set(ctx, k, "not a hash", 0).Err(), "wrong type")
		wait := inBinlogNotVisible(t, e, hold, "UPDATE inventory SET stock = 555, version = 2 WHERE sku = 7", 7, "7")
		waitFor(t, "the change parked", hold/2, func() bool {
			return counterSum(t, r.d.Registry(), "invsync_compensation_parked_total") == 1
		})
		testenv.Must(t, e.rdb.Del(ctx, k).Err(), "fix the key")
		time.Sleep(500 * time.Millisecond) // retries while the transaction is held
		wait()
		e.waitEqual(10 * time.Second)
		waitFor(t, "the compensation row done", 5*time.Second, func() bool { return len(e.compensationRows(t)) == 0 })
	})

	// The reload after Redis lost its data: the stream had applied the held transaction
	// before the loss; the reload's read must see it.
	t.Run("reload after a data loss", func(t *testing.T) {
		e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
		stateOutsideTheBinlog(e)
		e.ownRedisDB(7) // flushed by the test
		loadRows(t, e, 100)
		r := e.start(nil)
		waitReady(t, r)
		e.waitEqual(10 * time.Second)
		wait := inBinlogNotVisible(t, e, hold, "UPDATE inventory SET stock = 555, version = 2 WHERE sku = 7", 7, "7")
		waitFor(t, "the stream applied the held transaction", hold/2, func() bool { return e.rdb.HGet(ctx, hot(e, 7), "stock").Val() == "555" })
		testenv.Must(t, e.rdb.FlushDB(ctx).Err(), "FLUSHDB")
		waitFor(t, "the reload", hold/2, func() bool { return counterSum(t, r.d.Registry(), "invsync_resnapshots_total") >= 1 })
		wait()
		e.waitEqual(10 * time.Second)
	})

	// Reconcile's repair: Redis already holds the held transaction (the stream wrote
	// it), MySQL's readers do not see it yet; the repair must not write the old row over it.
	t.Run("reconcile repair", func(t *testing.T) {
		e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
		stateOutsideTheBinlog(e)
		loadRows(t, e, 100)
		r := e.start(nil)
		waitReady(t, r)
		e.waitEqual(10 * time.Second)
		w := newWatcher(e.rdb, e.cfg.Tables[0].KeyPrefix, 100)
		wctx, stop := context.WithCancel(ctx)
		wdone := make(chan struct{})
		go func() { defer close(wdone); w.run(wctx) }()
		wait := inBinlogNotVisible(t, e, hold, "UPDATE inventory SET stock = 555, version = 2 WHERE sku = 7", 7, "7")
		waitFor(t, "the stream applied the held transaction", hold/2, func() bool { return e.rdb.HGet(ctx, hot(e, 7), "stock").Val() == "555" })
		cfg := *e.cfg
		cfg.HTTP.Listen = r.d.Addr()
		rep, _, err := daemon.New(&cfg, zap.NewNop()).Reconcile(ctx, reconcile.Options{Repair: true, Recheck: 200 * time.Millisecond})
		testenv.Must(t, err, "reconcile")
		wait()
		e.waitEqual(10 * time.Second)
		stop()
		<-wdone
		if bad := w.bad.list(); len(bad) > 0 {
			t.Fatalf("versions went down: %v", bad)
		}
		if n := rep.Tables[0].Differences[reconcile.Stale] + rep.Tables[0].Differences[reconcile.Mismatch]; n != 0 {
			t.Errorf("reconcile reported %d differences for a row the daemon had written: %v", n, rep.Tables[0].Differences)
		}
	})
}

// Issue 12, part 3, under load: hot keys and 4 writers while commits are held between
// the binlog and the storage engine again and again, and every path that stamps a
// position runs: the daemon's first snapshot hands over while writers run, Redis loses
// its data twice (reloads while streaming), keys refuse writes and are retried from the
// compensation table, reconcile repairs, and an ALTER forces a replacing reload. Redis
// equals MySQL at the end, and no watched version ever goes down.
func TestStampedReadsUnderHotKeyStress(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	stateOutsideTheBinlog(e)
	e.ownRedisDB(8) // flushed by the test
	e.cfg.Compensation.PollInterval = 50 * time.Millisecond
	e.cfg.Compensation.InitialBackoff = 100 * time.Millisecond
	e.cfg.Compensation.MaxBackoff = 500 * time.Millisecond
	const skus = 100
	loadRows(t, e, skus)
	ctx := context.Background()
	key := func(sku int) string { return layout.Key(e.cfg.Tables[0].KeyPrefix, []string{strconv.Itoa(sku)}) }

	// Commits held for up to 800 ms, switched on again every 900 ms: most of the time some
	// transaction sits in the binlog, not yet visible to readers.
	end := holdCommits(t, e.db, 800*time.Millisecond)
	holdCtx, stopHolds := context.WithCancel(ctx)
	holdsDone := make(chan struct{})
	var holds int
	go func() {
		defer close(holdsDone)
		for holdCtx.Err() == nil {
			if _, err := e.db.Exec("SET GLOBAL rpl_semi_sync_master_enabled = OFF, GLOBAL rpl_semi_sync_master_enabled = ON"); err == nil {
				holds++
			}
			select {
			case <-holdCtx.Done():
			case <-time.After(900 * time.Millisecond):
			}
		}
	}()
	defer func() { stopHolds(); <-holdsDone; end() }()

	var r *running
	wl := during(t, e, skus, func(wl *workload) {
		time.Sleep(300 * time.Millisecond)
		r = e.start(nil) // the first snapshot, while writers run
		waitReady(t, r)
		// Keys 0-2 are broken and deleted below: a key deleted by hand loses its order
		// (the _s it held), so older changes still in flight may land on it; the others
		// must never go back.
		w := newWatcher(e.rdb, e.cfg.Tables[0].KeyPrefix, skus)
		w.keys = w.keys[3:]
		check := watchingWith(t, w, 50)
		defer check()
		time.Sleep(time.Second)
		testenv.Must(t, e.rdb.FlushDB(ctx).Err(), "FLUSHDB")
		time.Sleep(1500 * time.Millisecond)
		for sku := 0; sku < 3; sku++ {
			e.rdb.Del(ctx, key(sku))
			e.rdb.Set(ctx, key(sku), "not a hash", 0)
		}
		waitFor(t, "a refused write parked", 10*time.Second, func() bool {
			return counterSum(t, r.d.Registry(), "invsync_compensation_parked_total") >= 1
		})
		for sku := 0; sku < 3; sku++ {
			e.rdb.Del(ctx, key(sku))
		}
		cfg := *e.cfg
		cfg.HTTP.Listen = r.d.Addr()
		_, _, err := daemon.New(&cfg, zap.NewNop()).Reconcile(ctx, reconcile.Options{Repair: true, Recheck: 300 * time.Millisecond})
		testenv.Must(t, err, "reconcile")
		_, err = e.db.Exec("ALTER TABLE inventory ADD COLUMN note VARCHAR(8) NOT NULL DEFAULT 'x'")
		testenv.Must(t, err, "alter")
		time.Sleep(time.Second)
		testenv.Must(t, e.rdb.FlushDB(ctx).Err(), "FLUSHDB")
		time.Sleep(1500 * time.Millisecond)
	})
	stopHolds()
	<-holdsDone
	end()
	e.waitEqual(60 * time.Second)
	reg := r.d.Registry()
	t.Logf("%d transactions, %d holds, resnapshots %v, parked %v, retries %v", wl.done.Load(), holds,
		counterSum(t, reg, "invsync_resnapshots_total"), counterSum(t, reg, "invsync_compensation_parked_total"), counterSum(t, reg, "invsync_compensation_retries_total"))
	// Each event is one reload, counted with its reason (a FLUSHDB is noticed by the
	// data marker and by the applied marker: still one reload).
	if lost, ddl := seriesValue(t, reg, "invsync_resnapshots_total", "reason", "redis_data_loss"), seriesValue(t, reg, "invsync_resnapshots_total", "reason", "ddl"); lost != 2 || ddl != 1 {
		t.Errorf("invsync_resnapshots_total: redis_data_loss %v, ddl %v; want 2 (two FLUSHDBs) and 1 (one ALTER)", lost, ddl)
	}
}

// The position ReadConsistent returns is the snapshot's, whatever the read returns (a
// review found the binlog file name overwritten by the first value read: go-mysql reuses
// a result's buffers once it is closed).
func TestConsistentReadKeepsItsPosition(t *testing.T) {
	e := newEnv(t, tableSpec{name: "named", ddl: "CREATE TABLE named (id INT PRIMARY KEY, name VARCHAR(32)) ENGINE=InnoDB"})
	execAll(t, e.db, "INSERT INTO named VALUES (1, 'sku.000123'), (2, 'WIDGET-BLUE')")
	conn, err := e.conns().Source.Dial(t.Context())
	testenv.Must(t, err, "connect")
	defer conn.Close()
	want := e.currentPosition()
	for i := 0; i < 3; i++ {
		pos, err := source.ReadConsistent(conn, "mariadb", 0, nil, func(source.Position) error {
			_, err := conn.Execute("SELECT id, name FROM " + e.schema + ".named ORDER BY id")
			return err
		})
		testenv.Must(t, err, "read")
		if pos.File != want.File || pos.Pos != want.Pos {
			t.Fatalf("read %d: position %s:%d, want %s:%d", i, pos.File, pos.Pos, want.File, want.Pos)
		}
	}
}

// A consistent snapshot's binlog position (MariaDB's binlog_snapshot_position) must not
// be after a transaction the snapshot does not see. MariaDB moves that position to the
// end of every Binlog_checkpoint event it writes: after a rotation the event lands in
// the new file once the old file's transactions are durable, also after a transaction
// that is written there but whose commit is still held (here by semi-sync). A read at
// that position misses the transaction: a reload would stamp the old row after it, and a
// snapshot hand-off would start the stream after it (it would never be applied).
func TestConsistentReadAfterARotationWithACommitHeld(t *testing.T) {
	const hold = 5 * time.Second
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 20)
	conn, err := e.conns().Source.Dial(t.Context())
	testenv.Must(t, err, "connect")
	defer conn.Close()
	end := func() source.Position { return binlogEnd(t, e.db) }
	// When the checkpoint event comes is up to InnoDB (it waits until the old file's
	// commits are durable): the scenario is set up until it comes after the held
	// transaction.
	for attempt, sku := 1, 1; ; attempt, sku = attempt+1, sku+1 {
		// A commit, a rotation, then a held transaction in the new file; then InnoDB
		// makes the old file's commit durable.
		execAll(t, e.db, "UPDATE inventory SET name = 'before the rotation' WHERE sku = 19", "FLUSH BINARY LOGS")
		before := end()
		endHold := holdCommits(t, e.db, hold)
		done := make(chan error, 1)
		go func() {
			_, err := e.db.Exec("UPDATE inventory SET stock = 555, version = 2 WHERE sku = " + strconv.Itoa(sku))
			done <- err
		}()
		waitFor(t, "the held transaction in the binlog", hold/2, func() bool { return end() != before })
		written := end()
		execAll(t, e.db, "FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS")
		// The checkpoint event after the held transaction: the binlog grows while no
		// other transaction commits.
		grew := false
		for deadline := time.Now().Add(time.Second); !grew && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			grew = end() != written
		}
		if !grew || before.File != written.File {
			endHold()
			testenv.Must(t, <-done, "held statement")
			if attempt == 10 {
				t.Fatal("ten times no checkpoint event after the held transaction in its binlog file")
			}
			continue
		}
		var stock string
		pos, err := source.ReadConsistent(conn, "mariadb", 0, nil, func(source.Position) error {
			res, err := conn.Execute("SELECT stock FROM " + e.schema + ".inventory WHERE sku = " + strconv.Itoa(sku))
			if err != nil {
				return err
			}
			defer res.Close()
			stock, _ = res.GetString(0, 0)
			stock = strings.Clone(stock)
			return nil
		})
		testenv.Must(t, err, "consistent read")
		endHold()
		testenv.Must(t, <-done, "held statement")
		t.Logf("attempt %d: held transaction %s..%d, snapshot at %s sees stock %s", attempt, before, written.Pos, pos, stock)
		switch {
		case pos.File == written.File && pos.Pos >= written.Pos && stock != "555":
			t.Fatalf("the snapshot at %s is after the held transaction (which ends at %s:%d) but does not see it (stock %s)", pos, written.File, written.Pos, stock)
		case pos.File == before.File && pos.Pos <= before.Pos && stock != strconv.Itoa(sku):
			t.Fatalf("the snapshot at %s is before the held transaction but sees it (stock %s)", pos, stock)
		}
		return
	}
}
