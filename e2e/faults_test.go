package e2e

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
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
	dials := &dialCounter{}
	r := e.start(nil, daemon.WithRedisHook(dials))
	waitReady(t, r)
	var dialled int64
	runFaultWorkload(t, e, r, func() {
		dialled = dials.n.Load()
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
	// The cuts hit the connections in use: the daemon dialled again after them (a cut
	// pipeline is retried once on a new connection by the client, or fails and is
	// retried by the worker).
	t.Logf("%d dials after the start; %v write calls failed", dials.n.Load()-dialled, seriesValue(t, r.d.Registry(), "invsync_redis_errors_total", "kind", "unavailable"))
	if dials.n.Load()-dialled < 5 {
		t.Fatalf("%d dials during 5 cuts: the cuts hit no connection in use", dials.n.Load()-dialled)
	}
}

// dialCounter counts the daemon's Redis connections dialled.
type dialCounter struct{ n atomic.Int64 }

func (h *dialCounter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		h.n.Add(1)
		return next(ctx, network, addr)
	}
}
func (h *dialCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *dialCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// failingHook fails a share of the daemon's Redis pipelines, as a network fault would:
// half of them before they are sent, half after Redis ran them (the write landed, its
// reply was lost).
type failingHook struct {
	share         float64
	before, after atomic.Int64
}

func (h *failingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *failingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *failingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if rand.Float64() >= h.share {
			return next(ctx, cmds)
		}
		err := &net.OpError{Op: "write", Net: "tcp", Err: errors.New("injected fault")}
		if rand.IntN(2) == 0 {
			h.before.Add(1)
		} else {
			_ = next(ctx, cmds) // Redis runs them; the answers are lost
			h.after.Add(1)
			err = &net.OpError{Op: "read", Net: "tcp", Err: errors.New("injected fault: reply lost")}
		}
		for _, c := range cmds {
			c.SetErr(err)
		}
		return err
	}
}

// Issue 4, acceptance 5: 25% of the daemon's Redis write calls fail at random: equal at
// the end, _v never goes down.
func TestRandomRedisWriteFailures(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	hook := &failingHook{share: 0.25}
	r := e.start(nil, daemon.WithRedisHook(hook))
	waitReady(t, r)
	runFaultWorkload(t, e, r, func() { time.Sleep(8 * time.Second) })
	t.Logf("%d calls failed before they were sent, %d after Redis ran them", hook.before.Load(), hook.after.Load())
	if hook.before.Load() == 0 || hook.after.Load() == 0 {
		t.Fatal("the workload met too few faults of each kind")
	}
	if got := seriesValue(t, r.d.Registry(), "invsync_redis_errors_total", "kind", "unavailable"); got < float64(hook.before.Load()+hook.after.Load())/2 {
		t.Fatalf("invsync_redis_errors_total{kind=unavailable} = %v for %d injected failures", got, hook.before.Load()+hook.after.Load())
	}
	if rows := e.compensationRows(t); len(rows) != 0 {
		t.Fatalf("%d compensation rows: failed calls are not the keys' fault: %+v", len(rows), rows)
	}
}
