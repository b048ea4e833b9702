// Package daemon wires the pipeline stages together for `invsync run`: it checks the
// source and Redis (waiting with backoff while they are unreachable), resumes from the
// checkpoint, streams the binlog into the sink, checkpoints the watermark, serves
// /metrics, /healthz and /readyz, and on SIGINT/SIGTERM stops reading, drains the
// workers and writes the final checkpoint.
package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-sql-driver/mysql"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/metrics"
	"github.com/invsync/invsync/sink"
	"github.com/invsync/invsync/snapshot"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// drainTimeout bounds how long shutdown waits for the workers to write what is queued.
const drainTimeout = 30 * time.Second

// idleCheckpointInterval is how often a checkpoint is written when the only progress is
// transactions that touched no mirrored table.
const idleCheckpointInterval = time.Minute

// Daemon is one running instance.
type Daemon struct {
	cfg *config.Config
	log *zap.Logger
	reg *prometheus.Registry
	m   *metrics.Metrics

	// reloadMu runs one reload at a time: a replacing reload (a resnapshot, a DDL reload)
	// that ran beside the reload after a data loss could replace rows that one had
	// stamped with a later position by rows read earlier, taking _s (and the row) back.
	reloadMu sync.Mutex

	ready      atomic.Bool
	lastEvent  atomic.Int64 // unix nanos of the last commit or heartbeat
	lastSave   atomic.Int64 // unix nanos of the last checkpoint write
	wm         atomic.Pointer[sink.Watermark]
	parker     sink.Parker
	redisHooks []redis.Hook
	sk         atomic.Pointer[sink.Sink]
	addr       atomic.Pointer[string] // the HTTP listener's address, once listening
	keeper     atomic.Pointer[bloom.Keeper]
	bloomM     *bloom.Metrics

	// live is the config as reloaded: its live settings (see config.LiveKeys) are current.
	live       atomic.Pointer[config.Config]
	reloadPath string
	level      *zap.AtomicLevel
	running    atomic.Pointer[leading]
	// epoch is the epoch of the source's history the stream is in (canal.Position.Epoch):
	// positions read from the source for stamps belong to it.
	epoch atomic.Uint32
}

// leading is what a reload adjusts while the instance leads.
type leading struct {
	writer     *layout.Writer
	comp       *compensation.Store
	retrier    *compensation.Retrier
	reschedule func() error
}

// Option adjusts a Daemon.
type Option func(*Daemon)

// WithRedisHook adds a go-redis hook to the daemon's Redis client (tests inject faults
// with it).
func WithRedisHook(h redis.Hook) Option {
	return func(d *Daemon) { d.redisHooks = append(d.redisHooks, h) }
}

// New prepares a daemon; Run starts it.
func New(cfg *config.Config, log *zap.Logger, opts ...Option) *Daemon {
	d := &Daemon{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	live := *cfg
	d.live.Store(&live)
	for _, o := range opts {
		o(d)
	}
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.m = metrics.New(d.reg)
	d.bloomM = bloom.NewMetrics(d.reg)
	d.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "invsync_replication_lag_seconds",
			Help: "Seconds between a change's commit on the source and now, for the oldest change not yet in Redis; 0 when caught up."}, d.lag),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "invsync_queue_depth", Help: "Rows waiting in the sink workers' queues."}, func() float64 {
			if s := d.sk.Load(); s != nil {
				return float64(s.QueueDepth())
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "invsync_checkpoint_age_seconds", Help: "Seconds since the checkpoint was last written."}, func() float64 {
			if t := d.lastSave.Load(); t != 0 {
				return time.Since(time.Unix(0, t)).Seconds()
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "invsync_ready", Help: "1 while the binlog stream runs."}, func() float64 {
			if d.ready.Load() {
				return 1
			}
			return 0
		}),
	)
	return d
}

// Registry is the daemon's metrics registry.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Addr is the address the HTTP endpoint listens on (after Run started it).
func (d *Daemon) Addr() string {
	if a := d.addr.Load(); a != nil {
		return *a
	}
	return ""
}

// advertised is the address at which other hosts reach this instance's HTTP endpoint
// (http.advertise, else the address listened on with an unspecified host replaced by the
// hostname); "" when HTTP is off.
func (d *Daemon) advertised() string {
	addr := d.Addr()
	if addr == "" {
		return ""
	}
	if d.cfg.HTTP.Advertise != "" {
		return d.cfg.HTTP.Advertise
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}

func (d *Daemon) lag() float64 {
	now := time.Now()
	if wm := d.wm.Load(); wm != nil {
		if n, oldest := wm.InFlight(); n > 0 && !oldest.IsZero() {
			return max(0, now.Sub(oldest).Seconds())
		}
	}
	// Nothing in flight: caught up, unless the source has gone quiet for longer than
	// its heartbeat promises.
	if t := d.lastEvent.Load(); t != 0 {
		silent := now.Sub(time.Unix(0, t)) - 2*d.cfg.Source.HeartbeatPeriod
		if silent > 0 {
			return silent.Seconds()
		}
	}
	return 0
}

// Run runs until ctx ends (clean shutdown, nil) or a permanent error.
func (d *Daemon) Run(ctx context.Context) error {
	if d.cfg.HTTP.Listen != "" {
		ln, err := net.Listen("tcp", d.cfg.HTTP.Listen)
		if err != nil {
			return fmt.Errorf("http.listen %s: %w (fix: choose a free port)", d.cfg.HTTP.Listen, err)
		}
		addr := ln.Addr().String()
		d.addr.Store(&addr)
		srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}

	db, err := OpenSourceDB(d.cfg.Source)
	if err != nil {
		return err
	}
	defer db.Close()
	stateDB, err := OpenStateDB(d.cfg, db)
	if err != nil {
		return err
	}
	if stateDB != db {
		defer stateDB.Close()
	}
	rdb := NewRedis(d.cfg.Redis)
	defer rdb.Close()
	for _, h := range d.redisHooks {
		rdb.AddHook(h)
	}
	if d.reloadPath != "" {
		go d.watchConfig(ctx)
	}
	// A permanent problem (bad credentials, binlog settings, a missing table) is reported
	// before standing by for the lock.
	if _, err := d.waitReady(ctx, db, rdb); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for {
		lock, err := d.lead(ctx, stateDB)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		leadCtx, lost := context.WithCancelCause(ctx)
		watchDone := make(chan struct{})
		go func() { defer close(watchDone); d.watchLock(leadCtx, lock, lost) }()
		err = d.runLeading(leadCtx, db, stateDB, rdb, lock)
		lost(nil)
		<-watchDone
		lock.Release()
		if ctx.Err() != nil {
			return nil
		}
		if cause := context.Cause(leadCtx); errors.Is(cause, errLostLock) {
			d.log.Error("lost the leader lock: stopped leading; standing by", zap.Error(cause))
			continue
		}
		return err
	}
}

// errLostLock is the cause of the end of leading when the lock's connection failed.
var errLostLock = errors.New("lost the leader lock")

// watchLock checks every second that the instance still holds the leader lock, and ends
// leading (lost) when it does not.
func (d *Daemon) watchLock(ctx context.Context, lock *Lock, lost context.CancelCauseFunc) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := lock.Held(cctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			lost(fmt.Errorf("%w: %w", errLostLock, err))
			return
		}
	}
}

