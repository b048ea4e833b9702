// Package metrics defines invsync's Prometheus metrics. They are registered on a
// registry the caller passes in, never on a global one.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds every collector.
type Metrics struct {
	// RowsApplied counts row changes written to Redis, by table and op (upsert/delete).
	RowsApplied *prometheus.CounterVec
	// RowsSkipped counts row changes Redis already held (replays, older changes).
	RowsSkipped *prometheus.CounterVec
	// RowsCoalesced counts row changes superseded by a newer change of the same key in
	// the same batch, whose newest change was applied.
	RowsCoalesced *prometheus.CounterVec
	// ApplyLatency is the duration of one pipeline of versioned writes.
	ApplyLatency prometheus.Histogram
	// RedisErrors counts failed Redis calls, by kind (key: a single key refused;
	// unavailable: the whole call failed; refused: Redis refused because of its state,
	// e.g. OOM, MISCONF, READONLY, LOADING; fenced: not sent, the leader lease expired).
	RedisErrors *prometheus.CounterVec
	// RedisPaused is 1 while writing waits because Redis is unreachable or refuses
	// writes (the reader waits, the checkpoint stays).
	RedisPaused prometheus.Gauge
	// RenderErrors counts column values of a type the decoder did not expect.
	RenderErrors prometheus.Counter
	// CheckpointWrites counts checkpoint writes.
	CheckpointWrites prometheus.Counter
	// Restarts counts restarts of the binlog stream after an error.
	StreamRestarts prometheus.Counter
	// CompensationParked counts writes parked in the compensation table.
	CompensationParked prometheus.Counter
	// CompensationRetries counts retries of parked writes, by result (applied, failed, dead, not_visible).
	CompensationRetries *prometheus.CounterVec
	// CompensationPending, CompensationDead and CompensationOldest describe the
	// compensation table: pending rows, dead rows, age of the oldest pending row (s).
	CompensationPending, CompensationDead, CompensationOldest prometheus.Gauge
	// Resnapshots counts full reloads made to heal, by reason.
	Resnapshots *prometheus.CounterVec
	// RedisRollbacks counts the times Redis was found back at an older state (restored
	// from an older RDB/AOF, failed over to a lagging replica) or a master had lost its
	// data, and was healed.
	RedisRollbacks prometheus.Counter
	// SourceEpochs counts new epochs of the source's history (a binlog reset, another
	// server answering).
	SourceEpochs prometheus.Counter
	// CommittedTxns counts transactions whose rows are all acknowledged.
	CommittedTxns prometheus.Counter
	// ReconcileRuns counts scheduled reconciliations by result (clean, repaired, drift,
	// error).
	ReconcileRuns *prometheus.CounterVec
	// ReconcileLastTimestamp and ReconcileLastDuration describe the last finished run.
	ReconcileLastTimestamp, ReconcileLastDuration prometheus.Gauge
	// ReconcileLastDifferences and ReconcileLastRepaired count the last run's
	// differences and repairs by table and kind; ReconcileLastRows its rows by table.
	ReconcileLastDifferences, ReconcileLastRepaired, ReconcileLastRows *prometheus.GaugeVec
	// ConfigReloads counts config reloads by result (applied, unchanged, refused).
	ConfigReloads *prometheus.CounterVec
	// LoopFailures counts the leader's background loops that ended while leading went on,
	// by loop; the leader then stands by and leads again.
	LoopFailures *prometheus.CounterVec
	// Settlements counts the settlements read from the binlog, by result: hold_ended (the
	// order's hold ended with the stock change), no_hold (its hold had been released or
	// had expired, or Redis lost it: the stock moved only) or invalid (a row that cannot
	// be read: skipped and logged).
	Settlements *prometheus.CounterVec
	// HoldsExpired counts holds the daemon's sweep ended at their expiry.
	HoldsExpired prometheus.Counter
}

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		RowsApplied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "invsync_rows_applied_total", Help: "Row changes written to Redis, by table and op.",
		}, []string{"table", "op"}),
		RowsSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "invsync_rows_skipped_total", Help: "Row changes skipped because Redis already held that state or a newer one (replays).",
		}, []string{"table", "op"}),
		RowsCoalesced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "invsync_rows_coalesced_total", Help: "Row changes superseded by a newer change of the same key in the same batch.",
		}, []string{"table", "op"}),
		ApplyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "invsync_apply_duration_seconds", Help: "Duration of one pipeline of versioned Redis writes.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}),
		RedisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "invsync_redis_errors_total", Help: "Failed Redis writes, by kind: key (one key refused), unavailable (the call failed), refused (Redis's state: OOM, MISCONF, READONLY, LOADING, ...), fenced (not sent: this instance's leader lease expired).",
		}, []string{"kind"}),
		RedisPaused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "invsync_redis_paused", Help: "1 while writing waits because Redis is unreachable or refuses writes (nothing is parked; the checkpoint stays).",
		}),
		RenderErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "invsync_render_errors_total", Help: "Column values of a type the decoder did not expect (written as rendered, and logged).",
		}),
		CheckpointWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "invsync_checkpoint_writes_total", Help: "Checkpoint writes to the state database.",
		}),
		StreamRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "invsync_stream_restarts_total", Help: "Restarts of the binlog stream after an error.",
		}),
		CompensationParked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "invsync_compensation_parked_total", Help: "Writes Redis refused for their key, parked in the compensation table.",
		}),
		CompensationRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "invsync_compensation_retries_total", Help: "Retries of parked writes, by result (applied, failed, dead, not_visible: the row read again did not show the parked change yet, read again at the next poll).",
		}, []string{"result"}),
		CompensationPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "invsync_compensation_pending", Help: "Pending rows in the compensation table."}),
		CompensationDead:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "invsync_compensation_dead", Help: "Dead rows in the compensation table (max_attempts reached)."}),
		CompensationOldest: prometheus.NewGauge(prometheus.GaugeOpts{Name: "invsync_compensation_oldest_pending_seconds",
			Help: "Age of the oldest pending row in the compensation table."}),
		Resnapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "invsync_resnapshots_total", Help: "Reloads of tables made to heal, by reason (position_lost, ddl, rollback, redis_data_loss, redis_went_back, binlog_reset, source_changed, table_added).",
		}, []string{"reason"}),
		RedisRollbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "invsync_redis_rollbacks_total", Help: "Times Redis was found back at an older state (restored from an older RDB/AOF, failed over to a lagging replica, a master that lost its data) and healed by streaming again from what it holds.",
		}),
		SourceEpochs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "invsync_source_epochs_total", Help: "Times the source's binlog history was found replaced (RESET MASTER, another server answering) and a new epoch started.",
		}),
		CommittedTxns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "invsync_transactions_done_total", Help: "Source transactions whose rows are all acknowledged by Redis.",
		}),
	}
	// Export the error series at 0 from the start, so that alerts and dashboards see them.
	m.RedisErrors.WithLabelValues("key")
	m.RedisErrors.WithLabelValues("unavailable")
	m.RedisErrors.WithLabelValues("refused")
	m.RedisErrors.WithLabelValues("fenced")
	for _, r := range []string{"applied", "failed", "dead", "not_visible"} {
		m.CompensationRetries.WithLabelValues(r)
	}
	for _, r := range []string{"position_lost", "ddl", "redis_data_loss", "redis_went_back", "rollback", "binlog_reset", "source_changed", "table_added"} {
		m.Resnapshots.WithLabelValues(r)
	}
	m.newOperations(reg)
	m.Settlements = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_settlements_total",
		Help: "Settlements read from the binlog, by result: hold_ended, no_hold (released or expired first, or lost with Redis's data), or invalid (a settlement row that cannot be read: skipped and logged)."}, []string{"result"})
	m.Settlements.WithLabelValues("hold_ended")
	m.Settlements.WithLabelValues("no_hold")
	m.Settlements.WithLabelValues("invalid")
	m.HoldsExpired = prometheus.NewCounter(prometheus.CounterOpts{Name: "invsync_holds_expired_total",
		Help: "Reservation holds the daemon ended at their expiry (a client that neither released nor settled)."})
	reg.MustRegister(m.Settlements, m.HoldsExpired)
	reg.MustRegister(m.RowsApplied, m.RowsSkipped, m.RowsCoalesced, m.ApplyLatency, m.RedisErrors, m.RedisPaused, m.RenderErrors, m.CheckpointWrites, m.StreamRestarts, m.Resnapshots, m.RedisRollbacks, m.SourceEpochs, m.CommittedTxns, m.CompensationParked, m.CompensationRetries,
		m.CompensationPending, m.CompensationDead, m.CompensationOldest)
	return m
}

