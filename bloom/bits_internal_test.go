package bloom

import (
	"context"
	"strconv"
	"testing"

	"github.com/invsync/invsync/internal/testenv"
)

// A new key's bits that the filter has set already (other keys set them, and Redis
// acknowledged them before they were set in memory) are not sent again: only the bits
// Redis lacks are, and all of those are.
func TestOnlyTheBitsRedisLacksAreSent(t *testing.T) {
	cur := empty(512, 7)
	for i := range 40 {
		cur.setPositions(cur.Positions("old" + strconv.Itoa(i)))
	}
	set := func(p uint64) bool { return cur.f.BitSet().Test(uint(p)) }
	var pks []string
	for i := 0; len(pks) < 20; i++ {
		if pk := "new" + strconv.Itoa(i); !cur.Test(pk) {
			pks = append(pks, pk)
		}
	}
	groups := []adds{{t: &tableFilter{cur: cur, complete: true}, pks: append([]string(nil), pks...)}}
	if !(&Keeper{}).keepUnset(groups) || len(groups[0].pks) != len(pks) {
		t.Fatalf("new keys dropped: %v", groups[0].pks)
	}
	sent := map[uint64]bool{}
	for _, p := range groups[0].pos {
		if set(p) {
			t.Errorf("bit %d is set already and was sent", p)
		}
		sent[p] = true
	}
	skipped := 0
	for _, pk := range pks {
		for _, p := range cur.Positions(pk) {
			if set(p) {
				skipped++
			} else if !sent[p] {
				t.Errorf("bit %d of %s is not sent", p, pk)
			}
		}
	}
	if skipped == 0 {
		t.Fatal("fixture: none of the new keys' bits was set already")
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
