package compensation_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/internal/testenv"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func noJitter() float64              { return 0 }
func entry(key, v string) compensation.Entry {
	return compensation.Entry{RedisKey: key, Table: "shop.inventory", PK: key, Version: v, LastError: "WRONGTYPE v" + v}
}

func TestStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	sched := compensation.Schedule{Initial: time.Second, Max: time.Minute, MaxAttempts: 2, Rand: noJitter}
	st, err := compensation.Open(ctx, testenv.DB(t, ""), testenv.StateSchema(t), sched, clk.Now)
	testenv.Must(t, err, "open")

	// One row per key: a newer failure keeps the greater version and the latest error.
	testenv.Must(t, st.Add(ctx, entry("inv:{1}", "5")), "park")
	testenv.Must(t, st.Add(ctx, entry("inv:{1}", "12")), "park newer")
	testenv.Must(t, st.Add(ctx, entry("inv:{1}", "9")), "park older")
	testenv.Must(t, st.Add(ctx, entry("inv:{2}", "1")), "park other")
	all, err := st.List(ctx, "")
	testenv.Must(t, err, "list")
	if len(all) != 2 || all[0].Version != "12" || all[0].LastError != "WRONGTYPE v9" || all[0].Status != compensation.StatusPending {
		t.Fatalf("after parking: %+v", all)
	}
	// Not due before initial_backoff.
	if due, _ := st.Due(ctx, 10); len(due) != 0 {
		t.Fatalf("due at once: %+v", due)
	}
	clk.Add(time.Second)
	due, err := st.Due(ctx, 10)
	testenv.Must(t, err, "due")
	if len(due) != 2 {
		t.Fatalf("due after 1s: %d rows", len(due))
	}
	// A failed retry backs off 2s (attempt 1), then the row dies (max_attempts 2).
	dead, err := st.Failed(ctx, due[0], errors.New("still WRONGTYPE"))
	testenv.Must(t, err, "failed")
	if dead {
		t.Fatal("dead after one attempt")
	}
	clk.Add(time.Second)
	if due, _ := st.Due(ctx, 10); len(due) != 1 || due[0].RedisKey != "inv:{2}" {
		t.Fatalf("only the other key is due 1s later: %+v", due)
	}
	clk.Add(time.Second)
	due, _ = st.Due(ctx, 10)
	var first compensation.Entry
	for _, e := range due {
		if e.RedisKey == "inv:{1}" {
			first = e
		}
	}
	if first.Attempts != 1 {
		t.Fatalf("inv:{1} not due after its 2s backoff: %+v", due)
	}
	if dead, _ = st.Failed(ctx, first, errors.New("again")); !dead {
		t.Fatal("not dead after max_attempts")
	}
	pending, deadN, oldest, err := st.Counts(ctx)
	testenv.Must(t, err, "counts")
	if pending != 1 || deadN != 1 || oldest != 3*time.Second {
		t.Fatalf("counts: pending %d dead %d oldest %s", pending, deadN, oldest)
	}
	// A new failure of the dead key (a newer change) makes it pending again, due now,
	// attempts reset, with the newer version; then it dies again.
	testenv.Must(t, st.Add(ctx, entry("inv:{1}", "15")), "park a dead key again")
	due, err = st.Due(ctx, 10)
	testenv.Must(t, err, "due")
	first = compensation.Entry{}
	for _, e := range due {
		if e.RedisKey == "inv:{1}" {
			first = e
		}
	}
	if first.Status != compensation.StatusPending || first.Attempts != 0 || first.Version != "15" {
		t.Fatalf("a dead key that failed again: %+v (due: %+v)", first, due)
	}
	if dead, _ = st.Failed(ctx, first, errors.New("again")); dead {
		t.Fatal("dead after its first attempt since it was revived")
	}
	clk.Add(2 * time.Second)
	first.Attempts = 1
	if dead, _ = st.Failed(ctx, first, errors.New("again")); !dead {
		t.Fatal("not dead after max_attempts")
	}
	// A retry that fails after a newer failure updated the row leaves the row alone: the
	// newer change keeps its schedule and is never marked dead by the older retry.
	testenv.Must(t, st.Add(ctx, entry("inv:{3}", "1")), "park")
	clk.Add(time.Second)
	stale, _ := st.Due(ctx, 10)
	var k3 compensation.Entry
	for _, e := range stale {
		if e.RedisKey == "inv:{3}" {
			k3 = e
		}
	}
	k3.Attempts = 5 // one more failure would make it dead
	clk.Add(time.Millisecond)
	testenv.Must(t, st.Add(ctx, entry("inv:{3}", "2")), "newer failure")
	if dead, err := st.Failed(ctx, k3, errors.New("older retry failed")); err != nil || dead {
		t.Fatalf("a stale retry's failure: dead %v, %v", dead, err)
	}
	all, _ = st.List(ctx, compensation.StatusPending)
	for _, e := range all {
		if e.RedisKey == "inv:{3}" && (e.Attempts != 0 || e.Version != "2") {
			t.Fatalf("a stale retry's failure changed the newer row: %+v", e)
		}
	}
	for _, e := range all {
		if e.RedisKey == "inv:{3}" {
			testenv.Must(t, st.Done(ctx, e), "done")
		}
	}
	// Replay brings it back, due now.
	n, err := st.Replay(ctx, nil)
	if err != nil || n != 1 {
		t.Fatalf("replay: %d %v", n, err)
	}
	due, _ = st.Due(ctx, 10)
	if len(due) != 2 {
		t.Fatalf("after replay: %+v", due)
	}
	// Done deletes, unless a newer failure came in since the row was read.
	testenv.Must(t, st.Add(ctx, entry(due[0].RedisKey, "99")), "newer failure")
	clk.Add(time.Millisecond)
	if err := st.Done(ctx, due[0]); !errors.Is(err, compensation.ErrSuperseded) {
		t.Fatalf("Done over a newer failure: %v", err)
	}
	testenv.Must(t, st.Done(ctx, due[1]), "done")
	// Purge removes dead rows older than the given age.
	left, _ := st.List(ctx, "")
	if _, err := st.Failed(ctx, left[0], errors.New("x")); err != nil {
		t.Fatal(err)
	}
	left, _ = st.List(ctx, "")
	if _, err := st.Failed(ctx, left[0], errors.New("x")); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	if n, err := st.Purge(ctx, 30*time.Minute); err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
	if all, _ := st.List(ctx, ""); len(all) != 0 {
		t.Fatalf("left after purge: %+v", all)
	}
}
