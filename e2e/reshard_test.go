package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/reconcile"
	"github.com/redis/go-redis/v9"
)

// resharder moves slots between the masters of a test's cluster with redis-cli
// --cluster reshard (slots set migrating/importing, keys MIGRATEd in batches, slots
// given to the new owner), in bursts until stop is called; it returns how many bursts
// it ran.
func resharder(t *testing.T, addrs []string) (stop func() int) {
	t.Helper()
	cli := filepath.Join(filepath.Dir(redisServer()), "redis-cli")
	if _, err := exec.LookPath(cli); err != nil {
		cli = "redis-cli"
	}
	ids := make([]string, len(addrs))
	for i, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		id, err := c.ClusterMyID(context.Background()).Result()
		c.Close()
		testenv.Must(t, err, "CLUSTER MYID %s", a)
		ids[i] = id
	}
	ctx, cancel := context.WithCancel(context.Background())
	var bursts atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			from, to := ids[i%len(ids)], ids[(i+1)%len(ids)]
			out, err := exec.CommandContext(ctx, cli, "--cluster", "reshard", addrs[0], "--cluster-from", from, "--cluster-to", to,
				"--cluster-slots", "1500", "--cluster-pipeline", "20", "--cluster-yes").CombinedOutput()
			if err != nil && ctx.Err() == nil {
				// redis-cli gives up on a slot whose SETSLOT raced the previous burst's
				// propagation; close the open slot and go on.
				t.Logf("redis-cli --cluster reshard: %v (%d bytes of output); fixing the open slots", err, len(out))
				_ = exec.CommandContext(ctx, cli, "--cluster", "fix", addrs[0], "--cluster-yes").Run()
			}
			bursts.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return func() int {
		cancel()
		wg.Wait()
		return int(bursts.Load())
	}
}

// Issue 13, part 4: scans of a Redis Cluster while it reshards. A key that moves from
// one master to another while the masters are scanned one after the other can be seen
// by neither scan, and reading it back from the master that was scanned answers MOVED or
// ASK. Reconcile's scan of the extras must not miss keys silently nor fail on a key
// that moved: each run finds every one of 3,000 planted extra keys, or says its scan was
// incomplete.
func TestReconcileWhileTheClusterReshards(t *testing.T) {
	addrs := startCluster(t)
	e := newClusterEnvOn(t, addrs, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Reconcile.RecheckFor = 0
	loadRows(t, e, 1000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	r.stop(t)
	ctx := context.Background()
	prefix := e.cfg.Tables[0].KeyPrefix
	const extras = 3000
	for sku := 100_000; sku < 100_000+extras; sku++ {
		testenv.Must(t, e.rdb.HSet(ctx, layout.Key(prefix, []string{fmt.Sprint(sku)}), "_v", "1", "sku", fmt.Sprint(sku), "stock", "3").Err(), "plant")
	}
	cfgPath := rewriteRedis(t, e.writeConfig(nil), addrs)
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	stop := resharder(t, addrs)
	complete, rescans := 0, 0
	for run := 0; run < 3; run++ {
		report := filepath.Join(t.TempDir(), "report.json")
		code, out := runCLI(t, 3*time.Minute, pw, "reconcile", "-c", cfgPath, "--report", report)
		if strings.Contains(out, "incomplete") {
			t.Logf("run %d: exit %d, reported incomplete:\n%s", run, code, out)
			if code != 2 {
				t.Errorf("run %d: an incomplete scan exits %d, want 2", run, code)
			}
			continue
		}
		rescans += strings.Count(out, "scanning again")
		rep := readReport(t, report)
		d := rep.Tables[0].Differences
		t.Logf("run %d: exit %d, differences %v, keys scanned %d", run, code, d, rep.Tables[0].KeysScanned)
		if code != 1 || d[reconcile.Extra] != extras || rep.Differences != extras {
			t.Fatalf("run %d while resharding: exit %d, %d extras of %d planted (differences %v), and no word of an incomplete scan; output:\n%s",
				run, code, d[reconcile.Extra], extras, d, out)
		}
		complete++
	}
	bursts := stop()
	t.Logf("%d reshard bursts; %d of 3 runs complete; %d scans done again after the cluster resharded under them", bursts, complete, rescans)
	if bursts < 2 {
		t.Fatalf("only %d reshard bursts ran during the reconciliations", bursts)
	}
	if complete == 0 {
		t.Fatal("no run completed: with pauses between bursts, retried scans should find a stable cluster")
	}
}
