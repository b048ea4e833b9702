package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
)

// w2Rows and w2Rounds size workload W2 (INVSYNC_W2_ROUNDS=N runs N rounds, to profile
// one: INVSYNC_CPUPROFILE=/tmp/w2-%c.prof, INVSYNC_MEMPROFILE=/tmp/w2-mem-%c.prof).
const (
	w2Rows   = 1_000_000
	w2Rounds = 3
)

// BenchmarkW2DistinctKeys measures workload W2 (issue 17): 1,000,000 distinct-key
// inserts written while the daemon is stopped, then its catch-up from an empty Redis and
// an empty Bloom filter (a bulk import of new SKUs, a long outage), and `invsync snapshot`
// of the same rows; each against the Redis floor measured in the same run: the time one
// Go client takes to write the same rows as pipelined HSETs (no guard, no Bloom filter).
// Reports the medians of w2Rounds, their ratios to the floor, and Redis's and the
// daemon's CPU per row.
func BenchmarkW2DistinctKeys(b *testing.B) {
	e := benchEnv(b)
	rdb := e.rdb.(*redis.Client)
	ctx := context.Background()
	e.cfg.Log.Level = "warn"
	httpAddr := freeAddr(b)
	e.cfg.HTTP.Listen = httpAddr
	cfgPath := writeConfigTo(b, e.cfg)
	store := openStore(b, e.cfg.State.Schema)
	bloomKey := e.cfg.BloomKey(e.cfg.Tables[0])

	// A first start on the empty table leaves the markers of a running invsync and an
	// empty Bloom filter, whose bitmap each round starts from again.
	warm := startProc(b, cfgPath, httpAddr)
	startPos, err := currentPos(b)
	testenv.Must(b, err, "position")
	waitCheckpointPast(b, store, startPos)
	warm.terminate(b)
	emptyBloom := dumpKeys(b, rdb, bloomKey, bloomKey+":meta")

	loadStart := time.Now()
	loadRows(b, e, w2Rows)
	endPos, err := currentPos(b)
	testenv.Must(b, err, "position")
	b.Logf("W2: %d rows written in %s: binlog %s .. %s", w2Rows, time.Since(loadStart).Round(time.Millisecond), startPos, endPos)

	reset := func() {
		clearPrefix(b, rdb, e.cfg.Tables[0].KeyPrefix)
		restoreKeys(b, rdb, emptyBloom)
	}
	var floors, catchUps, snapshots []float64
	rounds := w2Rounds
	if n, err := strconv.Atoi(os.Getenv("INVSYNC_W2_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	for round := 1; round <= rounds; round++ {
		floor, floorRedis := redisFloor(b, rdb, e.cfg.Tables[0].KeyPrefix+"floor:")

		reset()
		testenv.Must(b, store.Save(ctx, source.Position{File: startPos.Name, Pos: startPos.Pos}), "reset checkpoint")
		redis0 := testenv.RedisCPUSeconds(b, rdb)
		start := time.Now()
		p := startProc(b, cfgPath, httpAddr)
		waitCheckpointPast(b, store, endPos)
		catchUp := time.Since(start)
		catchUpRedis := testenv.RedisCPUSeconds(b, rdb) - redis0
		rss := peakRSS(b, p.cmd.Process.Pid)
		p.terminate(b)
		catchUpCPU := p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
		if err := compareTable(ctx, e.db, rdb, e.cfg.Tables[0], bloomKey); err != nil {
			b.Fatalf("after catch-up: %v", err)
		}

		reset()
		redis0 = testenv.RedisCPUSeconds(b, rdb)
		snapshot, snapshotCPU := runTimed(b, cfgPath, "snapshot")
		snapshotRedis := testenv.RedisCPUSeconds(b, rdb) - redis0
		if err := compareTable(ctx, e.db, rdb, e.cfg.Tables[0], bloomKey); err != nil {
			b.Fatalf("after snapshot: %v", err)
		}

		floors, catchUps, snapshots = append(floors, floor.Seconds()), append(catchUps, catchUp.Seconds()), append(snapshots, snapshot.Seconds())
		perRow := func(s float64) float64 { return s * 1e6 / w2Rows }
		b.Logf("round %d: Redis floor %s (Redis CPU %.1f µs/row); catch-up %s (%.2fx; Redis CPU %.1f µs/row, daemon CPU %.1f µs/row, peak RSS %.0f MB); snapshot %s (%.2fx; Redis CPU %.1f µs/row, CLI CPU %.1f µs/row)",
			round, floor.Round(time.Millisecond), perRow(floorRedis),
			catchUp.Round(time.Millisecond), catchUp.Seconds()/floor.Seconds(), perRow(catchUpRedis), perRow(catchUpCPU.Seconds()), float64(rss)/1024,
			snapshot.Round(time.Millisecond), snapshot.Seconds()/floor.Seconds(), perRow(snapshotRedis), perRow(snapshotCPU.Seconds()))
	}
	f, c, s := median(floors), median(catchUps), median(snapshots)
	b.ReportMetric(f, "floor-s")
	b.ReportMetric(c, "catchup-s")
	b.ReportMetric(c/f, "catchup-x-floor")
	b.ReportMetric(s/f, "snapshot-x-floor")
	b.Logf("W2 (median of %d rounds): Redis floor %.2fs; invsync catch-up %.2fs (%.2fx the floor; target <= 1.5x); invsync snapshot %.2fs (%.2fx; target <= 1.5x)",
		rounds, f, c, c/f, s, s/f)
}

// redisFloor writes the rows loadRows writes as pipelined HSETs under prefix (one
// client, 1,000 commands per pipeline), deletes them, and returns the time the writes
// took and the Redis CPU seconds they cost.
func redisFloor(b *testing.B, rdb *redis.Client, prefix string) (time.Duration, float64) {
	ctx := context.Background()
	cpu0 := testenv.RedisCPUSeconds(b, rdb)
	start := time.Now()
	for base := 0; base < w2Rows; base += 1000 {
		pipe := rdb.Pipeline()
		for j := base; j < min(base+1000, w2Rows); j++ {
			pipe.HSet(ctx, prefix+"{"+strconv.Itoa(j)+"}", "sku", j, "stock", j%1000, "price", fmt.Sprintf("%d.%02d", j%500, j%100), "name", "sku-"+strconv.Itoa(j), "version", 1)
		}
		_, err := pipe.Exec(ctx)
		testenv.Must(b, err, "floor")
	}
	d := time.Since(start)
	cpu := testenv.RedisCPUSeconds(b, rdb) - cpu0
	clearPrefix(b, rdb, prefix)
	return d, cpu
}

// runTimed runs an invsync command to its end and returns its wall time and CPU time.
func runTimed(b *testing.B, cfgPath string, args ...string) (time.Duration, time.Duration) {
	cmd := exec.Command(binary, append(args, "-c", cfgPath)...)
	cmd.Env = append(os.Environ(), "INVSYNC_SOURCE_PASSWORD="+testenv.AppPassword())
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("invsync %v: %v\n%s", args, err, out)
	}
	return d, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// dumpKeys returns the DUMP of each key that exists.
func dumpKeys(b *testing.B, rdb *redis.Client, keys ...string) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		v, err := rdb.Dump(context.Background(), k).Result()
		if err == redis.Nil {
			continue
		}
		testenv.Must(b, err, "dump")
		out[k] = v
	}
	return out
}

// restoreKeys puts back the keys dumpKeys returned (replacing what is there).
func restoreKeys(b *testing.B, rdb *redis.Client, dumps map[string]string) {
	for k, v := range dumps {
		testenv.Must(b, rdb.RestoreReplace(context.Background(), k, 0, v).Err(), "restore")
	}
}
