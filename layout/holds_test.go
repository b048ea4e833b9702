package layout

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
)

// holdsFixture is a row with stock units and the reservation scripts over it, with a
// clock the test moves.
func holdsFixture(t *testing.T, stock int) (*Holds, string, *atomic.Int64) {
	t.Helper()
	rdb := testenv.Redis(t)
	key := Key(testenv.Prefix(t, rdb), []string{"sku1"})
	testenv.Must(t, rdb.HSet(context.Background(), key, "stock", stock, "_v", "1").Err(), "row")
	h := NewHolds(rdb, time.Minute, time.Hour)
	var now atomic.Int64
	now.Store(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC).UnixMilli())
	h.SetClock(func() time.Time { return time.UnixMilli(now.Load()) })
	return h, key, &now
}

func TestReserveReleaseAndLimits(t *testing.T) {
	h, key, _ := holdsFixture(t, 5)
	ctx := context.Background()
	r, err := h.Reserve(ctx, key, "stock", "o1", "alice", 2, 3)
	testenv.Must(t, err, "reserve")
	if r.Outcome != Held || r.Available != 3 || r.Expires.IsZero() {
		t.Fatalf("first reservation: %+v", r)
	}
	// The same order again: the same hold, nothing changes.
	again, err := h.Reserve(ctx, key, "stock", "o1", "alice", 2, 3)
	testenv.Must(t, err, "reserve again")
	if again.Outcome != Held || again.Available != 3 || !again.Expires.Equal(r.Expires) {
		t.Fatalf("repeated reservation: %+v, first %+v", again, r)
	}
	// alice holds 2 of her 3: 2 more are over her limit, 1 is not.
	if r, _ := h.Reserve(ctx, key, "stock", "o2", "alice", 2, 3); r.Outcome != OverLimit {
		t.Fatalf("over the limit: %+v", r)
	}
	if r, _ := h.Reserve(ctx, key, "stock", "o3", "alice", 1, 3); r.Outcome != Held || r.Available != 2 {
		t.Fatalf("within the limit: %+v", r)
	}
	if r, _ := h.Reserve(ctx, key, "stock", "o4", "bob", 3, 0); r.Outcome != SoldOut || r.Available != 2 {
		t.Fatalf("more than available: %+v", r)
	}
	// Releasing gives units and quota back, once.
	if out, avail, err := h.Release(ctx, key, "stock", "o1"); err != nil || out != Released || avail != 4 {
		t.Fatalf("release: %v %d %v", out, avail, err)
	}
	if out, avail, _ := h.Release(ctx, key, "stock", "o1"); out != AlreadyReleased || avail != 4 {
		t.Fatalf("second release: %v %d", out, avail)
	}
	if r, _ := h.Reserve(ctx, key, "stock", "o1", "alice", 2, 3); r.Outcome != AlreadyReleased {
		t.Fatalf("a released order reserving again: %+v", r)
	}
	if r, _ := h.Reserve(ctx, key, "stock", "o5", "alice", 2, 3); r.Outcome != Held || r.Available != 2 {
		t.Fatalf("quota given back: %+v", r)
	}
	if out, _, _ := h.Release(ctx, key, "stock", "nope"); out != UnknownOrder {
		t.Fatalf("unknown order: %v", out)
	}
	avail, held, ok, err := h.Available(ctx, key, "stock")
	if err != nil || !ok || avail != 2 || held != 3 {
		t.Fatalf("available %d held %d ok %v err %v", avail, held, ok, err)
	}
	if r, _ := h.Reserve(ctx, Key("nosuch:", []string{"x"}), "stock", "o9", "bob", 1, 0); r.Outcome != UnknownRow {
		t.Fatalf("a row Redis does not hold: %+v", r)
	}
	if _, err := h.Reserve(ctx, key, "stock", "a|b", "bob", 1, 0); err == nil {
		t.Fatal("an order id with '|' accepted")
	}
}

