package layout

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// reserveReq is one reservation of a sequence.
type reserveReq struct {
	order, user string
	qty         int64
}

// randomReservations is a sequence over few orders and users, so that it repeats orders,
// exceeds limits and runs out of stock.
func randomReservations(rng *rand.Rand, n int) []reserveReq {
	out := make([]reserveReq, n)
	for i := range out {
		user := fmt.Sprint("u", rng.IntN(4))
		if rng.IntN(5) == 0 {
			user = ""
		}
		out[i] = reserveReq{order: fmt.Sprint("o", rng.IntN(n/2+1)), user: user, qty: 1 + rng.Int64N(3)}
	}
	return out
}

// holdsModel is the reservation rules of one row, in Go: the reference the scripts are
// checked against.
type holdsModel struct {
	stock, held, limit, expires int64
	orders                      map[string]string
	users                       map[string]int64
}

func (m *holdsModel) reserve(r reserveReq) Reservation {
	if rec, ok := m.orders[r.order]; ok {
		p := strings.Split(rec, "|")
		e, _ := strconv.ParseInt(p[3], 10, 64)
		out := Held
		if p[0] != "h" {
			out = doneOutcome("done:" + p[0])
		}
		return Reservation{Outcome: out, Available: m.stock - m.held, Expires: time.UnixMilli(e)}
	}
	a := m.stock - m.held
	switch {
	case a < r.qty:
		return Reservation{Outcome: SoldOut, Available: a}
	case m.limit > 0 && r.user != "" && m.users[r.user]+r.qty > m.limit:
		return Reservation{Outcome: OverLimit, Available: a}
	}
	m.orders[r.order] = fmt.Sprintf("h|%d|%s|%d", r.qty, r.user, m.expires)
	m.held += r.qty
	if r.user != "" {
		m.users[r.user] += r.qty
	}
	return Reservation{Outcome: Held, Available: a - r.qty, Expires: time.UnixMilli(m.expires)}
}

// state is what the model leaves in Redis (holdState's form, without the TTLs).
func (m *holdsModel) state() string {
	var b strings.Builder
	for _, f := range slices.Sorted(maps.Keys(m.orders)) {
		fmt.Fprintf(&b, "o %s=%s\n", f, m.orders[f])
	}
	for _, u := range slices.Sorted(maps.Keys(m.users)) {
		fmt.Fprintf(&b, "u %s=%d\n", u, m.users[u])
	}
	held := ""
	if m.held > 0 {
		held = strconv.FormatInt(m.held, 10)
	}
	fmt.Fprintf(&b, "n %s\n", held)
	var xs []string
	for _, f := range slices.Sorted(maps.Keys(m.orders)) {
		xs = append(xs, fmt.Sprintf("x %s=%d\n", f, m.expires))
	}
	b.WriteString(strings.Join(xs, ""))
	return b.String()
}

// holdState is everything a row's reservations left in Redis.
func holdState(t *testing.T, rdb redis.UniversalClient, key string) string {
	t.Helper()
	ctx := context.Background()
	k := HoldKeysOf(key)
	var b strings.Builder
	o := rdb.HGetAll(ctx, k.Orders).Val()
	for _, f := range slices.Sorted(maps.Keys(o)) {
		fmt.Fprintf(&b, "o %s=%s\n", f, o[f])
	}
	u := rdb.HGetAll(ctx, k.Users).Val()
	for _, f := range slices.Sorted(maps.Keys(u)) {
		fmt.Fprintf(&b, "u %s=%s\n", f, u[f])
	}
	fmt.Fprintf(&b, "n %s\n", rdb.Get(ctx, k.Held).Val())
	for _, z := range rdb.ZRangeWithScores(ctx, k.Expiry, 0, -1).Val() {
		fmt.Fprintf(&b, "x %v=%.0f\n", z.Member, z.Score)
	}
	return b.String()
}

