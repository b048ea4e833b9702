// Package sink applies row changes to Redis. A router sends each row to worker
// hash(key) % N, so every change of one key is applied by one worker, in binlog order.
// A worker drains its queue, keeps only the newest change per key (coalescing), and
// writes the batch with one pipeline of versioned script calls. A row is acknowledged to
// the Watermark only after Redis applied it (or already held it): the checkpoint can
// never pass a change that is not in Redis.
//
// When a write fails, the worker retries it with backoff and does not move on; the
// queue fills and reading of the binlog pauses (backpressure) until Redis answers.
package sink

import (
	"context"
	"errors"
	"hash/maphash"
	"sync/atomic"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Parker stores a change that Redis refused for its key (not for an outage) so that it
// is retried later; the compensation store is the implementation. A parked change counts
// as done for the checkpoint.
type Parker interface {
	Park(ctx context.Context, table string, c layout.Change, cause error) error
}

// keyRetries is how many times a change refused for its key is retried in place before
// it is parked.
const keyRetries = 2

// tuning returns the batch size and the flush interval now in force.
func (s *Sink) tuning() (int, time.Duration) {
	return int(s.batchSize.Load()), time.Duration(s.flushInterval.Load())
}

// SetTuning changes the batch size and the flush interval of the running workers (a
// config reload); a worker applies them from its next batch.
func (s *Sink) SetTuning(batchSize int, flushInterval time.Duration) {
	s.batchSize.Store(int64(max(batchSize, 1)))
	s.flushInterval.Store(int64(flushInterval))
}

// Writer applies a batch of changes; layout.Writer is the implementation.
type Writer interface {
	Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error
}

// Sink routes rows to workers and tracks their acknowledgement. It implements
// canal.Handler.
type Sink struct {
	cfg       config.Sink
	w         Writer
	wm        *Watermark
	log       *zap.Logger
	queues    []*keyQueue
	seed      maphash.Seed
	cur       *txnState
	applied   [][2]prometheus.Counter // by table, op-1
	skipped   [][2]prometheus.Counter
	coalesced [][2]prometheus.Counter
	m         *metrics.Metrics
	beat      func()
	parker    Parker
	tables    []string
	busy      atomic.Int64 // batches taken and not yet acknowledged

	batchSize, flushInterval atomic.Int64
	rowsRead                 uint64        // router goroutine only
	lastRead                 atomic.Int64  // unix nanos when the reader last handed over rows
	lastSeq                  atomic.Uint64 // file<<32 | pos of the newest row handed over
	behind                   atomic.Bool   // the newest commit read is old: catching up
	readerIdle               time.Duration // see waitForTurn (readerIdle; tests lengthen it)

	paused     atomic.Int64           // workers waiting for Redis (unreachable or refusing writes)
	pauseCause atomic.Pointer[string] // why, for /readyz
}

// Paused returns why writing waits for Redis ("" when it does not): Redis is unreachable
// or refuses every write (OOM, MISCONF, READONLY, ...). Nothing is parked meanwhile.
func (s *Sink) Paused() string {
	if s.paused.Load() == 0 {
		return ""
	}
	if c := s.pauseCause.Load(); c != nil {
		return *c
	}
	return "redis unavailable"
}

// pause notes that a worker waits for Redis because of err; the returned function ends it.
func (s *Sink) pause(err error) func() {
	cause := err.Error()
	s.pauseCause.Store(&cause)
	if s.paused.Add(1) == 1 {
		s.m.RedisPaused.Set(1)
	}
	return func() {
		if s.paused.Add(-1) == 0 {
			s.m.RedisPaused.Set(0)
		}
	}
}

// Catching up: while the newest commit read is more than behindAfter old and the
// reader is busy, workers leave keys waiting (up to catchUpMaxHold, or until a queue has
// less than a batch of room left) so that later changes of the same keys replace them
// instead of each costing a Redis write, and the CPU goes to reading. Once the reader is
// idle for readerIdle, or the stream is recent, keys are written at once.
const (
	behindAfter    = 2 * time.Second
	catchUpMaxHold = 2 * time.Second
	readerIdle     = 25 * time.Millisecond
)

// New returns a sink for tables (names by config index) writing through w.
// heartbeat is called when the source reports it is idle.
func New(cfg config.Sink, tables []string, w Writer, wm *Watermark, m *metrics.Metrics, log *zap.Logger, heartbeat func()) *Sink {
	s := &Sink{cfg: cfg, w: w, wm: wm, log: log, seed: maphash.MakeSeed(), m: m, beat: heartbeat, tables: tables, readerIdle: readerIdle}
	s.SetTuning(cfg.BatchSize, cfg.FlushInterval)
	s.queues = make([]*keyQueue, cfg.Workers)
	for i := range s.queues {
		s.queues[i] = newKeyQueue(cfg.QueueSize)
	}
	for _, t := range tables {
		s.applied = append(s.applied, [2]prometheus.Counter{m.RowsApplied.WithLabelValues(t, "upsert"), m.RowsApplied.WithLabelValues(t, "delete")})
		s.skipped = append(s.skipped, [2]prometheus.Counter{m.RowsSkipped.WithLabelValues(t, "upsert"), m.RowsSkipped.WithLabelValues(t, "delete")})
		s.coalesced = append(s.coalesced, [2]prometheus.Counter{m.RowsCoalesced.WithLabelValues(t, "upsert"), m.RowsCoalesced.WithLabelValues(t, "delete")})
	}
	return s
}

// SetParker makes the sink park changes Redis refuses for their key (after keyRetries
// in-place retries) instead of retrying them in place until they succeed.
func (s *Sink) SetParker(p Parker) { s.parker = p }

// Row routes one row change to its worker; it blocks while that worker's queue holds
// queue_size other keys.
func (s *Sink) Row(ctx context.Context, r canal.Row) error {
	if s.cur == nil || s.cur.id != r.Txn {
		s.cur = s.wm.open(r.Txn)
	}
	s.cur.pending.Add(1)
	s.cur.rows++
	s.lastSeq.Store(uint64(r.Change.Seq.File)<<32 | uint64(r.Change.Seq.Pos))
	if s.rowsRead++; s.rowsRead&63 == 0 {
		s.lastRead.Store(time.Now().UnixNano())
	}
	h := maphash.String(s.seed, r.Change.Key)
	if _, err := s.queues[h%uint64(len(s.queues))].put(ctx, h, r.Change, r.Image, r.Table, s.cur); err != nil {
		s.cur.pending.Add(-1)
		return err
	}
	return nil
}

// LastSeq is the binlog sequence (file and position) of the newest row handed over: a
// read that must see every row the sink may have written reads at or after it.
func (s *Sink) LastSeq() layout.Seq {
	v := s.lastSeq.Load()
	return layout.Seq{File: uint32(v >> 32), Pos: uint32(v)}
}

// Commit seals a transaction.
func (s *Sink) Commit(_ context.Context, c canal.Commit) error {
	s.lastRead.Store(time.Now().UnixNano())
	s.behind.Store(time.Since(c.Time) > behindAfter)
	s.wm.seal(c.Txn, c.Pos, c.Time)
	s.cur = nil
	return nil
}

// Heartbeat notes that the source is idle.
func (s *Sink) Heartbeat(context.Context) error {
	if s.beat != nil {
		s.beat()
	}
	return nil
}

// Flush waits until every row handed over so far is written (the router must not hand
// over more meanwhile).
func (s *Sink) Flush(ctx context.Context) error {
	s.behind.Store(false) // write at once, do not hold keys
	for s.QueueDepth() > 0 || s.busy.Load() > 0 {
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// QueueDepth is the number of keys waiting in the workers' queues.
func (s *Sink) QueueDepth() int {
	n := 0
	for _, q := range s.queues {
		n += q.depth()
	}
	return n
}

// Close ends the input: workers finish what is queued, then Run returns.
func (s *Sink) Close() {
	for _, q := range s.queues {
		q.close()
	}
}

// Run runs the workers until Close was called and the queues are drained, or ctx ends
// (then unwritten rows stay unacknowledged).
func (s *Sink) Run(ctx context.Context) error {
	// Not errgroup.WithContext: a worker that fails does not stop the others.
	var workers errgroup.Group
	for i, q := range s.queues {
		workers.Go(func() error { return s.work(ctx, i, q) })
	}
	return workers.Wait()
}

// work runs worker id: it writes what it takes from q until q is drained or ctx ends.
func (s *Sink) work(ctx context.Context, id int, q *keyQueue) error {
	log := s.log.With(zap.Int("worker", id))
	bs, fi := s.tuning()
	batch := make([]*entry, 0, bs)
	changes := make([]layout.Change, 0, bs)
	out := make([]layout.Outcome, bs)
	var timer *time.Timer
	loaded := false // the last batch was at least half full
	for {
		// batch_size and flush_interval can change while running (config reload).
		bs, fi = s.tuning()
		if len(out) < bs {
			out = make([]layout.Outcome, bs)
		}
		// Block for the first entries, then, if the batch is not full and the worker is
		// under load, wait up to flush_interval for more.
		if err := s.waitForTurn(ctx, q, bs, &timer); err != nil {
			return err
		}
		var done bool
		s.busy.Add(1)
		batch, done = q.take(batch[:0], bs)
		if len(batch) == 0 && !done {
			s.busy.Add(-1)
			select {
			case <-q.ready:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		// Linger only under load (the last batch was at least half full): a worker that
		// keeps up writes a row at once, and rows that arrive meanwhile form the next
		// batch on their own.
		if len(batch) < bs && !done && fi > 0 && loaded {
			var err error
			if batch, done, err = s.linger(ctx, q, batch, done, bs, fi, &timer); err != nil {
				return err
			}
		}
		if len(batch) == 0 {
			s.busy.Add(-1)
			return nil // closed and drained
		}
		loaded = 2*len(batch) >= bs
		changes = s.changesOf(log, batch, changes[:0])
		if err := s.write(ctx, log, changes, batch, out[:len(changes)]); err != nil {
			return err
		}
		s.acknowledge(batch, out)
		s.busy.Add(-1)
		if done {
			return nil
		}
	}
}

// linger takes more entries into batch until it holds bs, q is closed, or fi has passed.
func (s *Sink) linger(ctx context.Context, q *keyQueue, batch []*entry, done bool, bs int, fi time.Duration, timer **time.Timer) ([]*entry, bool, error) {
	if *timer == nil {
		*timer = time.NewTimer(fi)
	} else {
		(*timer).Reset(fi)
	}
linger:
	for len(batch) < bs && !done {
		select {
		case <-q.ready:
			batch, done = q.take(batch, bs)
		case <-(*timer).C:
			break linger
		case <-ctx.Done():
			(*timer).Stop()
			return batch, done, ctx.Err()
		}
	}
	(*timer).Stop()
	return batch, done, nil
}

// changesOf appends to changes what batch's entries write (rendered fields, versions).
func (s *Sink) changesOf(log *zap.Logger, batch []*entry, changes []layout.Change) []layout.Change {
	for _, e := range batch {
		c := e.change
		if c.Op == layout.OpUpsert && c.Fields == nil && !e.image.IsZero() {
			c.Version = e.image.Version(c.Seq)
			var err error
			if c.Fields, err = e.image.Fields(); err != nil {
				s.m.RenderErrors.Inc()
				log.Error("a column value has a type invsync does not expect; written as rendered", zap.String("key", c.Key), zap.Error(err))
			}
		}
		c.MaxVersion = e.maxVersion(c.Version)
		changes = append(changes, c)
	}
	return changes
}

// acknowledge marks batch's entries written (counting the rows coalesced into them).
func (s *Sink) acknowledge(batch []*entry, out []layout.Outcome) {
	for i, e := range batch {
		if n := e.merged; n > 0 {
			// Rows superseded while waiting share the fate of the newest change.
			op := opIndex(e.change.Op)
			if out[i].Result == layout.Skipped {
				s.skipped[e.table][op].Add(float64(n))
			} else {
				s.coalesced[e.table][op].Add(float64(n))
			}
		}
		e.hold.pending.Add(-1)
		batch[i] = nil
	}
}

// waitForTurn returns when the worker should write: at once unless catching up with a
// busy reader (see catchUpMaxHold).
func (s *Sink) waitForTurn(ctx context.Context, q *keyQueue, bs int, timer **time.Timer) error {
	for s.behind.Load() {
		now := time.Now().UnixNano()
		if now-s.lastRead.Load() > int64(s.readerIdle) || q.urgent(now-int64(catchUpMaxHold), bs) {
			return nil
		}
		if *timer == nil {
			*timer = time.NewTimer(s.readerIdle)
		} else {
			(*timer).Reset(s.readerIdle)
		}
		select {
		case <-(*timer).C:
		case <-q.nearFull:
			(*timer).Stop()
		case <-ctx.Done():
			(*timer).Stop()
			return ctx.Err()
		}
	}
	return nil
}

// write applies changes, retrying failures with backoff until every change is applied
// or skipped; out[i] ends as the outcome of changes[i]. It returns only when that is
// done or ctx ends.
func (s *Sink) write(ctx context.Context, log *zap.Logger, changes []layout.Change, batch []*entry, out []layout.Outcome) error {
	wait := &backoff.Exponential{Initial: 50 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.5}
	todo := changes
	idx := []int(nil) // index in changes of each entry of todo, once retrying
	res := out
	unpause := func() {}
	defer func() { unpause() }()
	for attempt := 0; ; attempt++ {
		start := time.Now()
		err := s.w.Apply(ctx, todo, res)
		s.m.ApplyLatency.Observe(time.Since(start).Seconds())
		var failed []int
		for k, o := range res {
			i := k
			if idx != nil {
				i = idx[k]
				out[i] = o
			}
			it := batch[i]
			op := opIndex(it.change.Op)
			if o.Settled > 0 || o.Unheld > 0 {
				s.m.Settlements.WithLabelValues("hold_ended").Add(float64(o.Settled))
				s.m.Settlements.WithLabelValues("no_hold").Add(float64(o.Unheld))
			}
			switch o.Result {
			case layout.Applied:
				s.applied[it.table][op].Inc()
			case layout.Skipped:
				s.skipped[it.table][op].Inc()
			default:
				failed = append(failed, i)
			}
		}
		if len(failed) == 0 {
			return nil
		}
		if err == nil && s.parker != nil && attempt >= keyRetries {
			// Refused for the key itself, again: park it and go on with the others.
			for _, i := range failed {
				if perr := s.park(ctx, log, batch[i], changes[i], out[i].Err); perr != nil {
					return perr
				}
				out[i] = layout.Outcome{Result: layout.Applied}
			}
			return nil
		}
		if err != nil {
			// Unreachable, or refusing every write because of its state (OOM, MISCONF,
			// READONLY, LOADING, ...): an outage. Retry; never park (the reader waits
			// behind the full queue, the checkpoint stays).
			kind := "unavailable"
			if layout.IsServerState(err) {
				kind = "refused"
			} else if errors.Is(err, layout.ErrFenced) {
				kind = "fenced" // the instance stops leading soon; its context ends this
			}
			s.m.RedisErrors.WithLabelValues(kind).Inc()
			unpause()
			unpause = s.pause(err)
			if attempt == 0 || attempt%20 == 0 {
				log.Warn("redis unavailable or refusing writes; pausing this worker and retrying (nothing is parked)", zap.String("kind", kind),
					zap.Error(err), zap.Int("rows", len(failed)), zap.Duration("backoff", wait.Current()))
			}
		} else {
			s.m.RedisErrors.WithLabelValues("key").Add(float64(len(failed)))
			log.Error("redis refused a key write; retrying (the checkpoint waits for it)",
				zap.String("key", changes[failed[0]].Key), zap.Error(out[failed[0]].Err), zap.Int("failed_keys", len(failed)))
		}
		// Retry only what failed.
		idx = failed
		todo = make([]layout.Change, len(failed))
		for k, i := range failed {
			todo[k] = changes[i]
		}
		res = make([]layout.Outcome, len(failed))
		if err := wait.Wait(ctx); err != nil {
			return err
		}
	}
}

// park stores a refused change, retrying while the state database is unreachable (the
// worker, and so the reader, pause meanwhile: nothing is dropped).
func (s *Sink) park(ctx context.Context, log *zap.Logger, e *entry, c layout.Change, cause error) error {
	wait := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		err := s.parker.Park(ctx, s.tables[e.table], c, cause)
		if err == nil {
			s.m.CompensationParked.Inc()
			log.Warn("redis refused a key write; parked in the compensation table for retries", zap.String("key", c.Key), zap.Error(cause))
			return nil
		}
		log.Warn("cannot park a refused write (state database unreachable?); retrying", zap.String("key", c.Key), zap.Error(err), zap.Duration("backoff", wait.Current()))
		if err := wait.Wait(ctx); err != nil {
			return err
		}
	}
}

func opIndex(op layout.Op) int {
	if op == layout.OpDelete {
		return 1
	}
	return 0
}
