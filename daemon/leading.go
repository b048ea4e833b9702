package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/sink"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// leader is one term of leading (from taking the lock to losing or releasing it): what
// it opened, and where the stream is.
type leader struct {
	d        *Daemon
	conns    *Conns
	db       *sql.DB
	stateDB  *sql.DB
	rdb      redis.UniversalClient
	lock     *Lock
	tables   []*source.Table
	settles  []canal.Settlement // the settlement tables of the tables with reservations
	names    []string
	store    *checkpoint.Store
	pipeline string
	keeper   *bloom.Keeper
	raw      *layout.Writer  // the versioned writer
	writer   snapshot.Writer // raw, setting each key's Bloom bits first
	comp     *compensation.Store
	retrier  *compensation.Retrier
	fetch    *snapshot.Fetcher
	hist     *redisHistory
	pos      source.Position // where the stream (re)starts

	healing                sync.WaitGroup
	healRunning, healAgain atomic.Bool
}

// open checks the source and Redis, opens the state schema, claims the key prefixes,
// records this instance as the leader and loads the Bloom filters.
func (l *leader) open(ctx context.Context) error {
	d := l.d
	tables, err := d.waitReady(ctx, l.conns)
	if err != nil {
		return err
	}
	l.tables = tables
	if l.settles, err = l.conns.Settlements(ctx, tables); err != nil {
		return fmt.Errorf("%w: %w", source.ErrPermanent, err)
	}
	l.warnEviction(ctx)
	if err := d.retry(ctx, "open the state schema", func() error {
		var err error
		l.store, err = checkpoint.Open(ctx, l.stateDB, d.cfg.State.Schema, pipelineName)
		return err
	}); err != nil {
		return err
	}
	l.store.Fence(l.lock.name, l.lock.ID())
	// Refuse to write under a namespace another source's invsync writes (see claims.go),
	// before anything is written.
	if err := d.retry(ctx, "claim the key prefixes in Redis", func() error {
		var err error
		if l.pipeline, err = l.store.PipelineID(ctx); err != nil {
			return err
		}
		return claimRedis(ctx, l.rdb, d.cfg, l.pipeline)
	}); err != nil {
		return err
	}
	// Say where this leader answers, for `invsync reconcile` run on another host.
	if err := d.retry(ctx, "record this instance as the leader", func() error {
		host, _ := os.Hostname()
		return l.store.SetLeader(ctx, checkpoint.Leader{HTTPAddr: d.advertised(), Host: host, PID: os.Getpid(), Session: l.lock.ID()})
	}); err != nil {
		return err
	}
	l.keeper = l.conns.Keeper(l.tables, d.log.Named("bloom"), d.bloomM)
	// Fencing: once the lease may have expired (a standby may lead), nothing is written:
	// no row, no applied marker, no Bloom bitmap swapped in.
	l.keeper.SetFence(l.lock.Lease)
	if err := d.retry(ctx, "load the bloom filters", func() error { return l.keeper.Open(ctx) }); err != nil {
		return err
	}
	l.names = make([]string, len(d.cfg.Tables))
	for i, t := range d.cfg.Tables {
		l.names[i] = t.TableName()
	}
	return nil
}

// openWriters builds the writers (every row write sets its key's Bloom bits first, see
// bloom.Keeper) and the compensation table with its retrier.
func (l *leader) openWriters(ctx context.Context) error {
	d := l.d
	live := d.live.Load()
	l.raw = l.conns.Writer()
	l.raw.SetRecordTTL(recordTTL(d.cfg))
	l.raw.SetTTLs(live.Bloom.TombstoneTTL, live.Bloom.NullTTL)
	l.raw.SetFence(l.lock.Lease)
	l.writer = l.keeper.Wrap(l.raw)
	if err := d.retry(ctx, "open the compensation table", func() error {
		var err error
		l.comp, err = compensation.Open(ctx, l.stateDB, d.cfg.State.Schema, compensation.NewSchedule(live.Compensation), time.Now)
		return err
	}); err != nil {
		return err
	}
	d.parker = l.comp
	l.fetch = snapshot.NewFetcher(l.conns.Source, l.tables, d.epoch.Load, d.log.Named("compensation"))
	l.retrier = compensation.NewRetrier(l.comp, l.fetch.Fetch, l.writer, d.m, d.log.Named("compensation"), live.Compensation.PollInterval)
	return nil
}

