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

// A filter at the size cap is never retired for a rebuild (the new one cannot be bigger,
// and readers would lose the filter for the whole rebuild for nothing); one below it, too
// small for the table's rows, is.
func TestAFilterAtTheCapIsNotRetired(t *testing.T) {
	k := &Keeper{auto: true, fp: 0.001}
	capped := &tableFilter{capacity: MaxItems(0.001), complete: true}
	if k.tooSmall(capped, uint64(MaxItems(0.001))*2, true) {
		t.Fatal("a filter at the cap is retired")
	}
	small := &tableFilter{capacity: AutoMinItems, complete: true}
	if !k.tooSmall(small, uint64(AutoMinItems)*3, true) {
		t.Fatal("a small filter, too small for the table, is not retired")
	}
	if k.tooSmall(small, uint64(AutoMinItems)*3, false) {
		t.Fatal("a filter is retired without a row count")
	}
}
