package bloom

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bloomv3 "github.com/bits-and-blooms/bloom/v3"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// TableSpec names one mirrored table for the Keeper.
type TableSpec struct {
	// Name is schema.table.
	Name string
	// Prefix is the row key prefix (keys are Prefix{pk}).
	Prefix string
	// Key is the bitmap's key.
	Key string
}

// Scanner reads every primary key of table i (an index in the Keeper's specs) from the
// source and calls add with each one's text (as it appears between the braces of the row
// key).
type Scanner func(ctx context.Context, table int, add func(pk string)) error

// Counter returns how many rows table i (an index in the Keeper's specs) holds at the
// source.
type Counter func(ctx context.Context, table int) (uint64, error)

// AutoMinItems is the smallest filter a keeper sized from the row count builds (about
// 180 KB at a false-positive rate of 0.001).
const AutoMinItems uint = 100_000

// maxBits is the largest bitmap a filter gets: Redis holds strings of at most 512 MB
// (2^32 bits) and sets bits only below offset 2^32.
const maxBits = 1<<32 - 1024

// MaxItems is the most items a filter is sized for at the false-positive rate fp (about
// 298 million at 0.001, the size a table of 149 million rows gets): beyond them the
// bitmap would not fit in a Redis string, so a bigger table gets this filter and a
// higher false-positive rate (and is not rebuilt for outgrowing it).
func MaxItems(fp float64) uint { return Capacity(maxBits, fp) }

// AutoItems is the size of a filter made from the row count: twice rows, at least
// AutoMinItems, at most MaxItems(fp).
func AutoItems(rows uint64, fp float64) uint {
	return min(max(uint(2*min(rows, 1<<40)), AutoMinItems), MaxItems(fp))
}

// Keeper maintains the filters of the mirrored tables for the daemon: in process, and in
// Redis. Every writer of rows calls Ensure before it writes them (Wrap does), so a row
// readable in Redis always has its bits set there, and a checkpoint that covers a row
// covers its bits. Rebuild makes new filters from a full scan (forgetting deleted keys)
// and swaps them in.
type Keeper struct {
	rdb      redis.UniversalClient
	expected uint // items each filter is sized for (the floor when auto)
	auto     bool // size each build from the table's row count (see SizeFrom)
	count    Counter
	fp       float64
	log      *zap.Logger
	tables   []*tableFilter
	byPrefix map[string]*tableFilter
	scan     Scanner

	// swap is held for reading while bits are being set in Redis, and for writing while
	// a new bitmap replaces the live one, so that no bit set with the old parameters
	// lands in the new bitmap unrecorded.
	swap      sync.RWMutex
	rebuildMu sync.Mutex // one rebuild at a time
	// outgrew wakes Run when a filter outgrows its size, so that it is rebuilt at once.
	outgrew chan struct{}

	m *Metrics
}

// Metrics are the keeper's metrics, made once per process and handed to each keeper (an
// instance that stops and starts leading makes a new keeper).
type Metrics struct {
	rebuilds, restores, overCapacity *prometheus.CounterVec
	keeper                           atomic.Pointer[Keeper]
}

// NewMetrics creates the metrics and registers them on reg (may be nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rebuilds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_bloom_rebuilds_total",
			Help: "Bloom filters rebuilt from a full scan and swapped in, by table."}, []string{"table"}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_bloom_restores_total",
			Help: "Bloom bitmaps found missing or damaged in Redis and written again from memory, by table."}, []string{"table"}),
		overCapacity: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_bloom_over_capacity_total",
			Help: "Times a table's filter grew past the items it was sized for (the next rebuild is sized larger)."}, []string{"table"}),
	}
	if reg != nil {
		reg.MustRegister(m.rebuilds, m.restores, m.overCapacity, keeperCollector{m})
	}
	return m
}