// resume reads the checkpoint (or, on a first start, loads every table and records the
// position), then compares it with what Redis holds: lost when a master lost
// invsync's data, heal when Redis holds less than the checkpoint (the stream then starts
// from what it holds, and a reconciliation follows).
func (l *leader) resume(ctx context.Context) (lost, heal bool, err error) {
	d := l.d
	var found bool
	if err := d.retry(ctx, "read the checkpoint", func() error {
		var err error
		l.pos, found, err = l.store.Load(ctx)
		return err
	}); err != nil {
		return false, false, err
	}
	d.epoch.Store(l.pos.Epoch)
	if found {
		d.log.Info("resuming from the checkpoint", l.pos.Fields()...)
	} else if err := l.firstSnapshot(ctx); err != nil {
		return false, false, err
	}
	// Redis may hold less than the checkpoint (restored from an older RDB/AOF, failed
	// over to a lagging replica while invsync was stopped): stream from what it holds.
	err = d.retry(ctx, "read Redis's applied markers", func() error {
		var err error
		if l.hist, err = newRedisHistory(ctx, l.rdb, d.cfg); err != nil {
			return err
		}
		l.hist.fence = l.lock.Lease
		dataMarker := l.rdb.Exists(ctx, markerKey(d.cfg)).Val() == 1
		// After a first snapshot there is a checkpoint: Redis must hold the markers it wrote.
		rewind, gone, err := l.hist.start(ctx, l.pos, dataMarker)
		if err != nil {
			return err
		}
		if gone {
			d.m.RedisRollbacks.Inc()
			d.log.Error("Redis lost invsync's data on a master, or holds a state from before the source's history was replaced: every table is loaded again, replacing what it holds",
				zap.Strings("markers", l.hist.keys))
			lost = true
		}
		if rewind != nil {
			d.m.RedisRollbacks.Inc()
			d.log.Error("Redis holds less than the checkpoint (restored from an older RDB/AOF or failed over to a lagging replica): streaming again from what it holds, then reconciling",
				append(l.pos.Fields(), zap.String("redis_holds", rewind.String()))...)
			l.pos, heal = *rewind, true
			return l.store.Save(ctx, l.pos)
		}
		return nil
	})
	return lost, heal, err
}

// firstSnapshot loads every table on a first start and records the position to stream
// from, with the source's identity.
func (l *leader) firstSnapshot(ctx context.Context) error {
	d := l.d
	// The first checkpoint records the source's identity (later ones keep it until
	// historyChanged finds another).
	if err := d.retry(ctx, "read the source's identity", func() error {
		identity, err := source.Identity(ctx, l.db, d.cfg.Source.Flavor)
		l.store.SetSource(identity)
		return err
	}); err != nil {
		return err
	}
	d.log.Info("no checkpoint yet: loading every table first (snapshot), then streaming from the position recorded before it")
	return d.retry(ctx, "snapshot the tables", func() error {
		var err error
		l.pos, err = runSnapshot(ctx, l.conns, l.tables, l.writer, l.keeper, l.store, d.log.Named("snapshot"), nil, snapshotMode{fence: l.lock.Lease})
		return err
	})
}

