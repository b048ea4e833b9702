package compensation

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/metrics"
	"go.uber.org/zap"
)

// Fetch reads the current row of table (schema.table) with primary key pk (as in the
// Redis key) from the source, as a write that does not come from the binlog (or stamped
// with the binlog position it was read at, Change.Seq, also when not found); found is
// false when the row no longer exists.
type Fetch func(ctx context.Context, table, pk string) (c layout.Change, found bool, err error)

// Writer applies changes; layout.Writer is the implementation.
type Writer interface {
	Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error
}

// notVisibleFor is how long a parked change may stay invisible to the retrier's reads (a
// commit on its way) before each further wait is logged; notVisibleRetry is how soon it
// reads again meanwhile.
const (
	notVisibleFor   = time.Minute
	notVisibleRetry = 100 * time.Millisecond
)

// Retrier retries parked writes when they are due: it reads the row again from the
// source (or learns it was deleted), writes it through the versioned script, and deletes
// the compensation row on success; otherwise it backs off, and marks the row dead after
// max_attempts.
type Retrier struct {
	st    *Store
	fetch Fetch
	w     Writer
	m     *metrics.Metrics
	log   *zap.Logger
	poll  atomic.Int64 // nanoseconds
	// warned is when a change that stays invisible was last logged (Once's goroutine only).
	warned time.Time
}

// NewRetrier returns a retrier polling every poll.
func NewRetrier(st *Store, fetch Fetch, w Writer, m *metrics.Metrics, log *zap.Logger, poll time.Duration) *Retrier {
	r := &Retrier{st: st, fetch: fetch, w: w, m: m, log: log}
	r.SetInterval(poll)
	return r
}

// SetInterval changes the polling interval from the next poll on (a config reload).
func (r *Retrier) SetInterval(poll time.Duration) { r.poll.Store(int64(max(poll, time.Millisecond))) }

// Run retries due rows until ctx ends.
func (r *Retrier) Run(ctx context.Context) {
	for {
		if err := r.Once(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("compensation retries paused", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(r.poll.Load())):
		}
	}
}

// Once retries the rows that are due now, and updates the gauges.
func (r *Retrier) Once(ctx context.Context) error {
	defer r.gauges(ctx)
	due, err := r.st.Due(ctx, 100)
	if err != nil {
		return err
	}
	out := make([]layout.Outcome, 1)
	for _, e := range due {
		c, found, err := r.fetch(ctx, e.Table, e.PK)
		if err != nil {
			if err := r.failed(ctx, e, err); err != nil {
				return err
			}
			continue
		}
		if e.Seq != "" && !c.Seq.IsZero() && string(layout.AppendSeq(nil, c.Seq)) < e.Seq {
			// The read does not see the parked change yet: it is in the binlog, its
			// commit is still on its way (group commit, semi-sync waiting for a replica).
			// Writing this older row would lose it; read again shortly. (A change from a
			// history the source no longer has is from an earlier epoch, always before.)
			r.m.CompensationRetries.WithLabelValues("not_visible").Inc()
			if time.Since(e.UpdatedAt) > notVisibleFor && time.Since(r.warned) > time.Minute {
				r.warned = time.Now()
				r.log.Warn("a parked change is still not visible to the source's readers; waiting for its commit",
					zap.String("key", e.RedisKey), zap.String("parked_at_seq", e.Seq), zap.String("read_at_seq", string(layout.AppendSeq(nil, c.Seq))))
			}
			if err := r.st.Postpone(ctx, e, notVisibleRetry); err != nil {
				return err
			}
			continue
		}
		if !found {
			// Deleted since: a tombstone, unless Redis holds a newer live row (the fetch
			// may stamp it with the position it read at).
			c = layout.Change{Key: e.RedisKey, Op: layout.OpDelete, Version: e.Version, Seq: c.Seq}
		}
		if err := r.w.Apply(ctx, []layout.Change{c}, out); err != nil && !errors.Is(out[0].Err, layout.ErrKey) {
			return err // Redis unreachable: not the key's fault, try again next poll
		}
		if out[0].Result == layout.Failed {
			if err := r.failed(ctx, e, out[0].Err); err != nil {
				return err
			}
			continue
		}
		if err := r.st.Done(ctx, e); err != nil && !errors.Is(err, ErrSuperseded) {
			return err
		}
		r.m.CompensationRetries.WithLabelValues("applied").Inc()
		r.log.Info("parked write retried and applied", zap.String("key", e.RedisKey), zap.Int("attempts", e.Attempts+1))
	}
	return nil
}

func (r *Retrier) failed(ctx context.Context, e Entry, cause error) error {
	dead, err := r.st.Failed(ctx, e, cause)
	if err != nil {
		return err
	}
	if dead {
		r.m.CompensationRetries.WithLabelValues("dead").Inc()
		r.log.Error("parked write gave up after max_attempts; it is kept as dead (invsync compensation list / replay)",
			zap.String("key", e.RedisKey), zap.Error(cause))
		return nil
	}
	r.m.CompensationRetries.WithLabelValues("failed").Inc()
	return nil
}

func (r *Retrier) gauges(ctx context.Context) {
	pending, dead, oldest, err := r.st.Counts(ctx)
	if err != nil {
		return
	}
	r.m.CompensationPending.Set(float64(pending))
	r.m.CompensationDead.Set(float64(dead))
	r.m.CompensationOldest.Set(oldest.Seconds())
}
