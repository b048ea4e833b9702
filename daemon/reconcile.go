package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/go-co-op/gocron/v2"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/reconcile"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// reconcileDeps are reconcile's dependencies; epoch is the epoch of the source's history
// that positions belong to (the checkpoint's).
func reconcileDeps(src source.Config, cfg *config.Config, db *sql.DB, tables []*source.Table, rdb redis.UniversalClient, w *layout.Writer, log *zap.Logger, epoch func() uint32) reconcile.Deps {
	deps := reconcile.Deps{Source: src, ChunkSize: cfg.Reconcile.ChunkSize, DB: db, Tables: tables, RDB: rdb, Writer: w, Log: log,
		Epoch: epoch, Holds: map[int]reconcile.HoldCheck{}, Applied: appliedReader(rdb, cfg, epoch), AppliedEvery: cfg.Checkpoint.Interval}
	for i, t := range tables {
		if r := cfg.Tables[t.Index].Reservations; r != nil {
			deps.Holds[i] = reconcile.HoldCheck{SettlementSchema: r.Settlement.Schema, SettlementTable: r.Settlement.Table, OrderColumn: r.Settlement.OrderColumn}
		}
	}
	return deps
}

// appliedReader returns reconcile.Deps.Applied: the least of the applied markers (see
// rollback.go) as a sequence, zero when one is missing, not a marker, or of another
// epoch than epoch() (positions of two epochs are not comparable).
func appliedReader(rdb redis.UniversalClient, cfg *config.Config, epoch func() uint32) func(context.Context) (layout.Seq, error) {
	var mu sync.Mutex
	var keys []string
	return func(ctx context.Context) (layout.Seq, error) {
		mu.Lock()
		defer mu.Unlock()
		if keys == nil {
			k, err := appliedMarkerKeys(ctx, rdb, cfg)
			if err != nil {
				return layout.Seq{}, err
			}
			keys = k
		}
		var least layout.Seq
		for i, k := range keys {
			v, err := rdb.Get(ctx, k).Result()
			if errors.Is(err, redis.Nil) {
				return layout.Seq{}, nil
			} else if err != nil {
				return layout.Seq{}, err
			}
			p, ok := decodeMarker(v)
			if !ok || p.Epoch != epoch() {
				return layout.Seq{}, nil
			}
			if s := snapshot.SeqOf(p); i == 0 || s.Less(least) {
				least = s
			}
		}
		return least, nil
	}
}

// positionIn returns the source's current position (source.CurrentPosition) in the epoch
// epoch() names.
func positionIn(db *sql.DB, flavor string, epoch func() uint32, log *zap.Logger) func(context.Context) (source.Position, error) {
	warn := func(err error) {
		log.Warn("snapshot positions may miss a transaction committing as they are read", zap.Error(err))
	}
	return func(ctx context.Context) (source.Position, error) {
		p, err := source.CurrentPosition(ctx, db, flavor, warn)
		p.Epoch = epoch()
		return p, err
	}
}

