package canal

import (
	"testing"

	"github.com/invsync/invsync/layout"
)

func TestSettlementsAttachToTheLastChangeOfTheirRow(t *testing.T) {
	up := func(key string, pos uint32) Row {
		return Row{Change: layout.Change{Key: key, Op: layout.OpUpsert, Seq: layout.Seq{File: 1, Pos: pos}}}
	}
	settle := func(key, order string) Row {
		return Row{Change: layout.Change{Key: key, Op: layout.OpSettle, Settles: []layout.Settle{{Order: order, Qty: 1}}}, settling: true}
	}
	rows := []Row{up("k1", 1), settle("k1", "o1"), settle("k2", "o2"), up("k1", 3), up("k3", 4), settle("k3", "o3")}
	out := attachSettlements(rows)
	if len(out) != 4 {
		t.Fatalf("%d rows handed over: %+v", len(out), out)
	}
	if len(out[0].Change.Settles) != 0 || out[1].Change.Seq.Pos != 3 || len(out[1].Change.Settles) != 1 || out[1].Change.Settles[0].Order != "o1" {
		t.Errorf("k1: %+v %+v", out[0].Change, out[1].Change)
	}
	if len(out[2].Change.Settles) != 1 || out[2].Change.Settles[0].Order != "o3" {
		t.Errorf("k3: %+v", out[2].Change)
	}
	if out[3].Change.Key != "k2" || out[3].Change.Op != layout.OpSettle || out[3].settling {
		t.Errorf("k2 alone: %+v", out[3])
	}
	plain := []Row{up("a", 1), up("b", 2)}
	if got := attachSettlements(plain); len(got) != 2 || &got[0] != &plain[0] {
		t.Error("a transaction without settlements is handed over as it is")
	}
}