// running registers the leader's live-reloadable parts (see Daemon.reload) and starts
// the reconcile schedule; stop ends both.
func (l *leader) running() (stop func(), err error) {
	d := l.d
	stopSchedule, err := d.startSchedule(l.db, l.tables, l.rdb, l.raw, l.keeper)
	if err != nil {
		return nil, err
	}
	var schedMu sync.Mutex
	d.running.Store(&leading{writer: l.raw, comp: l.comp, retrier: l.retrier, reschedule: func() error {
		schedMu.Lock()
		defer schedMu.Unlock()
		stopSchedule()
		stop, err := d.startSchedule(l.db, l.tables, l.rdb, l.raw, l.keeper)
		if err != nil {
			stopSchedule = func() {}
			return err
		}
		stopSchedule = stop
		return nil
	}})
	return func() {
		d.running.Store(nil)
		schedMu.Lock()
		defer schedMu.Unlock()
		stopSchedule()
	}, nil
}

// watchDataLoss runs the data marker's watch (see Daemon.watchDataLoss) until ctx ends.
func (l *leader) watchDataLoss(ctx context.Context) {
	d := l.d
	d.watchDataLoss(ctx, l.db, l.rdb, l.writer, l.tables, markerKey(d.cfg), func() layout.Seq {
		if sk := d.sk.Load(); sk != nil {
			return sk.LastSeq()
		}
		return layout.Seq{}
	}, func() error { return claimRedis(ctx, l.rdb, d.cfg, l.pipeline) }, func() bool {
		// Redis lost the applied markers too, or cannot tell now: the session ends on
		// it (or the next check decides).
		return l.hist.check(ctx) != nil
	})
}

// leaveErr is what leading returns on err: nothing when it ended because ctx did.
func leaveErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// resnapshot loads every table again (the stream is stopped), records the new position
// and its epoch, and takes the applied markers it wrote as the history's.
func (l *leader) resnapshot(ctx context.Context, mode snapshotMode, reason string) error {
	d := l.d
	d.m.Resnapshots.WithLabelValues(reason).Inc()
	if reason == "redis_data_loss" {
		// The claims on the key prefixes went with the data (see claims.go); another
		// pipeline that claimed them meanwhile stops this one (ErrClaimed is permanent).
		if err := d.retry(ctx, "claim the key prefixes again after Redis lost its data", func() error {
			return claimRedis(ctx, l.rdb, d.cfg, l.pipeline)
		}); err != nil {
			return err
		}
	}
	// Its rows replace what Redis holds: they must be at least as new as what the
	// stream wrote, also a transaction in the binlog not yet visible to readers.
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if sk := d.sk.Load(); sk != nil {
		mode.floor = sk.LastSeq()
	}
	if err := d.retry(ctx, "snapshot the tables", func() error {
		// ... and at least as new as any stamp a reload wrote before it.
		now, err := d.replacingFloor(ctx, l.db, mode.floor)
		if err != nil {
			return err
		}
		mode.floor = now
		mode.fence = l.lock.Lease
		mode.wrote = l.hist.adopt
		l.pos, err = runSnapshot(ctx, l.conns, l.tables, l.writer, l.keeper, l.store, d.log.Named("snapshot"), nil, mode)
		if lost := (*errLostDuringLoad)(nil); errors.As(err, &lost) {
			d.m.RedisRollbacks.Inc()
			d.m.Resnapshots.WithLabelValues("redis_data_loss").Inc()
		}
		return err
	}); err != nil {
		return err
	}
	d.epoch.Store(l.pos.Epoch)
	return nil
}

// heal runs a reconciliation with repair and a Bloom rebuild in the background: after
// Redis went back, writes that the stream does not replay (the compensation retrier's,
// reloads', repairs', their Bloom bits) may be lost too. A call while one runs makes it
// run once more (the running one may have read before this rollback).
func (l *leader) heal(ctx context.Context) {
	if !l.healRunning.CompareAndSwap(false, true) {
		l.healAgain.Store(true)
		return
	}
	l.healing.Go(func() {
		defer l.healRunning.Store(false)
		for again := true; again && ctx.Err() == nil; again = l.healAgain.Swap(false) {
			l.d.reconcileOnce(ctx, l.db, l.tables, l.rdb, l.raw, l.keeper, true, "after Redis went back")
		}
	})
}

