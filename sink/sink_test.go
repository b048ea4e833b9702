package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// fakeWriter records what it is asked to write and applies everything; while gate is
// set, each Apply waits for it.
type fakeWriter struct {
	mu      sync.Mutex
	written []layout.Change
	gate    chan struct{}
}

func (w *fakeWriter) Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	if w.gate != nil {
		select {
		case <-w.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, c := range changes {
		c.Fields = append([]layout.Field(nil), c.Fields...)
		w.written = append(w.written, c)
		out[i] = layout.Outcome{Result: layout.Applied}
	}
	return nil
}

func (w *fakeWriter) changes() []layout.Change {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]layout.Change(nil), w.written...)
}

// startSink runs a one-worker sink over w until the test ends.
func startSink(t *testing.T, w Writer) (*Sink, *Watermark, *metrics.Metrics) {
	t.Helper()
	return startSinkWith(t, w, 0)
}

// startSinkWith is startSink with a flush interval.
func startSinkWith(t *testing.T, w Writer, flush time.Duration) (*Sink, *Watermark, *metrics.Metrics) {
	t.Helper()
	return startTunedSink(t, w, flush, nil)
}

// startTunedSink is startSinkWith with tune called on the sink before it runs.
func startTunedSink(t *testing.T, w Writer, flush time.Duration, tune func(*Sink)) (*Sink, *Watermark, *metrics.Metrics) {
	t.Helper()
	m := metrics.New(prometheus.NewRegistry())
	wm := NewWatermark(pos(4), time.Now)
	s := New(config.Sink{Workers: 1, BatchSize: 16, QueueSize: 64, FlushInterval: flush}, []string{"shop.inventory"}, w, wm, m, zap.NewNop(), nil)
	if tune != nil {
		tune(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		s.Close()
		cancel()
		<-done
	})
	return s, wm, m
}

func upsert(txn uint64, key string, n uint32, image canal.Image) canal.Row {
	return canal.Row{Txn: txn, Change: layout.Change{Key: key, Op: layout.OpUpsert, Seq: layout.Seq{File: 1, Pos: n}}, Image: image}
}

