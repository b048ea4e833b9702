package bloom

import (
	"context"
	"strconv"
	"testing"

	"github.com/invsync/invsync/internal/testenv"
)

// A new key's bits all reach Redis, even those the filter in memory holds: Redis can lack
// a bit that memory has (a swap that failed half way with the filter still trusted, Redis
// gone back to an older state until the restore). Keys are counted once each.
func TestANewKeySendsAllItsBits(t *testing.T) {
	rdb := testenv.Redis(t)
	key := testenv.Prefix(t, rdb) + "bloom"
	cur := empty(512, 7)
	// Memory holds the bits of keys that the bitmap in Redis lacks.
	for i := range 40 {
		cur.addPositions(cur.Positions("old" + strconv.Itoa(i)))
	}
	m := NewMirror(rdb, key)
	testenv.Must(t, m.Replace(context.Background(), empty(512, 7)), "an empty bitmap")
	tf := &tableFilter{cur: cur, complete: true, capacity: 1000, mirror: m}
	var pks []string
	shared := 0
	for i := 0; len(pks) < 20; i++ {
		if pk := "new" + strconv.Itoa(i); !cur.Test(pk) {
			pks = append(pks, pk)
			for _, p := range cur.Positions(pk) {
				if cur.f.BitSet().Test(uint(p)) {
					shared++
				}
			}
		}
	}
	if shared == 0 {
		t.Fatal("fixture: none of the new keys' bits is set in memory")
	}
	k := &Keeper{rdb: rdb}
	groups := []adds{{t: tf, pks: append(append([]string(nil), pks...), pks[0])}} // pks[0] twice
	if !k.keepUnset(groups) {
		t.Fatal("no key to add")
	}
	testenv.Must(t, k.setBits(context.Background(), groups), "set bits")
	r := NewReader(rdb, key)
	for _, pk := range pks {
		if ok, err := r.MayContain(context.Background(), pk); err != nil || !ok {
			t.Errorf("%s is not in the filter in Redis (%v)", pk, err)
		}
	}
	if tf.items != uint64(len(pks)) {
		t.Errorf("items %d, want %d (each key once)", tf.items, len(pks))
	}
}

// Adding new keys hashes each key once per filter and allocates at most once per key,
// while a rebuild fills its new filter too: the bulk writes of new keys (a snapshot, a
// catch-up) go through here once per row.
func TestNewKeysCostOneAllocationEach(t *testing.T) {
	rdb := testenv.Redis(t)
	key := testenv.Prefix(t, rdb) + "bloom"
	tf := &tableFilter{cur: New(100_000, 0.001), next: New(200_000, 0.001), complete: true, capacity: 100_000, mirror: NewMirror(rdb, key)}
	k := &Keeper{rdb: rdb}
	const batch, runs = 1000, 6 // AllocsPerRun runs once more than asked
	var batches [][]string
	for r := range runs {
		var pks []string
		for i := range batch {
			pks = append(pks, "k"+strconv.Itoa(r*batch+i))
		}
		batches = append(batches, pks)
	}
	run := 0
	allocs := testing.AllocsPerRun(runs-1, func() {
		groups := []adds{{t: tf, pks: batches[run]}}
		run++
		if k.keepUnset(groups) {
			testenv.Must(t, k.setBits(context.Background(), groups), "set bits")
		}
	})
	t.Logf("%.2f allocations per new key", allocs/batch)
	if perKey := allocs / batch; perKey > 1.5 {
		t.Errorf("%.2f allocations per new key, want at most 1.5", perKey)
	}
	if tf.items != runs*batch || tf.nextItems < runs*batch-5 {
		t.Errorf("items %d, next items %d, want %d", tf.items, tf.nextItems, runs*batch)
	}
	for _, pks := range batches {
		for _, pk := range pks {
			if !tf.cur.Test(pk) || !tf.next.Test(pk) {
				t.Fatalf("%s is not in the filters", pk)
			}
		}
	}
}