// stream streams from l.pos until ctx ends (nil) or a permanent error, handling each way
// a session ends: a replaced history, Redis going back or losing its data, a purged
// position, a broken connection (reconnect with backoff).
func (l *leader) stream(ctx context.Context) error {
	d := l.d
	reconnect := backoff.New(time.Second, 30*time.Second)
	for {
		started := time.Now()
		// The source's history may have been replaced since the checkpoint (RESET MASTER,
		// a failover to another primary): then a new epoch, and every table loaded again.
		again, err := l.historyReplaced(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if again {
			continue
		}
		next, err := l.pos, source.PositionAvailable(ctx, l.db, l.pos)
		var back *errRedisWentBack
		if err == nil {
			next, back, err = l.session(ctx)
		}
		if ctx.Err() != nil {
			d.log.Info("stopped cleanly", next.Fields()...)
			return nil
		}
		if back != nil {
			if err := l.redisWentBack(ctx, back, next); err != nil {
				return leaveErr(ctx, err)
			}
			continue
		}
		l.pos = next
		if errors.Is(err, canal.ErrHistoryChanged) {
			continue // checked at the top of the loop
		}
		if errors.Is(err, source.ErrPositionLost) {
			if err := l.positionLost(ctx, err); err != nil {
				return leaveErr(ctx, err)
			}
			continue
		}
		if errors.Is(err, source.ErrPermanent) {
			return err
		}
		d.m.StreamRestarts.Inc()
		if time.Since(started) > time.Minute {
			reconnect.Reset() // it streamed a while: not the same failure again
		}
		d.log.Warn("binlog stream ended; reconnecting", append(l.pos.Fields(), zap.Error(err), zap.Duration("backoff", reconnect.Current()))...)
		if reconnect.Wait(ctx) != nil {
			return nil
		}
	}
}

// historyReplaced checks whether the source's history was replaced since l.pos; when it
// was, it starts a new epoch and loads every table again (again: the loop starts over,
// also after a failed check, which is retried in a second).
func (l *leader) historyReplaced(ctx context.Context) (again bool, err error) {
	d := l.d
	reason, why, err := d.historyChanged(ctx, l.db, l.store, l.pos)
	if err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		d.log.Warn("cannot check the source's history; retrying", zap.Error(err))
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
		return true, nil
	}
	if reason == "" {
		return false, nil
	}
	d.m.SourceEpochs.Inc()
	mode := snapshotMode{epoch: l.pos.Epoch + 1, replace: true}
	d.log.Error("the source's binlog history was replaced under invsync ("+why+"): starting a new epoch, in which every write orders after every earlier one, and loading every table again, replacing what Redis holds",
		append(l.pos.Fields(), zap.String("reason", reason), zap.Uint32("new_epoch", mode.epoch))...)
	return true, l.resnapshot(ctx, mode, reason)
}

// session streams one session from l.pos, ended early when Redis goes back to an older
// state (see rollback.go); it returns the position reached and, when Redis went back,
// why.
func (l *leader) session(ctx context.Context) (source.Position, *errRedisWentBack, error) {
	d := l.d
	sessCtx, endSession := context.WithCancelCause(ctx)
	var checking sync.WaitGroup
	checking.Go(func() { d.watchRedisHistory(sessCtx, l.hist, endSession) })
	next, err := d.session(sessCtx, l.pos, l.tables, l.settles, l.names, l.writer, l.store, l.hist, func(ctx context.Context, sk *sink.Sink, t *source.Table, at source.Position, force bool, reason string) error {
		return d.reloadTable(ctx, l.db, l.rdb, l.writer, sk, t, at, force, reason)
	})
	var back *errRedisWentBack
	if !errors.As(context.Cause(sessCtx), &back) {
		errors.As(err, &back)
	}
	endSession(nil)
	checking.Wait()
	return next, back, err
}

