package daemon

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// dataLossCheck is how often the marker key is checked.
const dataLossCheck = time.Second

// markerKey is the key whose absence tells that Redis lost the data invsync wrote.
func markerKey(cfg *config.Config) string {
	return "invsync:marker:" + cfg.State.Schema
}

// watchDataLoss checks the marker key every dataLossCheck. When it is gone with the
// applied markers (wentBack reports a change: FLUSHALL, a restart without persistence),
// the session ends on that and every table is loaded again with the stream stopped
// (see rollback.go); nothing is done here, so that one loss is one reload. When only the
// data marker is gone (evicted, deleted by hand, with other keys maybe), it loads every
// table while the stream goes on, and writes the marker again once that is done. That
// reload stamps its rows with the binlog position each chunk was read at, so they are
// ordered against the stream's by position and the two can run at once; there is no
// sweep (nothing stale is left to remove, and a sweep would race the stream's inserts).
func (d *Daemon) watchDataLoss(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, w snapshot.Writer, tables []*source.Table, marker string, floor func() layout.Seq, reclaim func() error, wentBack func() bool) {
	everyTick(ctx, dataLossCheck, func() bool {
		n, err := rdb.Exists(ctx, marker).Result()
		if err != nil || n == 1 {
			return true // unreachable (the sink reports that) or still there
		}
		if wentBack() {
			return true // the session ends on it and reloads (counted there), or the next tick decides
		}
		d.m.Resnapshots.WithLabelValues("redis_data_loss").Inc()
		// The claims on the key prefixes went with the data (see claims.go).
		if err := reclaim(); errors.Is(err, ErrClaimed) {
			d.log.Error("Redis lost its data and another invsync claimed these key prefixes meanwhile: not loading the tables", zap.Error(err))
			return true
		} else if err != nil {
			d.log.Error("cannot claim the key prefixes again after Redis lost its data", zap.Error(err))
		}
		d.log.Error("Redis lost invsync's data (the marker key is gone: restart without persistence, FLUSHALL or failover to an empty replica): loading every table again while streaming goes on",
			zap.String("marker", marker))
		// The reload must see what the stream had written before the loss, also a
		// transaction already in the binlog but not yet visible to readers.
		err = func() error {
			d.reloadMu.Lock()
			defer d.reloadMu.Unlock()
			snap := snapshot.New(d.src, d.cfg.Snapshot, tables, w, rdb, d.log.Named("snapshot"), nil).WithoutSweep().AtLeast(floor())
			_, _, err := snap.Run(ctx, positionIn(db, d.cfg.Source.Flavor, d.epoch.Load, d.log))
			return err
		}()
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("reload after Redis data loss failed; will try again", zap.Error(err))
			}
			return true // the marker stays missing: the next check, or the next leader, loads again
		}
		// Only a finished reload writes the marker: one interrupted (a stop, a kill -9,
		// the lock lost) leaves it missing, and whoever leads next loads every table.
		if err := rdb.Set(ctx, marker, time.Now().UTC().Format(time.RFC3339), 0).Err(); err != nil {
			d.log.Warn("cannot write the data-loss marker", zap.String("key", marker), zap.Error(err))
		}
		return true
	})
}

// everyTick calls f every interval until ctx ends or f returns false.
func everyTick(ctx context.Context, interval time.Duration, f func() bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f() {
			return
		}
	}
}
