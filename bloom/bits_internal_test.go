package bloom

import (
	"strconv"
	"testing"
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