// runLeading does the leader's work until ctx ends (nil) or a permanent error.
func (d *Daemon) runLeading(ctx context.Context, db, stateDB *sql.DB, rdb redis.UniversalClient, lock *Lock) error {
	tables, err := d.waitReady(ctx, db, rdb)
	if err != nil {
		return err
	}
	var store *checkpoint.Store
	if err := d.retry(ctx, "open the state schema", func() error {
		var err error
		store, err = checkpoint.Open(ctx, stateDB, d.cfg.State.Schema, "default")
		return err
	}); err != nil {
		return err
	}
	store.Fence(lock.name, lock.ID())
	// Refuse to write under a namespace another source's invsync writes (see claims.go),
	// before anything is written.
	var pipeline string
	if err := d.retry(ctx, "claim the key prefixes in Redis", func() error {
		var err error
		if pipeline, err = store.PipelineID(ctx); err != nil {
			return err
		}
		return claimRedis(ctx, rdb, d.cfg, pipeline)
	}); err != nil {
		return err
	}
	// Say where this leader answers, for `invsync reconcile` run on another host.
	if err := d.retry(ctx, "record this instance as the leader", func() error {
		host, _ := os.Hostname()
		return store.SetLeader(ctx, checkpoint.Leader{HTTPAddr: d.advertised(), Host: host, PID: os.Getpid(), Session: lock.ID()})
	}); err != nil {
		return err
	}
	keeper := newKeeper(d.cfg, rdb, tables, d.log.Named("bloom"), d.bloomM)
	// Fencing: once the lease may have expired (a standby may lead), nothing is written:
	// no row, no applied marker, no Bloom bitmap swapped in.
	keeper.SetFence(lock.Lease)
	if err := d.retry(ctx, "load the bloom filters", func() error { return keeper.Open(ctx) }); err != nil {
		return err
	}
	d.keeper.Store(keeper)
	// The filters are the leader's: once it stops leading, a rebuild asked of it must
	// not swap one in under the instance that leads then.
	defer d.keeper.CompareAndSwap(keeper, nil)
	// Every row write sets its key's bloom bits first (see bloom.Keeper).
	live := d.live.Load()
	rawWriter := newWriter(d.cfg, rdb)
	rawWriter.SetTTLs(live.Bloom.TombstoneTTL, live.Bloom.NullTTL)
	rawWriter.SetFence(lock.Lease)
	writer := keeper.Wrap(rawWriter)
	var comp *compensation.Store
	if err := d.retry(ctx, "open the compensation table", func() error {
		var err error
		comp, err = compensation.Open(ctx, stateDB, d.cfg.State.Schema, compensation.NewSchedule(live.Compensation), time.Now)
		return err
	}); err != nil {
		return err
	}
	d.parker = comp
	fetch := newFetcher(d.cfg, db, tables, d.epoch.Load, d.log.Named("compensation"))
	defer fetch.close()
	retrier := compensation.NewRetrier(comp, fetch.fetch, writer, d.m, d.log.Named("compensation"), live.Compensation.PollInterval)
	retryCtx, stopRetry := context.WithCancel(ctx)
	retryDone := make(chan struct{})
	go func() { defer close(retryDone); retrier.Run(retryCtx) }()
	defer func() { stopRetry(); <-retryDone }()

	var pos canal.Position
	var found bool
	if err := d.retry(ctx, "read the checkpoint", func() error {
		var err error
		pos, found, err = store.Load(ctx)
		return err
	}); err != nil {
		return err
	}
	d.epoch.Store(pos.Epoch)
	if found {
		d.log.Info("resuming from the checkpoint", pos.Fields()...)
	} else {
		// The first checkpoint records the source's identity (later ones keep it until
		// historyChanged finds another).
		if err := d.retry(ctx, "read the source's identity", func() error {
			identity, err := SourceIdentity(ctx, db, d.cfg.Source.Flavor)
			store.SetSource(identity)
			return err
		}); err != nil {
			return err
		}
		d.log.Info("no checkpoint yet: loading every table first (snapshot), then streaming from the position recorded before it")
		if err := d.retry(ctx, "snapshot the tables", func() error {
			var err error
			pos, err = RunSnapshot(ctx, d.cfg, db, tables, writer, keeper, rdb, store, d.log.Named("snapshot"), nil, snapshotMode{fence: lock.Lease})
			return err
		}); err != nil {
			return err
		}
		found = true // the checkpoint the snapshot wrote: Redis must hold the markers it wrote
	}
	// Redis may hold less than the checkpoint (restored from an older RDB/AOF, failed
	// over to a lagging replica while invsync was stopped): stream from what it holds.
	marker := markerKey(d.cfg)
	var hist *redisHistory
	var lostAtStart, healAtStart bool
	if err := d.retry(ctx, "read Redis's applied markers", func() error {
		var err error
		if hist, err = newRedisHistory(ctx, rdb, d.cfg); err != nil {
			return err
		}
		hist.fence = lock.Lease
		dataMarker := rdb.Exists(ctx, marker).Val() == 1
		rewind, lost, err := hist.start(ctx, pos, found, dataMarker)
		if err != nil {
			return err
		}
		if lost {
			d.m.RedisRollbacks.Inc()
			d.log.Error("Redis lost invsync's data on a master, or holds a state from before the source's history was replaced: every table is loaded again, replacing what it holds",
				zap.Strings("markers", hist.keys))
			lostAtStart = true
		}
		if rewind != nil {
			d.m.RedisRollbacks.Inc()
			d.log.Error("Redis holds less than the checkpoint (restored from an older RDB/AOF or failed over to a lagging replica): streaming again from what it holds, then reconciling",
				append(pos.Fields(), zap.String("redis_holds", rewind.String()))...)
			pos, healAtStart = *rewind, true
			return store.Save(ctx, pos)
		}
		return nil
	}); err != nil {
		return err
	}
	// Keep the Redis copies of the Bloom filters whole, and build the ones missing.
	bloomCtx, stopBloom := context.WithCancel(ctx)
	bloomDone := make(chan struct{})
	go func() { defer close(bloomDone); keeper.Run(bloomCtx, bloomCheckInterval) }()
	defer func() { stopBloom(); <-bloomDone }()
	stopSchedule, err := d.startSchedule(db, tables, rdb, rawWriter, keeper)
	if err != nil {
		return err
	}
	var schedMu sync.Mutex
	defer func() {
		schedMu.Lock()
		defer schedMu.Unlock()
		stopSchedule()
	}()
	d.running.Store(&leading{writer: rawWriter, comp: comp, retrier: retrier, reschedule: func() error {
		schedMu.Lock()
		defer schedMu.Unlock()
		stopSchedule()
		stop, err := d.startSchedule(db, tables, rdb, rawWriter, keeper)
		if err != nil {
			stopSchedule = func() {}
			return err
		}
		stopSchedule = stop
		return nil
	}})
	defer d.running.Store(nil)
	names := make([]string, len(d.cfg.Tables))
	for i, t := range d.cfg.Tables {
		names[i] = t.TableName()
	}
	// Watch for Redis losing its data (a restart without persistence, FLUSHALL, a
	// failover to an empty replica) and load the tables again while streaming goes on.
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		d.watchDataLoss(watchCtx, db, rdb, writer, tables, marker, func() layout.Seq {
			if sk := d.sk.Load(); sk != nil {
				return sk.LastSeq()
			}
			return layout.Seq{}
		}, func() error { return claimRedis(watchCtx, rdb, d.cfg, pipeline) }, func() bool {
			// Redis lost the applied markers too, or cannot tell now: the session ends on
			// it (or the next check decides).
			return hist.check(watchCtx) != nil
		})
	}()
	defer func() {
		stopWatch()
		<-watchDone
	}()

	// leaveErr is what leading returns on err: nothing when it ended because ctx did.
	leaveErr := func(err error) error {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// resnapshot loads every table again (the stream is stopped), records the new
	// position and its epoch, and reads the applied markers it wrote.
	resnapshot := func(mode snapshotMode, reason string) error {
		d.m.Resnapshots.WithLabelValues(reason).Inc()
		if reason == "redis_data_loss" {
			// The claims on the key prefixes went with the data (see claims.go); another
			// pipeline that claimed them meanwhile stops this one (ErrClaimed is permanent).
			if err := d.retry(ctx, "claim the key prefixes again after Redis lost its data", func() error {
				return claimRedis(ctx, rdb, d.cfg, pipeline)
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
			var err error
			// ... and at least as new as any stamp a reload wrote before it.
			if now, err := d.replacingFloor(ctx, db, mode.floor); err != nil {
				return err
			} else {
				mode.floor = now
			}
			mode.fence = lock.Lease
			mode.wrote = hist.adopt
			pos, err = RunSnapshot(ctx, d.cfg, db, tables, writer, keeper, rdb, store, d.log.Named("snapshot"), nil, mode)
			if lost := (*errLostDuringLoad)(nil); errors.As(err, &lost) {
				d.m.RedisRollbacks.Inc()
				d.m.Resnapshots.WithLabelValues("redis_data_loss").Inc()
			}
			return err
		}); err != nil {
			return err
		}
		d.epoch.Store(pos.Epoch)
		return nil
	}
	// After Redis went back, writes that the stream does not replay (the compensation
	// retrier's, reloads', repairs', their Bloom bits) may be lost too: a reconciliation
	// with repair and a Bloom rebuild runs in the background once streaming goes on.
	var healing sync.WaitGroup
	var healRunning, healAgain atomic.Bool
	defer healing.Wait()
	heal := func() {
		if !healRunning.CompareAndSwap(false, true) {
			healAgain.Store(true) // the running one may have read before this rollback
			return
		}
		healing.Add(1)
		go func() {
			defer healing.Done()
			defer healRunning.Store(false)
			for again := true; again && ctx.Err() == nil; again = healAgain.Swap(false) {
				d.reconcileOnce(ctx, db, tables, rdb, rawWriter, keeper, true, "after Redis went back")
			}
		}()
	}
	if lostAtStart {
		if err := resnapshot(snapshotMode{epoch: pos.Epoch, replace: true}, "redis_data_loss"); err != nil {
			return leaveErr(err)
		}
	}
	if healAtStart {
		heal()
	}
	// Tables never loaded under their key prefix (added to the config since, or given
	// another prefix) are loaded before the stream starts from the checkpoint.
	if err := d.retry(ctx, "load the tables added to the config", func() error {
		return d.loadNewTables(ctx, db, rdb, writer, store, tables, pos)
	}); err != nil {
		return leaveErr(err)
	}
	reconnect := backoff.New(time.Second, 30*time.Second)
	for {
		started := time.Now()
		// The source's history may have been replaced since the checkpoint (RESET MASTER,
		// a failover to another primary): then a new epoch, and every table loaded again.
		if reason, why, err := d.historyChanged(ctx, db, store, pos); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d.log.Warn("cannot check the source's history; retrying", zap.Error(err))
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return nil
			}
			continue
		} else if reason != "" {
			d.m.SourceEpochs.Inc()
			mode := snapshotMode{epoch: pos.Epoch + 1, replace: true}
			d.log.Error("the source's binlog history was replaced under invsync ("+why+"): starting a new epoch, in which every write orders after every earlier one, and loading every table again, replacing what Redis holds",
				append(pos.Fields(), zap.String("reason", reason), zap.Uint32("new_epoch", mode.epoch))...)
			if err := resnapshot(mode, reason); err != nil {
				return leaveErr(err)
			}
			continue
		}
		next, err := pos, PositionAvailable(ctx, db, pos)
		var back *errRedisWentBack
		if err == nil {
			// Redis going back to an older state ends the session (see rollback.go).
			sessCtx, endSession := context.WithCancelCause(ctx)
			checkDone := make(chan struct{})
			go func() { defer close(checkDone); d.watchRedisHistory(sessCtx, hist, endSession) }()
			next, err = d.session(sessCtx, pos, tables, names, writer, store, hist, func(ctx context.Context, sk *sink.Sink, t *canal.Table, at canal.Position, force bool, reason string) error {
				return d.reloadTable(ctx, db, rdb, writer, sk, t, at, force, reason)
			})
			if !errors.As(context.Cause(sessCtx), &back) {
				errors.As(err, &back)
			}
			endSession(nil)
			<-checkDone
		}
		if ctx.Err() != nil {
			d.log.Info("stopped cleanly", next.Fields()...)
			return nil
		}
		if back != nil {
			d.m.RedisRollbacks.Inc()
			if back.to == nil || back.to.Epoch < d.epoch.Load() {
				// Nothing to stream from (the marker is gone, or from before the source's
				// history was replaced): load every table again, replacing what it holds.
				d.log.Error("Redis lost invsync's data or went back before the source's history was replaced: every table is loaded again", zap.Error(back))
				reason := "redis_data_loss"
				if back.to != nil {
					reason = "redis_went_back"
				}
				if err := resnapshot(snapshotMode{epoch: d.epoch.Load(), replace: true}, reason); err != nil {
					return leaveErr(err)
				}
				continue
			}
			// Stream again from what Redis holds: the changes it lost are replayed.
			pos = next
			if back.to.Before(pos) {
				pos = *back.to
			}
			d.log.Error("Redis went back to an older state: streaming again from what it holds, Bloom bitmaps written again from memory, then reconciling",
				append(pos.Fields(), zap.Error(back))...)
			if err := d.retry(ctx, "heal Redis after it went back", func() error {
				if err := keeper.RestoreAll(ctx); err != nil {
					return err
				}
				if err := hist.resync(ctx); err != nil {
					return err
				}
				return store.Save(ctx, pos)
			}); err != nil {
				return leaveErr(err)
			}
			heal()
			continue
		}
		pos = next
		if errors.Is(err, canal.ErrHistoryChanged) {
			continue // checked at the top of the loop
		}
		if errors.Is(err, canal.ErrPositionLost) {
			// A reset binlog loses the position too: that is a new epoch, not a purge.
			if reason, _, herr := d.historyChanged(ctx, db, store, pos); herr == nil && reason != "" {
				continue
			}
			oldest := OldestBinlog(ctx, db)
			if d.cfg.Source.OnPositionLost == "fail" {
				return fmt.Errorf("the checkpoint's binlog position %s is no longer on %s (its oldest binlog is %s): changes made since were purged unread "+
					"(fix: run `invsync snapshot` to load every table again and record a new position, then `invsync run`; or set source.on_position_lost: resnapshot; "+
					"and keep binlogs longer, e.g. binlog_expire_logs_seconds): %w", pos, d.cfg.Source.Addr, oldest, err)
			}
			d.log.Error("the checkpoint's binlog position is no longer on the server: loading every table again, replacing what Redis holds (source.on_position_lost: resnapshot)",
				append(pos.Fields(), zap.String("oldest_binlog", oldest), zap.Error(err))...)
			// Rows changed in the purged gap without a version the guard could order by (a
			// delete and re-insert with the version restarted, an update that did not bump
			// it) must not stay stale: the reload replaces every row.
			mode := snapshotMode{epoch: pos.Epoch, replace: true}
			if err := resnapshot(mode, "position_lost"); err != nil {
				return leaveErr(err)
			}
			continue
		}
		if errors.Is(err, canal.ErrPermanent) {
			return err
		}
		d.m.StreamRestarts.Inc()
		if time.Since(started) > time.Minute {
			reconnect.Reset() // it streamed a while: not the same failure again
		}
		d.log.Warn("binlog stream ended; reconnecting", append(pos.Fields(), zap.Error(err), zap.Duration("backoff", reconnect.Current()))...)
		if reconnect.Wait(ctx) != nil {
			return nil
		}
	}
}

