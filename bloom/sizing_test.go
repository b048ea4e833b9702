package bloom_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	bloomv3 "github.com/bits-and-blooms/bloom/v3"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
)

type nopWriter struct{}

func (nopWriter) Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	for i := range changes {
		out[i] = layout.Outcome{Result: layout.Applied}
	}
	return nil
}

// With no expected_items configured, each build sizes a table's filter from the rows the
// source holds (twice them, at least bloom.AutoMinItems), so that a small table does not
// carry a filter made for ten million keys; a filter that outgrows its size is rebuilt
// larger by the keeper's checks, without waiting for a reconciliation.
func TestKeeperSizesFiltersFromTheRowCount(t *testing.T) {
	ctx, rdb, prefix, key := bloomFixture(t)
	var rows atomic.Int64
	var countErr atomic.Pointer[error]
	var keys atomic.Int64
	scan := numberedKeys(keys.Load)
	k, _ := newKeeper(t, rdb, prefix, key, 0, scan)
	k.SizeFrom(func(ctx context.Context, table int) (uint64, error) {
		if e := countErr.Load(); e != nil {
			return 0, *e
		}
		return uint64(rows.Load()), nil
	})
	capacity := func() uint {
		s := k.Stats()[0]
		if !s.Complete {
			t.Fatal("filter not complete after a rebuild")
		}
		return s.Capacity
	}
	near := func(got, want uint) bool { return got >= want && got <= want+want/100 }

	// A small table gets the smallest filter.
	rows.Store(1000)
	keys.Store(1000)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := capacity(); !near(c, bloom.AutoMinItems) {
		t.Fatalf("a 1,000-row table got a filter for %d items, want %d", c, bloom.AutoMinItems)
	}
	if st, err := rdb.StrLen(ctx, key).Result(); err != nil || st > 200_000 {
		t.Fatalf("bitmap of a 1,000-row table is %d bytes (%v)", st, err)
	}

	// A big one gets twice its rows.
	rows.Store(400_000)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := capacity(); !near(c, 800_000) {
		t.Fatalf("a 400,000-row table got a filter for %d items, want 800000", c)
	}

	// The count failing: the filter is sized from the items it holds (twice them, at
	// least the floor), and the build goes on; one that then holds more than it was
	// sized for is rebuilt at the next check, sized for about twice what it held.
	e := errors.New("count refused")
	countErr.Store(&e)
	rows.Store(0)
	keys.Store(300_000)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := capacity(); !near(c, bloom.AutoMinItems) {
		t.Fatalf("with the count failing the filter holds %d items, want %d", c, bloom.AutoMinItems)
	}
	wantRebuild(t, k, true, "a filter past its size does not ask for a rebuild")
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c, items := capacity(), uint(k.Stats()[0].Items); c < items+items/2 || items < 250_000 {
		t.Fatalf("with the count failing the filter of %d items is sized for %d, want about twice", items, c)
	}
	wantRebuild(t, k, false, "the resized filter still asks for a rebuild")
	countErr.Store(nil)

	// Outgrowing the filter: the next check asks for a rebuild, which sizes it from the
	// rows again.
	rows.Store(1000)
	keys.Store(1000)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	wantRebuild(t, k, false, "a filter within its size asks for a rebuild")
	cs := upserts(prefix, 1000, 1000+int(bloom.AutoMinItems)+10)
	testenv.Must(t, k.Wrap(nopWriter{}).Apply(ctx, cs, make([]layout.Outcome, len(cs))), "apply")
	wantRebuild(t, k, true, "a filter past its size does not ask for a rebuild")
	rows.Store(int64(bloom.AutoMinItems) + 1010)
	keys.Store(int64(bloom.AutoMinItems) + 1010)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := capacity(); !near(c, 2*(bloom.AutoMinItems+1010)) {
		t.Fatalf("the rebuilt filter holds %d items, want %d", c, 2*(bloom.AutoMinItems+1010))
	}
	wantRebuild(t, k, false, "the resized filter still asks for a rebuild")
}