// Reservations made one call at a time, and the same sequence made in one script call,
// answer each reservation and leave Redis exactly as the rules (holdsModel) say: repeated
// orders, users over their limit, the stock running out halfway, orders of earlier calls.
// All four keys of a row end with the same lifetime.
func TestReservationBatchEqualsOneAtATime(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	prefix := testenv.Prefix(t, rdb)
	h := NewHolds(rdb, time.Minute, time.Hour)
	h.SetClock(func() time.Time { return time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC) })
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 16))
		one, many := Key(prefix, []string{fmt.Sprint("one", seed)}), Key(prefix, []string{fmt.Sprint("many", seed)})
		stock := 5 + rng.IntN(20)
		limit := int64(rng.IntN(5))
		for _, k := range []string{one, many} {
			testenv.Must(t, rdb.HSet(ctx, k, "stock", stock, "_v", "1").Err(), "row")
		}
		// An earlier call holds some units already.
		first := randomReservations(rng, 4)
		for _, k := range []string{one, many} {
			for _, r := range first {
				_, err := h.Reserve(ctx, k, "stock", r.order, r.user, r.qty, limit)
				testenv.Must(t, err, "first")
			}
		}
		m := &holdsModel{stock: int64(stock), limit: limit, expires: h.now().Add(h.HoldTTL).UnixMilli(), orders: map[string]string{}, users: map[string]int64{}}
		for _, r := range first {
			m.reserve(r)
		}
		seq := randomReservations(rng, 3+rng.IntN(40))
		calls := make([]*reserveCall, len(seq))
		wants := make([]Reservation, len(seq))
		for i, r := range seq {
			want := m.reserve(r)
			got, err := h.Reserve(ctx, one, "stock", r.order, r.user, r.qty, limit)
			testenv.Must(t, err, "one at a time")
			if got != want {
				t.Fatalf("seed %d, reservation %d %+v (limit %d, stock %d): %+v, want %+v", seed, i, r, limit, stock, got, want)
			}
			calls[i], wants[i] = &reserveCall{ctx: ctx, key: many, field: "stock", limit: limit, order: r.order, user: r.user, qty: r.qty}, want
		}
		h.runReserves(ctx, calls)
		for i, c := range calls {
			if c.err != nil || c.res != wants[i] {
				t.Fatalf("seed %d, reservation %d %+v in one call (limit %d, stock %d): %+v %v, want %+v", seed, i, seq[i], limit, stock, c.res, c.err, wants[i])
			}
		}
		want := m.state()
		for _, k := range []string{one, many} {
			if got := holdState(t, rdb, k); got != want {
				t.Fatalf("seed %d: %s left\n%s\nwant\n%s", seed, k, got, want)
			}
			hk := HoldKeysOf(k)
			for _, kk := range []string{hk.Orders, hk.Users, hk.Held, hk.Expiry} {
				if ttl := rdb.PTTL(ctx, kk).Val(); (ttl < 0 && rdb.Exists(ctx, kk).Val() == 1) || ttl > h.RecordTTL {
					t.Fatalf("seed %d: %s lives %v (record TTL %v)", seed, kk, ttl, h.RecordTTL)
				}
			}
		}
	}
}