// Reconcile is `invsync reconcile`: one reconciliation of the config, outside a running
// daemon. When no instance leads the config (it can take the leader lock), it rebuilds
// the Bloom filters from the same scan and swaps them in (only when every table is
// reconciled), holding the lock meanwhile so that a daemon starting then waits. When a
// daemon leads, the filters are its to rebuild: Reconcile asks it (POST /bloom/rebuild on
// http.listen). note says what happened to the filters.
func (d *Daemon) Reconcile(ctx context.Context, opts reconcile.Options) (rep *reconcile.Report, note string, err error) {
	c, err := Open(d.cfg)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	tables, err := c.Tables(ctx)
	if err != nil {
		return nil, "", err
	}
	if err := c.CheckRedis(ctx); err != nil {
		return nil, "", err
	}
	// Another source's rows under these prefixes would be reported (and repaired) as extras.
	if err := c.CheckClaims(ctx); err != nil {
		return nil, "", err
	}
	w := c.Writer()
	// Positions belong to the checkpoint's epoch of the source's history.
	epoch := c.Epoch(ctx)
	deps := reconcileDeps(c.Source, d.cfg, c.DB, tables, c.Redis, w, d.log, func() uint32 { return epoch })
	if opts.Recheck == 0 {
		opts.Recheck = d.cfg.Reconcile.RecheckFor
	}
	lock, held, err := TryLock(ctx, c.State, LockName(d.cfg))
	if err != nil {
		return nil, "", err
	}
	if held {
		defer lock.Release()
		// No daemon writes meanwhile: its markers cannot move.
		deps.Applied = nil
		return reconcileLeading(ctx, c, tables, w, lock, deps, opts, d.log)
	}
	// A daemon leads: repairs set their bits with the parameters in Redis.
	readers := map[string]*bloom.Reader{}
	for i, t := range tables {
		readers[t.KeyPrefix] = bloom.NewReader(c.Redis, d.cfg.BloomKey(d.cfg.Tables[i]))
	}
	deps.Ensure = func(ctx context.Context, rows []layout.Change) error {
		for _, c := range rows {
			prefix, inner, ok := layout.InnerOf(c.Key)
			if r := readers[prefix]; r != nil && ok {
				if err := r.Add(ctx, []string{inner}); err != nil {
					return err
				}
			}
		}
		return nil
	}
	rep, err = reconcile.Run(ctx, deps, opts)
	if err != nil {
		return rep, "", err
	}
	if len(opts.Tables) > 0 {
		return rep, "Bloom filters not rebuilt (only some tables were reconciled)", nil
	}
	return rep, c.askLeaderToRebuild(ctx, d.log), nil
}

// reconcileLeading reconciles holding the leader lock (no daemon leads): the Bloom
// filters are rebuilt from the same scan and swapped in when every table is reconciled.
func reconcileLeading(ctx context.Context, c *Conns, tables []*source.Table, w *layout.Writer, lock *Lock,
	deps reconcile.Deps, opts reconcile.Options, log *zap.Logger) (rep *reconcile.Report, note string, err error) {
	// Fenced like the daemon: a run suspended past the lease writes nothing more.
	w.SetFence(lock.Lease)
	keeper := c.Keeper(tables, log.Named("bloom"), nil)
	keeper.SetFence(lock.Lease)
	if err := keeper.Open(ctx); err != nil {
		return nil, "", err
	}
	deps.Ensure = keeper.Ensure
	if len(opts.Tables) > 0 {
		rep, err = reconcile.Run(ctx, deps, opts)
		return rep, "Bloom filters not rebuilt (only some tables were reconciled)", err
	}
	deps.OnKeys = keeper.ScannedMany
	err = keeper.Rebuild(ctx, func(ctx context.Context) error {
		var err error
		rep, err = reconcile.Run(ctx, deps, opts)
		return err
	})
	if err != nil {
		return rep, "", err
	}
	return rep, "Bloom filters rebuilt from the same scan and swapped in", nil
}

