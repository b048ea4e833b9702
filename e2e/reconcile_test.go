package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/reconcile"
	"go.uber.org/zap"
)

func readReport(t *testing.T, path string) reconcile.Report {
	t.Helper()
	b, err := os.ReadFile(path)
	testenv.Must(t, err, "read the report")
	var r reconcile.Report
	testenv.Must(t, json.Unmarshal(b, &r), "parse the report")
	return r
}

// Issue 6, acceptance 1: 100 stale values, 50 missing keys, 20 extra keys and 5
// wrong-type keys put into Redis by hand (the daemon running): exit 1 and each kind
// counted exactly; --repair: exit 0; a second run: exit 0 and Redis equals MySQL.
func TestReconcileFindsAndRepairsDrift(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Reconcile.RecheckFor = time.Second
	loadRows(t, e, 3000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(60 * time.Second)
	ctx := context.Background()
	prefix := e.cfg.Tables[0].KeyPrefix
	key := func(sku int) string { return layout.Key(prefix, []string{strconv.Itoa(sku)}) }
	// Rows have version 1; make 100 of them version 2 in MySQL with a quiet daemon
	// first, then put the old state back into Redis.
	_, err := e.db.Exec("UPDATE inventory SET stock = stock + 1, version = 2 WHERE sku < 100")
	testenv.Must(t, err, "update")
	e.waitEqual(30 * time.Second)
	for sku := 0; sku < 100; sku++ {
		e.rdb.HSet(ctx, key(sku), "_v", "1", "stock", strconv.Itoa(sku%1000))
	}
	for sku := 1000; sku < 1050; sku++ {
		e.rdb.Del(ctx, key(sku))
	}
	for sku := 900_000; sku < 900_020; sku++ {
		e.rdb.HSet(ctx, key(sku), "_v", "1", "sku", strconv.Itoa(sku), "stock", "3")
	}
	for sku := 2000; sku < 2005; sku++ {
		e.rdb.Del(ctx, key(sku))
		e.rdb.Set(ctx, key(sku), "not a hash", 0)
	}
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = r.d.Addr() })
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	report := filepath.Join(t.TempDir(), "report.json")

	code, out := runCLI(t, 2*time.Minute, pw, "reconcile", "-c", cfgPath, "--report", report)
	t.Logf("first run (exit %d):\n%s", code, out)
	if code != 1 {
		t.Fatalf("exit %d with drift, want 1", code)
	}
	rep := readReport(t, report)
	want := map[reconcile.Kind]int64{reconcile.Stale: 100, reconcile.Missing: 50, reconcile.Extra: 20, reconcile.WrongType: 5, reconcile.Mismatch: 0}
	got := rep.Tables[0].Differences
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d, want %d", k, got[k], n)
		}
	}
	if rep.Tables[0].RowsChecked != 3000 || len(rep.Tables[0].Samples[reconcile.Missing]) != 50 ||
		!strings.Contains(strings.Join(rep.Tables[0].Samples[reconcile.Extra], " "), key(900_000)) {
		t.Errorf("report: rows %d, samples %v", rep.Tables[0].RowsChecked, rep.Tables[0].Samples)
	}
	for _, s := range []string{"stale", "wrong_type", "drift: 175 differences in 3000 rows", "--repair"} {
		if !strings.Contains(out, s) {
			t.Errorf("summary lacks %q", s)
		}
	}

	code, out = runCLI(t, 2*time.Minute, pw, "reconcile", "-c", cfgPath, "--repair", "--report", report)
	t.Logf("repair run (exit %d):\n%s", code, out)
	if code != 0 || !strings.Contains(out, "drift repaired: 175 differences") {
		t.Fatalf("repair: exit %d", code)
	}
	if rep := readReport(t, report); rep.Tables[0].Repaired[reconcile.Stale] != 100 || rep.Tables[0].Repaired[reconcile.WrongType] != 5 {
		t.Errorf("repaired: %v", rep.Tables[0].Repaired)
	}
	code, out = runCLI(t, 2*time.Minute, pw, "reconcile", "-c", cfgPath)
	if code != 0 || !strings.Contains(out, "no drift: 3000 rows") || !strings.Contains(out, "rebuilt by the running invsync") {
		t.Fatalf("second run: exit %d\n%s", code, out)
	}
	e.waitEqual(10 * time.Second)
	// A repaired row still follows the binlog.
	_, err = e.db.Exec("UPDATE inventory SET stock = 777, version = 3 WHERE sku = 1001")
	testenv.Must(t, err, "update")
	e.waitEqual(30 * time.Second)
	// With no daemon running, the command rebuilds the Bloom filter from its own scan.
	r.stop(t)
	_, err = e.db.Exec("DELETE FROM inventory WHERE sku >= 2900")
	testenv.Must(t, err, "delete")
	code, out = runCLI(t, 2*time.Minute, pw, "reconcile", "-c", cfgPath, "--repair")
	t.Logf("with the daemon stopped (exit %d):\n%s", code, out)
	if code != 0 || !strings.Contains(out, "drift repaired: 100 differences in 2900 rows") || !strings.Contains(out, "rebuilt from the same scan") {
		t.Fatalf("daemon stopped: exit %d", code)
	}
	e.waitEqual(10 * time.Second)
	if ok, _ := bloom.NewReader(e.rdb, e.cfg.BloomKey(e.cfg.Tables[0])).MayContain(ctx, "2950"); ok {
		t.Error("the rebuilt filter still holds a deleted key (possible only as a false positive, at 1e-9 here)")
	}
}