// newWriter is the versioned writer of rows, tombstones and null markers.
func newWriter(cfg *config.Config, rdb redis.UniversalClient) *layout.Writer {
	return layout.NewWriterWithNullTTL(rdb, cfg.Bloom.TombstoneTTL, cfg.Bloom.NullTTL, cfg.Redis.Mode == "cluster")
}

// lead takes the leader lock of the config, waiting (standing by) while another
// instance holds it; it returns nil, nil when ctx ends first.
func (d *Daemon) lead(ctx context.Context, stateDB *sql.DB) (*Lock, error) {
	name := LockName(d.cfg)
	logged := false
	var lastWarn time.Time
	for {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		lock, held, err := TryLock(tctx, stateDB, name)
		cancel()
		if err == nil && !held {
			// The holder may be gone without its session knowing (frozen, powered off, cut
			// off): once that session has been idle for the lease, take the lock over.
			holder, idle, killed, terr := TakeOverIdleLock(ctx, stateDB, name, LeaseTimeout)
			switch {
			case killed:
				d.log.Error("the leader's lock session has been idle for the lease (its instance froze, lost its host or was cut off): killed it to take over",
					zap.String("lock", name), zap.Int64("session", holder), zap.Duration("idle", idle), zap.Duration("lease", LeaseTimeout))
				continue
			case terr != nil && time.Since(lastWarn) > 30*time.Second:
				d.log.Warn("cannot check that the leader is alive; a leader that froze or was cut off keeps the lock until the server drops its session",
					zap.String("lock", name), zap.Int64("session", holder), zap.Error(terr))
				lastWarn = time.Now()
			}
		}
		if err == nil && held {
			if logged {
				d.log.Info("leading now: the other instance is gone", zap.String("lock", name))
			}
			return lock, nil
		}
		if err != nil {
			var me *mysql.MySQLError
			if errors.As(err, &me) && (me.Number == 1044 || me.Number == 1045) {
				return nil, fmt.Errorf("%w: the state database refused invsync: %w (fix: the user and password of state.dsn, or of the source when state.dsn is empty)", canal.ErrPermanent, err)
			}
			if time.Since(lastWarn) > 30*time.Second {
				d.log.Warn("cannot take the leader lock; retrying every second", zap.String("lock", name), zap.Error(err))
				lastWarn = time.Now()
			}
		} else if !logged {
			d.log.Info("another invsync instance leads this config (it holds the lock); standing by", zap.String("lock", name))
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

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
func (d *Daemon) watchDataLoss(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, w snapshot.Writer, tables []*canal.Table, marker string, floor func() layout.Seq, reclaim func() error, wentBack func() bool) {
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
		d.reloadMu.Lock()
		snap := snapshot.New(d.cfg, tables, w, rdb, d.log.Named("snapshot"), nil).WithoutSweep().AtLeast(floor())
		_, _, err = snap.Run(ctx, positionIn(db, d.cfg.Source.Flavor, d.epoch.Load, d.log))
		d.reloadMu.Unlock()
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
	wrote func(*snapshotMarkers, canal.Position)
}

// historyChanged reports whether the source's binlog history was replaced since pos was
// checkpointed: another server answers (its identity differs from the one recorded with
// the checkpoint: a failover to another primary, a replaced server), or the server's
// current position is before pos (RESET MASTER). reason is the metric label, why the
// text for the log.
func (d *Daemon) historyChanged(ctx context.Context, db *sql.DB, store *checkpoint.Store, pos canal.Position) (reason, why string, err error) {
	identity, err := SourceIdentity(ctx, db, d.cfg.Source.Flavor)
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
	cur, err := canal.CurrentPosition(ctx, db, d.cfg.Source.Flavor, nil)
	if err != nil {
		return "", "", err
	}
	cur.Epoch = pos.Epoch
	if pos.File != "" && cur.File != "" && cur.Before(pos) {
		return "binlog_reset", fmt.Sprintf("the server's current position %s is before the checkpoint %s: its binlog was reset", cur, pos), nil
	}
	return "", "", nil
}

// positionWithoutPreparedXA records the position a snapshot streams from once no XA
// transaction is prepared: a prepared transaction's rows are invisible to the snapshot,
// and its prepare group, before the position, would not be read, so its XA COMMIT would
// bring nothing. One that commits after the position was recorded but before the check
// is seen by the snapshot's reads, which come after the check.
func positionWithoutPreparedXA(ctx context.Context, db *sql.DB, position func(context.Context) (canal.Position, error), log *zap.Logger) (canal.Position, error) {
	var lastLog time.Time
	for {
		p, err := position(ctx)
		if err != nil {
			return p, err
		}
		n, err := preparedXA(ctx, db)
		if err != nil {
			log.Warn("cannot list prepared XA transactions (XA RECOVER); a transaction prepared before the snapshot and committed after it would be missed (fix: grant the invsync user what XA RECOVER needs, e.g. XA_RECOVER_ADMIN on MySQL 8)", zap.Error(err))
			return p, nil
		}
		if n == 0 {
			return p, nil
		}
		if time.Since(lastLog) > 10*time.Second {
			log.Warn("waiting for prepared XA transactions to commit or roll back before the snapshot records its position (XA RECOVER lists them)", zap.Int("prepared", n))
			lastLog = time.Now()
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return p, ctx.Err()
		}
	}
}

// preparedXA counts the XA transactions prepared on the source.
func preparedXA(ctx context.Context, db *sql.DB) (int, error) {
	rows, err := db.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	return n, rows.Err()
}

// SourceIdentity names the server the source address reaches: MySQL's server_uuid, or
// MariaDB's server_id and GTID domain (MariaDB has no server_uuid).
func SourceIdentity(ctx context.Context, db *sql.DB, flavor string) (string, error) {
	if flavor == "mariadb" {
		var id, domain string
		if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.server_id, @@GLOBAL.gtid_domain_id").Scan(&id, &domain); err != nil {
			return "", fmt.Errorf("read the source's server_id: %w", err)
		}
		return "mariadb server_id=" + id + " gtid_domain_id=" + domain, nil
	}
	var uuid, id string
	if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.server_uuid, @@GLOBAL.server_id").Scan(&uuid, &id); err != nil {
		return "", fmt.Errorf("read the source's server_uuid: %w", err)
	}
	return "mysql server_uuid=" + uuid + " server_id=" + id, nil
}

// RunSnapshot loads every table through w (which must set bloom bits through keeper),
// rebuilding the Bloom filters from the rows it writes, then saves the position recorded
// before the load as the checkpoint and returns it. progress may be nil (log lines only).
func RunSnapshot(ctx context.Context, cfg *config.Config, db *sql.DB, tables []*canal.Table, w snapshot.Writer, keeper *bloom.Keeper, rdb redis.UniversalClient, store *checkpoint.Store, log *zap.Logger, progress func(snapshot.Progress), mode snapshotMode) (canal.Position, error) {
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
			return canal.Position{}, fmt.Errorf("%w: %w", layout.ErrFenced, err)
		}
	}
	markers, err := readSnapshotMarkers(ctx, rdb, cfg)
	if err != nil {
		return canal.Position{}, err
	}
	snap := snapshot.New(cfg, tables, w, rdb, log, logProgress)
	if mode.replace {
		// The stream resumes from the position it returns: at or after the floor too,
		// else it would replay what the stream wrote before over rows read after it.
		snap = snap.Replacing().AtLeast(mode.floor).HandOffAtLeast()
	}
	var pos canal.Position
	position := positionIn(db, cfg.Source.Flavor, func() uint32 { return mode.epoch }, log)
	first := true
	err = keeper.Rebuild(ctx, func(ctx context.Context) error {
		var err error
		pos, _, err = snap.Run(ctx, func(ctx context.Context) (canal.Position, error) {
			if first {
				first = false
				return positionWithoutPreparedXA(ctx, db, position, log)
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

// PositionAvailable returns an error wrapping canal.ErrPositionLost when the server no
// longer has the binlog file of pos (purged). A server may not report that itself: a
// MariaDB asked for a purged GTID position can wait without an error.
func PositionAvailable(ctx context.Context, db *sql.DB, pos canal.Position) error {
	if pos.File == "" {
		return nil
	}
	rows, err := db.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return fmt.Errorf("list the binlogs: %w", err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		if string(vals[0]) == pos.File {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: %w: %s is not among the server's binlogs", canal.ErrPermanent, canal.ErrPositionLost, pos.File)
}

// OldestBinlog names the oldest binlog file the server still has, for messages.
func OldestBinlog(ctx context.Context, db *sql.DB) string {
	rows, err := db.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return "none"
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return "unknown"
	}
	return string(vals[0])
}

// waitReady checks the source and Redis, waiting with backoff while either is
// unreachable; a permanent problem (bad credentials, wrong binlog settings, a missing
// table) is returned at once.
func (d *Daemon) waitReady(ctx context.Context, db *sql.DB, rdb redis.UniversalClient) ([]*canal.Table, error) {
	var tables []*canal.Table
	err := d.retry(ctx, "check the source", func() error {
		t, problems := CheckSource(ctx, db, d.cfg)
		for _, p := range problems {
			if p.Warning {
				d.log.Warn("source check", zap.String("check", p.Check), zap.Error(p.Err))
				continue
			}
			return p.Err
		}
		tables = t
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = d.retry(ctx, "reach Redis", func() error { return CheckRedis(ctx, rdb, d.cfg.Redis) })
	return tables, err
}

// retry runs f until it succeeds, ctx ends, or it returns a permanent error, waiting
// with exponential backoff (1s to 30s) and logging each failure.
func (d *Daemon) retry(ctx context.Context, what string, f func() error) error {
	wait := backoff.New(time.Second, 30*time.Second)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if errors.Is(err, canal.ErrPermanent) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.log.Warn("cannot "+what+"; retrying", zap.Error(err), zap.Duration("backoff", wait.Current()))
		if err := wait.Wait(ctx); err != nil {
			return err
		}
	}
}

// session streams from start until the stream ends, then drains the workers and writes
// the final checkpoint; it returns the position reached.
func (d *Daemon) session(ctx context.Context, start canal.Position, tables []*canal.Table, names []string, w sink.Writer, store *checkpoint.Store,
	hist *redisHistory, onDDL reloadFunc) (canal.Position, error) {
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
	sinkCtx, stopSink := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSink()
	sinkDone := make(chan error, 1)
	go func() { sinkDone <- sk.Run(sinkCtx) }()

	cpDone := make(chan struct{})
	cpStop := make(chan struct{})
	streamCtx, stopStream := context.WithCancelCause(ctx)
	defer stopStream(nil)
	saved := start
	var unsavedRows int64
	fencedLogged := false // once per lapse of the lease
	lastWrite := time.Now()
	save := func(sctx context.Context, final bool) {
		pos, n, rows := wm.Advance()
		if n > 0 {
			d.m.CommittedTxns.Add(float64(n))
		}
		unsavedRows += rows
		// A checkpoint write is itself a transaction in the binlog (when the state schema
		// lives on the source). Progress made only of transactions without mirrored rows
		// is saved at most every idleCheckpointInterval, so that the daemon does not feed
		// itself one transaction per interval forever.
		if pos == saved || (unsavedRows == 0 && !final && time.Since(lastWrite) < idleCheckpointInterval) {
			d.lastSave.Store(time.Now().UnixNano())
			return
		}
		// Redis records how far it got first (see rollback.go); a Redis that went back
		// gets no checkpoint past what it holds.
		if err := hist.advance(sctx, pos); err != nil {
			var back *errRedisWentBack
			if errors.As(err, &back) {
				stopStream(back)
				return
			}
			if errors.Is(err, layout.ErrFenced) {
				if !fencedLogged {
					fencedLogged = true
					d.log.Warn("applied marker not written: the leader lease expired; the checkpoint waits until the lock is confirmed or lost", append(pos.Fields(), zap.Error(err))...)
				}
				return
			}
			d.log.Warn("applied marker not written; the checkpoint waits", append(pos.Fields(), zap.Error(err))...)
			return
		}
		fencedLogged = false
		if err := store.Save(sctx, pos); err != nil {
			d.log.Warn("checkpoint not written; will retry", append(pos.Fields(), zap.Error(err))...)
			return
		}
		saved, unsavedRows, lastWrite = pos, 0, time.Now()
		d.lastSave.Store(time.Now().UnixNano())
		d.m.CheckpointWrites.Inc()
		d.log.Debug("checkpoint", pos.Fields()...)
	}
	go func() {
		defer close(cpDone)
		t := time.NewTicker(d.cfg.Checkpoint.Interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				save(ctx, false)
			case <-cpStop:
				return
			}
		}
	}()

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
	select {
	case <-sinkDone:
	case <-time.After(drainTimeout):
		d.log.Warn("workers did not drain in time; rows still queued will be read again from the checkpoint", zap.Duration("timeout", drainTimeout))
		stopSink()
		<-sinkDone
	}
	close(cpStop)
	<-cpDone
	if !lostLock {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		save(fctx, true)
	}
	if errors.Is(srcErr, context.Canceled) && ctx.Err() != nil {
		srcErr = nil
	}
	return saved, srcErr
}

// reloadFunc reloads a mirrored table while the stream is paused at position at: when
// force is set, or when its definition changed (see reloadTable).
type reloadFunc func(ctx context.Context, sk *sink.Sink, t *canal.Table, at canal.Position, force bool, reason string) error

// readyHandler notes progress for /readyz and the lag gauge, and handles DDL.
type readyHandler struct {
	*sink.Sink
	d     *Daemon
	onDDL reloadFunc
}

func (h *readyHandler) TableChanged(ctx context.Context, t *canal.Table, at canal.Position, rowsChanged bool) error {
	return h.onDDL(ctx, h.Sink, t, at, rowsChanged, "ddl")
}

func (h *readyHandler) Reload(ctx context.Context, t *canal.Table, at canal.Position, reason string) error {
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
func (d *Daemon) reloadTable(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, w snapshot.Writer, sk *sink.Sink, t *canal.Table, at canal.Position, force bool, reason string) error {
	if err := sk.Flush(ctx); err != nil {
		return err
	}
	log := d.log.Named("ddl").With(zap.String("table", t.FullName()), zap.String("reason", reason))
	loaded, err := canal.LoadTables(ctx, db, []config.Table{d.cfg.Tables[t.Index]})
	if err != nil {
		if !errors.Is(err, canal.ErrTable) {
			return err
		}
		if !force || !tableMissing(ctx, db, t) {
			return fmt.Errorf("%w: after the statement at %s: %w (fix: restore the table, or remove it from tables and restart)", canal.ErrPermanent, at, err)
		}
		d.m.Resnapshots.WithLabelValues(reason).Inc()
		log.Error("a mirrored table no longer exists (dropped or renamed away): its keys become tombstones; "+
			"it is loaded again if a later statement creates it (fix: restore the table, or remove it from tables before the next restart)", at.Fields()...)
		_, err := snapshot.New(d.cfg, []*canal.Table{t}, w, rdb, log, nil).Replacing().Gone(ctx, t, at)
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
	snap := snapshot.New(d.cfg, []*canal.Table{t}, w, rdb, log, nil).Replacing().AtLeast(floor)
	_, _, err = snap.Run(ctx, func(context.Context) (canal.Position, error) { return at, nil })
	return err
}

// tableMissing reports whether t does not exist on the source now.
func tableMissing(ctx context.Context, db *sql.DB, t *canal.Table) bool {
	var n int
	err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", t.Schema, t.Name).Scan(&n)
	return err == nil && n == 0
}

func sameDefinition(a, b *canal.Table) bool {
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

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	// Go profiles, on the same (loopback by default) listener.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/bloom/rebuild", d.rebuildHandler)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if sk := d.sk.Load(); d.ready.Load() && sk != nil {
			if cause := sk.Paused(); cause != "" {
				http.Error(w, "not ready: writing waits for Redis: "+cause, http.StatusServiceUnavailable)
				return
			}
		}
		if d.ready.Load() {
			_, _ = w.Write([]byte("ready\n"))
			return
		}
		http.Error(w, "not ready: the binlog stream is not running", http.StatusServiceUnavailable)
	})
	return mux
}

// Snapshot is `invsync snapshot`: it checks the source and Redis (waiting while they
// are unreachable), loads every table and records the position to stream from as the
// checkpoint, so that a later `invsync run` resumes from it.
func Snapshot(ctx context.Context, cfg *config.Config, log *zap.Logger, progress func(snapshot.Progress)) (canal.Position, error) {
	d := New(cfg, log)
	db, err := OpenSourceDB(cfg.Source)
	if err != nil {
		return canal.Position{}, err
	}
	defer db.Close()
	stateDB, err := OpenStateDB(cfg, db)
	if err != nil {
		return canal.Position{}, err
	}
	if stateDB != db {
		defer stateDB.Close()
	}
	rdb := NewRedis(cfg.Redis)
	defer rdb.Close()
	lock, held, err := TryLock(ctx, stateDB, LockName(cfg))
	if err != nil {
		return canal.Position{}, err
	}
	if !held {
		return canal.Position{}, fmt.Errorf("a running invsync leads this config (it holds the lock %s on the state database): stop it before `invsync snapshot` (fix: stop the daemon, or let it heal by itself: it reloads on its own when it needs to)", LockName(cfg))
	}
	defer lock.Release()
	tables, err := d.waitReady(ctx, db, rdb)
	if err != nil {
		return canal.Position{}, err
	}
	store, err := checkpoint.Open(ctx, stateDB, cfg.State.Schema, "default")
	if err != nil {
		return canal.Position{}, err
	}
	store.Fence(lock.name, lock.ID())
	if pipeline, err := store.PipelineID(ctx); err != nil {
		return canal.Position{}, err
	} else if err := claimRedis(ctx, rdb, cfg, pipeline); err != nil {
		return canal.Position{}, err
	}
	// Over an earlier checkpoint, the snapshot replaces what Redis holds (rows changed
	// since without a version the guard could order by must not stay stale); over a
	// replaced history (another server, a reset binlog) it starts a new epoch.
	var mode snapshotMode
	if prev, ok, err := store.Load(ctx); err != nil {
		return canal.Position{}, err
	} else if ok {
		mode = snapshotMode{epoch: prev.Epoch, replace: true}
		if reason, why, err := d.historyChanged(ctx, db, store, prev); err != nil {
			return canal.Position{}, err
		} else if reason != "" {
			mode.epoch++
			log.Warn("the source's binlog history was replaced since the checkpoint ("+why+"): the snapshot starts a new epoch", zap.Uint32("epoch", mode.epoch))
		}
	} else if id, err := SourceIdentity(ctx, db, cfg.Source.Flavor); err != nil {
		return canal.Position{}, err
	} else {
		store.SetSource(id)
	}
	keeper := newKeeper(cfg, rdb, tables, log.Named("bloom"), nil)
	if err := keeper.Open(ctx); err != nil {
		return canal.Position{}, err
	}
	// Fenced like the daemon: a snapshot suspended past the lease writes nothing more.
	mode.fence = lock.Lease
	keeper.SetFence(lock.Lease)
	w := newWriter(cfg, rdb)
	w.SetFence(lock.Lease)
	pos, err := RunSnapshot(ctx, cfg, db, tables, keeper.Wrap(w), keeper, rdb, store, log, progress, mode)
	if lost := (*errLostDuringLoad)(nil); errors.As(err, &lost) {
		err = fmt.Errorf("%w (fix: run `invsync snapshot` again once Redis is stable)", err)
	}
	return pos, err
}

// fetcher reads single rows from the source for the compensation retrier, with a
// text-protocol session like the snapshot's.
type fetcher struct {
	epoch  func() uint32
	warn   func(error)
	cfg    *config.Config
	db     *sql.DB
	tables map[string]*canal.Table
	conn   *client.Conn
}

func newFetcher(cfg *config.Config, db *sql.DB, tables []*canal.Table, epoch func() uint32, log *zap.Logger) *fetcher {
	f := &fetcher{cfg: cfg, db: db, tables: map[string]*canal.Table{}, epoch: epoch,
		warn: func(err error) {
			log.Warn("rows read again may miss a transaction committing as they are read", zap.Error(err))
		}}
	for _, t := range tables {
		f.tables[t.FullName()] = t
	}
	return f
}

func (f *fetcher) close() {
	if f.conn != nil {
		f.conn.Close()
		f.conn = nil
	}
}

func (f *fetcher) fetch(ctx context.Context, table, pk string) (layout.Change, bool, error) {
	t := f.tables[table]
	if t == nil {
		return layout.Change{}, false, fmt.Errorf("table %s is not mirrored (any more)", table)
	}
	parts, err := layout.SplitInner(pk, len(t.PK))
	if err != nil {
		return layout.Change{}, false, fmt.Errorf("the key of %s: %w", table, err)
	}
	if f.conn == nil {
		conn, err := canal.Connect(ctx, f.cfg.Source)
		if err != nil {
			return layout.Change{}, false, fmt.Errorf("connect to the source: %w", err)
		}
		if err := snapshot.PrepareSession(conn, f.cfg.Source.TimeZone); err != nil {
			conn.Close()
			return layout.Change{}, false, err
		}
		f.conn = conn
	}
	// The row as of now, read in a consistent snapshot and stamped with its exact
	// position: ordered against the stream's writes by position (see snapshot.SeqOf).
	var c layout.Change
	var found bool
	pos, err := canal.ReadConsistent(f.conn, f.cfg.Source.Flavor, f.epoch(), f.warn, func(pos canal.Position) error {
		version := ""
		if t.VersionColumn == "" {
			version = strconv.FormatUint(snapshot.PositionVersion(pos), 10)
		}
		var err error
		c, found, err = snapshot.Fetch(f.conn, t, parts, version)
		return err
	})
	if err != nil {
		f.close()
	}
	c.Seq = snapshot.SeqOf(pos)
	return c, found, err
}

// OpenCompensation opens the compensation table for `invsync compensation`; close the
// returned function when done.
func OpenCompensation(ctx context.Context, cfg *config.Config) (*compensation.Store, func(), error) {
	db, err := OpenSourceDB(cfg.Source)
	if err != nil {
		return nil, nil, err
	}
	stateDB, err := OpenStateDB(cfg, db)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	closeAll := func() {
		if stateDB != db {
			stateDB.Close()
		}
		db.Close()
	}
	st, err := compensation.Open(ctx, stateDB, cfg.State.Schema, compensation.NewSchedule(cfg.Compensation), time.Now)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return st, closeAll, nil
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