// A configured expected_items is kept whatever the table holds.
func TestKeeperKeepsAConfiguredSize(t *testing.T) {
	ctx, rdb, prefix, key := bloomFixture(t)
	scan := numberedKeys(func() int64 { return 1 })
	k, _ := newKeeper(t, rdb, prefix, key, 50_000, scan)
	k.SizeFrom(func(ctx context.Context, table int) (uint64, error) { return 1, nil })
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := k.Stats()[0].Capacity; c < 50_000 || c > 50_500 {
		t.Fatalf("configured for 50,000 items, the filter holds %d", c)
	}
}

// A filter sized from the row count never outgrows a Redis string: a table of billions
// of rows gets the biggest filter that fits (and a higher false-positive rate).
func TestAutoItemsAreCapped(t *testing.T) {
	if got := bloom.AutoItems(0, 0.001); got != bloom.AutoMinItems {
		t.Errorf("0 rows: %d items, want %d", got, bloom.AutoMinItems)
	}
	if got := bloom.AutoItems(1_000_000, 0.001); got != 2_000_000 {
		t.Errorf("1M rows: %d items, want 2M", got)
	}
	for _, rows := range []uint64{200_000_000, 5_000_000_000, 1 << 63} {
		got := bloom.AutoItems(rows, 0.001)
		if got != bloom.MaxItems(0.001) {
			t.Errorf("%d rows: %d items, want the cap %d", rows, got, bloom.MaxItems(0.001))
		}
		if m, _ := bloomv3.EstimateParameters(got, 0.001); m >= 1<<32 {
			t.Errorf("%d rows: a filter of %d bits, past Redis's 2^32", rows, m)
		}
	}
}

// A table counted empty gets the smallest filter (an empty count is a count, not a
// failure to fall back from); a swap that fails half way leaves the filter untrusted
// (incomplete, its meta deleted) for the next check to rebuild, never the new bitmap
// under the old parameters.
func TestKeeperEmptyTableAndFailedSwap(t *testing.T) {
	ctx, rdb, prefix, key := bloomFixture(t)
	var rows atomic.Int64
	var keys atomic.Int64
	scan := numberedKeys(keys.Load)
	k, _ := newKeeper(t, rdb, prefix, key, 0, scan)
	k.SizeFrom(func(ctx context.Context, table int) (uint64, error) { return uint64(rows.Load()), nil })
	rows.Store(300_000)
	keys.Store(300_000)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	rows.Store(0)
	keys.Store(0)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := k.Stats()[0].Capacity; c > bloom.AutoMinItems+bloom.AutoMinItems/100 {
		t.Fatalf("an empty table's filter holds %d items, want %d", c, bloom.AutoMinItems)
	}
	// The meta write of the next swap fails (its key holds another type). The table still
	// fits the live filter, which stays in use meanwhile (see
	// TestARebuildRetiresALiveFilterTooSmallForTheTable).
	rows.Store(50_000)
	testenv.Must(t, rdb.Set(ctx, key+":meta", "not a hash", 0).Err(), "break meta")
	if err := k.RebuildFromSource(ctx); err == nil {
		t.Fatal("a swap whose meta write failed reported success")
	}
	if k.Complete() {
		t.Fatal("after a failed swap the filter still reports complete: bits of the old size would land in the new bitmap")
	}
	if n := rdb.Exists(ctx, key+":meta").Val(); n != 0 {
		t.Fatal("after a failed swap the meta was left for readers")
	}
	wantRebuild(t, k, true, "after a failed swap the check does not ask for a rebuild")
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild after the failure")
	if !k.Complete() {
		t.Fatal("the rebuild after a failed swap left the filter incomplete")
	}
}

