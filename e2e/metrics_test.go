package e2e

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// holdingHook holds the daemon's Redis script calls (its row writes) while hold is set.
type holdingHook struct{ hold atomic.Bool }

func (h *holdingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *holdingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for h.hold.Load() && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		return next(ctx, cmds)
	}
}

// The metrics the core mirror promises are served, and the replication lag stays right
// (near 0) while the source is idle, thanks to the server's heartbeat.
func TestMetricsAndIdleLag(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	hook := &holdingHook{}
	r := e.start(nil, daemon.WithRedisHook(hook))
	waitReady(t, r)
	_, err := e.db.Exec("INSERT INTO inventory VALUES (1, 5, 1.00, 'a', 1), (2, 6, NULL, 'b', 1)")
	testenv.Must(t, err, "insert")
	e.waitEqual(30 * time.Second) // else the delete may supersede the insert before it is written
	_, err = e.db.Exec("DELETE FROM inventory WHERE sku = 2")
	testenv.Must(t, err, "delete")
	e.waitEqual(30 * time.Second)

	// Idle for several heartbeat periods.
	time.Sleep(4 * time.Second)
	body, err := httpBody("http://" + r.d.Addr() + "/metrics")
	testenv.Must(t, err, "metrics")
	for _, name := range []string{
		`invsync_rows_applied_total{op="upsert",table="` + e.schema + `.inventory"} 2`,
		`invsync_rows_applied_total{op="delete",table="` + e.schema + `.inventory"} 1`,
		`invsync_rows_skipped_total{op="upsert"`,
		"invsync_apply_duration_seconds_bucket",
		"invsync_replication_lag_seconds",
		"invsync_queue_depth 0",
		`invsync_redis_errors_total`,
		"invsync_checkpoint_age_seconds",
		"invsync_ready 1",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	if lag := metricSum(body, "invsync_replication_lag_seconds"); lag > 1.5 {
		t.Errorf("replication lag %.2fs while idle and caught up; want about 0", lag)
	}
	if age := metricSum(body, "invsync_checkpoint_age_seconds"); age > 2 {
		t.Errorf("checkpoint age %.2fs while caught up; want below 2s", age)
	}
	// Counters that move with their events: two transactions with mirrored rows, the
	// checkpoints written after them, the Bloom filter complete.
	reg := r.d.Registry()
	if got := counterSum(t, reg, "invsync_transactions_done_total"); got < 2 {
		t.Errorf("invsync_transactions_done_total = %v after two transactions", got)
	}
	cpWrites := counterSum(t, reg, "invsync_checkpoint_writes_total")
	if cpWrites < 1 {
		t.Errorf("invsync_checkpoint_writes_total = %v after two transactions", cpWrites)
	}
	if got := counterSum(t, reg, "invsync_bloom_complete"); got != 1 {
		t.Errorf("invsync_bloom_complete = %v, want 1 for the one table", got)
	}

	// Behind: Redis writes held for 3 s while a row is committed. The lag shows the age
	// of the oldest change not yet in Redis, then returns to about 0.
	hook.hold.Store(true)
	_, err = e.db.Exec("UPDATE inventory SET stock = 9, version = 2 WHERE sku = 1")
	testenv.Must(t, err, "update")
	time.Sleep(3 * time.Second)
	if lag := counterSum(t, reg, "invsync_replication_lag_seconds"); lag < 2 {
		t.Errorf("replication lag %.2fs while a change 3 s old waits for Redis; want at least 2", lag)
	}
	hook.hold.Store(false)
	e.waitEqual(30 * time.Second)
	waitFor(t, "the lag back to about 0", 10*time.Second, func() bool { return counterSum(t, reg, "invsync_replication_lag_seconds") < 1 })
	waitFor(t, "a checkpoint written for the update", 10*time.Second, func() bool { return counterSum(t, reg, "invsync_checkpoint_writes_total") > cpWrites })
	if got := counterSum(t, reg, "invsync_transactions_done_total"); got < 3 {
		t.Errorf("invsync_transactions_done_total = %v after three transactions", got)
	}
	if code, _ := httpGet("http://" + r.d.Addr() + "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if strings.Contains(body, testenv.AppPassword()) {
		t.Error("/metrics contains the password")
	}
}