type tableFilter struct {
	idx    int
	spec   TableSpec
	mirror *Mirror

	mu        sync.Mutex // guards the fields below
	cur       *Filter
	items     uint64 // items added to cur
	capacity  uint   // items cur was sized for
	complete  bool   // Redis holds cur completely (false until a rebuild or a load)
	next      *Filter
	nextItems uint64
	warned    bool // growth past capacity reported
	// staleMeta: a swap of a retired filter failed and its meta could not be deleted, so
	// Redis may hold a meta that readers trust while no bits reach the bitmap (the swap
	// may have landed, its reply lost). Writes of new keys wait until it is deleted.
	staleMeta bool
	// recent are the keys added lately (a ring of recentKeys), each with when: a
	// rebuild starts its filter with those of the last recentWindow. A row is written to
	// Redis once its transaction is in the binlog, which can be before MySQL lets readers
	// see it (group commit, semi-sync waits); a rebuild's scan of MySQL could then miss
	// a key that readers already find in Redis.
	recent     []recentKey
	recentIdx  map[string]int // index in recent of each key remembered
	recentNext int
}

// recentKey is a key added to a filter and when (unix nanos).
type recentKey struct {
	pk string
	at int64
}

// recentKeys bounds the keys remembered for rebuilds (about 5 MB per table at most);
// recentWindow is how long a key added counts as recent.
const (
	recentKeys   = 1 << 16
	recentWindow = time.Minute
)

// noteRecent remembers pk as written at now (t.mu held).
func (t *tableFilter) noteRecent(pk string, now int64) {
	if i, ok := t.recentIdx[pk]; ok {
		t.recent[i].at = now
		return
	}
	if t.recentIdx == nil {
		t.recentIdx = map[string]int{}
	}
	i := len(t.recent)
	if i < recentKeys {
		t.recent = append(t.recent, recentKey{})
	} else {
		i = t.recentNext
		t.recentNext = (t.recentNext + 1) % recentKeys
		if old := t.recent[i].pk; t.recentIdx[old] == i {
			delete(t.recentIdx, old)
		}
	}
	t.recent[i] = recentKey{pk: pk, at: now}
	t.recentIdx[pk] = i
}

// forgetRecent forgets pk (its row was deleted: a rebuild is to forget it; t.mu held).
func (t *tableFilter) forgetRecent(pk string) {
	if i, ok := t.recentIdx[pk]; ok {
		t.recent[i].at = 0
		delete(t.recentIdx, pk)
	}
}

// seedNext adds the keys added within recentWindow to t.next (t.mu held).
func (t *tableFilter) seedNext() {
	since := time.Now().Add(-recentWindow).UnixNano()
	for _, r := range t.recent {
		if r.at != 0 && r.at >= since {
			if t.next.addNew(r.pk) {
				t.nextItems++
			}
		}
	}
}

// NewKeeper returns a keeper of tables' filters, sized for expected items each at the
// false-positive rate fp; expected 0 sizes each build from the table's row count (see
// SizeFrom). scan (may be nil) lets it rebuild a filter from the source on its own (see
// Run). m (may be nil) receives its metrics.
func NewKeeper(rdb redis.UniversalClient, tables []TableSpec, expected uint, fp float64, scan Scanner, log *zap.Logger, m *Metrics) *Keeper {
	if m == nil {
		m = NewMetrics(nil)
	}
	auto := expected == 0
	if auto {
		expected = AutoMinItems
	}
	k := &Keeper{rdb: rdb, expected: expected, auto: auto, fp: fp, log: log, scan: scan, byPrefix: map[string]*tableFilter{}, m: m,
		outgrew: make(chan struct{}, 1)}
	for i, s := range tables {
		t := &tableFilter{idx: i, spec: s, mirror: NewMirror(rdb, s.Key)}
		k.tables = append(k.tables, t)
		k.byPrefix[s.Prefix] = t
	}
	m.keeper.Store(k)
	return k
}

// SizeFrom lets a keeper made with expected 0 size each build of a table's filter from
// count: twice the rows the table holds, at least AutoMinItems (and at least twice the
// items the filter holds, when the count fails). Without it such a keeper sizes filters
// for AutoMinItems, or twice the items held. Its checks also ask for a rebuild when a
// filter holds more items than it was sized for (see Check). Call before Open.
func (k *Keeper) SizeFrom(count Counter) { k.count = count }

