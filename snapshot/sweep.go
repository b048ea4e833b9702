package snapshot

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"

	"github.com/invsync/invsync/internal/redisscan"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Gone turns every live row under t's prefix into a tombstone: the table no longer
// exists on the source (at is the position where that was seen; with Replacing, the
// tombstones replace whatever version Redis holds and carry at). It returns how many.
func (s *Snapshot) Gone(ctx context.Context, t *source.Table, at source.Position) (int64, error) {
	r := &run{s: s, seen: map[uint64]struct{}{}}
	err := r.sweep(ctx, t, at)
	return r.swept, err
}

// sweep turns into tombstones the live rows under t's prefix that the snapshot did not
// find: rows deleted while invsync could not follow the binlog, or leftovers. A key
// whose hash matches a found key's is left alone (a collision is harmless that way). A
// replacing reload tombstones them whatever their version, stamped with p0 (the position
// recorded before the table was read): a later binlog write of the key wins.
func (r *run) sweep(ctx context.Context, t *source.Table, p0 source.Position) error {
	if r.s.noSweep {
		r.seen = nil
		return nil
	}
	var pending []layout.Change
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		// The guard tombstones only a live row whose _v is still the one read here.
		out := make([]layout.Outcome, len(pending))
		err := r.s.w.Apply(ctx, pending, out)
		for _, o := range out {
			if o.Result == layout.Applied {
				r.swept++
			}
		}
		pending = pending[:0]
		return err
	}
	check := func(ctx context.Context, all []string) error {
		var keys []string
		for _, k := range all {
			if _, ok := r.seen[maphash.String(r.s.seed, k)]; !ok {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return nil
		}
		// Read through the client: in a cluster it follows a key that moved (MOVED, ASK).
		pipe := r.s.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.HMGet(ctx, k, layout.FieldVersion, layout.FieldDeleted, layout.FieldNull)
		}
		_, _ = pipe.Exec(ctx)
		for i, k := range keys {
			v, err := cmds[i].Result()
			if err != nil || len(v) != 3 || v[0] == nil || v[1] != nil || v[2] != nil {
				continue // not a live row of ours (or not a hash)
			}
			ver, _ := v[0].(string)
			c := layout.Change{Key: k, Op: layout.OpDelete, Version: ver}
			if r.s.replace {
				c.Replace, c.Seq = true, SeqOf(p0)
			}
			pending = append(pending, c)
		}
		return flush()
	}
	// Tombstoning is idempotent (the guard compares _v): a scan done again after the
	// cluster resharded under it may see a key twice.
	scanErr := redisscan.Keys(ctx, r.s.rdb, redisscan.GlobEscape(t.KeyPrefix)+"{*}", 500, check, nil)
	r.seen = nil
	if errors.Is(scanErr, redisscan.ErrIncomplete) {
		// A cluster stuck with a slot migrating would stop every load (and a DDL reload
		// would hold the stream) for good: the sweep only removes leftovers, so go on.
		r.s.log.Error("the sweep of keys of rows that are gone may have missed some: the Redis Cluster kept resharding, or a slot is stuck migrating "+
			"(fix: finish it with redis-cli --cluster fix, then run invsync reconcile --repair)", zap.String("table", t.FullName()), zap.Error(scanErr))
		return nil
	}
	if scanErr != nil {
		return fmt.Errorf("snapshot: sweep %s: %w", t.FullName(), scanErr)
	}
	return nil
}
