package bloom

import "testing"

// A filter at the size cap that holds more items than it was sized for is not
// "outgrown": rebuilding it cannot make it bigger, and would only repeat (a full key scan
// and 512 MB written to Redis) every second.
func TestAFilterAtTheCapIsNotOutgrown(t *testing.T) {
	k := &Keeper{auto: true, fp: 0.001}
	capped := &tableFilter{capacity: MaxItems(0.001), items: uint64(MaxItems(0.001)) * 2}
	if k.outgrown(capped) {
		t.Fatal("a filter at the cap counts as outgrown")
	}
	small := &tableFilter{capacity: AutoMinItems, items: uint64(AutoMinItems) + 1}
	if !k.outgrown(small) {
		t.Fatal("a small filter past its size does not count as outgrown")
	}
	k.auto = false
	if k.outgrown(small) {
		t.Fatal("with bloom.expected_items set, a filter counts as outgrown")
	}
}