// Open loads each table's filter from Redis; a table without a complete one there gets
// an empty filter, marked incomplete (readers do not trust its bitmap) until a rebuild.
func (k *Keeper) Open(ctx context.Context) error {
	for _, t := range k.tables {
		f, err := t.mirror.Load(ctx)
		if err != nil && !errors.Is(err, ErrNoFilter) {
			return fmt.Errorf("bloom: load %s: %w", t.mirror.Key(), err)
		}
		t.mu.Lock()
		if err == nil {
			t.cur, t.complete = f, true
			t.items = uint64(f.Count())
			t.capacity = Capacity(f.M(), k.fp)
			if k.auto && f.fill() > saturated && !k.atCap(t.capacity) {
				// More bits set than a filter within its size has (its item estimate is
				// then meaningless): the next check rebuilds it larger.
				t.items = max(t.items, uint64(t.capacity)+1)
			}
		} else {
			t.cur, t.complete = New(k.expected, k.fp), false
			t.items, t.capacity = 0, k.expected
		}
		t.mu.Unlock()
		if err != nil {
			if ierr := t.mirror.Invalidate(ctx); ierr != nil {
				return fmt.Errorf("bloom: %w", ierr)
			}
			k.log.Info("no complete bloom filter in Redis yet; readers treat every key as possibly present until it is built",
				zap.String("table", t.spec.Name), zap.String("key", t.mirror.Key()), zap.String("reason", err.Error()))
		} else {
			k.log.Info("bloom filter loaded from Redis", zap.String("table", t.spec.Name), zap.String("key", t.mirror.Key()),
				zap.Uint("bits", f.M()), zap.Uint("hashes", f.K()), zap.Uint64("items", t.items))
		}
	}
	return nil
}

// SetFence makes every bitmap swap (a rebuild's, a restore's) first ask f and refuse
// when it fails: an instance whose leader lease expired must not swap a bitmap in under
// the instance that leads now (one built before that leader's inserts would hide them).
func (k *Keeper) SetFence(f func() error) {
	for _, t := range k.tables {
		t.mirror.fence.Store(&f)
	}
}

// Complete reports whether every table's filter is complete in Redis.
func (k *Keeper) Complete() bool {
	for _, t := range k.tables {
		t.mu.Lock()
		c := t.complete
		t.mu.Unlock()
		if !c {
			return false
		}
	}
	return true
}

// Ensure sets the bits of the keys of changes' upserts (and null markers never) in the
// filters and in Redis, before the rows are written. It returns an error only when Redis
// could not be reached: the rows must then not be written yet. A bitmap Redis refuses
// (not a string) is invalidated and rebuilt later; the rows go on.
func (k *Keeper) Ensure(ctx context.Context, changes []layout.Change) error {
	k.swap.RLock()
	defer k.swap.RUnlock()
	groups := k.groupUpserts(changes)
	if len(groups) == 0 {
		return nil
	}
	if err := k.dropStaleMeta(ctx, groups); err != nil {
		return err
	}
	if !k.keepUnset(groups) {
		return nil
	}
	return k.setBits(ctx, groups)
}

// dropStaleMeta deletes the meta of the groups' tables that may hold a stale one (see
// staleMeta), or fails: the write must wait. With k.swap held for reading, no swap,
// retirement or restore runs meanwhile.
func (k *Keeper) dropStaleMeta(ctx context.Context, groups []adds) error {
	for _, g := range groups {
		g.t.mu.Lock()
		stale := g.t.staleMeta
		g.t.mu.Unlock()
		if !stale {
			continue
		}
		if err := g.t.mirror.Invalidate(ctx); err != nil {
			return fmt.Errorf("bloom: %s may hold a meta that readers trust while its filter is being rebuilt (a swap failed); new keys wait until it is deleted: %w", g.t.mirror.MetaKey(), err)
		}
		g.t.mu.Lock()
		g.t.staleMeta = false
		g.t.mu.Unlock()
	}
	return nil
}

// damaged handles a bitmap key that holds another type: readers are told to stop
// trusting it, and the next check rebuilds it.
func (k *Keeper) damaged(ctx context.Context, t *tableFilter, cause error) {
	t.mu.Lock()
	was := t.complete
	t.complete = false
	t.mu.Unlock()
	if was {
		k.log.Error("the bloom bitmap key holds a value of another type; readers now treat every key as possibly present, and the filter is rebuilt from the source",
			zap.String("table", t.spec.Name), zap.String("key", t.mirror.Key()), zap.Error(cause))
	}
	_ = t.mirror.Invalidate(ctx)
}

