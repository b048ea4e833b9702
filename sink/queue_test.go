package sink

import (
	"context"
	"errors"
	"hash/maphash"
	"testing"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
)

func change(key, v string) layout.Change {
	return layout.Change{Key: key, Op: layout.OpUpsert, Version: v}
}

func TestKeyQueueCoalescesAndHoldsTheOldestTransaction(t *testing.T) {
	ctx := context.Background()
	w := NewWatermark(source.Position{}, time.Now)
	q := newKeyQueue(10)
	put := func(t *txnState, key, v string) {
		t.pending.Add(1)
		if _, err := q.put(ctx, hashOf(key), change(key, v), canal.Image{}, 0, t); err != nil {
			t.pending.Add(-1)
			panic(err)
		}
	}
	// Rows arrive as the router hands them over: transaction by transaction.
	t1 := w.open(1)
	put(t1, "a", "1")
	put(t1, "b", "1")
	w.seal(1, source.Position{Pos: 1}, time.Now())
	t2 := w.open(2)
	put(t2, "a", "2")
	w.seal(2, source.Position{Pos: 2}, time.Now())
	t3 := w.open(3)
	put(t3, "a", "3")
	w.seal(3, source.Position{Pos: 3}, time.Now())
	// a's later rows were merged and acknowledged at once, but txn 1 holds them back.
	if t2.pending.Load() != 0 || t3.pending.Load() != 0 || t1.pending.Load() != 2 {
		t.Fatalf("pending: %d %d %d", t1.pending.Load(), t2.pending.Load(), t3.pending.Load())
	}
	if p, _, _ := w.Advance(); p.Pos != 0 {
		t.Fatalf("watermark passed a transaction whose key is not written: %v", p)
	}
	got, _ := q.take(nil, 10)
	if len(got) != 2 || got[0].change.Key != "a" || got[0].change.Version != "3" || got[0].merged != 2 || got[1].change.Key != "b" {
		t.Fatalf("take: %+v", got)
	}
	for _, e := range got {
		e.hold.pending.Add(-1)
	}
	if p, n, _ := w.Advance(); p.Pos != 3 || n != 3 {
		t.Fatalf("Advance = %v %d after writing", p, n)
	}
}

func TestKeyQueueBlocksWhenFullOfOtherKeys(t *testing.T) {
	q := newKeyQueue(1)
	tx := &txnState{}
	if _, err := q.put(context.Background(), hashOf("a"), change("a", "1"), canal.Image{}, 0, tx); err != nil {
		t.Fatal(err)
	}
	// The same key merges even when full.
	if merged, err := q.put(context.Background(), hashOf("a"), change("a", "2"), canal.Image{}, 0, tx); err != nil || !merged {
		t.Fatalf("merge into a full queue: %v %v", merged, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := q.put(ctx, hashOf("b"), change("b", "1"), canal.Image{}, 0, tx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("put of another key into a full queue: %v, want to block", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := q.put(context.Background(), hashOf("b"), change("b", "1"), canal.Image{}, 0, tx)
		done <- err
	}()
	q.take(nil, 1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	q.close()
	if _, err := q.put(context.Background(), hashOf("c"), change("c", "1"), canal.Image{}, 0, tx); !errors.Is(err, errQueueClosed) {
		t.Fatalf("put after close: %v", err)
	}
	if got, done := q.take(nil, 5); len(got) != 1 || !done {
		t.Fatalf("drain after close: %d %v", len(got), done)
	}
}

var testSeed = maphash.MakeSeed()

func hashOf(key string) uint64 { return maphash.String(testSeed, key) }

func TestKeyQueueSurvivesHashCollisions(t *testing.T) {
	q := newKeyQueue(10)
	tx := &txnState{}
	ctx := context.Background()
	// Two different keys with the same hash, as a 64-bit collision would give.
	for _, k := range []string{"a", "b", "a", "b"} {
		tx.pending.Add(1)
		if _, err := q.put(ctx, 42, change(k, k), canal.Image{}, 0, tx); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := q.take(nil, 10)
	if len(got) != 2 || got[0].change.Key != "a" || got[1].change.Key != "b" || got[0].merged != 1 || got[1].merged != 1 {
		t.Fatalf("take: %+v", got)
	}
	if q.depth() != 0 {
		t.Fatalf("depth %d after taking everything", q.depth())
	}
}
