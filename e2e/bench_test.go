package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
)

// BenchmarkW1CatchUp measures workload W1: 100k inserts then 10 full-table
// `UPDATE ... SET stock = stock - 1, version = version + 1` (1.1M row events), written
// while the daemon is stopped; then the time the daemon (a separate process) takes to
// catch up from its checkpoint, against go-mysql's bare replication read of the same
// binlog range, in the same run. Reports both, their ratio, and the daemon's peak RSS.
//
// Run with scripts/bench.sh (go test -run '^$' -bench W1 -benchtime 1x ./e2e).
func BenchmarkW1CatchUp(b *testing.B) {
	for i := 0; i < b.N; i++ {
		runW1(b)
	}
}

func runW1(b *testing.B) {
	b.StopTimer()
	schema, db := testenv.Schema(b)
	rdb := testenv.Redis(b)
	prefix := testenv.Prefix(b, rdb)
	_, err := db.Exec(inventoryDDL)
	testenv.Must(b, err, "create")
	startPos, err := currentPos(b)
	testenv.Must(b, err, "position")

	// 100k inserts, 1,000 rows per statement.
	loadStart := time.Now()
	for base := 0; base < 100_000; base += 1000 {
		var sb strings.Builder
		sb.WriteString("INSERT INTO inventory (sku, stock, price, name, version) VALUES ")
		for j := 0; j < 1000; j++ {
			if j > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "(%d, 1000, 9.99, 'sku-%d', 1)", base+j, base+j)
		}
		_, err := db.Exec(sb.String())
		testenv.Must(b, err, "insert")
	}
	for u := 0; u < 10; u++ {
		_, err := db.Exec("UPDATE inventory SET stock = stock - 1, version = version + 1")
		testenv.Must(b, err, "update")
	}
	endPos, err := currentPos(b)
	testenv.Must(b, err, "position")
	b.Logf("W1 written in %s: binlog %s .. %s", time.Since(loadStart).Round(time.Millisecond), startPos, endPos)

	// The bare read: go-mysql's BinlogSyncer parsing every event of the range.
	// The daemon, from a checkpoint at the start position.
	cfg := config.Default()
	cfg.Source = config.Source{Addr: testenv.MySQLAddr(), User: testenv.AppUser(), Flavor: "mariadb", ServerID: testenv.ServerID(), TimeZone: "UTC",
		HeartbeatPeriod: time.Second, ReadTimeout: 10 * time.Second, ConnectTimeout: 5 * time.Second}
	cfg.State.Schema = testenv.StateSchema(b)
	dropClaims(b, rdb, cfg.State.Schema)
	cfg.Redis.Addrs = []string{testenv.RedisAddr()}
	cfg.Tables = []config.Table{{Schema: schema, Table: "inventory", KeyPrefix: prefix, VersionColumn: "version"}}
	cfg.Checkpoint.Interval = 50 * time.Millisecond
	cfg.Log.Level = "warn"
	httpAddr := freeAddr(b)
	cfg.HTTP.Listen = httpAddr
	cfgPath := writeConfigTo(b, &cfg)
	b.Cleanup(func() {
		k := cfg.BloomKey(cfg.Tables[0])
		rdb.Del(context.Background(), k, k+":meta", "invsync:marker:"+cfg.State.Schema)
	})
	store := openStore(b, cfg.State.Schema)
	testenv.Must(b, store.Save(context.Background(), source.Position{File: startPos.Name, Pos: startPos.Pos}), "seed checkpoint")

	// A first start over the seeded checkpoint finds none of the markers a running
	// invsync keeps in Redis (it loads every table); it is not measured.
	warm := startProc(b, cfgPath, httpAddr)
	waitCheckpointPast(b, store, endPos)
	warm.terminate(b)

	// Rounds alternate a bare read and a catch-up from an empty Redis, so that both see
	// the same machine state; the medians are reported.
	var bares, catchUps, ratios []float64
	var maxRSS int64
	for round := 1; round <= w1Rounds; round++ {
		bare := bareRead(b, startPos, endPos)
		clearPrefix(b, rdb, prefix)
		testenv.Must(b, store.Save(context.Background(), source.Position{File: startPos.Name, Pos: startPos.Pos}), "reset checkpoint")
		redisCPU0 := testenv.RedisCPUSeconds(b, rdb)
		b.StartTimer()
		start := time.Now()
		p := startProc(b, cfgPath, httpAddr)
		waitCheckpointPast(b, store, endPos)
		catchUp := time.Since(start)
		b.StopTimer()
		redisBusy := testenv.RedisCPUSeconds(b, rdb) - redisCPU0
		rss := peakRSS(b, p.cmd.Process.Pid)
		metricsText, _ := httpBody("http://" + httpAddr + "/metrics")
		p.terminate(b)
		daemonCPU := p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
		if err := compareTable(context.Background(), db, rdb, cfg.Tables[0], cfg.BloomKey(cfg.Tables[0])); err != nil {
			b.Fatalf("after catch-up: %v", err)
		}
		ratio := catchUp.Seconds() / bare.Seconds()
		bares, catchUps, ratios = append(bares, bare.Seconds()), append(catchUps, catchUp.Seconds()), append(ratios, ratio)
		maxRSS = max(maxRSS, rss)
		b.Logf("round %d: bare go-mysql read %s, invsync catch-up %s (%.2fx), peak RSS %.1f MB; invsync CPU %s (whole run), redis-server CPU %.2fs; rows written %.0f, superseded while waiting %.0f, skipped %.0f",
			round, bare.Round(time.Millisecond), catchUp.Round(time.Millisecond), ratio, float64(rss)/1024, daemonCPU.Round(time.Millisecond), redisBusy,
			metricSum(metricsText, "invsync_rows_applied_total"), metricSum(metricsText, "invsync_rows_coalesced_total"), metricSum(metricsText, "invsync_rows_skipped_total"))
	}
	b.ReportMetric(median(bares), "bare-read-s")
	b.ReportMetric(median(catchUps), "catchup-s")
	b.ReportMetric(median(ratios), "x-bare")
	b.ReportMetric(float64(maxRSS)/1024, "peak-RSS-MB")
	b.Logf("W1 (median of %d rounds): bare go-mysql read %.3fs, invsync catch-up %.3fs, ratio %.2fx (target <= 1.5x); highest invsync peak RSS %.1f MB (target <= 150 MB)",
		w1Rounds, median(bares), median(catchUps), median(ratios), float64(maxRSS)/1024)
}

