package bloom

import (
	"context"
	"fmt"
	"time"

	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
)

// adds are the keys of one table that an Ensure call adds, and their bit positions.
type adds struct {
	t   *tableFilter
	pks []string
	pos []uint64
}

// groupUpserts groups the primary keys of changes' upserts by the filter of their table
// (and forgets the deleted ones among the keys remembered for rebuilds).
func (k *Keeper) groupUpserts(changes []layout.Change) []adds {
	var groups []adds
	for i := range changes {
		c := &changes[i]
		if c.Op == layout.OpDelete {
			k.forgetDeleted(c.Key)
			continue
		}
		if c.Op != layout.OpUpsert {
			continue
		}
		prefix, pk, ok := layout.InnerOf(c.Key) // the encoded primary key is the Bloom item
		if !ok {
			continue
		}
		t := k.byPrefix[prefix]
		if t == nil {
			continue
		}
		g := -1
		for j := range groups {
			if groups[j].t == t {
				g = j
				break
			}
		}
		if g < 0 {
			groups = append(groups, adds{t: t})
			g = len(groups) - 1
		}
		groups[g].pks = append(groups[g].pks, pk)
	}
	return groups
}

// keepUnset trims each group to the keys whose bits Redis lacks; false if none remain.
func (k *Keeper) keepUnset(groups []adds) bool {
	pending := false
	now := time.Now().UnixNano()
	for j := range groups {
		g := &groups[j]
		t := g.t
		t.mu.Lock()
		news := g.pks[:0]
		for _, pk := range g.pks {
			if t.next != nil && t.next.addNew(pk) {
				t.nextItems++
			}
			t.noteRecent(pk, now)
			if !t.complete {
				// Readers do not use an incomplete bitmap (no meta): the rebuild under way
				// writes it whole, so its bits need no round trip now.
				if t.cur.addNew(pk) {
					t.items++
				}
				continue
			}
			// All k bits, even those cur holds: Redis can lack a bit that cur has (a swap
			// that failed half way, Redis gone back to an older state until the restore).
			var in bool
			if in, g.pos = t.cur.appendPositions(g.pos, pk); !in {
				news = append(news, pk)
			}
		}
		g.pks = news
		t.mu.Unlock()
		pending = pending || len(news) > 0
	}
	return pending
}

// setBits sets the groups' bits in Redis in one pipeline, then adds their keys in memory.
func (k *Keeper) setBits(ctx context.Context, groups []adds) error {
	pipe := k.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(groups))
	for j, g := range groups {
		if len(g.pos) > 0 {
			cmds[j] = pipe.Do(ctx, g.t.mirror.setBitsArgs(g.pos)...)
		}
	}
	_, err := pipe.Exec(ctx)
	for j := range groups {
		g := &groups[j]
		if cmds[j] == nil {
			continue
		}
		if cerr := cmds[j].Err(); cerr != nil {
			if !layout.IsWrongType(cerr) {
				return fmt.Errorf("bloom: set bits in %s: %w", g.t.mirror.Key(), cerr)
			}
			k.damaged(ctx, g.t, cerr)
		}
		g.t.mu.Lock()
		// Redis holds the bits: cur takes them, key by key (k positions each; k.swap keeps
		// cur in place while Ensure runs), counting the keys it lacked.
		nk := int(g.t.cur.K())
		for i := range g.pks {
			if g.t.cur.addPositions(g.pos[i*nk : (i+1)*nk]) {
				g.t.items++
			}
		}
		k.checkCapacity(g.t)
		g.t.mu.Unlock()
	}
	if err != nil && !layout.IsWrongType(err) {
		return fmt.Errorf("bloom: set bits: %w", err)
	}
	return nil
}

// forgetDeleted forgets the key of a deleted row among the keys remembered for rebuilds.
func (k *Keeper) forgetDeleted(key string) {
	prefix, pk, ok := layout.InnerOf(key)
	if t := k.byPrefix[prefix]; ok && t != nil {
		t.mu.Lock()
		t.forgetRecent(pk)
		t.mu.Unlock()
	}
}