// A filter loaded from Redis with more bits set than one within its size has (its item
// count cannot be estimated) is rebuilt by the next check when sizing from the rows.
func TestKeeperRebuildsASaturatedFilterItLoads(t *testing.T) {
	ctx, rdb, prefix, key := bloomFixture(t)
	scan := numberedKeys(func() int64 { return 20_000 })
	small, _ := newKeeper(t, rdb, prefix, key, 200, scan) // 100 times too small
	testenv.Must(t, small.RebuildFromSource(ctx), "rebuild")
	k, _ := newKeeper(t, rdb, prefix, key, 0, scan)
	if !k.Complete() {
		t.Fatal("the filter in Redis was not loaded")
	}
	wantRebuild(t, k, true, "a saturated filter loaded from Redis does not ask for a rebuild")
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	wantRebuild(t, k, false, "the rebuilt filter still asks for a rebuild")
}

// A swap that fails when the meta cannot be deleted either (here: the instance lost its
// lease, so both are refused) leaves the filter complete: its bits go on reaching Redis,
// where readers still trust the bitmap under the old meta.
func TestKeeperFailedSwapWithoutInvalidateStaysComplete(t *testing.T) {
	ctx, rdb, prefix, key := bloomFixture(t)
	scan := numberedKeys(func() int64 { return 1 })
	k, _ := newKeeper(t, rdb, prefix, key, 0, scan)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	lost := errors.New("lease lost")
	k.SetFence(func() error { return lost })
	if err := k.RebuildFromSource(ctx); err == nil {
		t.Fatal("a fenced swap reported success")
	}
	if !k.Complete() {
		t.Fatal("a failed swap whose meta could not be deleted marked the filter incomplete: new keys would skip Redis while readers trust it")
	}
	if rdb.Exists(ctx, key+":meta").Val() != 1 {
		t.Fatal("the fenced instance deleted the meta")
	}
}

// bloomFixture returns a Redis client, a key prefix of the test's own and the bitmap key
// under it (deleted with its meta when the test ends).
func bloomFixture(t *testing.T) (context.Context, *redis.Client, string, string) {
	rdb := testenv.Redis(t)
	prefix := testenv.Prefix(t, rdb)
	key := prefix + "bloom"
	t.Cleanup(func() { rdb.Del(context.Background(), key, key+":meta") })
	return context.Background(), rdb, prefix, key
}

// numberedKeys scans the keys 0 .. n()-1.
func numberedKeys(n func() int64) bloom.Scanner {
	return func(ctx context.Context, table int, add func(string)) error {
		for i := range n() {
			add(strconv.FormatInt(i, 10))
		}
		return nil
	}
}

// wantRebuild fails the test unless k's check asks for a rebuild exactly when want.
func wantRebuild(t *testing.T, k *bloom.Keeper, want bool, what string) {
	t.Helper()
	if need, err := k.Check(context.Background()); err != nil || need != want {
		t.Fatalf("%s (check: rebuild %v, %v; stats %+v)", what, need, err, k.Stats())
	}
}

// A filter that outgrows its size is rebuilt as soon as it does, not at the keeper's next
// periodic check: until then every new key costs its bits in Redis and the false-positive
// rate climbs (a catch-up over a bulk import adds keys by the hundred thousand a second).
func TestAnOutgrownFilterIsRebuiltAtOnce(t *testing.T) {
	ctx, _, prefix, _, k, keys := autoKeeper(t)
	sized := k.Stats()[0].Capacity
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); k.Run(rctx, time.Hour) }() // checks once now, then hourly
	defer func() { cancel(); <-done }()
	n := 1000 + int(sized) + 10
	keys.Store(int64(n))
	cs := upserts(prefix, 1000, n)
	testenv.Must(t, k.Wrap(nopWriter{}).Apply(ctx, cs, make([]layout.Outcome, len(cs))), "apply")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if s := k.Stats()[0]; s.Complete && s.Capacity > sized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a filter past its size (%+v) was not rebuilt within 20 s", k.Stats()[0])
		}
	}
}

