package bloom_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
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
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Prefix(t, rdb)
	key := prefix + "bloom"
	t.Cleanup(func() { rdb.Del(context.Background(), key, key+":meta") })
	var rows atomic.Int64
	var countErr atomic.Pointer[error]
	var keys atomic.Int64
	scan := func(ctx context.Context, table int, add func(string)) error {
		for i := range keys.Load() {
			add(strconv.FormatInt(i, 10))
		}
		return nil
	}
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
	if need, err := k.Check(ctx); err != nil || !need {
		t.Fatalf("a filter past its size does not ask for a rebuild (%v, %v)", need, err)
	}
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c, items := capacity(), uint(k.Stats()[0].Items); c < items+items/2 || items < 250_000 {
		t.Fatalf("with the count failing the filter of %d items is sized for %d, want about twice", items, c)
	}
	if need, err := k.Check(ctx); err != nil || need {
		t.Fatalf("the resized filter still asks for a rebuild (%v, %v)", need, err)
	}
	countErr.Store(nil)

	// Outgrowing the filter: the next check asks for a rebuild, which sizes it from the
	// rows again.
	rows.Store(1000)
	keys.Store(1000)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if need, err := k.Check(ctx); err != nil || need {
		t.Fatalf("a filter within its size asks for a rebuild (%v, %v)", need, err)
	}
	cs := upserts(prefix, 1000, 1000+int(bloom.AutoMinItems)+10)
	testenv.Must(t, k.Wrap(nopWriter{}).Apply(ctx, cs, make([]layout.Outcome, len(cs))), "apply")
	if need, err := k.Check(ctx); err != nil || !need {
		t.Fatalf("a filter past its size does not ask for a rebuild (%v, %v)", need, err)
	}
	rows.Store(int64(bloom.AutoMinItems) + 1010)
	keys.Store(int64(bloom.AutoMinItems) + 1010)
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := capacity(); !near(c, 2*(bloom.AutoMinItems+1010)) {
		t.Fatalf("the rebuilt filter holds %d items, want %d", c, 2*(bloom.AutoMinItems+1010))
	}
	if need, err := k.Check(ctx); err != nil || need {
		t.Fatalf("the resized filter still asks for a rebuild (%v, %v)", need, err)
	}
}

// A configured expected_items is kept whatever the table holds.
func TestKeeperKeepsAConfiguredSize(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.Redis(t)
	prefix := testenv.Prefix(t, rdb)
	key := prefix + "bloom"
	t.Cleanup(func() { rdb.Del(context.Background(), key, key+":meta") })
	scan := func(ctx context.Context, table int, add func(string)) error { add("a"); return nil }
	k, _ := newKeeper(t, rdb, prefix, key, 50_000, scan)
	k.SizeFrom(func(ctx context.Context, table int) (uint64, error) { return 1, nil })
	testenv.Must(t, k.RebuildFromSource(ctx), "rebuild")
	if c := k.Stats()[0].Capacity; c < 50_000 || c > 50_500 {
		t.Fatalf("configured for 50,000 items, the filter holds %d", c)
	}
}