// redisWentBack heals Redis after it went back to an older state or lost invsync's
// data (next: where the session had got to).
func (l *leader) redisWentBack(ctx context.Context, back *errRedisWentBack, next source.Position) error {
	d := l.d
	d.m.RedisRollbacks.Inc()
	if back.to == nil || back.to.Epoch < d.epoch.Load() {
		// Nothing to stream from (the marker is gone, or from before the source's
		// history was replaced): load every table again, replacing what it holds.
		d.log.Error("Redis lost invsync's data or went back before the source's history was replaced: every table is loaded again", zap.Error(back))
		reason := "redis_data_loss"
		if back.to != nil {
			reason = "redis_went_back"
		}
		return l.resnapshot(ctx, snapshotMode{epoch: d.epoch.Load(), replace: true}, reason)
	}
	// Stream again from what Redis holds: the changes it lost are replayed.
	l.pos = next
	if back.to.Before(l.pos) {
		l.pos = *back.to
	}
	d.log.Error("Redis went back to an older state: streaming again from what it holds, Bloom bitmaps written again from memory, then reconciling",
		append(l.pos.Fields(), zap.Error(back))...)
	if err := d.retry(ctx, "heal Redis after it went back", func() error {
		if err := l.keeper.RestoreAll(ctx); err != nil {
			return err
		}
		if err := l.hist.resync(ctx); err != nil {
			return err
		}
		return l.store.Save(ctx, l.pos)
	}); err != nil {
		return err
	}
	l.heal(ctx)
	return nil
}

// positionLost handles a checkpoint whose binlog was purged: a new epoch when the binlog
// was reset, else (source.on_position_lost) an error or every table loaded again.
func (l *leader) positionLost(ctx context.Context, err error) error {
	d := l.d
	// A reset binlog loses the position too: that is a new epoch, not a purge.
	if reason, _, herr := d.historyChanged(ctx, l.db, l.store, l.pos); herr == nil && reason != "" {
		return nil
	}
	oldest := source.OldestBinlog(ctx, l.db)
	if d.cfg.Source.OnPositionLost == "fail" {
		return fmt.Errorf("the checkpoint's binlog position %s is no longer on %s (its oldest binlog is %s): changes made since were purged unread "+
			"(fix: run `invsync snapshot` to load every table again and record a new position, then `invsync run`; or set source.on_position_lost: resnapshot; "+
			"and keep binlogs longer, e.g. binlog_expire_logs_seconds): %w", l.pos, d.cfg.Source.Addr, oldest, err)
	}
	d.log.Error("the checkpoint's binlog position is no longer on the server: loading every table again, replacing what Redis holds (source.on_position_lost: resnapshot)",
		append(l.pos.Fields(), zap.String("oldest_binlog", oldest), zap.Error(err))...)
	// Rows changed in the purged gap without a version the guard could order by (a
	// delete and re-insert with the version restarted, an update that did not bump
	// it) must not stay stale: the reload replaces every row.
	return l.resnapshot(ctx, snapshotMode{epoch: l.pos.Epoch, replace: true}, "position_lost")
}