// Concurrent reservations share round trips (the ones that arrive while calls are in
// flight go together in the next pipeline) and script calls (one per row in it), and
// every buyer gets its own answer.
func TestConcurrentReservationsShareRoundTrips(t *testing.T) {
	h, key, _ := holdsFixture(t, 1000)
	ctx := context.Background()
	const rows, buyers = 5, 1000
	keys := []string{key}
	for i := 1; i < rows; i++ {
		keys = append(keys, Key(strings.TrimSuffix(key, "{sku1}"), []string{fmt.Sprint("sku", i+1)}))
		testenv.Must(t, h.rdb.HSet(ctx, keys[i], "stock", 1000, "_v", "1").Err(), "row")
	}
	var n counts
	h.rdb.AddHook(&n)
	var wg sync.WaitGroup
	outs, errs := make([]Reservation, buyers), make([]error, buyers)
	for i := range buyers {
		wg.Go(func() {
			outs[i], errs[i] = h.Reserve(ctx, keys[i%rows], "stock", fmt.Sprint("order-", i), "", 1, 0)
		})
	}
	wg.Wait()
	trips, scripts := n.trips.Load(), n.scripts.Load()
	avail := map[[2]int64]bool{}
	for i, r := range outs {
		a := [2]int64{int64(i % rows), r.Available}
		if errs[i] != nil || r.Outcome != Held || avail[a] {
			t.Fatalf("buyer %d: %+v %v (an answer given twice?)", i, r, errs[i])
		}
		avail[a] = true
	}
	for _, k := range keys {
		if a, held, _, _ := h.Available(ctx, k, "stock"); a != 1000-buyers/rows || held != buyers/rows {
			t.Fatalf("%s: available %d, held %d", k, a, held)
		}
	}
	if trips >= buyers/4 || scripts >= buyers/4 {
		t.Fatalf("%d reservations of %d rows took %d round trips and %d script calls: concurrent calls are not batched", buyers, rows, trips, scripts)
	} else {
		t.Logf("%d concurrent reservations of %d rows in %d round trips, %d script calls", buyers, rows, trips, scripts)
	}
}

// A reservation waiting for a flight returns when its context ends, and is not made if
// it had not been sent by then; the others waiting are made when the flight lands.
func TestWaitingReservationGivesUpWithItsContext(t *testing.T) {
	h, key, _ := holdsFixture(t, 10)
	// Every flight is taken (the test plays them).
	h.mu.Lock()
	h.flights = maxReserveFlights
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := h.Reserve(ctx, key, "stock", "gives-up", "", 1, 0); err != context.DeadlineExceeded {
		t.Fatalf("a waiting reservation whose context ended: %v", err)
	}
	stay := make(chan Reservation)
	go func() {
		r, err := h.Reserve(context.Background(), key, "stock", "stays", "", 2, 0)
		if err != nil {
			t.Error(err)
		}
		stay <- r
	}()
	waitFor(t, h, func() bool { return len(h.waiting) == 2 })
	h.landed() // a flight lands: the ones waiting go in the next
	if r := <-stay; r.Outcome != Held || r.Available != 8 {
		t.Fatalf("the reservation that waited on: %+v", r)
	}
	if _, ok, _ := h.Record(context.Background(), key, "gives-up"); ok {
		t.Fatal("a reservation whose caller gave up before it was sent was made")
	}
	waitFor(t, h, func() bool { return len(h.waiting) == 0 && h.flights == maxReserveFlights-1 })
}