// Issue 6, acceptance 2: with the daemon running and writers active, a reconciliation of
// a consistent mirror reports no difference (rows changing mid-scan are not drift).
func TestReconcileDuringWritesReportsNothing(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Reconcile.ChunkSize = 200 // many chunks, so that writes land between them
	loadRows(t, e, 20_000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(60 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wl := &workload{db: e.db, table: "inventory", skus: 20_000, writers: 4, txns: 1_000_000, maxRows: 10}
	wdone := make(chan error, 1)
	go func() { wdone <- wl.run(ctx) }()
	time.Sleep(300 * time.Millisecond)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = r.d.Addr() })
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	report := filepath.Join(t.TempDir(), "report.json")
	before := wl.done.Load()
	for run := 0; run < 3; run++ {
		code, out := runCLI(t, 2*time.Minute, pw, "reconcile", "-c", cfgPath, "--report", report)
		rep := readReport(t, report)
		if code != 0 {
			t.Fatalf("run %d: exit %d during writes (false positives: %v)\n%s", run, code, rep.Tables[0].Samples, out)
		}
		// It compared the whole table (the workload inserts and deletes within its 20,000
		// keys), and scanned Redis for extras.
		if n := rep.Tables[0].RowsChecked; n < 15_000 || n > 20_000 {
			t.Fatalf("run %d compared %d rows of a table of about 20,000", run, n)
		}
		if rep.Tables[0].KeysScanned < 15_000 {
			t.Fatalf("run %d scanned %d Redis keys", run, rep.Tables[0].KeysScanned)
		}
	}
	during := wl.done.Load() - before
	cancel()
	if err := <-wdone; err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	t.Logf("3 reconciliations of 20,000 rows reported no difference while writers committed %d transactions", during)
	if during < 100 {
		t.Fatalf("only %d transactions ran during the reconciliations", during)
	}
	e.waitEqual(60 * time.Second)
}

// Issue 6, acceptance 4: reconcile.schedule runs the job inside the daemon; it repairs
// and sets the metrics of the last run.
func TestScheduledReconcile(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Reconcile.Schedule = "*/1 * * * * *"
	e.cfg.Reconcile.RecheckFor = 500 * time.Millisecond
	loadRows(t, e, 500)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	k := layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"42"})
	// Wait for a clean run, then break a key and wait for the run that repairs it.
	deadline := time.Now().Add(30 * time.Second)
	for counterSum(t, r.d.Registry(), "invsync_reconcile_runs_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the schedule never ran")
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.rdb.Del(ctx, k)
	for e.rdb.Exists(ctx, k).Val() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the scheduled run did not repair the missing key")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for counterSum(t, r.d.Registry(), "invsync_reconcile_last_repaired") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the repair was not counted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	body, err := httpBody("http://" + r.d.Addr() + "/metrics")
	testenv.Must(t, err, "metrics")
	table := e.schema + ".inventory"
	reg := r.d.Registry()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"invsync_reconcile_runs_total", []string{"result", "repaired"}, 1},
		{"invsync_reconcile_last_repaired", []string{"kind", "missing", "table", table}, 1},
		{"invsync_reconcile_last_rows_checked", []string{"table", table}, 500},
	} {
		if got := seriesValue(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if ts := counterSum(t, reg, "invsync_reconcile_last_run_timestamp_seconds"); time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("invsync_reconcile_last_run_timestamp_seconds = %v, not the run just made", ts)
	}
	if !strings.Contains(body, "invsync_reconcile_last_duration_seconds") {
		t.Error("/metrics lacks invsync_reconcile_last_duration_seconds")
	}
	if counterSum(t, r.d.Registry(), "invsync_bloom_rebuilds_total") < 2 {
		t.Error("the scheduled run did not rebuild the Bloom filter")
	}
	e.waitEqual(10 * time.Second)
}

// behindAProxy is newEnv with the inventory table loaded with rows and a daemon that has
// mirrored them, writing to Redis through proxy (for toxics); direct is Redis's own
// address.
func behindAProxy(t *testing.T, rows int) (e *env, r *running, proxy *toxiproxy.Proxy, direct []string) {
	t.Helper()
	e = newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, rows)
	proxy = newProxy(t, "lagging-redis", testenv.RedisAddr())
	direct = e.cfg.Redis.Addrs
	e.cfg.Redis.Addrs = []string{proxy.Listen}
	r = e.start(nil)
	waitReady(t, r)
	e.waitEqual(60 * time.Second)
	return e, r, proxy, direct
}

