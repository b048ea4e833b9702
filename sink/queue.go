package sink

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/layout"
)

// entry is the newest pending change of one key. hold is the transaction of the oldest
// row it stands for, acknowledged only when the entry is written: since the watermark
// cannot pass that transaction before then, it cannot pass any later one either, so the
// rows merged into the entry afterwards are acknowledged as they are merged, and the
// checkpoint still never passes a change that is not in Redis.
type entry struct {
	change layout.Change
	image  canal.Image // rendered into change.Fields when written
	table  int
	at     int64 // when the key started waiting (unix nanos)
	hold   *txnState
	merged int    // rows superseded while waiting
	maxVer uint64 // greatest version column value among the merged changes
	hasVer bool
	hash   uint64 // of the key; the index in byHash unless overflow
	spill  bool   // indexed in overflow (its hash collided with another key's) // one per row merged into this entry, in arrival order
}

// keyQueue is a worker's queue: at most one entry per key, in the order keys first
// arrived. A change for a key that is already waiting replaces it in place (coalescing
// at enqueue), so when Redis is slower than the binlog, repeated changes of one key cost
// one write, and the queue's memory is bounded by the number of distinct keys.
type keyQueue struct {
	mu sync.Mutex
	// byHash indexes waiting entries by the 64-bit hash of their key (cheaper than a
	// string-keyed map on the per-row path); a key whose hash collides with another
	// waiting key's goes to overflow. In the rare case that a key then waits in both
	// (its first entry in overflow, a later one in byHash), the two are written in
	// order, which the write guard makes right; they are just not merged.
	byHash   map[uint64]*entry
	overflow map[string]*entry
	order    []*entry // FIFO of keys; head is order[head]
	head     int
	limit    int
	closed   bool
	ready    chan struct{} // signalled when an entry was added or the queue closed
	hasRoom  chan struct{} // signalled when entries were taken
	nearFull chan struct{} // signalled when an entry added left less than room places
	room     int           // the places urgent was last asked about (q.mu)
}

// errQueueClosed is returned by put after close.
var errQueueClosed = errors.New("sink queue closed")

func newKeyQueue(limit int) *keyQueue {
	return &keyQueue{
		byHash:   make(map[uint64]*entry),
		overflow: make(map[string]*entry),
		limit:    limit,
		ready:    make(chan struct{}, 1),
		hasRoom:  make(chan struct{}, 1),
		nearFull: make(chan struct{}, 1),
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// put adds a change of transaction t. It blocks while the queue holds limit distinct
// keys and the key is not among them. It reports whether the change was merged into a
// waiting entry.
func (q *keyQueue) put(ctx context.Context, hash uint64, c layout.Change, image canal.Image, table int, t *txnState) (merged bool, err error) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return false, errQueueClosed
		}
		e, ok := q.byHash[hash]
		spill := false
		if ok && e.change.Key != c.Key {
			spill = true
			e, ok = q.overflow[c.Key]
		}
		if ok {
			if len(e.change.Settles) > 0 || c.Op == layout.OpSettle {
				// Settlements are never superseded: they ride on the newest change.
				settles := slices.Concat(e.change.Settles, c.Settles)
				if c.Op == layout.OpSettle {
					c, image, table = e.change, e.image, e.table
				}
				c.Settles = settles
			}
			e.change, e.image, e.table = c, image, table
			e.merged++
			e.noteVersion(c, image)
			q.mu.Unlock()
			t.pending.Add(-1)
			return true, nil
		}
		if q.len() < q.limit {
			e := &entry{change: c, image: image, table: table, at: time.Now().UnixNano(), hold: t, hash: hash, spill: spill}
			e.noteVersion(c, image)
			if spill {
				q.overflow[c.Key] = e
			} else {
				q.byHash[hash] = e
			}
			q.order = append(q.order, e)
			near := q.room > 0 && q.len() > q.limit-q.room
			q.mu.Unlock()
			signal(q.ready)
			if near {
				signal(q.nearFull)
			}
			return false, nil
		}
		q.mu.Unlock()
		select {
		case <-q.hasRoom:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// take moves up to max entries, oldest key first, into dst. It returns what it took
// (possibly nothing) and whether the queue is closed and empty.
func (q *keyQueue) take(dst []*entry, max int) ([]*entry, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(dst) < max && q.head < len(q.order) {
		e := q.order[q.head]
		q.order[q.head] = nil
		q.head++
		if e.spill {
			delete(q.overflow, e.change.Key)
		} else {
			delete(q.byHash, e.hash)
		}
		dst = append(dst, e)
	}
	if q.head == len(q.order) {
		q.order, q.head = q.order[:0], 0
	} else if q.head > len(q.order)/2 && q.head > 1024 {
		n := copy(q.order, q.order[q.head:])
		clear(q.order[n:])
		q.order, q.head = q.order[:n], 0
	}
	if len(dst) > 0 {
		signal(q.hasRoom)
	}
	return dst, q.closed && q.head == len(q.order)
}

// urgent reports whether the queue must be written now, even while catching up: it has
// less than room places left (the reader is about to wait for room: holding its keys
// longer would only stall the reader, and with it every other worker), is closed, or its
// oldest key has waited since before oldest (unix nanos).
func (q *keyQueue) urgent(oldest int64, room int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.room = room
	return q.closed || q.len() > q.limit-room || (q.head < len(q.order) && q.order[q.head].at <= oldest)
}

// len is the number of waiting keys; q.mu must be held.
func (q *keyQueue) len() int { return len(q.byHash) + len(q.overflow) }

// depth is the number of waiting keys.
func (q *keyQueue) depth() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.len()
}

func (q *keyQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	signal(q.ready)
}

// noteVersion keeps the greatest version of the changes merged into e (see
// layout.Change.MaxVersion).
func (e *entry) noteVersion(c layout.Change, image canal.Image) {
	v, ok := image.VersionValue()
	if c.Op == layout.OpDelete {
		var err error
		v, err = strconv.ParseUint(c.Version, 10, 64)
		ok = err == nil
	}
	if ok && (!e.hasVer || v > e.maxVer) {
		e.maxVer, e.hasVer = v, true
	}
}

// maxVersion is the MaxVersion to write with e's change: empty unless a merged change
// had a greater version than the final one.
func (e *entry) maxVersion(final string) string {
	if !e.hasVer || e.merged == 0 {
		return ""
	}
	if f, err := strconv.ParseUint(final, 10, 64); err == nil && f >= e.maxVer {
		return ""
	}
	return strconv.FormatUint(e.maxVer, 10)
}
