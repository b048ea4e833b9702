package e2e

import (
	"testing"
	"time"

	"github.com/invsync/invsync/daemon"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// Issue 15: a background loop of the leader that ends while leading goes on (here the
// Bloom keeper's, stopped by a fault injected 2 s into the first term) ends the term
// instead of leaving the leader running without it: it is counted, the instance stands
// by, leads again (a new term, resumed from the checkpoint, no reload) and every change
// made meanwhile arrives.
func TestLeaderLoopFailureStandsByAndRecovers(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 500)
	core, logs := observer.New(zap.InfoLevel)
	logger := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core()))
	r := e.start(logger, daemon.WithLoopFault("bloom_keeper", 2*time.Second))
	waitReady(t, r)
	wl := during(t, e, 500, func(*workload) {
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
