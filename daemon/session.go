package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/sink"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// session streams from start until the stream ends, then drains the workers and writes
// the final checkpoint; it returns the position reached.
func (d *Daemon) session(ctx context.Context, start source.Position, tables []*source.Table, settles []canal.Settlement, names []string, w sink.Writer, store *checkpoint.Store,
	hist *redisHistory, onDDL reloadFunc) (source.Position, error) {
	wm := sink.NewWatermark(start, time.Now)
	beat := func() {
		d.lastEvent.Store(time.Now().UnixNano())
		d.ready.Store(true)
	}
	sk := sink.New(d.cfg.Sink, names, w, wm, d.m, d.log.Named("sink"), beat)
	if live := d.live.Load(); live != nil {
		sk.SetTuning(live.Sink.BatchSize, live.Sink.FlushInterval)
	}
	if d.parker != nil {
		sk.SetParker(d.parker)
	}
	d.wm.Store(wm)
	d.sk.Store(sk)
	defer d.ready.Store(false)

	src, err := canal.NewSource(d.cfg.Source, tables, d.log.Named("canal"))
	if err != nil {
		return start, err
	}
	src.WithSettlements(settles, func() { d.m.Settlements.WithLabelValues("invalid").Inc() })
	sinkCtx, stopSink := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSink()
	// The workers' errors reach the stream through the watermark and the handler; Run's
	// own is only waited for.
	var workers errgroup.Group
	workers.Go(func() error { return sk.Run(sinkCtx) })

	streamCtx, stopStream := context.WithCancelCause(ctx)
	defer stopStream(nil)
	// A Redis that went back ends the stream (see checkpointer.save).
	cp := &checkpointer{d: d, wm: wm, hist: hist, store: store, saved: start, lastWrite: time.Now(),
		wentBack: func(back *errRedisWentBack) { stopStream(back) }}
	var cpLoop sync.WaitGroup
	cpStop := make(chan struct{})
	cpLoop.Go(func() { cp.run(ctx, cpStop) })

	d.log.Info("streaming the binlog", start.Fields()...)
	d.ready.Store(true)
	d.lastEvent.Store(time.Now().UnixNano())
	srcErr := src.Run(streamCtx, start, &readyHandler{Sink: sk, d: d, onDDL: onDDL})
	var back *errRedisWentBack
	if errors.As(context.Cause(streamCtx), &back) {
		srcErr = back
	}

	// Stop reading, let the workers write what is queued, then checkpoint. An instance
	// that lost its lock does neither: another one leads (and its writes are fenced).
	sk.Close()
	lostLock := errors.Is(context.Cause(ctx), errLostLock)
	if lostLock {
		d.log.Warn("lost the leader lock: rows still queued are left to the instance that leads now (it streams from the checkpoint)")
		stopSink()
	}
	var drained atomic.Bool
	slow := time.AfterFunc(drainTimeout, func() {
		if drained.Load() {
			return // the timer fired as the workers finished
		}
		d.log.Warn("workers did not drain in time; rows still queued will be read again from the checkpoint", zap.Duration("timeout", drainTimeout))
		stopSink()
	})
	_ = workers.Wait()
	drained.Store(true)
	slow.Stop()
	close(cpStop)
	cpLoop.Wait()
	if !lostLock {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		cp.save(fctx, true)
	}
	if errors.Is(srcErr, context.Canceled) && ctx.Err() != nil {
		srcErr = nil
	}
	return cp.saved, srcErr
}

// reloadFunc reloads a mirrored table while the stream is paused at position at: when
// force is set, or when its definition changed (see reloadTable).
type reloadFunc func(ctx context.Context, sk *sink.Sink, t *source.Table, at source.Position, force bool, reason string) error

// readyHandler notes progress for /readyz and the lag gauge, and handles DDL.
type readyHandler struct {
	*sink.Sink
	d     *Daemon
	onDDL reloadFunc
}