// checkCapacity reports (once) a filter that holds more items than it was sized for.
// Called with t.mu held.
func (k *Keeper) checkCapacity(t *tableFilter) {
	if t.warned || t.items <= uint64(t.capacity) {
		return
	}
	t.warned = true
	if k.outgrown(t) {
		select {
		case k.outgrew <- struct{}{}:
		default:
		}
	}
	k.m.overCapacity.WithLabelValues(t.spec.Name).Inc()
	fix := "raise bloom.expected_items, or let the next rebuild (reconcile, or POST /bloom/rebuild) size it"
	if k.auto {
		fix = "none needed: the filter is rebuilt from the source now, sized for twice the table's rows"
	}
	k.log.Warn("the bloom filter holds more keys than it was sized for: its false-positive rate rises; the next rebuild is sized for twice as many",
		zap.String("table", t.spec.Name), zap.Uint64("items", t.items), zap.Uint("sized_for", t.capacity),
		zap.Float64("estimated_false_positive_rate", t.cur.EstimatedFalsePositiveRate(uint(t.items))),
		zap.String("fix", fix))
}

// rowsOf returns the rows table i holds at the source (auto sizing); ok is false when
// unknown.
func (k *Keeper) rowsOf(ctx context.Context, t *tableFilter) (n uint64, ok bool) {
	if !k.auto || k.count == nil {
		return 0, false
	}
	n, err := k.count(ctx, t.idx)
	if err != nil {
		k.log.Warn("cannot count the table's rows to size its bloom filter; sizing it from the items it holds",
			zap.String("table", t.spec.Name), zap.Error(err))
		return 0, false
	}
	return n, true
}

// retire takes t's live filter out of use while a rebuild runs, when the table holds
// more rows than it was sized for (a bulk import, a catch-up over one): its meta is
// deleted, so readers treat every key as possibly present, which is what a filter past
// its size tells them more and more anyway; and the keys written until the swap cost no
// bits in Redis (the rebuild writes its filter whole). If the meta cannot be deleted, the
// filter stays in use and bits go on reaching it.
//
// It holds k.swap: no Ensure is between choosing the bits to send and sending them, and
// no restore (Check) can write the meta again between its deletion and complete=false,
// which would leave readers trusting a bitmap that no longer receives bits.
func (k *Keeper) retire(ctx context.Context, t *tableFilter, rows uint64) {
	k.swap.Lock()
	defer k.swap.Unlock()
	if err := t.mirror.Invalidate(ctx); err != nil {
		return
	}
	t.mu.Lock()
	capacity := t.capacity
	t.complete = false
	t.mu.Unlock()
	k.log.Info("the live bloom filter is too small for the table: readers treat every key as possibly present until the rebuilt one is swapped in",
		zap.String("table", t.spec.Name), zap.Uint64("rows", rows), zap.Uint("sized_for", capacity))
}

// sizeFor returns the filter for the next rebuild of t: sized for the configured items,
// or twice the table's rows (auto), or twice the items held when the table grew past
// them. Called with t.mu held.
func (k *Keeper) sizeFor(t *tableFilter, rows uint64, counted bool) *Filter {
	n := k.expected
	if t.items > uint64(n) {
		n = uint(2 * min(t.items, 1<<40))
	}
	if k.auto && counted {
		n = AutoItems(rows, k.fp)
	}
	if lim := MaxItems(k.fp); n > lim {
		k.log.Warn("the bloom filter this table needs would not fit in a Redis string (512 MB); it is capped, and its false-positive rate rises",
			zap.String("table", t.spec.Name), zap.Uint("items", n), zap.Uint("capped_at", lim),
			zap.String("fix", "raise bloom.false_positive_rate for this table's size, or accept the higher rate"))
		n = lim
	}
	f := New(n, k.fp)
	// Filters of different parameters must differ in length, so that readers can tell
	// which one they read (see Reader).
	if c := t.cur; c != nil && (f.M() != c.M() || f.K() != c.K()) && (f.M()+7)/8 == (c.M()+7)/8 {
		f = &Filter{f: bloomv3.New(((c.M()+7)/8+1)*8, f.K())}
	}
	return f
}

// Scanned records a key read by a rebuild's scan of the source.
func (k *Keeper) Scanned(table int, pk string) { k.ScannedMany(table, []string{pk}) }

