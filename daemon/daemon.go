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
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/metrics"
	"github.com/invsync/invsync/sink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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