// A value of a type its column does not expect is counted in
// invsync_render_errors_total and written as rendered: the row is not lost and the
// stream does not stop behind it.
func TestUnexpectedValueIsCountedAndWritten(t *testing.T) {
	w := &fakeWriter{}
	s, wm, m := startSink(t, w)
	ctx := context.Background()
	cols := []string{"sku", "stock"}
	rows := []canal.Row{
		upsert(1, "k:a", 100, canal.TextImage(cols, []any{"a", "5"})),      // as the decoder gives text
		upsert(1, "k:b", 110, canal.TextImage(cols, []any{"b", int64(7)})), // an integer where text was expected
	}
	for _, r := range rows {
		if err := s.Row(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(ctx, canal.Commit{Txn: 1, Rows: len(rows), Pos: pos(200), Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.RenderErrors); got != 1 {
		t.Errorf("invsync_render_errors_total = %v, want 1 (one unexpected value)", got)
	}
	fields := map[string]string{}
	for _, c := range w.changes() {
		for _, f := range c.Fields {
			fields[c.Key+"/"+f.Name] = f.Value
		}
	}
	if fields["k:a/stock"] != "5" || fields["k:b/stock"] != "7" || fields["k:b/sku"] != "b" {
		t.Errorf("written fields %v: want both rows, the unexpected value as rendered (7)", fields)
	}
	if p, _, _ := wm.Advance(); p != pos(200) {
		t.Errorf("watermark at %v, want past the commit (200): the stream must go on", p)
	}
}

// The watermark passes a transaction only once the writer has returned for its rows.
func TestWatermarkWaitsForTheWrite(t *testing.T) {
	w := &fakeWriter{gate: make(chan struct{})}
	s, wm, _ := startSink(t, w)
	ctx := context.Background()
	if err := s.Row(ctx, upsert(1, "k:a", 100, canal.TextImage([]string{"sku"}, []any{"a"}))); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, canal.Commit{Txn: 1, Rows: 1, Pos: pos(200), Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the worker has taken the row and waits in Apply
	if p, _, _ := wm.Advance(); p != pos(4) {
		t.Fatalf("watermark moved to %v before the write returned", p)
	}
	close(w.gate)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := wm.Advance(); p != pos(200) {
		t.Fatalf("watermark at %v after the write, want 200", p)
	}
}

// flakyWriter fails the next outages calls as a whole (Redis unreachable), and refuses
// each key in refuse for its key (a per-key error) as many times as its count (< 0:
// always); everything else is applied. calls counts the Apply calls.
type flakyWriter struct {
	fakeWriter
	mu2     sync.Mutex
	outages int
	refuse  map[string]int
	calls   int
}

func (w *flakyWriter) Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	w.mu2.Lock()
	w.calls++
	if w.outages > 0 {
		w.outages--
		w.mu2.Unlock()
		err := errors.New("dial tcp 127.0.0.1:6379: connection refused")
		for i := range changes {
			out[i] = layout.Outcome{Result: layout.Failed, Err: err}
		}
		return err
	}
	var ok []layout.Change
	var at []int
	for i, c := range changes {
		if n, bad := w.refuse[c.Key]; bad && n != 0 {
			w.refuse[c.Key] = n - 1
			out[i] = layout.Outcome{Result: layout.Failed, Err: fmt.Errorf("%w: WRONGTYPE Operation against a key holding the wrong kind of value", layout.ErrKey)}
			continue
		}
		ok, at = append(ok, c), append(at, i)
	}
	w.mu2.Unlock()
	res := make([]layout.Outcome, len(ok))
	if err := w.fakeWriter.Apply(ctx, ok, res); err != nil {
		return err
	}
	for k, i := range at {
		out[i] = res[k]
	}
	return nil
}

// fakeParker records what is parked.
type fakeParker struct {
	mu     sync.Mutex
	parked []string
}

func (p *fakeParker) Park(_ context.Context, table string, c layout.Change, cause error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.parked = append(p.parked, table+" "+c.Key)
	return nil
}

func (p *fakeParker) keys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.parked...)
}

// commitRows hands rows over as transaction txn and seals it at end.
func commitRows(t *testing.T, s *Sink, txn uint64, end uint32, rows ...canal.Row) {
	t.Helper()
	ctx := context.Background()
	for _, r := range rows {
		r.Txn = txn
		if err := s.Row(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(ctx, canal.Commit{Txn: txn, Rows: len(rows), Pos: pos(end), Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func row(key string, n uint32, stock string) canal.Row {
	return upsert(0, key, n, canal.TextImage([]string{"stock"}, []any{stock}))
}

// A key Redis refuses for itself is retried in place keyRetries times, then parked; the
// other keys of the batch are written, and the watermark passes the transaction (the
// parked row is the compensation table's now).
func TestRefusedKeyIsRetriedThenParked(t *testing.T) {
	w := &flakyWriter{refuse: map[string]int{"k:bad": -1}}
	s, wm, m := startSink(t, w)
	p := &fakeParker{}
	s.SetParker(p)
	commitRows(t, s, 1, 300, row("k:a", 100, "1"), row("k:bad", 110, "2"), row("k:b", 120, "3"))
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := p.keys(); len(got) != 1 || got[0] != "shop.inventory k:bad" {
		t.Fatalf("parked %q, want the refused key once", got)
	}
	if w.calls != 1+keyRetries {
		t.Errorf("%d write calls, want %d (the first and %d in-place retries)", w.calls, 1+keyRetries, keyRetries)
	}
	// Counted are the refusals retried in place; the last one is counted as parked.
	if got := testutil.ToFloat64(m.RedisErrors.WithLabelValues("key")); got != keyRetries {
		t.Errorf("invsync_redis_errors_total{kind=key} = %v, want %d", got, keyRetries)
	}
	if got := testutil.ToFloat64(m.CompensationParked); got != 1 {
		t.Errorf("invsync_compensation_parked_total = %v, want 1", got)
	}
	written := map[string]bool{}
	for _, c := range w.changes() {
		written[c.Key] = true
	}
	if !written["k:a"] || !written["k:b"] || written["k:bad"] {
		t.Errorf("written %v: want k:a and k:b, not the refused key", written)
	}
	if at, _, _ := wm.Advance(); at != pos(300) {
		t.Errorf("watermark at %v, want 300", at)
	}
}

// Without a parker, a refused key is retried until Redis takes it; the watermark waits.
func TestRefusedKeyWithoutParkerIsRetriedUntilWritten(t *testing.T) {
	w := &flakyWriter{refuse: map[string]int{"k:bad": 4}}
	s, wm, _ := startSink(t, w)
	commitRows(t, s, 1, 300, row("k:bad", 110, "2"))
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.calls != 5 || len(w.changes()) != 1 {
		t.Errorf("%d calls, %d writes: want 5 and 1", w.calls, len(w.changes()))
	}
	if at, _, _ := wm.Advance(); at != pos(300) {
		t.Errorf("watermark at %v, want 300", at)
	}
}

// An outage (the call fails as a whole) is retried, never parked, and the watermark
// stays before the transaction until the write lands.
func TestOutageIsRetriedNeverParked(t *testing.T) {
	w := &flakyWriter{outages: 3}
	s, wm, m := startSink(t, w)
	p := &fakeParker{}
	s.SetParker(p)
	commitRows(t, s, 1, 300, row("k:a", 100, "1"))
	waitUntil(t, func() bool { w.mu2.Lock(); defer w.mu2.Unlock(); return w.calls >= 2 })
	if at, _, _ := wm.Advance(); at != pos(4) {
		t.Fatalf("watermark moved to %v during the outage", at)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(p.keys()) != 0 {
		t.Errorf("parked %q during an outage", p.keys())
	}
	if got := testutil.ToFloat64(m.RedisErrors.WithLabelValues("unavailable")); got != 3 {
		t.Errorf("invsync_redis_errors_total{kind=unavailable} = %v, want 3", got)
	}
	if len(w.changes()) != 1 {
		t.Errorf("%d writes, want 1", len(w.changes()))
	}
	if at, _, _ := wm.Advance(); at != pos(300) {
		t.Errorf("watermark at %v, want 300", at)
	}
}

// Changes of a key that wait while its write is in flight are merged into one write of
// the newest state, counted in invsync_rows_coalesced_total.
func TestWaitingChangesOfAKeyAreCoalesced(t *testing.T) {
	w := &fakeWriter{gate: make(chan struct{})}
	s, wm, m := startSink(t, w)
	commitRows(t, s, 1, 200, row("k:a", 100, "1"))
	time.Sleep(50 * time.Millisecond) // the worker holds the first row in Apply
	for i := uint32(2); i <= 5; i++ {
		commitRows(t, s, uint64(i), 200+100*i, row("k:a", 100*i, strconv.Itoa(int(i))))
	}
	close(w.gate)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var stocks []string
	for _, c := range w.changes() {
		stocks = append(stocks, c.Fields[0].Value)
	}
	if len(stocks) != 2 || stocks[0] != "1" || stocks[1] != "5" {
		t.Errorf("writes of k:a %q, want the first and then only the newest (1, 5)", stocks)
	}
	if got := testutil.ToFloat64(m.RowsCoalesced.WithLabelValues("shop.inventory", "upsert")); got != 3 {
		t.Errorf("invsync_rows_coalesced_total = %v, want 3", got)
	}
	if at, _, _ := wm.Advance(); at != pos(700) {
		t.Errorf("watermark at %v, want 700 (every transaction done)", at)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Settlements are never coalesced away: merged into a waiting change of their key (or
// a settlement alone taking a newer change), they ride on the one write of the key.
func TestSettlementsRideOnTheCoalescedWrite(t *testing.T) {
	w := &fakeWriter{gate: make(chan struct{})}
	s, wm, _ := startSink(t, w)
	settle := func(txn uint64, n uint32, order string) canal.Row {
		return canal.Row{Txn: txn, Change: layout.Change{Key: "k:a", Op: layout.OpSettle, Seq: layout.Seq{File: 1, Pos: n},
			Settles: []layout.Settle{{Order: order, Qty: 1}}}}
	}
	commitRows(t, s, 1, 200, row("k:b", 100, "1"))
	time.Sleep(50 * time.Millisecond) // the worker holds k:b in Apply
	withSettle := row("k:a", 300, "9")
	withSettle.Change.Settles = []layout.Settle{{Order: "o1", Qty: 1}}
	commitRows(t, s, 2, 400, withSettle)
	commitRows(t, s, 3, 500, settle(3, 450, "o2")) // merged into the waiting upsert
	commitRows(t, s, 4, 700, row("k:a", 600, "7")) // a newer upsert takes both
	commitRows(t, s, 5, 900, settle(5, 800, "o3"))
	close(w.gate)
	testenvFlush(t, s)
	var got []layout.Change
	for _, c := range w.changes() {
		if c.Key == "k:a" {
			got = append(got, c)
		}
	}
	if len(got) != 1 {
		t.Fatalf("writes of k:a: %+v, want one", got)
	}
	c := got[0]
	if c.Op != layout.OpUpsert || c.Fields[0].Value != "7" || len(c.Settles) != 3 ||
		c.Settles[0].Order != "o1" || c.Settles[1].Order != "o2" || c.Settles[2].Order != "o3" {
		t.Fatalf("the write of k:a: %+v", c)
	}
	if at, _, _ := wm.Advance(); at != pos(900) {
		t.Errorf("watermark at %v, want 900", at)
	}
}

func testenvFlush(t *testing.T, s *Sink) {
	t.Helper()
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Catching up over distinct keys (a bulk import, a long outage): a worker whose queue
// has less than a batch of room left writes at once, while the reader goes on, instead
// of holding its keys until the queue is full, the reader stalls or the oldest key has
// waited catchUpMaxHold. Otherwise each worker writes only while the reader waits on its
// queue, one worker at a time.
func TestCatchingUpWritesAQueueThatIsNearlyFull(t *testing.T) {
	w := &fakeWriter{}
	// One worker: batch 16, queue 64. The reader counts as busy for an hour: only the
	// queue's near-full signal can wake the waiting worker.
	s, _, _ := startTunedSink(t, w, 0, func(s *Sink) { s.readerIdle = time.Hour })
	ctx := context.Background()
	old := time.Now().Add(-time.Hour)
	commit := func(txn uint64, rows ...canal.Row) {
		t.Helper()
		for _, r := range rows {
			r.Txn = txn
			if err := s.Row(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Commit(ctx, canal.Commit{Txn: txn, Rows: len(rows), Pos: pos(uint32(100 + txn)), Time: old}); err != nil {
			t.Fatal(err)
		}
	}
	commit(1, row("k:first", 101, "1")) // the stream is an hour behind: catching up
	var rows []canal.Row
	for i := range 55 {
		rows = append(rows, row("k:"+strconv.Itoa(i), uint32(200+i), "1"))
	}
	// The worker waits for its turn (it asked how much room the queue has) before the
	// queue nears full.
	q := s.queues[0]
	for i, r := range rows {
		if i == 5 {
			waitUntil(t, func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.room == 16 })
		}
		r.Txn = 2
		if err := s.Row(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// 56 keys wait: less than a batch of room in 64.
	if err := s.Commit(ctx, canal.Commit{Txn: 2, Rows: len(rows), Pos: pos(102), Time: old}); err != nil {
		t.Fatal(err)
	}
	// The reader stays busy with changes of a key that waits already (they coalesce).
	deadline := time.Now().Add(time.Second)
	for txn := uint64(3); time.Now().Before(deadline); txn++ {
		commit(txn, row("k:first", uint32(1000+txn), strconv.FormatUint(txn, 10)))
	}
	n := 0
	for _, c := range w.changes() {
		if c.Key != "k:first" {
			n++
		}
	}
	if n == 0 {
		t.Fatal("a queue with less than a batch of room was held for a second while catching up; want it written at once")
	}
}

// A row that arrives while the worker is not under load (its last batch was small) is
// written at once, not after flush_interval: lingering to fill a batch pays only when
// batches fill (W3: at 2,000 rows/s the p50 from commit to Redis fell from 2.4 ms to
// 0.24 ms). The linger applies again once batches are at least half full.
func TestAnIdleWorkerWritesWithoutLingering(t *testing.T) {
	w := &fakeWriter{}
	s, _, _ := startSinkWith(t, w, time.Hour)
	for i := range 3 {
		commitRows(t, s, uint64(i+1), uint32(100+10*i), row("k:"+strconv.Itoa(i), uint32(100+10*i), "1"))
		waitUntil(t, func() bool { return len(w.changes()) == i+1 })
	}
}

// batchWriter records the keys of each Apply; the first Apply waits for gate.
type batchWriter struct {
	mu      sync.Mutex
	batches [][]string
	gate    chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (w *batchWriter) Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	first := false
	w.once.Do(func() { first = true })
	if first {
		close(w.entered)
		<-w.gate
	}
	keys := make([]string, len(changes))
	for i, c := range changes {
		keys[i] = c.Key
		out[i] = layout.Outcome{Result: layout.Applied}
	}
	w.mu.Lock()
	w.batches = append(w.batches, keys)
	w.mu.Unlock()
	return nil
}

func (w *batchWriter) written() (n int, batches [][]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.batches {
		n += len(b)
	}
	return n, append([][]string(nil), w.batches...)
}

// Under load (the last batch was at least half of batch_size) a worker lingers for
// flush_interval once its queue ran dry, so that rows arriving meanwhile share a write.
func TestALoadedWorkerLingers(t *testing.T) {
	w := &batchWriter{gate: make(chan struct{}), entered: make(chan struct{})}
	s, _, _ := startSinkWith(t, w, 500*time.Millisecond)
	commitRows(t, s, 1, 100, row("k:first", 100, "1"))
	<-w.entered // the first write is in flight; 16 rows wait behind it
	var rows []canal.Row
	for i := range 16 {
		rows = append(rows, row("k:"+strconv.Itoa(i), uint32(200+i), "1"))
	}
	commitRows(t, s, 2, 300, rows...)
	close(w.gate)
	waitUntil(t, func() bool { n, _ := w.written(); return n == 17 })
	commitRows(t, s, 3, 400, row("k:a", 400, "1"))
	time.Sleep(50 * time.Millisecond)
	commitRows(t, s, 4, 500, row("k:b", 500, "1"))
	waitUntil(t, func() bool { n, _ := w.written(); return n == 19 })
	_, batches := w.written()
	if last := batches[len(batches)-1]; len(last) != 2 {
		t.Fatalf("batches %q: after a full batch, k:a was written without waiting for k:b", batches)
	}
}