// ScannedMany records keys read by a rebuild's scan of the source.
func (k *Keeper) ScannedMany(table int, pks []string) {
	t := k.tables[table]
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.next == nil {
		return
	}
	for _, pk := range pks {
		if t.next.addNew(pk) {
			t.nextItems++
		}
	}
}

// Rebuild builds new filters for every table while fill runs (fill feeds them: rows
// written through Ensure, or keys passed to Scanned), then swaps each one in: Redis
// first (RENAME), then memory. Keys written while fill runs go into the new filters too.
func (k *Keeper) Rebuild(ctx context.Context, fill func(context.Context) error) error {
	return k.rebuild(ctx, k.tables, fill)
}

// rebuild is Rebuild of tables only (the others keep their filters).
func (k *Keeper) rebuild(ctx context.Context, tables []*tableFilter, fill func(context.Context) error) error {
	k.rebuildMu.Lock()
	defer k.rebuildMu.Unlock()
	return k.rebuildLocked(ctx, tables, fill)
}

// rebuildLocked is rebuild with k.rebuildMu held.
func (k *Keeper) rebuildLocked(ctx context.Context, tables []*tableFilter, fill func(context.Context) error) error {
	start := time.Now()
	for _, t := range tables {
		rows, counted := k.rowsOf(ctx, t)
		t.mu.Lock()
		t.next, t.nextItems = k.sizeFor(t, rows, counted), 0
		t.seedNext()
		tooSmall := k.tooSmall(t, rows, counted)
		t.mu.Unlock()
		if tooSmall {
			k.retire(ctx, t, rows)
		}
	}
	drop := func() {
		for _, t := range tables {
			t.mu.Lock()
			t.next = nil
			t.mu.Unlock()
		}
	}
	if err := fill(ctx); err != nil {
		drop()
		return err
	}
	k.swap.Lock()
	defer k.swap.Unlock()
	for _, t := range tables {
		t.mu.Lock()
		next, items := t.next, t.nextItems
		t.mu.Unlock()
		if err := t.mirror.Replace(ctx, next); err != nil {
			drop()
			// Redis may hold the new bitmap under the old meta (the swap failed half way).
			// With the meta deleted, readers stop trusting the bitmap and the next check
			// rebuilds it. If the meta cannot be deleted either, readers still trust the
			// bitmap: a complete filter stays complete, so bits go on reaching Redis, and
			// the check repairs a bitmap that disagrees with its meta from memory
			// (restore); an incomplete one (retired) gets no bits, so writes of new keys
			// wait until the meta is deleted (staleMeta).
			invalidated := t.mirror.Invalidate(ctx) == nil
			t.mu.Lock()
			if invalidated {
				t.complete = false
			} else {
				t.staleMeta = !t.complete
			}
			t.mu.Unlock()
			return fmt.Errorf("bloom: %w", err)
		}
		t.mu.Lock()
		t.cur, t.items, t.next = next, items, nil
		t.capacity = Capacity(next.M(), k.fp)
		t.complete, t.warned, t.staleMeta = true, false, false
		k.checkCapacity(t)
		t.mu.Unlock()
		k.m.rebuilds.WithLabelValues(t.spec.Name).Inc()
		k.log.Info("bloom filter rebuilt and swapped in", zap.String("table", t.spec.Name), zap.String("key", t.mirror.Key()),
			zap.Uint64("items", items), zap.Uint("bits", next.M()), zap.Uint("hashes", next.K()),
			zap.Float64("estimated_false_positive_rate", next.EstimatedFalsePositiveRate(uint(items))), zap.Duration("took", time.Since(start)))
	}
	return nil
}

// RebuildFromSource rebuilds every filter from a scan of the source's primary keys.
func (k *Keeper) RebuildFromSource(ctx context.Context) error {
	if k.scan == nil {
		return errors.New("bloom: no scanner to rebuild from")
	}
	return k.rebuild(ctx, k.tables, k.scanFill(k.tables))
}

// scanFill fills the new filters of tables from a scan of the source's primary keys.
func (k *Keeper) scanFill(tables []*tableFilter) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, t := range tables {
			if err := k.scan(ctx, t.idx, func(pk string) { k.Scanned(t.idx, pk) }); err != nil {
				return fmt.Errorf("bloom: scan %s: %w", t.spec.Name, err)
			}
		}
		return nil
	}
}

