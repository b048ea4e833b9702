package e2e

import (
	"context"
	"database/sql"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
)

// benchEnv is an env for a benchmark (the harness' env wants a *testing.T for its
// helpers; benchmarks only use the parts below).
func benchEnv(b *testing.B) *env {
	schema, db := testenv.Schema(b)
	rdb := testenv.Redis(b)
	prefix := testenv.Prefix(b, rdb)
	_, err := db.Exec(inventoryDDL)
	testenv.Must(b, err, "create")
	cfg := config.Default()
	cfg.Source = config.Source{Addr: testenv.MySQLAddr(), User: testenv.AppUser(), Flavor: "mariadb", ServerID: testenv.ServerID(), TimeZone: "UTC",
		HeartbeatPeriod: time.Second, ReadTimeout: 10 * time.Second, ConnectTimeout: 5 * time.Second, OnPositionLost: "resnapshot"}
	cfg.State.Schema = testenv.StateSchema(b)
	dropClaims(b, rdb, cfg.State.Schema)
	cfg.Redis.Addrs = []string{testenv.RedisAddr()}
	cfg.Tables = []config.Table{{Schema: schema, Table: "inventory", KeyPrefix: prefix, VersionColumn: "version"}}
	cfg.Checkpoint.Interval = 100 * time.Millisecond
	cfg.Log.Level = "info"
	b.Cleanup(func() {
		k := cfg.BloomKey(cfg.Tables[0])
		rdb.Del(context.Background(), k, k+":meta", "invsync:marker:"+cfg.State.Schema)
	})
	return &env{schema: schema, db: db, rdb: rdb, cfg: &cfg}
}

// BenchmarkSnapshot1M measures `invsync snapshot` of a 1,000,000-row table: rows/s.
func BenchmarkSnapshot1M(b *testing.B) {
	e := benchEnv(b)
	loadRows(b, e, 1_000_000)
	cfgPath := writeConfigTo(b, e.cfg)
	b.ResetTimer()
	start := time.Now()
	code, out := runCLI(b, 10*time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "snapshot", "-c", cfgPath)
	d := time.Since(start)
	b.StopTimer()
	if code != 0 {
		b.Fatalf("snapshot: exit %d\n%s", code, out)
	}
	if err := compareTable(context.Background(), e.db, e.rdb, e.cfg.Tables[0], e.cfg.BloomKey(e.cfg.Tables[0])); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(1_000_000/d.Seconds(), "rows/s")
	b.Logf("snapshot of 1,000,000 rows in %s: %.0f rows/s (whole command, connection to exit)", d.Round(time.Millisecond), 1_000_000/d.Seconds())
}

// BenchmarkBigTransaction streams one transaction that updates 500,000 rows and reports
// the daemon's peak RSS; it checks equality and that the checkpoint reached the end.
func BenchmarkBigTransaction(b *testing.B) {
	e := benchEnv(b)
	loadRows(b, e, 500_000)
	httpAddr := freeAddr(b)
	e.cfg.HTTP.Listen = httpAddr
	cfgPath := writeConfigTo(b, e.cfg)
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	if code, out := runCLI(b, 10*time.Minute, pw, "snapshot", "-c", cfgPath); code != 0 {
		b.Fatalf("snapshot: %s", out)
	}
	p := startProc(b, cfgPath, httpAddr)
	b.ResetTimer()
	start := time.Now()
	_, err := e.db.Exec("UPDATE inventory SET stock = stock - 1, version = version + 1")
	testenv.Must(b, err, "the 500k-row update")
	end, err := currentPos(b)
	testenv.Must(b, err, "position")
	waitCheckpointPast(b, openStore(b, e.cfg.State.Schema), end)
	d := time.Since(start)
	b.StopTimer()
	rss := peakRSS(b, p.cmd.Process.Pid)
	p.terminate(b)
	if err := compareTable(context.Background(), e.db, e.rdb, e.cfg.Tables[0], e.cfg.BloomKey(e.cfg.Tables[0])); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(rss)/1024, "peak-RSS-MB")
	b.Logf("one transaction of 500,000 updated rows: committed, streamed and checkpointed in %s; invsync peak RSS %.1f MB (target <= 200 MB)",
		d.Round(time.Millisecond), float64(rss)/1024)
}

// BenchmarkReconcile1M measures `invsync reconcile` of a 1,000,000-row table that Redis
// mirrors exactly (no daemon running, so it also rebuilds the Bloom filter from its
// scan): rows compared per second, whole command.
func BenchmarkReconcile1M(b *testing.B) {
	e := benchEnv(b)
	loadRows(b, e, 1_000_000)
	cfgPath := writeConfigTo(b, e.cfg)
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	if code, out := runCLI(b, 10*time.Minute, pw, "snapshot", "-c", cfgPath); code != 0 {
		b.Fatalf("snapshot: %s", out)
	}
	waitPurged(b, e.db)
	b.ResetTimer()
	start := time.Now()
	code, out := runCLI(b, 10*time.Minute, append(pw, "INVSYNC_CPUPROFILE="+os.Getenv("INVSYNC_BENCH_CPUPROFILE")), "reconcile", "-c", cfgPath)
	d := time.Since(start)
	b.StopTimer()
	if code != 0 || !strings.Contains(out, "no drift: 1000000 rows") {
		b.Fatalf("reconcile: exit %d\n%s", code, out)
	}
	b.ReportMetric(1_000_000/d.Seconds(), "rows/s")
	b.Logf("reconcile of 1,000,000 rows in %s: %.0f rows/s (whole command)\n%s", d.Round(time.Millisecond), 1_000_000/d.Seconds(), out)
}

// waitPurged waits (up to a minute) until InnoDB has purged the undo history that
// earlier work left (a benchmark run before this one updated 500,000 rows), so that the
// measurement is not shared with the server's background purge.
func waitPurged(b *testing.B, db *sql.DB) {
	re := regexp.MustCompile(`History list length (\d+)`)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var typ, name, status string
		if err := db.QueryRow("SHOW ENGINE INNODB STATUS").Scan(&typ, &name, &status); err != nil {
			return
		}
		m := re.FindStringSubmatch(status)
		if m == nil {
			return
		}
		if n, _ := strconv.Atoi(m[1]); n < 1000 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}