// Issue 12, part 4: a reconciliation whose walk takes longer than recheck_for, while the
// daemon lags behind a workload (its Redis behind 100 ms of latency): every difference
// gets its whole re-check window from when it was seen, so the lag is not reported as
// drift (before, candidates seen after the first recheck_for of a table's walk were
// reported at once).
func TestReconcileWhileTheDaemonLagsReportsNothing(t *testing.T) {
	e, r, proxy, direct := behindAProxy(t, 150_000)
	_, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"lat","type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":100}}`))
	testenv.Must(t, err, "add latency")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wl := &workload{db: e.db, table: "inventory", skus: 150_000, writers: 2, txns: 1_000_000, maxRows: 5}
	wdone := make(chan error, 1)
	go func() { wdone <- wl.run(ctx) }()
	time.Sleep(500 * time.Millisecond)
	// The reconciliation reads Redis directly, in 4-row pages: its walk outlasts the
	// 4 s re-check window (which must exceed the daemon's lag: up to the sink's 2 s
	// catch-up hold plus the latency while it is behind).
	cfgPath := e.writeConfig(func(c *config.Config) {
		c.HTTP.Listen = r.d.Addr()
		c.Redis.Addrs = direct
		c.Reconcile.ChunkSize = 4
		c.Reconcile.RecheckFor = 4 * time.Second
	})
	report := filepath.Join(t.TempDir(), "report.json")
	start := time.Now()
	code, out := runCLI(t, 3*time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "reconcile", "-c", cfgPath, "--report", report)
	took := time.Since(start)
	cancel()
	if err := <-wdone; err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	rep := readReport(t, report)
	t.Logf("reconcile took %s over %d rows while %d transactions ran", took.Round(time.Millisecond), rep.RowsChecked, wl.done.Load())
	lag := metricOf(t, "http://"+r.d.Addr(), "invsync_replication_lag_seconds")
	t.Logf("daemon lag at the end: %.3fs", lag)
	if took < 4500*time.Millisecond {
		t.Fatalf("the walk took %s, not well beyond the re-check window: the test proves nothing", took)
	}
	if code != 0 {
		for _, keys := range rep.Tables[0].Samples {
			for _, k := range keys {
				t.Logf("reported %s: Redis holds %v now", k, e.rdb.HGetAll(context.Background(), k).Val())
			}
		}
		t.Errorf("exit %d after %s while the daemon merely lagged (reported: %v)\n%s", code, took, rep.Tables[0].Samples, out)
	}
	testenv.Must(t, proxy.Toxics.RemoveToxic(context.Background(), "lat"), "remove latency")
	e.waitEqual(60 * time.Second)
}

// A daemon that lags longer than reconcile's re-check window is not drift: reconcile
// waits until the daemon has written everything up to its re-read (the applied
// markers) before it judges a key again. Drift on a key the workload does not touch is
// still found while the daemon lags.
func TestReconcileWhileTheDaemonLagsBeyondTheRecheckWindow(t *testing.T) {
	const rows, hot = 20_000, 10_000 // the workload writes the first hot SKUs
	e, r, proxy, direct := behindAProxy(t, rows)
	ctx := context.Background()
	drifted := layout.Key(e.cfg.Tables[0].KeyPrefix, []string{strconv.Itoa(rows - 7)})
	testenv.Must(t, e.rdb.HSet(ctx, drifted, "stock", "-12345").Err(), "drift")
	// Every reply of Redis to the daemon 300 ms late: its writes land 300 ms or more
	// after their commits, longer than the 200 ms re-check window.
	_, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"lat","type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":300}}`))
	testenv.Must(t, err, "add latency")
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wl := &workload{db: e.db, table: "inventory", skus: hot, writers: 2, txns: 1_000_000, maxRows: 5}
	wdone := make(chan error, 1)
	go func() { wdone <- wl.run(wctx) }()
	time.Sleep(time.Second)
	cfg := *e.cfg
	cfg.HTTP.Listen = r.d.Addr()
	cfg.Redis.Addrs = direct
	cfg.Reconcile.ChunkSize = 200
	rep, _, err := daemon.New(&cfg, zap.NewNop()).Reconcile(ctx, reconcile.Options{Recheck: 200 * time.Millisecond})
	testenv.Must(t, err, "reconcile")
	cancel()
	if err := <-wdone; err != nil && wctx.Err() == nil {
		t.Fatal(err)
	}
	tr := rep.Tables[0]
	t.Logf("reconcile over %d rows while %d transactions ran: %v, samples %v", tr.RowsChecked, wl.done.Load(), tr.Differences, tr.Samples)
	var n int64
	for _, c := range tr.Differences {
		n += c
	}
	if n != 1 || tr.Differences[reconcile.Mismatch] != 1 || len(tr.Samples[reconcile.Mismatch]) != 1 || tr.Samples[reconcile.Mismatch][0] != drifted {
		t.Errorf("differences %v (samples %v): want exactly the one drifted key %s, as a mismatch", tr.Differences, tr.Samples, drifted)
	}
	testenv.Must(t, proxy.Toxics.RemoveToxic(ctx, "lat"), "remove latency")
}