// waitFor waits until cond holds, with h.mu held.
func waitFor(t *testing.T, h *Holds, cond func() bool) {
	t.Helper()
	for range 500 {
		h.mu.Lock()
		ok := cond()
		h.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("the reservations never got there")
}

// counts counts the script calls (EVALSHA, EVAL) a client sends, and the round trips
// (commands or pipelines) that carry them.
type counts struct{ trips, scripts atomic.Int64 }

func (*counts) DialHook(next redis.DialHook) redis.DialHook { return next }

func (n *counts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		n.count([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (n *counts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		n.count(cmds)
		return next(ctx, cmds)
	}
}

func (n *counts) count(cmds []redis.Cmder) {
	var scripts int64
	for _, cmd := range cmds {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			scripts++
		}
	}
	if scripts > 0 {
		n.trips.Add(1)
		n.scripts.Add(scripts)
	}
}

// After every hold of a row ended, a new hold starts the held total and the expiry index
// from nothing: they get the row's lifetime with the order records, and never outlive
// them (a held total left without a lifetime would hold stock back for ever).
func TestFirstHoldAfterTheLastEndedKeepsTheLifetime(t *testing.T) {
	h, key, _ := holdsFixture(t, 10)
	ctx := context.Background()
	for _, order := range []string{"o1", "o2"} {
		r, err := h.Reserve(ctx, key, "stock", order, "", 1, 0)
		if err != nil || r.Outcome != Held {
			t.Fatalf("reserve %s: %+v %v", order, r, err)
		}
		hk := HoldKeysOf(key)
		for _, k := range []string{hk.Orders, hk.Held, hk.Expiry} {
			if ttl := h.rdb.PTTL(ctx, k).Val(); ttl <= 0 {
				t.Fatalf("after %s: %s has no lifetime (%v)", order, k, ttl)
			}
		}
		if out, _, err := h.Release(ctx, key, "stock", order); err != nil || out != Released {
			t.Fatalf("release %s: %v %v", order, out, err)
		}
	}
	// A user's units start from nothing while other holds last: they get it too.
	for _, o := range [][2]string{{"o3", ""}, {"o4", "bob"}} {
		if r, err := h.Reserve(ctx, key, "stock", o[0], o[1], 1, 0); err != nil || r.Outcome != Held {
			t.Fatalf("reserve %s: %+v %v", o[0], r, err)
		}
	}
	if ttl := h.rdb.PTTL(ctx, HoldKeysOf(key).Users).Val(); ttl <= 0 {
		t.Fatalf("the units of a user's first hold have no lifetime (%v)", ttl)
	}
}

// A record Redis holds that invsync did not write fails its own reservation with an
// error naming it; the others of the call are made, and the held total stays the sum of
// the holds.
func TestUnreadableRecordFailsOnlyItsReservation(t *testing.T) {
	h, key, _ := holdsFixture(t, 10)
	ctx := context.Background()
	testenv.Must(t, h.rdb.HSet(ctx, HoldKeysOf(key).Orders, "bad", "garbage").Err(), "record")
	calls := []*reserveCall{
		{ctx: ctx, key: key, field: "stock", order: "o1", qty: 2},
		{ctx: ctx, key: key, field: "stock", order: "bad", qty: 1},
		{ctx: ctx, key: key, field: "stock", order: "o2", qty: 3},
	}
	h.runReserves(ctx, calls)
	if c := calls[1]; c.err == nil || !strings.Contains(c.err.Error(), `"bad"`) {
		t.Fatalf("the unreadable record's reservation: %+v %v", c.res, c.err)
	}
	for _, c := range []*reserveCall{calls[0], calls[2]} {
		if c.err != nil || c.res.Outcome != Held {
			t.Fatalf("reservation %s beside it: %+v %v", c.order, c.res, c.err)
		}
	}
	if held, _ := h.Held(ctx, key); held != 5 {
		t.Fatalf("held total %d, the holds sum to 5", held)
	}
	if a, _, _, _ := h.Available(ctx, key, "stock"); a != 5 {
		t.Fatalf("available %d, want 5", a)
	}
}

// A call of several reservations first ends the row's expired holds, at least as many as
// its reservations would have ended one call each.
func TestBatchEndsExpiredHoldsFirst(t *testing.T) {
	h, key, now := holdsFixture(t, 101)
	ctx := context.Background()
	for i := range 101 {
		if r, err := h.Reserve(ctx, key, "stock", fmt.Sprint("old-", i), "", 1, 0); err != nil || r.Outcome != Held {
			t.Fatalf("hold %d: %+v %v", i, r, err)
		}
	}
	now.Add(h.HoldTTL.Milliseconds() + 1)
	calls := []*reserveCall{
		{ctx: ctx, key: key, field: "stock", order: "big", qty: 100},
		{ctx: ctx, key: key, field: "stock", order: "one", qty: 1},
	}
	allHeld(t, h, calls, "after 101 holds expired")
}

// Reservations of one row keep their order when their limit differs (a reload changed it
// while they waited): a later one never goes before an earlier one.
func TestBatchKeepsTheOrderAcrossLimits(t *testing.T) {
	h, key, _ := holdsFixture(t, 2)
	ctx := context.Background()
	calls := []*reserveCall{
		{ctx: ctx, key: key, field: "stock", order: "a", user: "u", qty: 1, limit: 2},
		{ctx: ctx, key: key, field: "stock", order: "b", user: "u", qty: 1, limit: 3},
		{ctx: ctx, key: key, field: "stock", order: "c", user: "u", qty: 1, limit: 2},
	}
	h.runReserves(ctx, calls)
	for i, want := range []HoldOutcome{Held, Held, SoldOut} {
		if c := calls[i]; c.err != nil || c.res.Outcome != want {
			t.Fatalf("reservation %s: %+v %v, want %s", c.order, c.res, c.err, want)
		}
	}
}

// A pipeline of several rows' reservations reaches a Redis that does not know the script
// (restarted, or SCRIPT FLUSH): each call is sent again with EVAL.
func TestBatchAfterRedisLostItsScripts(t *testing.T) {
	h, key, _ := holdsFixture(t, 10)
	ctx := context.Background()
	other := Key(strings.TrimSuffix(key, "{sku1}"), []string{"sku2"})
	testenv.Must(t, h.rdb.HSet(ctx, other, "stock", 10, "_v", "1").Err(), "row")
	// A script text no Redis has seen: its EVALSHA answers NOSCRIPT.
	h.reserve = redis.NewScript(reserveScript + "\n-- " + testenv.Name("unseen"))
	calls := []*reserveCall{
		{ctx: ctx, key: key, field: "stock", order: "a", qty: 1},
		{ctx: ctx, key: other, field: "stock", order: "b", qty: 2},
	}
	allHeld(t, h, calls, "after NOSCRIPT")
}

// allHeld makes the reservations of calls in one flight and wants each held.
func allHeld(t *testing.T, h *Holds, calls []*reserveCall, when string) {
	t.Helper()
	h.runReserves(context.Background(), calls)
	for _, c := range calls {
		if c.err != nil || c.res.Outcome != Held {
			t.Fatalf("reservation %s %s: %+v %v", c.order, when, c.res, c.err)
		}
	}
}

// A panic while reservations are sent (a hook, a clock) answers the ones that waited with
// an error, and the flight it took is given back: later reservations still go.
func TestPanicInAFlightGivesItBack(t *testing.T) {
	h, key, _ := holdsFixture(t, 10)
	ctx := context.Background()
	var boom atomic.Bool
	h.SetClock(func() time.Time {
		if boom.Load() {
			panic("clock broke")
		}
		return time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	})
	boom.Store(true)
	// The caller's own call panics to the caller, and gives its flight back.
	func() {
		defer func() { _ = recover() }()
		_, _ = h.Reserve(ctx, key, "stock", "inline", "", 1, 0)
	}()
	waitFor(t, h, func() bool { return h.flights == 0 })
	// The ones that waited get an error.
	h.mu.Lock()
	h.flights = maxReserveFlights
	h.mu.Unlock()
	errs := make(chan error, 2)
	for _, o := range []string{"w1", "w2"} {
		go func() {
			_, err := h.Reserve(ctx, key, "stock", o, "", 1, 0)
			errs <- err
		}()
	}
	waitFor(t, h, func() bool { return len(h.waiting) == 2 })
	h.landed()
	for range 2 {
		if err := <-errs; err == nil || !strings.Contains(err.Error(), "clock broke") {
			t.Fatalf("a waiting reservation when its flight panicked: %v", err)
		}
	}
	waitFor(t, h, func() bool { return h.flights == maxReserveFlights-1 })
	boom.Store(false)
	h.mu.Lock()
	h.flights = 0
	h.mu.Unlock()
	if r, err := h.Reserve(ctx, key, "stock", "after", "", 1, 0); err != nil || r.Outcome != Held {
		t.Fatalf("a reservation after the panics: %+v %v", r, err)
	}
}
