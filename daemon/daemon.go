// Package daemon wires the pipeline stages together for `invsync run`: it checks the
// source and Redis (waiting with backoff while they are unreachable), resumes from the
// checkpoint, streams the binlog into the sink, checkpoints the watermark, serves
// /metrics, /healthz and /readyz, and on SIGINT/SIGTERM stops reading, drains the
// workers and writes the final checkpoint.
package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/metrics"
	"github.com/invsync/invsync/sink"
	"github.com/invsync/invsync/source"
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
	// src is how to reach the source (the static part of cfg.Source).
	src source.Config
	cfg *config.Config
	log *zap.Logger
	reg *prometheus.Registry
	m   *metrics.Metrics

	loopFault *loopFault // WithLoopFault

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
	// epoch is the epoch of the source's history the stream is in (source.Position.Epoch):
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

// WithLoopFault stops the leader's background loop name (compensation_retrier,
// bloom_keeper, data_loss_watch) after it ran for after, once: a fault-injection test of
// how a term ends when one of its loops does.
func WithLoopFault(name string, after time.Duration) Option {
	return func(d *Daemon) { d.loopFault = &loopFault{name: name, after: after} }
}

type loopFault struct {
	name  string
	after time.Duration
	fired atomic.Bool
}

// New prepares a daemon; Run starts it.
func New(cfg *config.Config, log *zap.Logger, opts ...Option) *Daemon {
	d := &Daemon{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	// Validate checked the source's TLS files and zone; Open reports them otherwise.
	d.src, _ = sourceConfig(cfg.Source)
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
	stopHTTP, err := d.serveHTTP()
	if err != nil {
		return err
	}
	defer stopHTTP()

	conns, err := Open(d.cfg)
	if err != nil {
		return err
	}
	defer conns.Close()
	for _, h := range d.redisHooks {
		conns.Redis.AddHook(h)
	}
	if d.reloadPath != "" {
		// Run owns the watch: it ends, and is waited for, when Run returns.
		var watching sync.WaitGroup
		defer watching.Wait()
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		watching.Go(func() { d.watchConfig(watchCtx) })
	}
	// A permanent problem (bad credentials, binlog settings, a missing table) is reported
	// before standing by for the lock.
	if _, err := d.waitReady(ctx, conns); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	relead := backoff.New(time.Second, 5*time.Minute) // after a term whose loop failed
	for {
		lock, err := d.lead(ctx, conns.State)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		termStart := time.Now()
		leadCtx, lost := context.WithCancelCause(ctx)
		var watching sync.WaitGroup
		watching.Go(func() { d.watchLock(leadCtx, lock, lost) })
		err = d.runLeading(leadCtx, conns, lock)
		lost(nil)
		watching.Wait()
		lock.Release()
		if ctx.Err() != nil {
			return nil
		}
		if cause := context.Cause(leadCtx); errors.Is(cause, errLostLock) {
			d.log.Error("lost the leader lock: stopped leading; standing by", zap.Error(cause))
			continue
		}
		if errors.Is(err, errLoopFailed) {
			// A bug, most likely: leading again starts every loop afresh from the
			// checkpoint (nothing acknowledged is lost). Another instance may lead first.
			if time.Since(termStart) > 5*time.Minute {
				relead.Reset()
			}
			d.log.Error("stopped leading: a background loop failed; standing by, then leading again", zap.Error(err), zap.Duration("backoff", relead.Current()))
			if relead.Wait(ctx) != nil {
				return nil
			}
			continue
		}
		return err
	}
}

// errLostLock is the cause of the end of leading when the lock's connection failed.
var errLostLock = errors.New("lost the leader lock")

// waitReady checks the source and Redis, waiting with backoff while either is
// unreachable; a permanent problem (bad credentials, wrong binlog settings, a missing
// table) is returned at once.
func (d *Daemon) waitReady(ctx context.Context, c *Conns) ([]*source.Table, error) {
	var tables []*source.Table
	err := d.retry(ctx, "check the source", func() error {
		t, problems := c.CheckSource(ctx)
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
	err = d.retry(ctx, "reach Redis", func() error { return c.CheckRedis(ctx) })
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
		if errors.Is(err, source.ErrPermanent) {
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
