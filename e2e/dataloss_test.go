package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// Issue 3, acceptance 4: Redis loses its data (here FLUSHDB of the database invsync
// writes, standing for FLUSHALL or a restart without persistence) during a workload:
// Redis equals MySQL again within 30 s, without restarting the daemon.
func TestRedisDataLossHealsWhileStreaming(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.ownRedisDB(7) // flushed by the test
	loadRows(t, e, 3000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)

	owners := func() []string {
		keys, err := e.rdb.Keys(context.Background(), "invsync:owner:*").Result()
		testenv.Must(t, err, "KEYS")
		return keys
	}
	claims := len(owners())
	if claims == 0 {
		t.Fatal("no claim keys (invsync:owner:*) before the flush")
	}
	var flushed time.Time
	var noticed time.Duration
	wl := during(t, e, 3000, func(*workload) {
		time.Sleep(500 * time.Millisecond)
		testenv.Must(t, e.rdb.FlushDB(context.Background()).Err(), "FLUSHDB")
		flushed = time.Now()
		// README: the marker is checked every second; allow a loaded machine a margin.
		waitFor(t, "the data loss noticed", 5*time.Second, func() bool {
			return seriesValue(t, r.d.Registry(), "invsync_resnapshots_total", "reason", "redis_data_loss") >= 1
		})
		noticed = time.Since(flushed)
		time.Sleep(time.Second)
	})
	e.waitEqual(30*time.Second - time.Since(flushed))
	t.Logf("noticed %s after the flush, equal again %s after it (workload ran %d transactions)",
		noticed.Round(time.Millisecond), time.Since(flushed).Round(time.Millisecond), wl.done.Load())
	if got, all := seriesValue(t, r.d.Registry(), "invsync_resnapshots_total", "reason", "redis_data_loss"), counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got != 1 || all != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=redis_data_loss} = %v (all reasons %v) after one data loss, want 1", got, all)
	}
	// The claims on the key prefixes went with the data: they are taken again.
	if got := owners(); len(got) != claims {
		t.Fatalf("claim keys after the reload: %q, want %d as before the flush", got, claims)
	}
}

// A reload that runs while the stream writes orders its rows by the binlog position it
// read them at, not by version: a row read before a DELETE, with a version above the
// tombstone that a later incarnation (its version restarted) left, must not come back.
func TestConcurrentReloadIsOrderedByPosition(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	_, err := e.db.Exec("INSERT INTO inventory VALUES (1, 5, 1.00, 'old incarnation', 11), (2, 6, 1.00, 'b', 4)")
	testenv.Must(t, err, "insert")
	ctx := context.Background()
	tables := e.tables()
	prefix := e.cfg.Tables[0].KeyPrefix
	k1, k2 := layout.Key(prefix, []string{"1"}), layout.Key(prefix, []string{"2"})
	// The stream has already written, from a position later than the reload's reads, the
	// tombstone of key 1 (version 3) and row 2 at version 2.
	later := string(layout.AppendSeq(nil, layout.Seq{File: 999_999, Pos: 4}))
	e.rdb.HSet(ctx, k1, "_v", "3", "_s", later, "_deleted", "1")
	e.rdb.HSet(ctx, k2, "_v", "2", "_s", later, "sku", "2", "stock", "0")
	w := layout.NewWriter(e.rdb, time.Hour, false)
	snap := snapshot.New(e.conns().Source, e.cfg.Snapshot, tables, w, e.rdb, zap.NewNop(), nil).WithoutSweep()
	_, _, err = snap.Run(ctx, func(ctx context.Context) (source.Position, error) { return e.currentPosition(), nil })
	testenv.Must(t, err, "reload")
	if h := e.rdb.HGetAll(ctx, k1).Val(); h["_deleted"] != "1" || h["_s"] != later {
		t.Fatalf("the reload brought back a row the stream had deleted later: %v", h)
	}
	if h := e.rdb.HGetAll(ctx, k2).Val(); h["stock"] != "0" {
		t.Fatalf("the reload replaced a newer write of the stream: %v", h)
	}
	// Keys the stream has not written get the reload's rows.
	e.rdb.Del(ctx, k1, k2)
	_, _, err = snap.Run(ctx, func(ctx context.Context) (source.Position, error) { return e.currentPosition(), nil })
	testenv.Must(t, err, "reload")
	if h := e.rdb.HGetAll(ctx, k1).Val(); h["name"] != "old incarnation" || h["_s"] == "" {
		t.Fatalf("the reload did not write an absent key: %v", h)
	}
}

// Issue 13, part 2: a reload after Redis lost its data that is interrupted (here the
// leader is stopped during it; a kill -9 or a lost lock do the same) is finished by
// whoever leads next: the data-loss marker is written only once a reload is done.
func TestInterruptedDataLossReloadIsResumed(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.ownRedisDB(9) // flushed by the test
	loadRows(t, e, 20_000)
	e.cfg.Snapshot.RowsPerSecond = 4000 // a reload of about 5 s
	e.cfg.Snapshot.ChunkSize = 500
	addrA, addrB := freeAddr(t), freeAddr(t)
	a := startProc(t, e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addrA }), addrA)
	e.waitEqual(60 * time.Second)
	b := spawnProc(t, e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addrB }), addrB)
	waitHTTP(t, "http://"+addrB+"/healthz", 200, 30*time.Second)
	testenv.Must(t, e.rdb.FlushDB(context.Background()).Err(), "FLUSHDB")
	waitFor(t, "the reload under way", 10*time.Second, func() bool {
		n, _ := e.rdb.DBSize(context.Background()).Result()
		return n > 2000
	})
	a.terminate(t)
	if n, _ := e.rdb.DBSize(context.Background()).Result(); n > 15_000 {
		t.Fatalf("the reload was over before the stop (%d keys): the test proves nothing", n)
	}
	waitHTTP(t, "http://"+addrB+"/readyz", 200, 30*time.Second)
	e.waitEqual(60 * time.Second)
	b.terminate(t)
}