// askLeaderToRebuild asks the daemon that leads, wherever it runs (it records its HTTP
// address in the state schema), to rebuild its Bloom filters; it returns what happened.
func (c *Conns) askLeaderToRebuild(ctx context.Context, log *zap.Logger) string {
	addr, where := c.Cfg.HTTP.Listen, "http.listen of this config"
	if l, ok, err := c.Leader(ctx); err != nil {
		log.Warn("cannot read where the leader runs; asking http.listen of this config", zap.Error(err))
	} else if ok {
		var why string
		if addr, why = l.Endpoint(); why != "" {
			return "Bloom filters not rebuilt: " + why + " (its scheduled reconciliation rebuilds them)"
		}
		where = fmt.Sprintf("the leader (%s, pid %d)", l.Host, l.PID)
	}
	if addr == "" {
		return "Bloom filters not rebuilt: a running invsync leads this config and its HTTP endpoint is off (its scheduled reconciliation rebuilds them)"
	}
	hc := &http.Client{Timeout: 10 * time.Minute}
	resp, err := hc.Post("http://"+addr+"/bloom/rebuild", "", nil)
	if err != nil {
		return fmt.Sprintf("Bloom filters not rebuilt: a running invsync leads this config but http://%s/bloom/rebuild (%s) did not answer (%v); its scheduled reconciliation rebuilds them", addr, where, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("Bloom filters not rebuilt: the running invsync at %s answered %s", addr, resp.Status)
	}
	return fmt.Sprintf("Bloom filters rebuilt by the running invsync at %s (%s, POST /bloom/rebuild)", addr, where)
}

// startSchedule runs the reconciliation on reconcile.schedule inside the daemon (the
// leader), repairing when reconcile.repair is on and rebuilding the Bloom filters from
// the same scan. It returns a function that stops it.
func (d *Daemon) startSchedule(db *sql.DB, tables []*source.Table, rdb redis.UniversalClient, w *layout.Writer, keeper *bloom.Keeper) (func(), error) {
	rc := d.live.Load().Reconcile
	if rc.Schedule == "" {
		return func() {}, nil
	}
	s, err := gocron.NewScheduler()
	if err != nil {
		return nil, err
	}
	log := d.log.Named("reconcile")
	ctx, cancel := context.WithCancel(context.Background())
	job := func() { d.reconcileOnce(ctx, db, tables, rdb, w, keeper, d.live.Load().Reconcile.Repair, "scheduled") }
	if _, err := s.NewJob(gocron.CronJob(rc.Schedule, config.CronWithSeconds(rc.Schedule)), gocron.NewTask(job),
		gocron.WithSingletonMode(gocron.LimitModeReschedule)); err != nil {
		cancel()
		return nil, fmt.Errorf("reconcile.schedule %q: %w", rc.Schedule, err)
	}
	s.Start()
	log.Info("reconciliation scheduled", zap.String("schedule", rc.Schedule))
	return func() {
		cancel()
		_ = s.Shutdown()
	}, nil
}

// reconcileOnce runs one reconciliation of every table (repairing when repair is set)
// with a Bloom rebuild from the same scan, and sets its metrics. why names the run in
// the log: "scheduled", or the heal after Redis went back to an older state.
func (d *Daemon) reconcileOnce(ctx context.Context, db *sql.DB, tables []*source.Table, rdb redis.UniversalClient, w *layout.Writer, keeper *bloom.Keeper, repair bool, why string) {
	log := d.log.Named("reconcile").With(zap.String("run", why))
	start := time.Now()
	deps := reconcileDeps(d.src, d.live.Load(), db, tables, rdb, w, log, d.epoch.Load)
	deps.Ensure, deps.OnKeys = keeper.Ensure, keeper.ScannedMany
	var rep *reconcile.Report
	err := keeper.Rebuild(ctx, func(ctx context.Context) error {
		var err error
		rep, err = reconcile.Run(ctx, deps, reconcile.Options{Repair: repair, Recheck: d.live.Load().Reconcile.RecheckFor})
		return err
	})
	d.m.ReconcileLastTimestamp.Set(float64(time.Now().Unix()))
	d.m.ReconcileLastDuration.Set(time.Since(start).Seconds())
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			d.m.ReconcileRuns.WithLabelValues("error").Inc()
			log.Error("reconciliation failed", zap.Error(err))
		}
		return
	}
	for _, tr := range rep.Tables {
		d.m.ReconcileLastRows.WithLabelValues(tr.Table).Set(float64(tr.RowsChecked))
		for _, k := range reconcile.Kinds {
			d.m.ReconcileLastDifferences.WithLabelValues(tr.Table, string(k)).Set(float64(tr.Differences[k]))
			d.m.ReconcileLastRepaired.WithLabelValues(tr.Table, string(k)).Set(float64(tr.Repaired[k]))
		}
	}
	result := "clean"
	switch {
	case rep.Drift():
		result = "drift"
		log.Warn("reconciliation found drift", zap.Int64("differences", rep.Differences), zap.Int64("unrepaired", rep.Unrepaired), zap.Int64("rows", rep.RowsChecked))
	case rep.Differences > 0:
		result = "repaired"
		log.Warn("reconciliation repaired drift", zap.Int64("differences", rep.Differences), zap.Int64("rows", rep.RowsChecked))
	default:
		log.Info("reconciliation: no drift", zap.Int64("rows", rep.RowsChecked), zap.Duration("took", time.Since(start)))
	}
	d.m.ReconcileRuns.WithLabelValues(result).Inc()
}
