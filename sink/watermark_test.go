package sink

import (
	"testing"
	"time"

	"github.com/invsync/invsync/source"
)

func pos(n uint32) source.Position { return source.Position{File: "binlog.000001", Pos: n} }

func TestWatermarkNeverPassesAnUnackedRow(t *testing.T) {
	w := NewWatermark(pos(4), time.Now)
	t1 := w.open(1)
	t1.pending.Add(2)
	w.seal(1, pos(100), time.Now())
	t2 := w.open(2)
	t2.pending.Add(1)
	w.seal(2, pos(200), time.Now())
	w.seal(3, pos(300), time.Now()) // a transaction without mirrored rows

	// Transaction 2 is fully acknowledged, 1 is not: nothing may be checkpointed.
	t2.pending.Add(-1)
	if p, n, _ := w.Advance(); p != pos(4) || n != 0 {
		t.Fatalf("advanced to %v (%d) past an unacknowledged row", p, n)
	}
	t1.pending.Add(-1)
	if p, _, _ := w.Advance(); p != pos(4) {
		t.Fatalf("advanced to %v with a row of txn 1 pending", p)
	}
	t1.pending.Add(-1)
	p, n, _ := w.Advance()
	if p != pos(300) || n != 3 {
		t.Fatalf("Advance = %v, %d; want pos 300 after 3 transactions", p, n)
	}
	// An unsealed transaction (its commit not read yet) holds the watermark.
	t4 := w.open(4)
	t4.pending.Add(1)
	t4.pending.Add(-1)
	if p, _, _ := w.Advance(); p != pos(300) {
		t.Fatalf("advanced past an unsealed transaction: %v", p)
	}
	if n, _ := w.InFlight(); n != 1 {
		t.Fatalf("InFlight = %d, want 1", n)
	}
}