func TestHoldsExpire(t *testing.T) {
	h, key, now := holdsFixture(t, 3)
	ctx := context.Background()
	for i := range 3 {
		if r, _ := h.Reserve(ctx, key, "stock", fmt.Sprint("o", i), "u", 1, 3); r.Outcome != Held {
			t.Fatalf("reserve %d: %+v", i, r)
		}
	}
	if r, _ := h.Reserve(ctx, key, "stock", "late", "v", 1, 0); r.Outcome != SoldOut {
		t.Fatalf("sold out: %+v", r)
	}
	now.Add(time.Minute.Milliseconds() + 1)
	// A reservation sweeps the expired holds of its row first.
	if r, _ := h.Reserve(ctx, key, "stock", "late", "v", 1, 0); r.Outcome != Held || r.Available != 2 {
		t.Fatalf("after expiry: %+v", r)
	}
	if out, _, _ := h.Release(ctx, key, "stock", "o0"); out != AlreadyExpired {
		t.Fatalf("release of an expired hold: %v", out)
	}
	// The user's quota came back with the expiry.
	if r, _ := h.Reserve(ctx, key, "stock", "again", "u", 2, 3); r.Outcome != Held {
		t.Fatalf("quota after expiry: %+v", r)
	}
	now.Add(time.Minute.Milliseconds() + 1)
	if n, err := h.Sweep(ctx, key, 100); err != nil || n != 2 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if avail, held, _, _ := h.Available(ctx, key, "stock"); avail != 3 || held != 0 {
		t.Fatalf("after the sweep: available %d held %d", avail, held)
	}
}

// Concurrent buyers never hold more than the stock, and no user more than the limit.
func TestConcurrentReservationsNeverOversell(t *testing.T) {
	h, key, _ := holdsFixture(t, 100)
	ctx := context.Background()
	var held atomic.Int64
	perUser := make([]atomic.Int64, 500)
	var wg sync.WaitGroup
	for i := range 2000 {
		wg.Go(func() {
			u := i % 500
			r, err := h.Reserve(ctx, key, "stock", fmt.Sprint("order-", i), fmt.Sprint("user-", u), 1, 2)
			if err != nil {
				t.Error(err)
				return
			}
			if r.Outcome == Held {
				held.Add(1)
				perUser[u].Add(1)
			}
		})
	}
	wg.Wait()
	if held.Load() != 100 {
		t.Fatalf("%d units held of 100", held.Load())
	}
	for u := range perUser {
		if perUser[u].Load() > 2 {
			t.Fatalf("user %d holds %d, limit 2", u, perUser[u].Load())
		}
	}
	if avail, n, _, _ := h.Available(ctx, key, "stock"); avail != 0 || n != 100 {
		t.Fatalf("available %d held %d", avail, n)
	}
}

// A settlement ends its order's hold in the same call as the row's new stock: available
// does not move; a replay, a settlement of a released hold and one of an unknown order
// change nothing more than they must.
func TestSettlementEndsTheHoldWithTheStock(t *testing.T) {
	h, key, _ := holdsFixture(t, 10)
	ctx := context.Background()
	w := NewWriter(h.rdb, time.Minute, false)
	apply := func(c Change) Outcome {
		t.Helper()
		out := make([]Outcome, 1)
		testenv.Must(t, w.Apply(ctx, []Change{c}, out), "apply")
		return out[0]
	}
	// The row as the binlog wrote it, then holds on it.
	if o := apply(Change{Key: key, Op: OpUpsert, Version: "1", Seq: Seq{File: 1, Pos: 100}, Fields: []Field{{"stock", "10"}}}); o.Result != Applied {
		t.Fatalf("row: %+v", o)
	}
	for _, o := range []string{"a", "b", "c"} {
		if r, _ := h.Reserve(ctx, key, "stock", o, "u-"+o, 2, 0); r.Outcome != Held {
			t.Fatalf("reserve %s: %+v", o, r)
		}
	}
	if out, _, _ := h.Release(ctx, key, "stock", "c"); out != Released {
		t.Fatal(out)
	}
	availableIs := func(want, wantHeld int64) {
		t.Helper()
		if a, held, _, _ := h.Available(ctx, key, "stock"); a != want || held != wantHeld {
			t.Fatalf("available %d held %d, want %d and %d", a, held, want, wantHeld)
		}
	}
	availableIs(6, 4)
	// Order a confirmed in MySQL: stock 10 → 8 and a's settlement row, one transaction.
	settleA := Change{Key: key, Op: OpUpsert, Version: "2", Seq: Seq{File: 1, Pos: 200}, Fields: []Field{{"stock", "8"}},
		Settles: []Settle{{Order: "a", User: "u-a", Qty: 2}}}
	if o := apply(settleA); o.Result != Applied || o.Settled != 1 || o.Unheld != 0 {
		t.Fatalf("settle a: %+v", o)
	}
	availableIs(6, 2)
	// The binlog replayed: nothing changes.
	if o := apply(settleA); o.Result != Skipped || o.Settled != 0 || o.Unheld != 0 {
		t.Fatalf("replay: %+v", o)
	}
	availableIs(6, 2)
	if r, _ := h.Reserve(ctx, key, "stock", "a", "u-a", 2, 0); r.Outcome != AlreadySettled {
		t.Fatalf("a settled order reserving again: %+v", r)
	}
	// A reload wrote MySQL's newer stock (b already taken) before b's settlement came:
	// the row is skipped as older, and b's hold ends all the same.
	if o := apply(Change{Key: key, Op: OpUpsert, Version: "3", Seq: Seq{File: 1, Pos: 400}, Fields: []Field{{"stock", "6"}}}); o.Result != Applied {
		t.Fatalf("reload: %+v", o)
	}
	availableIs(4, 2)
	if o := apply(Change{Key: key, Op: OpUpsert, Version: "3", Seq: Seq{File: 1, Pos: 300}, Fields: []Field{{"stock", "6"}},
		Settles: []Settle{{Order: "b", User: "u-b", Qty: 2}}}); o.Result != Skipped || o.Settled != 1 {
		t.Fatalf("settle b behind a reload: %+v", o)
	}
	availableIs(6, 0)
	// c was released before its payment came through, and d never reserved here (or
	// Redis lost it): both only move the stock, and are counted.
	if o := apply(Change{Key: key, Op: OpUpsert, Version: "4", Seq: Seq{File: 1, Pos: 500}, Fields: []Field{{"stock", "3"}},
		Settles: []Settle{{Order: "c", User: "u-c", Qty: 2}, {Order: "d", User: "u-d", Qty: 1}}}); o.Result != Applied || o.Settled != 0 || o.Unheld != 2 {
		t.Fatalf("settle c and d: %+v", o)
	}
	availableIs(3, 0)
	if users, _ := h.rdb.HGetAll(ctx, HoldKeysOf(key).Users).Result(); users["u-c"] != "2" || users["u-d"] != "1" || users["u-a"] != "2" {
		t.Fatalf("bought units per user: %v", users)
	}
}