// waitCheckpointPast polls the checkpoint until it is at or past end.
func waitCheckpointPast(tb testing.TB, store *checkpoint.Store, end mysql.Position) {
	tb.Helper()
	deadline := time.Now().Add(waitCheckpointFor)
	for {
		pos, _, err := store.Load(context.Background())
		testenv.Must(tb, err, "checkpoint")
		if pos.File > end.Name || (pos.File == end.Name && pos.Pos >= end.Pos) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the checkpoint %s did not reach %s:%d within %s: the run is stuck", pos, end.Name, end.Pos, waitCheckpointFor)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitCheckpointFor bounds a benchmark's wait for the daemon's checkpoint.
const waitCheckpointFor = 10 * time.Minute

// w1Rounds is the number of bare-read / catch-up pairs measured.
const w1Rounds = 5

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func clearPrefix(tb testing.TB, rdb *redis.Client, prefix string) {
	ctx := context.Background()
	keys, err := testenv.ScanKeys(ctx, rdb, prefix)
	testenv.Must(tb, err, "scan")
	for i := 0; i < len(keys); i += 1000 {
		testenv.Must(tb, rdb.Unlink(ctx, keys[i:min(i+1000, len(keys))]...).Err(), "unlink")
	}
}

func currentPos(tb testing.TB) (mysql.Position, error) {
	var p mysql.Position
	rows, err := testenv.DB(tb, "").Query("SHOW MASTER STATUS")
	if err != nil {
		return p, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]any, len(cols))
	var file string
	var pos uint32
	vals[0], vals[1] = &file, &pos
	for i := 2; i < len(cols); i++ {
		vals[i] = new(any)
	}
	if !rows.Next() {
		return p, fmt.Errorf("no binlog status")
	}
	if err := rows.Scan(vals...); err != nil {
		return p, err
	}
	return mysql.Position{Name: file, Pos: pos}, nil
}

// bareRead reads the binlog from start to end with go-mysql's BinlogSyncer, decoding
// every event, and returns the time it took.
func bareRead(tb testing.TB, start, end mysql.Position) time.Duration {
	host, port, _ := strings.Cut(testenv.MySQLAddr(), ":")
	p, _ := strconv.Atoi(port)
	s := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{ServerID: testenv.ServerID(), Flavor: "mariadb",
		Host: host, Port: uint16(p), User: testenv.AdminUser(), Password: testenv.AdminPassword(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer s.Close()
	began := time.Now()
	st, err := s.StartSync(start)
	testenv.Must(tb, err, "bare start")
	file := start.Name
	rows := 0
	for {
		ev, err := st.GetEvent(context.Background())
		testenv.Must(tb, err, "bare read")
		if r, ok := ev.Event.(*replication.RotateEvent); ok {
			file = string(r.NextLogName)
			continue
		}
		if r, ok := ev.Event.(*replication.RowsEvent); ok {
			rows += len(r.Rows)
		}
		if file > end.Name || (file == end.Name && ev.Header.LogPos >= end.Pos) {
			break
		}
	}
	d := time.Since(began)
	tb.Logf("bare read: %d row images in %s", rows, d.Round(time.Millisecond))
	return d
}

func peakRSS(tb testing.TB, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	testenv.Must(tb, err, "read status")
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb
		}
	}
	return 0
}

// metricSum adds up every sample of a metric in Prometheus text format.
func metricSum(text, name string) float64 {
	sum := 0.0
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}
