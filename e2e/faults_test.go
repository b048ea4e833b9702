package e2e

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// runFaultWorkload runs a workload with a version watcher (reading Redis directly)
// while faults() runs, then checks equality and that no _v went down.
func runFaultWorkload(t *testing.T, e *env, r *running, faults func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newWatcher(e.rdb, e.cfg.Tables[0].KeyPrefix, watchedSKUs)
	wdone := make(chan struct{})
	go func() { defer close(wdone); w.run(ctx) }()
	wl := &workload{db: e.db, table: "inventory", skus: 2000, writers: 4, txns: 1_000_000, maxRows: 10}
	ldone := make(chan error, 1)
	go func() { ldone <- wl.run(ctx) }()
	faults()
	time.Sleep(500 * time.Millisecond)
	stopWorkload := time.Now()
	cancel()
	if err := <-ldone; err != nil && !errors.Is(err, context.Canceled) && !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("workload: %v", err)
	}
	<-wdone
	t.Logf("workload ran %d transactions", wl.done.Load())
	e.waitEqual(60 * time.Second)
	t.Logf("equal %s after the workload stopped", time.Since(stopWorkload).Round(time.Millisecond))
	if bad := w.bad.list(); len(bad) > 0 {
		t.Fatalf("versions went down: %v", bad)
	}
}

// Issue 4, acceptance 4: Redis behind a TCP proxy: 200 ms of latency for 10 s, then the
// connections cut 5 times at random: equal at the end, _v never goes down.
func TestRedisLatencyAndCutConnections(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	proxy := newProxy(t, "redis", testenv.RedisAddr())
	e.cfg.Redis.Addrs = []string{proxy.Listen}
	r := e.start(nil)
	waitReady(t, r)
	runFaultWorkload(t, e, r, func() {
		time.Sleep(500 * time.Millisecond)
		_, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"lat","type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":200}}`))
		testenv.Must(t, err, "add latency")
		time.Sleep(10 * time.Second)
		testenv.Must(t, proxy.Toxics.RemoveToxic(context.Background(), "lat"), "remove latency")
		for i := 0; i < 5; i++ {
			time.Sleep(time.Duration(200+rand.IntN(800)) * time.Millisecond)
			proxy.Stop()
			time.Sleep(time.Duration(50+rand.IntN(300)) * time.Millisecond)
			testenv.Must(t, proxy.Start(), "restart proxy")
		}
	})
}

// failingHook fails a share of the daemon's Redis pipelines, as a network fault would.
type failingHook struct{ share float64 }

func (h failingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h failingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h failingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if rand.Float64() < h.share {
			err := &net.OpError{Op: "write", Net: "tcp", Err: errors.New("injected fault")}
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		return next(ctx, cmds)
	}
}

// Issue 4, acceptance 5: 25% of the daemon's Redis write calls fail at random: equal at
// the end, _v never goes down.
func TestRandomRedisWriteFailures(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	r := e.start(nil, daemon.WithRedisHook(failingHook{share: 0.25}))
	waitReady(t, r)
	runFaultWorkload(t, e, r, func() { time.Sleep(8 * time.Second) })
	if got := counterSum(t, r.d.Registry(), "invsync_redis_errors_total"); got == 0 {
		t.Fatal("no Redis error was counted: the faults were not injected")
	}
	if rows := e.compensationRows(t); len(rows) != 0 {
		t.Fatalf("%d compensation rows: failed calls are not the keys' fault: %+v", len(rows), rows)
	}
}
