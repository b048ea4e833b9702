package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
)

// waitLog waits until the process log contains s (after the first skip bytes).
func waitLog(t *testing.T, p *proc, skip int, s string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(p.log)
		if len(b) > skip && strings.Contains(string(b[skip:]), s) {
			return string(b[skip:])
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log did not show %q within %s:\n%s", s, timeout, b[min(skip, len(b)):])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func logSize(p *proc) int {
	fi, err := os.Stat(p.log)
	if err != nil {
		return 0
	}
	return int(fi.Size())
}

// Issue 7, acceptance 1: a log level changed in the file applies within 2 s and is
// logged; an invalid file is refused while syncing goes on and /healthz stays OK; SIGHUP
// reloads; a change that needs a restart is named.
func TestConfigReload(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	addr := freeAddr(t)
	cfg := *e.cfg
	cfg.HTTP.Listen = addr
	cfg.Log.Level = "info"
	path := writeConfigTo(t, &cfg)
	p := startProc(t, path, addr)
	write := func(s string) { testenv.Must(t, os.WriteFile(path, []byte(s), 0o600), "write config") }

	// Log level: applied within 2 s, and debug lines appear.
	at := logSize(p)
	cfg.Log.Level = "debug"
	cfg.Sink.BatchSize = 128
	write(renderConfig(&cfg))
	start := time.Now()
	out := waitLog(t, p, at, `"msg":"config reloaded"`, 2*time.Second)
	t.Logf("reloaded %s after the write", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(out, `"applied":["sink.batch_size=128","log.level=debug"]`) {
		t.Fatalf("the reload did not list what changed:\n%s", out)
	}
	_, err := e.db.Exec("INSERT INTO inventory VALUES (1, 5, 1.00, 'a', 1)")
	testenv.Must(t, err, "insert")
	waitLog(t, p, at, `"level":"debug"`, 5*time.Second)

	// An invalid file: refused, the old config stays, syncing goes on.
	at = logSize(p)
	write("sink: { batch_size: -1 }\nnot: [valid\n")
	waitLog(t, p, at, `"msg":"config reload refused; the running config stays"`, 2*time.Second)
	at = logSize(p)
	write(strings.Replace(renderConfig(&cfg), "sink: {", "sink: { batch_size: 0,", 1))
	out = waitLog(t, p, at, `"msg":"config reload refused; the running config stays"`, 2*time.Second)
	if !strings.Contains(out, "batch_size") {
		t.Errorf("the refusal does not name the problem:\n%s", out)
	}
	if code, _ := httpGet("http://" + addr + "/healthz"); code != 200 {
		t.Fatalf("/healthz = %d after an invalid config", code)
	}
	_, err = e.db.Exec("INSERT INTO inventory VALUES (2, 6, 1.00, 'b', 1)")
	testenv.Must(t, err, "insert")
	e.waitEqual(20 * time.Second)

	// Back to a valid file with a change that needs a restart; then SIGHUP.
	at = logSize(p)
	cfg2 := cfg
	cfg2.Sink.Workers = 2
	write(renderConfig(&cfg2))
	out = waitLog(t, p, at, `"msg":"config reloaded, but these changes need a restart of invsync to take effect"`, 2*time.Second)
	if !strings.Contains(out, `"restart_needed":["sink.workers=2"]`) {
		t.Errorf("the warning does not name sink.workers:\n%s", out)
	}
	at = logSize(p)
	testenv.Must(t, p.cmd.Process.Signal(syscall.SIGHUP), "SIGHUP")
	waitLog(t, p, at, `"trigger":"SIGHUP"`, 2*time.Second)
	m, _ := httpBody("http://" + addr + "/metrics")
	for _, s := range []string{`invsync_config_reloads_total{result="applied"}`, `invsync_config_reloads_total{result="refused"}`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
	if b, _ := os.ReadFile(p.log); strings.Contains(string(b), testenv.AppPassword()) {
		t.Fatal("the log contains the password")
	}
	p.terminate(t)
}

// Issue 13, part 2: the config file keeps being watched when it is replaced, as editors,
// `install` and config management do it: removed and created again, or a new file
// renamed over it (a watch on the file itself ended with the first one).
func TestConfigReloadAfterTheFileIsReplaced(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	addr := freeAddr(t)
	cfg := *e.cfg
	cfg.HTTP.Listen = addr
	cfg.Log.Level = "info"
	path := writeConfigTo(t, &cfg)
	p := startProc(t, path, addr)
	for i, replace := range []func(string){
		func(s string) { // rm + cp
			testenv.Must(t, os.Remove(path), "rm")
			time.Sleep(200 * time.Millisecond)
			testenv.Must(t, os.WriteFile(path, []byte(s), 0o600), "create")
		},
		func(s string) { // write a new file, rename it over the old one
			tmp := path + ".new"
			testenv.Must(t, os.WriteFile(tmp, []byte(s), 0o600), "write")
			testenv.Must(t, os.Rename(tmp, path), "rename")
		},
		func(s string) { // and an edit in place still works after both
			testenv.Must(t, os.WriteFile(path, []byte(s), 0o600), "write")
		},
	} {
		at := logSize(p)
		cfg.Sink.BatchSize = 100 + i
		replace(renderConfig(&cfg))
		waitLog(t, p, at, `"applied":["sink.batch_size=`+strconv.Itoa(100+i)+`"]`, 3*time.Second)
	}
	p.terminate(t)
}

// Issue 14: live-reloadable settings take effect, not only appear in the log. The batch
// size changes how many write calls a 300-row UPDATE takes (counted by
// invsync_apply_duration_seconds), the tombstone TTL the lifetime of a new tombstone, a
// reconcile schedule starts runs; after a refused file the reloaded values stay in effect.
func TestLiveReloadTakesEffect(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 300)
	addr := freeAddr(t)
	cfg := *e.cfg
	cfg.HTTP.Listen = addr
	cfg.Log.Level = "info"
	cfg.Sink.BatchSize = 256
	path := writeConfigTo(t, &cfg)
	p := startProc(t, path, addr)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	calls := func() float64 {
		body, err := httpBody("http://" + addr + "/metrics")
		testenv.Must(t, err, "metrics")
		return metricSum(body, "invsync_apply_duration_seconds_count")
	}
	updateAll := func() float64 {
		t.Helper()
		before := calls()
		execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1")
		e.waitEqual(30 * time.Second)
		return calls() - before
	}
	wide := updateAll()

	at := logSize(p)
	cfg.Sink.BatchSize = 1
	cfg.Bloom.TombstoneTTL = 90 * time.Second
	cfg.Reconcile.Schedule = "*/1 * * * * *"
	testenv.Must(t, os.WriteFile(path, []byte(renderConfig(&cfg)), 0o600), "write config")
	waitLog(t, p, at, `"msg":"config reloaded"`, 5*time.Second)
	narrow := updateAll()
	t.Logf("a 300-row UPDATE took %v write calls with batch_size 256, %v with batch_size 1", wide, narrow)
	if narrow < 250 || narrow < 4*wide {
		t.Fatalf("batch_size 1 applied live: %v write calls for 300 rows (%v with 256)", narrow, wide)
	}
	execAll(t, e.db, "DELETE FROM inventory WHERE sku = 5")
	e.waitEqual(30 * time.Second)
	if ttl := e.rdb.PTTL(ctx, layout.Key(cfg.Tables[0].KeyPrefix, []string{"5"})).Val(); ttl <= 0 || ttl > 90*time.Second {
		t.Fatalf("a new tombstone's TTL is %s, want at most the reloaded tombstone_ttl 90s", ttl)
	}
	waitFor(t, "a scheduled reconciliation", 10*time.Second, func() bool {
		body, _ := httpBody("http://" + addr + "/metrics")
		return metricSum(body, "invsync_reconcile_runs_total") >= 1
	})

	// A refused file leaves the reloaded config running.
	at = logSize(p)
	testenv.Must(t, os.WriteFile(path, []byte("sink: { batch_size: -1 }\n"), 0o600), "write config")
	waitLog(t, p, at, `"msg":"config reload refused; the running config stays"`, 5*time.Second)
	if still := updateAll(); still < 250 {
		t.Fatalf("after a refused file: %v write calls for 300 rows; batch_size 1 should still be in effect", still)
	}
	p.terminate(t)
}
