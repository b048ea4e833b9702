package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// snapshotMode says how a snapshot writes: in which epoch of the source's history its
// position is, and whether its rows replace what Redis holds (a reload after the binlog
// was lost or replaced, when versions cannot order its rows against what Redis holds).
type snapshotMode struct {
	epoch   uint32
	replace bool
	floor   layout.Seq   // chunks are read, and the stream resumes, at or after it (snapshot.AtLeast)
	fence   func() error // asked before the applied markers are written (see Lock.Lease)
	// wrote, when set, is told the applied markers the snapshot wrote: the history adopts
	// them rather than reading them again (a loss right after the write would be read
	// as the state to keep).
	wrote func(*snapshotMarkers, source.Position)
}

// runSnapshot loads every table through w (which must set bloom bits through keeper),
// rebuilding the Bloom filters from the rows it writes, then saves the position recorded
// before the load as the checkpoint and returns it. progress may be nil (log lines only).
func runSnapshot(ctx context.Context, c *Conns, tables []*source.Table, w snapshot.Writer, keeper *bloom.Keeper, store *checkpoint.Store, log *zap.Logger, progress func(snapshot.Progress), mode snapshotMode) (source.Position, error) {
	cfg, db, rdb := c.Cfg, c.DB, c.Redis
	var lastLog time.Time
	logProgress := func(p snapshot.Progress) {
		if progress != nil {
			progress(p)
		}
		if time.Since(lastLog) < cfg.Snapshot.ProgressInterval {
			return
		}
		lastLog = time.Now()
		log.Info("snapshot progress", zap.String("table", p.Table), zap.Int64("rows", p.Rows), zap.Int64("estimated_rows", p.Estimate),
			zap.Float64("rows_per_second", p.RowsPerS), zap.Duration("eta", p.Remaining.Round(time.Second)))
	}
	// Only the leader claims the markers (see Lock.Lease).
	if mode.fence != nil {
		if err := mode.fence(); err != nil {
			return source.Position{}, fmt.Errorf("%w: %w", layout.ErrFenced, err)
		}
	}
	markers, err := readSnapshotMarkers(ctx, rdb, cfg)
	if err != nil {
		return source.Position{}, err
	}
	snap := snapshot.New(c.Source, cfg.Snapshot, tables, w, rdb, log, logProgress)
	if mode.replace {
		// The stream resumes from the position it returns: at or after the floor too,
		// else it would replay what the stream wrote before over rows read after it.
		snap = snap.Replacing().AtLeast(mode.floor).HandOffAtLeast()
	}
	var pos source.Position
	position := positionIn(db, cfg.Source.Flavor, func() uint32 { return mode.epoch }, log)
	first := true
	err = keeper.Rebuild(ctx, func(ctx context.Context) error {
		var err error
		pos, _, err = snap.Run(ctx, func(ctx context.Context) (source.Position, error) {
			if first {
				first = false
				return source.PositionWithoutPreparedXA(ctx, db, position, log)
			}
			return position(ctx)
		})
		return err
	})
	if err != nil {
		return pos, err
	}
	// This Redis now holds the data; the marker's absence will tell if it loses it. It
	// is written before the applied markers: a loss between the two takes the tokens,
	// and the marker write below fails.
	if err := rdb.Set(ctx, markerKey(cfg), time.Now().UTC().Format(time.RFC3339), 0).Err(); err != nil {
		log.Warn("cannot write the data-loss marker", zap.String("key", markerKey(cfg)), zap.Error(err))
	}
	// Redis holds every row up to pos (see rollback.go), then the checkpoint.
	if mode.fence != nil {
		if err := mode.fence(); err != nil {
			return pos, fmt.Errorf("%w: %w", layout.ErrFenced, err)
		}
	}
	if err := markers.write(ctx, rdb, pos); err != nil {
		return pos, err
	}
	if mode.wrote != nil {
		mode.wrote(markers, pos)
	}
	if err := store.Save(ctx, pos); err != nil {
		return pos, err
	}
	if err := store.RecordLoads(ctx, loadRecords(tables, pos)); err != nil {
		return pos, err
	}
	return pos, nil
}

// Snapshot is `invsync snapshot`: the leader's first snapshot, run once outside a
// daemon. It takes the leader lock, checks the source and Redis (waiting while they are
// unreachable), loads every table and records the position to stream from as the
// checkpoint, so that a later `invsync run` resumes from it.
func (d *Daemon) Snapshot(ctx context.Context, progress func(snapshot.Progress)) (source.Position, error) {
	cfg, log := d.cfg, d.log
	c, err := Open(cfg)
	if err != nil {
		return source.Position{}, err
	}
	defer c.Close()
	lock, held, err := TryLock(ctx, c.State, LockName(cfg))
	if err != nil {
		return source.Position{}, err
	}
	if !held {
		return source.Position{}, fmt.Errorf("a running invsync leads this config (it holds the lock %s on the state database): stop it before `invsync snapshot` (fix: stop the daemon, or let it heal by itself: it reloads on its own when it needs to)", LockName(cfg))
	}
	defer lock.Release()
	tables, err := d.waitReady(ctx, c)
	if err != nil {
		return source.Position{}, err
	}
	store, err := c.Checkpoint(ctx)
	if err != nil {
		return source.Position{}, err
	}
	store.Fence(lock.name, lock.ID())
	if pipeline, err := store.PipelineID(ctx); err != nil {
		return source.Position{}, err
	} else if err := claimRedis(ctx, c.Redis, cfg, pipeline); err != nil {
		return source.Position{}, err
	}
	// Over an earlier checkpoint, the snapshot replaces what Redis holds (rows changed
	// since without a version the guard could order by must not stay stale); over a
	// replaced history (another server, a reset binlog) it starts a new epoch.
	var mode snapshotMode
	if prev, ok, err := store.Load(ctx); err != nil {
		return source.Position{}, err
	} else if ok {
		mode = snapshotMode{epoch: prev.Epoch, replace: true}
		if reason, why, err := d.historyChanged(ctx, c.DB, store, prev); err != nil {
			return source.Position{}, err
		} else if reason != "" {
			mode.epoch++
			log.Warn("the source's binlog history was replaced since the checkpoint ("+why+"): the snapshot starts a new epoch", zap.Uint32("epoch", mode.epoch))
		}
	} else if id, err := source.Identity(ctx, c.DB, cfg.Source.Flavor); err != nil {
		return source.Position{}, err
	} else {
		store.SetSource(id)
	}
	keeper := c.Keeper(tables, log.Named("bloom"), nil)
	if err := keeper.Open(ctx); err != nil {
		return source.Position{}, err
	}
	// Fenced like the daemon: a snapshot suspended past the lease writes nothing more.
	mode.fence = lock.Lease
	keeper.SetFence(lock.Lease)
	w := c.Writer()
	w.SetFence(lock.Lease)
	pos, err := runSnapshot(ctx, c, tables, keeper.Wrap(w), keeper, store, log, progress, mode)
	if lost := (*errLostDuringLoad)(nil); errors.As(err, &lost) {
		err = fmt.Errorf("%w (fix: run `invsync snapshot` again once Redis is stable)", err)
	}
	return pos, err
}