func (h *readyHandler) TableChanged(ctx context.Context, t *source.Table, at source.Position, rowsChanged bool) error {
	return h.onDDL(ctx, h.Sink, t, at, rowsChanged, "ddl")
}

func (h *readyHandler) Reload(ctx context.Context, t *source.Table, at source.Position, reason string) error {
	return h.onDDL(ctx, h.Sink, t, at, true, reason)
}

// reloadTable runs after a DDL on a mirrored table, before its commit is acknowledged
// (so a crash replays the DDL and comes back here), and when rows of a rolled-back
// transaction were applied: it waits until everything before is written, reads the
// table's definition again and, when force is set (TRUNCATE, RENAME, DROP/CREATE, a
// rollback) or the columns or the key changed (a new column's default, a dropped or
// renamed column, a changed type change rows without row events), loads the table again,
// replacing every row and turning keys of rows that are gone into tombstones. The binlog
// stream waits meanwhile, so nothing else writes. A table that no longer exists after a
// DROP or RENAME has every key tombstoned: MySQL holds none of its rows; it is loaded
// again when a statement creates it again.
func (d *Daemon) reloadTable(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, w snapshot.Writer, sk *sink.Sink, t *source.Table, at source.Position, force bool, reason string) error {
	if err := sk.Flush(ctx); err != nil {
		return err
	}
	log := d.log.Named("ddl").With(zap.String("table", t.FullName()), zap.String("reason", reason))
	loaded, err := source.LoadTables(ctx, db, specs([]config.Table{d.cfg.Tables[t.Index]}))
	if err != nil {
		if !errors.Is(err, source.ErrTable) {
			return err
		}
		if !force || !tableMissing(ctx, db, t) {
			return fmt.Errorf("%w: after the statement at %s: %w (fix: restore the table, or remove it from tables and restart)", source.ErrPermanent, at, err)
		}
		d.m.Resnapshots.WithLabelValues(reason).Inc()
		log.Error("a mirrored table no longer exists (dropped or renamed away): its keys become tombstones; "+
			"it is loaded again if a later statement creates it (fix: restore the table, or remove it from tables before the next restart)", at.Fields()...)
		_, err := snapshot.New(d.src, d.cfg.Snapshot, []*source.Table{t}, w, rdb, log, nil).Replacing().Gone(ctx, t, at)
		return err
	}
	nt := loaded[0]
	nt.Index = t.Index
	if !force && sameDefinition(t, nt) {
		log.Info("DDL left the mirrored columns and the key as they were; no reload", at.Fields()...)
		return nil
	}
	*t = *nt
	d.m.Resnapshots.WithLabelValues(reason).Inc()
	log.Warn("loading a mirrored table again, replacing every row", at.Fields()...)
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	floor, err := d.replacingFloor(ctx, db, snapshot.SeqOf(at))
	if err != nil {
		return err
	}
	snap := snapshot.New(d.src, d.cfg.Snapshot, []*source.Table{t}, w, rdb, log, nil).Replacing().AtLeast(floor)
	_, _, err = snap.Run(ctx, func(context.Context) (source.Position, error) { return at, nil })
	return err
}

// tableMissing reports whether t does not exist on the source now.
func tableMissing(ctx context.Context, db *sql.DB, t *source.Table) bool {
	var n int
	err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", t.Schema, t.Name).Scan(&n)
	return err == nil && n == 0
}

func sameDefinition(a, b *source.Table) bool {
	if len(a.Columns) != len(b.Columns) || len(a.PK) != len(b.PK) {
		return false
	}
	for i := range a.Columns {
		if a.Columns[i] != b.Columns[i] {
			return false
		}
	}
	for i := range a.PK {
		if a.PK[i] != b.PK[i] {
			return false
		}
	}
	return true
}

func (h *readyHandler) Commit(ctx context.Context, c canal.Commit) error {
	h.d.lastEvent.Store(time.Now().UnixNano())
	return h.Sink.Commit(ctx, c)
}