// Issue 14: the same against a real concurrent stream. Redis loses the table's keys and
// the data-loss marker but keeps the applied marker (keys evicted or deleted by hand: a
// FLUSHALL takes the applied marker too and is reloaded with the stream stopped) while
// a workload runs in which two thirds of the keys are deleted and inserted again with
// their version restarted at 1; the reload (slowed to about a second) reads rows while
// the stream writes newer incarnations and tombstones of the same keys. Ordered by
// version, a row read before a DELETE would win over the later incarnation and stay;
// ordered by position, Redis ends equal to MySQL.
func TestConcurrentReloadAgainstTheStream(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.ownRedisDB(11) // emptied by the test
	e.cfg.Snapshot.RowsPerSecond = 3000
	e.cfg.Snapshot.ChunkSize = 100
	loadRows(t, e, 3000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	marker := "invsync:marker:" + e.cfg.State.Schema
	var during0, during1 int64
	var applied0, applied1 float64
	wl := during(t, e, 3000, func(wl *workload) {
		time.Sleep(300 * time.Millisecond)
		keys, err := e.rdb.Keys(ctx, e.cfg.Tables[0].KeyPrefix+"*").Result()
		testenv.Must(t, err, "KEYS")
		testenv.Must(t, e.rdb.Unlink(ctx, append(keys, marker)...).Err(), "UNLINK")
		during0 = wl.done.Load()
		applied0 = counterSum(t, r.d.Registry(), "invsync_rows_applied_total")
		waitFor(t, "the reload done (the marker written again)", 30*time.Second, func() bool {
			return e.rdb.Exists(ctx, marker).Val() == 1
		})
		during1 = wl.done.Load()
		applied1 = counterSum(t, r.d.Registry(), "invsync_rows_applied_total")
		time.Sleep(300 * time.Millisecond)
	})
	t.Logf("%d transactions and %v rows applied by the stream while the reload ran, %d transactions in all", during1-during0, applied1-applied0, wl.done.Load())
	if during1-during0 < 100 || applied1-applied0 < 100 {
		t.Fatalf("only %d transactions ran and %v rows were streamed during the reload: the reload did not race the stream", during1-during0, applied1-applied0)
	}
	e.waitEqual(30 * time.Second)
	if got := seriesValue(t, r.d.Registry(), "invsync_resnapshots_total", "reason", "redis_data_loss"); got != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=redis_data_loss} = %v, want 1", got)
	}
}

// One loss is one reload, also when the reload takes long enough for both watches (the
// data marker's, the applied markers') to notice the loss. Then Redis loses its data
// again while the reload after a loss runs (a second restart without persistence, a
// second FLUSHALL): the rows the reload had written are gone too, so the reload must not
// end by writing the markers as if Redis held every row; it loads again, and Redis ends
// equal to MySQL.
func TestDataLossDuringTheReload(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.ownRedisDB(12) // flushed by the test
	loadRows(t, e, 20_000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(60 * time.Second)
	// Slower reloads from here on (about 5 s; the first load ran at full speed).
	e.cfg.Snapshot.RowsPerSecond = 4000
	r.stop(t)
	r = e.start(nil)
	waitReady(t, r)
	ctx := context.Background()
	counts := func() (lost, all float64) {
		return seriesValue(t, r.d.Registry(), "invsync_resnapshots_total", "reason", "redis_data_loss"), counterSum(t, r.d.Registry(), "invsync_resnapshots_total")
	}

	testenv.Must(t, e.rdb.FlushDB(ctx).Err(), "FLUSHDB")
	e.waitEqual(60 * time.Second)
	waitFor(t, "the reload done (the marker written again)", 30*time.Second, func() bool {
		return e.rdb.Exists(ctx, "invsync:marker:"+e.cfg.State.Schema).Val() == 1
	})
	if lost, all := counts(); lost != 1 || all != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=redis_data_loss} = %v (all reasons %v) after one loss, want 1", lost, all)
	}

	testenv.Must(t, e.rdb.FlushDB(ctx).Err(), "FLUSHDB")
	waitFor(t, "the reload under way", 10*time.Second, func() bool {
		return e.rdb.DBSize(ctx).Val() > 4000
	})
	testenv.Must(t, e.rdb.FlushDB(ctx).Err(), "FLUSHDB during the reload")
	e.waitEqual(60 * time.Second)
	if lost, all := counts(); lost != 3 || all != 3 {
		t.Fatalf("invsync_resnapshots_total{reason=redis_data_loss} = %v (all reasons %v) after three losses, want 3", lost, all)
	}
}
