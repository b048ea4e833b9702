package sink

import (
	"context"
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
	m := metrics.New(prometheus.NewRegistry())
	wm := NewWatermark(pos(4), time.Now)
	s := New(config.Sink{Workers: 1, BatchSize: 16, QueueSize: 64}, []string{"shop.inventory"}, w, wm, m, zap.NewNop(), nil)
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