// A rebuild for a table that has outgrown the live filter (its rows are more than the
// filter was sized for, as after a bulk import) takes that filter out of use while it
// runs: readers treat every key as possibly present (what a filter past its size tells
// them more and more anyway), and the keys written meanwhile cost no bits in Redis. A
// rebuild for a table the live filter still fits keeps it in use.
func TestARebuildRetiresALiveFilterTooSmallForTheTable(t *testing.T) {
	ctx, rdb, prefix, key, k, rows := autoKeeper(t)
	r := bloom.NewReader(rdb, key)
	absent := func() bool {
		ok, err := r.MayContain(ctx, "never-written")
		testenv.Must(t, err, "may contain")
		return !ok
	}
	if !absent() {
		t.Fatal("fixture: the filter does not tell an absent key")
	}
	kw := k.Wrap(nopWriter{})
	write := func(from, to int) {
		cs := upserts(prefix, from, to)
		testenv.Must(t, kw.Apply(ctx, cs, make([]layout.Outcome, len(cs))), "apply")
	}
	// The table still fits: the live filter stays in use, and new keys reach it.
	testenv.Must(t, k.Rebuild(ctx, func(ctx context.Context) error {
		if !absent() {
			t.Error("a rebuild of a table the live filter fits took it out of use")
		}
		write(5000, 5010)
		return nil
	}), "rebuild")
	// The table outgrew it: out of use until the new filter is in, and no bits sent.
	rows.Store(int64(bloom.AutoMinItems) * 3)
	testenv.Must(t, k.Rebuild(ctx, func(ctx context.Context) error {
		if absent() {
			t.Error("the live filter, too small for the table, is still in use during the rebuild")
		}
		before, err := rdb.Get(ctx, key).Result()
		testenv.Must(t, err, "bitmap")
		write(6000, 6500)
		if after, _ := rdb.Get(ctx, key).Result(); after != before {
			t.Error("keys written during the rebuild set bits in the retired filter")
		}
		return nil
	}), "rebuild")
	if s := k.Stats()[0]; !s.Complete || s.Capacity < uint(rows.Load()) {
		t.Fatalf("after the rebuild: %+v", s)
	}
	if !absent() {
		t.Fatal("the rebuilt filter is not in use")
	}
	for _, pk := range []string{"5005", "6000", "6499"} {
		if ok, _ := r.MayContain(ctx, pk); !ok {
			t.Fatalf("key %s is missing from the rebuilt filter", pk)
		}
	}
}

// Taking a filter out of use and the check that writes a lost meta again exclude each
// other: the check must not make readers trust again a filter that receives no bits.
func TestARetiredFilterIsNotRestoredByTheCheck(t *testing.T) {
	ctx, rdb, _, key, k, rows := autoKeeper(t)
	stop := make(chan struct{})
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		for {
			select {
			case <-stop:
				return
			default:
				_, _ = k.Check(ctx)
			}
		}
	}()
	defer func() { close(stop); <-checked }()
	for i := range 30 {
		rows.Store(1000)
		testenv.Must(t, k.RebuildFromSource(ctx), "small rebuild")
		rows.Store(int64(bloom.AutoMinItems) * 3) // the next rebuild retires the live filter
		testenv.Must(t, k.Rebuild(ctx, func(ctx context.Context) error {
			if n := rdb.Exists(ctx, key+":meta").Val(); n != 0 || k.Complete() {
				t.Errorf("round %d: during the rebuild the retired filter is in use again (meta %d, complete %v)", i, n, k.Complete())
			}
			return nil
		}), "rebuild")
	}
}

