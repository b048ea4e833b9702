package e2e

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/daemon"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// panicOnce, once armed, panics in the first pipeline of exactly HMGET + STRLEN: the
// Bloom keeper's check of a bitmap (bloom.Mirror.Healthy), which its background loop runs
// every second. It stands for a bug in one of the leader's background loops.
type panicOnce struct{ armed, fired atomic.Bool }

func (h *panicOnce) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *panicOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *panicOnce) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.armed.Load() && len(cmds) == 2 && cmds[0].Name() == "hmget" && cmds[1].Name() == "strlen" && !h.fired.Swap(true) {
			panic("injected: a bug in the Bloom keeper's loop")
		}
		return next(ctx, cmds)
	}
}

// Issue 15: a background loop of the leader that dies (here the Bloom keeper's, by a
// panic) stops the leader instead of leaving it running without that loop: it is
// counted, the instance stands by, leads again (a new term, from the checkpoint, no
// reload) and every change made meanwhile arrives.
func TestLeaderLoopFailureStandsByAndRecovers(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 500)
	h := &panicOnce{}
	core, logs := observer.New(zap.InfoLevel)
	r := e.start(zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core())), daemon.WithRedisHook(h))
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	wl := during(t, e, 500, func(*workload) {
		time.Sleep(300 * time.Millisecond)
		h.armed.Store(true)
		waitFor(t, "the loop failure counted", 10*time.Second, func() bool {
			return seriesValue(t, r.d.Registry(), "invsync_leader_loop_failures_total", "loop", "bloom_keeper") == 1
		})
		// The first term loaded the table (no checkpoint yet); the second resumes.
		waitFor(t, "a second term, resumed from the checkpoint", 15*time.Second, func() bool {
			return logs.FilterMessage("resuming from the checkpoint").Len() == 1 && logs.FilterMessage("streaming the binlog").Len() == 2
		})
		waitReady(t, r)
		time.Sleep(500 * time.Millisecond) // changes after the new term began
	})
	t.Logf("%d transactions", wl.done.Load())
	e.waitEqual(30 * time.Second)
	select {
	case err := <-r.done:
		t.Fatalf("the daemon exited after the loop failed: %v", err)
	default:
	}
	if logs.FilterMessage("stopped leading: a background loop failed; standing by, then leading again").Len() != 1 {
		t.Errorf("no log line says the leader stood by after the loop failed")
	}
	if got := counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got != 0 {
		t.Errorf("the new term reloaded (%v): it must resume from the checkpoint", got)
	}
}
