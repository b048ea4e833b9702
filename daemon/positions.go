package daemon

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
)

// historyChanged reports whether the source's binlog history was replaced since pos was
// checkpointed: another server answers (its identity differs from the one recorded with
// the checkpoint: a failover to another primary, a replaced server), or the server's
// current position is before pos (RESET MASTER). reason is the metric label, why the
// text for the log.
func (d *Daemon) historyChanged(ctx context.Context, db *sql.DB, store *checkpoint.Store, pos source.Position) (reason, why string, err error) {
	identity, err := source.Identity(ctx, db, d.cfg.Source.Flavor)
	if err != nil {
		return "", "", err
	}
	recorded, err := store.LoadSource(ctx)
	if err != nil {
		return "", "", err
	}
	store.SetSource(identity)
	if recorded != "" && recorded != identity {
		return "source_changed", fmt.Sprintf("the checkpoint was written for source %q, the server now answering is %q", recorded, identity), nil
	}
	cur, err := source.CurrentPosition(ctx, db, d.cfg.Source.Flavor, nil)
	if err != nil {
		return "", "", err
	}
	cur.Epoch = pos.Epoch
	if pos.File != "" && cur.File != "" && cur.Before(pos) {
		return "binlog_reset", fmt.Sprintf("the server's current position %s is before the checkpoint %s: its binlog was reset", cur, pos), nil
	}
	return "", "", nil
}

// replacingFloor is where a replacing reload's reads must start: at or after floor, and
// at or after the source's current position, so that its rows are newer than any that a
// reload before it stamped (reloads run one at a time, under reloadMu).
func (d *Daemon) replacingFloor(ctx context.Context, db *sql.DB, floor layout.Seq) (layout.Seq, error) {
	now, err := positionIn(db, d.cfg.Source.Flavor, d.epoch.Load, d.log)(ctx)
	if err != nil {
		return floor, err
	}
	if seq := snapshot.SeqOf(now); floor.Less(seq) {
		floor = seq
	}
	return floor, nil
}