// newOperations makes and registers the metrics of the daemon's operations beside the
// stream: scheduled reconciliations, config reloads, failed background loops.
func (m *Metrics) newOperations(reg prometheus.Registerer) {
	m.ReconcileRuns = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_reconcile_runs_total",
		Help: "Scheduled reconciliations by result: clean, repaired, drift (differences left), error."}, []string{"result"})
	m.ReconcileLastTimestamp = prometheus.NewGauge(prometheus.GaugeOpts{Name: "invsync_reconcile_last_run_timestamp_seconds",
		Help: "Unix time the last reconciliation finished."})
	m.ReconcileLastDuration = prometheus.NewGauge(prometheus.GaugeOpts{Name: "invsync_reconcile_last_duration_seconds",
		Help: "Duration of the last reconciliation."})
	m.ReconcileLastDifferences = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "invsync_reconcile_last_differences",
		Help: "Differences the last reconciliation found, by table and kind (missing, stale, mismatch, extra, wrong_type)."}, []string{"table", "kind"})
	m.ReconcileLastRepaired = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "invsync_reconcile_last_repaired",
		Help: "Differences the last reconciliation repaired, by table and kind."}, []string{"table", "kind"})
	m.ReconcileLastRows = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "invsync_reconcile_last_rows_checked",
		Help: "Rows the last reconciliation compared, by table."}, []string{"table"})
	m.ConfigReloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_config_reloads_total",
		Help: "Config reloads (file change or SIGHUP) by result: applied, unchanged, refused (invalid file; the running config stays)."}, []string{"result"})
	m.LoopFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_leader_loop_failures_total",
		Help: "Background loops of the leader that ended while leading went on, by loop: the leader stood by and led again."}, []string{"loop"})
	for _, l := range []string{"compensation_retrier", "bloom_keeper", "data_loss_watch"} {
		m.LoopFailures.WithLabelValues(l)
	}
	reg.MustRegister(m.ConfigReloads, m.LoopFailures)
	reg.MustRegister(m.ReconcileRuns, m.ReconcileLastTimestamp, m.ReconcileLastDuration, m.ReconcileLastDifferences, m.ReconcileLastRepaired, m.ReconcileLastRows)
}