// rebuildNeeding rebuilds from the source the tables that need it (see needing), chosen
// once no other rebuild runs: one that ran meanwhile (a reconciliation's, POST
// /bloom/rebuild) may have done the work. It returns no error when none needs it.
func (k *Keeper) rebuildNeeding(ctx context.Context) error {
	k.rebuildMu.Lock()
	defer k.rebuildMu.Unlock()
	tables := k.needing()
	if len(tables) == 0 {
		return nil
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.spec.Name
	}
	k.log.Info("building bloom filters from a scan of the source's primary keys", zap.Strings("tables", names))
	return k.rebuildLocked(ctx, tables, k.scanFill(tables))
}

// outgrown reports whether t's filter (sized from the row count) holds more items than
// it was sized for and can be rebuilt larger. Called with t.mu held.
func (k *Keeper) outgrown(t *tableFilter) bool {
	return k.auto && t.items > uint64(t.capacity) && !k.atCap(t.capacity)
}

// tooSmall reports whether t's live filter is too small for the table's rows (counted)
// and a rebuild can make it bigger: the rebuild then retires it. Called with t.mu held.
func (k *Keeper) tooSmall(t *tableFilter, rows uint64, counted bool) bool {
	return k.auto && counted && t.complete && rows > uint64(t.capacity) && !k.atCap(t.capacity)
}

// atCap reports whether a filter of capacity items is as big as filters get (MaxItems).
func (k *Keeper) atCap(capacity uint) bool {
	lim := MaxItems(k.fp)
	return capacity >= lim-lim/100
}

// needing returns the tables whose filter is incomplete or (sized from the row count)
// outgrown.
func (k *Keeper) needing() []*tableFilter {
	var out []*tableFilter
	for _, t := range k.tables {
		t.mu.Lock()
		if !t.complete || k.outgrown(t) {
			out = append(out, t)
		}
		t.mu.Unlock()
	}
	return out
}

// Check verifies that Redis still holds each complete filter (meta and bitmap length)
// and writes it again from memory when not (Redis lost its data, or the key was deleted
// by hand). It reports whether some table has no complete filter, or (sized from the row
// count) one that holds more items than it was sized for: a rebuild is needed.
func (k *Keeper) Check(ctx context.Context) (needRebuild bool, err error) {
	for _, t := range k.tables {
		t.mu.Lock()
		complete, cur := t.complete, t.cur
		outgrown := k.outgrown(t)
		t.mu.Unlock()
		if !complete || outgrown {
			needRebuild = true
		}
		if !complete {
			continue
		}
		ok, err := t.mirror.Healthy(ctx, cur)
		if err != nil || ok {
			if err != nil {
				return needRebuild, err
			}
			continue
		}
		k.swap.Lock()
		err = k.restore(ctx, t, false)
		k.swap.Unlock()
		if err != nil {
			return needRebuild, err
		}
	}
	return needRebuild, nil
}

// restore writes t's complete filter to Redis again from memory: when Redis lost or
// damaged it, or always (after Redis went back to an older state, a bitmap of the right
// size may still lack keys written since; the filter in memory holds every key ever
// added). The caller holds k.swap.
func (k *Keeper) restore(ctx context.Context, t *tableFilter, always bool) error {
	t.mu.Lock()
	cur, complete := t.cur, t.complete
	t.mu.Unlock()
	if !complete {
		return nil
	}
	if !always {
		if ok, err := t.mirror.Healthy(ctx, cur); err != nil || ok {
			return err
		}
	}
	if err := t.mirror.Replace(ctx, cur); err != nil {
		return fmt.Errorf("bloom: restore %s: %w", t.mirror.Key(), err)
	}
	k.m.restores.WithLabelValues(t.spec.Name).Inc()
	k.log.Warn("the bloom bitmap was written again from memory (Redis lost it, damaged it, or went back to an older state)",
		zap.String("table", t.spec.Name), zap.String("key", t.mirror.Key()))
	return nil
}

// RestoreAll writes every complete filter to Redis again from memory, whatever Redis
// holds (see restore).
func (k *Keeper) RestoreAll(ctx context.Context) error {
	k.swap.Lock()
	defer k.swap.Unlock()
	for _, t := range k.tables {
		if err := k.restore(ctx, t, true); err != nil {
			return err
		}
	}
	return nil
}