// runLeading does the leader's work until ctx ends (nil), a permanent error, or one of
// its background loops fails (an error wrapping errLoopFailed). The loops and the stream
// run in one errgroup: whichever fails first ends the others.
func (d *Daemon) runLeading(ctx context.Context, c *Conns, lock *Lock) error {
	l := &leader{d: d, conns: c, db: c.DB, stateDB: c.State, rdb: c.Redis, lock: lock}
	if err := l.open(ctx); err != nil {
		return err
	}
	d.keeper.Store(l.keeper)
	// The filters are the leader's: once it stops leading, a rebuild asked of it must
	// not swap one in under the instance that leads then.
	defer d.keeper.CompareAndSwap(l.keeper, nil)
	if err := l.openWriters(ctx); err != nil {
		return err
	}
	defer l.fetch.Close()
	groupCtx, endGroup := context.WithCancel(ctx)
	defer endGroup()
	g, gctx := errgroup.WithContext(groupCtx)
	g.Go(l.loop(gctx, "compensation_retrier", l.retrier.Run))
	err := l.lead(gctx, g)
	// A loop that failed first ended the stream (its error is the group's cause); one
	// that fails after the stream ended on its own error does not hide that error.
	loopFirst := errors.Is(context.Cause(gctx), errLoopFailed)
	endGroup() // the stream ended: so do the loops
	if werr := g.Wait(); werr != nil && (loopFirst || err == nil) {
		err = werr
	}
	return leaveErr(ctx, err)
}

// errLoopFailed wraps the failure of one of the leader's background loops.
var errLoopFailed = errors.New("a background loop of the leader failed")

// loop runs f(ctx), one of the leader's background loops, in the errgroup: an end while
// ctx is still alive is a failure, counted and returned wrapping errLoopFailed; the term
// ends and the instance leads again. A panic is logged and crashes the process as
// before: locks it held, here or in the libraries, may never be released, and a new term
// could hang on them while holding the leader lock (the supervisor restarts the process;
// MySQL releases the lock with its session).
func (l *leader) loop(ctx context.Context, name string, f func(context.Context)) func() error {
	return func() error {
		defer func() {
			if r := recover(); r != nil {
				l.d.log.Error("a background loop of the leader panicked: exiting", zap.String("loop", name), zap.Any("panic", r), zap.Stack("stack"))
				panic(r)
			}
		}()
		run := ctx
		if fault := l.d.loopFault; fault != nil && fault.name == name && !fault.fired.Swap(true) {
			var stop context.CancelFunc
			run, stop = context.WithCancel(ctx)
			defer stop()
			time.AfterFunc(fault.after, stop)
		}
		f(run)
		if ctx.Err() != nil {
			return nil
		}
		l.d.m.LoopFailures.WithLabelValues(name).Inc()
		return fmt.Errorf("%w: %s ended while leading went on", errLoopFailed, name)
	}
}

// lead resumes from the checkpoint, starts the other background loops in g and streams
// until ctx ends or the stream fails; it returns when the work it started itself ended.
func (l *leader) lead(ctx context.Context, g *errgroup.Group) error {
	d := l.d
	lostAtStart, healAtStart, err := l.resume(ctx)
	if err != nil {
		return err
	}
	// Keep the Redis copies of the Bloom filters whole, and build the ones missing.
	g.Go(l.loop(ctx, "bloom_keeper", func(ctx context.Context) { l.keeper.Run(ctx, bloomCheckInterval) }))
	stopRunning, err := l.running()
	if err != nil {
		return err
	}
	defer stopRunning()
	// Watch for Redis losing its data (a restart without persistence, FLUSHALL, a
	// failover to an empty replica).
	g.Go(l.loop(ctx, "data_loss_watch", l.watchDataLoss))
	// End the holds that clients neither released nor settled.
	g.Go(l.loop(ctx, "hold_sweep", l.sweepHolds))
	defer l.healing.Wait()

	if lostAtStart {
		if err := l.resnapshot(ctx, snapshotMode{epoch: l.pos.Epoch, replace: true}, "redis_data_loss"); err != nil {
			return err
		}
	}
	if healAtStart {
		l.heal(ctx)
	}
	// Tables never loaded under their key prefix (added to the config since, or given
	// another prefix) are loaded before the stream starts from the checkpoint.
	if err := d.retry(ctx, "load the tables added to the config", func() error {
		return d.loadNewTables(ctx, l.db, l.rdb, l.writer, l.store, l.tables, l.pos)
	}); err != nil {
		return err
	}
	return l.stream(ctx)
}
