package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
)

func (e *env) compensationRows(t *testing.T) []compensation.Entry {
	t.Helper()
	cfgPath := e.writeConfig(nil)
	code, out := runCLI(t, 30*time.Second, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "compensation", "list", "--json", "-c", cfgPath)
	if code != 0 {
		t.Fatalf("compensation list: exit %d\n%s", code, out)
	}
	var rows []compensation.Entry
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &rows); err != nil {
		t.Fatalf("compensation list --json: %v\n%s", err, out)
	}
	return rows
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Issue 4, acceptance 1 and 2: a key holding a string where a hash belongs is parked
// with its error within 2 s while other keys keep syncing and the checkpoint moves on;
// once the key is deleted, the current row arrives within the backoff and the parked row
// is gone. With max_attempts reached it is dead; replay brings it back and it lands.
func TestWrongTypeKeyIsParkedAndRetried(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Compensation.PollInterval = 100 * time.Millisecond
	e.cfg.Compensation.InitialBackoff = 300 * time.Millisecond
	e.cfg.Compensation.MaxBackoff = time.Second
	e.cfg.Compensation.MaxAttempts = 3
	loadRows(t, e, 50)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	prefix := e.cfg.Tables[0].KeyPrefix
	bad := layout.Key(prefix, []string{"5"})
	testenv.Must(t, e.rdb.Del(ctx, bad).Err(), "del")
	testenv.Must(t, e.rdb.Set(ctx, bad, "not a hash", 0).Err(), "set string")

	store := e.checkpointStore()
	reg := r.d.Registry()
	changed := time.Now()
	_, err := e.db.Exec("UPDATE inventory SET stock = stock + 100, version = version + 1 WHERE sku IN (5, 6)")
	testenv.Must(t, err, "update")
	updated := e.currentPosition()

	var rows []compensation.Entry
	waitFor(t, "compensation row for the bad key", 2*time.Second, func() bool {
		rows = e.compensationRows(t)
		return len(rows) == 1
	})
	t.Logf("parked %s after the change", time.Since(changed).Round(time.Millisecond))
	if rows[0].RedisKey != bad || !strings.Contains(rows[0].LastError, "WRONGTYPE") || rows[0].Status != compensation.StatusPending {
		t.Fatalf("compensation row: %+v", rows[0])
	}
	// The other key of the same transaction synced, and the checkpoint moved on.
	waitFor(t, "the other key synced", 5*time.Second, func() bool {
		return e.rdb.HGet(ctx, layout.Key(prefix, []string{"6"}), "stock").Val() == "106"
	})
	waitFor(t, "the checkpoint passed the update", 5*time.Second, func() bool {
		p, _, _ := store.Load(ctx)
		return !less(p, source.Position{File: updated.File, Pos: updated.Pos})
	})
	// It was retried in place twice (sink's keyRetries) before it was parked, and the
	// compensation gauges show one pending row of some age.
	if got := seriesValue(t, reg, "invsync_redis_errors_total", "kind", "key"); got != 2 {
		t.Errorf("invsync_redis_errors_total{kind=key} = %v, want 2 (two in-place retries before parking)", got)
	}
	if got := counterSum(t, reg, "invsync_compensation_parked_total"); got != 1 {
		t.Errorf("invsync_compensation_parked_total = %v, want 1", got)
	}
	waitFor(t, "the pending gauges", 5*time.Second, func() bool {
		return counterSum(t, reg, "invsync_compensation_pending") == 1 && counterSum(t, reg, "invsync_compensation_oldest_pending_seconds") > 0
	})
	// The retrier tries it again (with backoff) and fails while the key is still wrong.
	waitFor(t, "a failed retry", 5*time.Second, func() bool {
		return seriesValue(t, reg, "invsync_compensation_retries_total", "result", "failed") >= 1
	})
	// Fix the key: the retrier writes the current row and deletes the compensation row.
	testenv.Must(t, e.rdb.Del(ctx, bad).Err(), "fix")
	waitFor(t, "the retry landed", 5*time.Second, func() bool {
		return e.rdb.HGet(ctx, bad, "stock").Val() == "105" && len(e.compensationRows(t)) == 0
	})
	e.waitEqual(10 * time.Second)
	if got := seriesValue(t, reg, "invsync_compensation_retries_total", "result", "applied"); got != 1 {
		t.Errorf("invsync_compensation_retries_total{result=applied} = %v, want 1", got)
	}
	waitFor(t, "the pending gauge back to 0", 5*time.Second, func() bool { return counterSum(t, reg, "invsync_compensation_pending") == 0 })

	// Dead after max_attempts, then replay.
	testenv.Must(t, e.rdb.Del(ctx, bad).Err(), "del")
	testenv.Must(t, e.rdb.Set(ctx, bad, "not a hash", 0).Err(), "set string")
	_, err = e.db.Exec("UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku = 5")
	testenv.Must(t, err, "update")
	waitFor(t, "the row dead after max_attempts", 20*time.Second, func() bool {
		rows = e.compensationRows(t)
		return len(rows) == 1 && rows[0].Status == compensation.StatusDead
	})
	if got := seriesValue(t, reg, "invsync_compensation_retries_total", "result", "dead"); got != 1 {
		t.Errorf("invsync_compensation_retries_total{result=dead} = %v, want 1", got)
	}
	waitFor(t, "the dead gauge", 5*time.Second, func() bool { return counterSum(t, reg, "invsync_compensation_dead") == 1 })
	testenv.Must(t, e.rdb.Del(ctx, bad).Err(), "fix")
	cfgPath := e.writeConfig(nil)
	code, out := runCLI(t, 30*time.Second, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "compensation", "replay", "-c", cfgPath)
	if code != 0 || !strings.Contains(out, "1 dead row(s) made pending") {
		t.Fatalf("replay: exit %d\n%s", code, out)
	}
	waitFor(t, "the replayed row landed", 5*time.Second, func() bool {
		return e.rdb.HGet(ctx, bad, "stock").Val() == "106" && len(e.compensationRows(t)) == 0
	})
	e.waitEqual(10 * time.Second)
	if got := counterSum(t, r.d.Registry(), "invsync_compensation_parked_total"); got < 2 {
		t.Fatalf("parked counter %v", got)
	}
}