// Run checks the Redis copies every interval (see Check), and at once when a filter
// outgrows its size, and rebuilds from the source the filters that are not complete or
// have outgrown their size, until ctx ends.
func (k *Keeper) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	rebuild := backoff.New(interval, 5*time.Minute)
	var nextTry time.Time
	for {
		need, err := k.Check(ctx)
		if err != nil && ctx.Err() == nil {
			k.log.Debug("bloom check failed; will check again", zap.Error(err))
		}
		if need && k.scan != nil && time.Now().After(nextTry) {
			if err := k.rebuildNeeding(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				k.log.Warn("bloom rebuild failed; will try again", zap.Error(err), zap.Duration("backoff", rebuild.Current()))
				nextTry = time.Now().Add(rebuild.Next())
			} else {
				rebuild.Reset()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-k.outgrew:
		}
	}
}

// Stats describes one table's filter.
type Stats struct {
	Table    string
	Key      string
	Bits     uint
	Hashes   uint
	Items    uint64
	Capacity uint
	// EstimatedFalsePositiveRate at Items.
	EstimatedFalsePositiveRate float64
	Complete                   bool
	Rebuilding                 bool
}

// Stats returns the filters' figures.
func (k *Keeper) Stats() []Stats {
	out := make([]Stats, len(k.tables))
	for i, t := range k.tables {
		t.mu.Lock()
		out[i] = Stats{Table: t.spec.Name, Key: t.mirror.Key(), Bits: t.cur.M(), Hashes: t.cur.K(), Items: t.items, Capacity: t.capacity,
			EstimatedFalsePositiveRate: t.cur.EstimatedFalsePositiveRate(uint(t.items)), Complete: t.complete, Rebuilding: t.next != nil}
		t.mu.Unlock()
	}
	return out
}

// Wrap returns a writer that calls Ensure before it writes changes through w.
func (k *Keeper) Wrap(w Writer) Writer { return &ensuring{k: k, w: w} }

// Writer applies rows; layout.Writer is the implementation.
type Writer interface {
	Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error
}

type ensuring struct {
	k *Keeper
	w Writer
}

func (e *ensuring) Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	if err := e.k.Ensure(ctx, changes); err != nil {
		for i := range out[:len(changes)] {
			out[i] = layout.Outcome{Result: layout.Failed, Err: err}
		}
		return err
	}
	return e.w.Apply(ctx, changes, out)
}

var (
	descItems = prometheus.NewDesc("invsync_bloom_items", "Keys added to the table's Bloom filter since it was built.", []string{"table"}, nil)
	descBits  = prometheus.NewDesc("invsync_bloom_bits", "Size of the table's Bloom filter in bits.", []string{"table"}, nil)
	descFP    = prometheus.NewDesc("invsync_bloom_estimated_false_positive_rate", "False-positive rate expected of the table's Bloom filter at its current items.", []string{"table"}, nil)
	descCap   = prometheus.NewDesc("invsync_bloom_capacity_items", "Items the table's Bloom filter was sized for at bloom.false_positive_rate.", []string{"table"}, nil)
	descReady = prometheus.NewDesc("invsync_bloom_complete", "1 when Redis holds the table's complete Bloom filter (readers use it), 0 while it is being built.", []string{"table"}, nil)
)

type keeperCollector struct{ m *Metrics }

func (c keeperCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descItems
	ch <- descBits
	ch <- descFP
	ch <- descCap
	ch <- descReady
}

func (c keeperCollector) Collect(ch chan<- prometheus.Metric) {
	k := c.m.keeper.Load()
	if k == nil {
		return
	}
	for _, s := range k.Stats() {
		ch <- prometheus.MustNewConstMetric(descItems, prometheus.GaugeValue, float64(s.Items), s.Table)
		ch <- prometheus.MustNewConstMetric(descBits, prometheus.GaugeValue, float64(s.Bits), s.Table)
		ch <- prometheus.MustNewConstMetric(descFP, prometheus.GaugeValue, s.EstimatedFalsePositiveRate, s.Table)
		ch <- prometheus.MustNewConstMetric(descCap, prometheus.GaugeValue, float64(s.Capacity), s.Table)
		ready := 0.0
		if s.Complete {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready, s.Table)
	}
}
