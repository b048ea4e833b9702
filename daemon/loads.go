package daemon

import (
	"context"
	"database/sql"

	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Each table is loaded whole once under its key prefix; the state schema records it
// (checkpoint.Load). A checkpoint says how far the stream got for the tables that were
// loaded: a table added to the config since, or given another key prefix, was never
// loaded, and the stream alone would only ever write the rows that change from now on.

// loadRecords returns the load records of tables (all loaded from pos).
func loadRecords(tables []*source.Table, pos source.Position) []checkpoint.Load {
	loads := make([]checkpoint.Load, len(tables))
	for i, t := range tables {
		loads[i] = checkpoint.Load{Table: t.FullName(), KeyPrefix: t.KeyPrefix, Pos: pos}
	}
	return loads
}

// loadNewTables loads the tables of the config that have no load record, before the
// stream starts from the checkpoint at pos: each chunk is read in a consistent snapshot
// at or after pos and replaces what Redis holds under the table's prefix (keys of rows
// that are gone become tombstones), so that the changes the stream replays from pos order
// against it by position. It forgets the records of tables the config no longer mirrors
// (one added again later is loaded again) and logs the key prefixes left behind.
func (d *Daemon) loadNewTables(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, w snapshot.Writer, store *checkpoint.Store, tables []*source.Table, pos source.Position) error {
	loads, err := store.Loads(ctx)
	if err != nil {
		return err
	}
	if len(loads) == 0 {
		// No record at all under a checkpoint: a state schema from an invsync that kept
		// none (an upgrade; or one stopped before it recorded them). The tables it
		// mirrored were loaded. Tables added at the same upgrade are not told apart;
		// reconcile --repair loads what they miss.
		d.log.Info("recording the configured tables as loaded (first start of an invsync that records them)", pos.Fields()...)
		return store.RecordLoads(ctx, loadRecords(tables, pos))
	}
	type key struct{ table, prefix string }
	have := make(map[key]bool, len(loads))
	for _, l := range loads {
		have[key{l.Table, l.KeyPrefix}] = true
	}
	want := make(map[key]bool, len(tables))
	var missing []*source.Table
	for _, t := range tables {
		k := key{t.FullName(), t.KeyPrefix}
		want[k] = true
		if !have[k] {
			missing = append(missing, t)
		}
	}
	var gone []checkpoint.Load
	for _, l := range loads {
		if want[key{l.Table, l.KeyPrefix}] {
			continue
		}
		gone = append(gone, l)
		still := false
		for _, t := range tables {
			still = still || t.FullName() == l.Table
		}
		if still {
			d.log.Warn("a mirrored table has another key_prefix than when it was loaded: it is loaded under the new one; "+
				"the keys under the old one are left as they are, no longer updated (fix: delete them, e.g. redis-cli --scan --pattern '<old_key_prefix>{*' | xargs redis-cli unlink)",
				zap.String("table", l.Table), zap.String("old_key_prefix", l.KeyPrefix))
		} else {
			d.log.Warn("a table loaded earlier is no longer in tables: its keys are left as they are, no longer updated; if it is added again it is loaded again",
				zap.String("table", l.Table), zap.String("old_key_prefix", l.KeyPrefix))
		}
	}
	if err := store.ForgetLoads(ctx, gone); err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	names := make([]string, len(missing))
	for i, t := range missing {
		names[i] = t.FullName() + " (" + t.KeyPrefix + ")"
	}
	d.log.Warn("tables never loaded under their key prefix (added to tables, or given another key_prefix): loading them before streaming",
		append(pos.Fields(), zap.Strings("tables", names))...)
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	for _, t := range missing {
		d.m.Resnapshots.WithLabelValues("table_added").Inc()
		floor, err := d.replacingFloor(ctx, db, snapshot.SeqOf(pos))
		if err != nil {
			return err
		}
		snap := snapshot.New(d.src, d.cfg.Snapshot, []*source.Table{t}, w, rdb, d.log.Named("snapshot"), nil).Replacing().AtLeast(floor)
		p0, _, err := snap.Run(ctx, positionIn(db, d.cfg.Source.Flavor, d.epoch.Load, d.log))
		if err != nil {
			return err
		}
		if err := store.RecordLoads(ctx, loadRecords([]*source.Table{t}, p0)); err != nil {
			return err
		}
	}
	return nil
}
