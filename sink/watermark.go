package sink

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/source"
)

// txnState tracks one source transaction until all its rows are acknowledged.
type txnState struct {
	id      uint64
	rows    int64 // rows routed (only the router goroutine writes it)
	pending atomic.Int64
	sealed  atomic.Bool
	pos     source.Position
	ts      time.Time
	started time.Time
}

// Watermark knows which transactions are done: sealed (its commit was read) and every
// row acknowledged by Redis. Advance returns the position of the newest transaction such
// that it and every transaction before it are done: the only position that may be
// checkpointed.
type Watermark struct {
	mu    sync.Mutex
	queue []*txnState // in binlog order
	last  *txnState   // newest transaction, the one rows are added to
	done  source.Position
	now   func() time.Time
}

// NewWatermark starts at pos (the position streaming starts from).
func NewWatermark(pos source.Position, now func() time.Time) *Watermark {
	return &Watermark{done: pos, now: now}
}

// open returns the state of transaction id, creating it (as the newest) if needed.
// Only the router goroutine calls it.
func (w *Watermark) open(id uint64) *txnState {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last != nil && w.last.id == id {
		return w.last
	}
	t := &txnState{id: id, started: w.now()}
	w.queue = append(w.queue, t)
	w.last = t
	return t
}

// seal marks transaction id read completely, at pos.
func (w *Watermark) seal(id uint64, pos source.Position, ts time.Time) {
	t := w.open(id)
	w.mu.Lock()
	t.pos, t.ts = pos, ts
	w.mu.Unlock()
	t.sealed.Store(true)
}

// Advance moves past every done transaction at the front and returns the newest done
// position, how many transactions completed and how many rows they held.
func (w *Watermark) Advance() (pos source.Position, txns int, rows int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for len(w.queue) > 0 {
		t := w.queue[0]
		if !t.sealed.Load() || t.pending.Load() != 0 {
			break
		}
		w.done = t.pos
		rows += t.rows
		w.queue[0] = nil
		w.queue = w.queue[1:]
		n++
	}
	if len(w.queue) == 0 {
		w.queue = nil
		w.last = nil
	}
	return w.done, n, rows
}

// InFlight returns the number of transactions not yet done, and the time the oldest of
// them was committed on the source (zero when none, or when its commit is not read yet).
func (w *Watermark) InFlight() (int, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		return 0, time.Time{}
	}
	t := w.queue[0]
	if t.sealed.Load() {
		return len(w.queue), t.ts
	}
	return len(w.queue), t.started
}