// The keeper's own rebuild chooses its tables once no other rebuild runs: after a
// reconciliation's (or POST /bloom/rebuild's) rebuild that took the live filter out of
// use and then swapped in the new one, it does not scan the table again.
func TestTheKeeperDoesNotRepeatARebuildThatRanMeanwhile(t *testing.T) {
	ctx, rdb, prefix, key := bloomFixture(t)
	var rows, scans atomic.Int64
	rows.Store(1000)
	release := make(chan struct{})
	scan := func(ctx context.Context, table int, add func(string)) error {
		if scans.Add(1) == 2 {
			<-release // the second scan (the retiring rebuild's) waits
		}
		for i := range rows.Load() {
			add(strconv.FormatInt(i, 10))
		}
		return nil
	}
	k, _ := newKeeper(t, rdb, prefix, key, 0, scan)
	k.SizeFrom(func(ctx context.Context, table int) (uint64, error) { return uint64(rows.Load()), nil })
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild") // scan 1
	rows.Store(int64(bloom.AutoMinItems) * 3)
	done := make(chan error, 1)
	go func() { done <- k.RebuildFromSource(ctx) }() // scan 2: retires the live filter
	for k.Complete() {
		time.Sleep(time.Millisecond)
	}
	rctx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); k.Run(rctx, time.Hour) }() // its first check finds the filter incomplete
	defer func() { cancel(); <-ran }()
	time.Sleep(100 * time.Millisecond) // Run waits for the rebuild under way
	close(release)
	testenv.Must(t, <-done, "the retiring rebuild")
	time.Sleep(500 * time.Millisecond)
	if n := scans.Load(); n != 2 {
		t.Fatalf("%d scans of the table, want 2: the keeper repeated the rebuild that had just run", n)
	}
	if !k.Complete() {
		t.Fatal("not complete after the rebuild")
	}
}

// A swap that fails after the live filter was retired, when its meta cannot be deleted
// either, may have landed (its reply lost): Redis may hold a meta that readers trust while
// no bits reach it. Writes of new keys then wait until the meta is deleted, so that no row
// becomes readable without its key in a filter that readers trust.
func TestAFailedSwapOfARetiredFilterLeavesNoTrustedMeta(t *testing.T) {
	ctx, rdb, prefix, key, k, rows := autoKeeper(t)
	var refuse atomic.Bool
	k.SetFence(func() error {
		if refuse.Load() {
			return errors.New("lease lost")
		}
		return nil
	})
	rows.Store(int64(bloom.AutoMinItems) * 3) // the rebuild retires the live filter
	err := k.Rebuild(ctx, func(ctx context.Context) error {
		refuse.Store(true) // the swap and the meta's deletion both fail
		return nil
	})
	if err == nil {
		t.Fatal("a refused swap reported success")
	}
	// As if the swap had landed: a meta that matches the bitmap in Redis.
	st := k.Stats()[0]
	testenv.Must(t, rdb.HSet(ctx, key+":meta", "m", st.Bits, "k", st.Hashes, "hash", bloom.HashName).Err(), "meta")
	kw := k.Wrap(nopWriter{})
	cs := upserts(prefix, 900_000, 900_010)
	if err := kw.Apply(ctx, cs, make([]layout.Outcome, len(cs))); err == nil {
		t.Fatal("a write of new keys went on while a meta readers may trust could not be deleted")
	}
	refuse.Store(false)
	testenv.Must(t, kw.Apply(ctx, cs, make([]layout.Outcome, len(cs))), "apply")
	r := bloom.NewReader(rdb, key)
	for _, c := range cs {
		pk := c.Key[len(prefix)+1 : len(c.Key)-1]
		if ok, err := r.MayContain(ctx, pk); err != nil || !ok {
			t.Fatalf("a row written is absent from the filter readers see (%v)", err)
		}
	}
}

// autoKeeper returns a keeper that sizes its filter from the row count, over a table whose
// rows are the keys 0 .. rows-1 (rows starts at 1,000), with a first filter built.
func autoKeeper(t *testing.T) (ctx context.Context, rdb *redis.Client, prefix, key string, k *bloom.Keeper, rows *atomic.Int64) {
	ctx, rdb, prefix, key = bloomFixture(t)
	rows = new(atomic.Int64)
	rows.Store(1000)
	k, _ = newKeeper(t, rdb, prefix, key, 0, numberedKeys(rows.Load))
	k.SizeFrom(func(ctx context.Context, table int) (uint64, error) { return uint64(rows.Load()), nil })
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	return ctx, rdb, prefix, key, k, rows
}