// Without a test clock the scripts take Redis's time; every key a reservation writes
// expires with the others; a settlement of another quantity than held counts what was
// bought against the user.
func TestHoldsUseRedisClockAndExpireTogether(t *testing.T) {
	h, key, _ := holdsFixture(t, 10)
	h.now = nil
	ctx := context.Background()
	r, err := h.Reserve(ctx, key, "stock", "o1", "ann", 2, 0)
	testenv.Must(t, err, "reserve")
	if d := time.Until(r.Expires); r.Outcome != Held || d < 50*time.Second || d > 70*time.Second {
		t.Fatalf("reservation %+v: expires in %s, want about a minute (Redis's clock)", r, d)
	}
	if _, err := h.Reserve(ctx, key, "stock", "o2", "bob", 1, 0); err != nil {
		t.Fatal(err)
	}
	k := HoldKeysOf(key)
	for _, kk := range []string{k.Orders, k.Users, k.Held, k.Expiry} {
		if ttl := h.rdb.PTTL(ctx, kk).Val(); ttl <= 0 {
			t.Errorf("%s has no lifetime (%s)", kk, ttl)
		}
	}
	if out, _, _ := h.Release(ctx, key, "stock", "o2"); out != Released {
		t.Fatal(out)
	}
	w := NewWriter(h.rdb, time.Minute, false)
	out := make([]Outcome, 1)
	testenv.Must(t, w.Apply(ctx, []Change{{Key: key, Op: OpSettle, Settles: []Settle{{Order: "o1", User: "ann", Qty: 3}}}}, out), "settle")
	if out[0].Settled != 1 {
		t.Fatalf("settle: %+v", out[0])
	}
	if n := h.rdb.HGet(ctx, k.Users, "ann").Val(); n != "3" {
		t.Fatalf("ann bought 3 (held 2): counted %s", n)
	}
	if ex := h.rdb.Exists(ctx, k.Held).Val(); ex != 0 {
		t.Fatalf("held total left after the last hold ended")
	}
	for _, kk := range []string{k.Orders, k.Users} {
		if ttl := h.rdb.PTTL(ctx, kk).Val(); ttl <= 0 {
			t.Errorf("%s has no lifetime after the settlement (%s)", kk, ttl)
		}
	}
	if _, err := h.Reserve(ctx, key, "stock", "o3", "ann", MaxHoldQty+1, 0); err == nil {
		t.Fatal("an absurd quantity accepted")
	}
	if _, err := h.Reserve(ctx, Key("p:", []string{""}), "stock", "o4", "ann", 1, 0); err == nil {
		t.Fatal("an empty key accepted")
	}
}
