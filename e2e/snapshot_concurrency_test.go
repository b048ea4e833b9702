package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// overlapWriter applies through w and records how many Applies ran at once; the first
// Apply waits (up to 5 s) for another to start.
type overlapWriter struct {
	w        snapshot.Writer
	running  atomic.Int32
	most     atomic.Int32
	first    sync.Once
	overlap  chan struct{}
	overlaps sync.Once
}

func (o *overlapWriter) Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	n := o.running.Add(1)
	defer o.running.Add(-1)
	for m := o.most.Load(); n > m && !o.most.CompareAndSwap(m, n); m = o.most.Load() {
	}
	if n > 1 {
		o.overlaps.Do(func() { close(o.overlap) })
	}
	isFirst := false
	o.first.Do(func() { isFirst = true })
	if isFirst {
		select {
		case <-o.overlap:
		case <-time.After(5 * time.Second):
		}
	}
	return o.w.Apply(ctx, changes, out)
}

// Issue 17 (W2): the snapshot writes several chunks at once (Redis's round trips and the
// daemon's work on the next chunks overlap), and every row still lands as MySQL has it.
func TestSnapshotWritesChunksConcurrently(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 5_000)
	e.cfg.Snapshot.ChunkSize = 250
	ctx := context.Background()
	o := &overlapWriter{w: layout.NewWriter(e.rdb, time.Hour, false), overlap: make(chan struct{})}
	e.cfg.Snapshot.ProgressInterval = time.Millisecond
	var reports []snapshot.Progress // appended by the writers: -race checks they take turns
	progress := func(p snapshot.Progress) { reports = append(reports, p) }
	snap := snapshot.New(e.conns().Source, e.cfg.Snapshot, e.tables(), o, e.rdb, zap.NewNop(), progress)
	_, st, err := snap.Run(ctx, func(ctx context.Context) (source.Position, error) { return e.currentPosition(), nil })
	testenv.Must(t, err, "snapshot")
	if st.Rows != 5_000 || st.Applied != 5_000 {
		t.Fatalf("snapshot stats %+v, want 5,000 rows applied", st)
	}
	if m := o.most.Load(); m < 2 {
		t.Fatalf("at most %d chunk written at a time, want several", m)
	}
	if len(reports) == 0 || reports[len(reports)-1].Rows != 5_000 {
		t.Fatalf("progress reports %d, the last %+v; want the last at 5,000 rows", len(reports), reports[len(reports)-1:])
	}
	testenv.Must(t, compareTable(ctx, e.db, e.rdb, e.cfg.Tables[0], ""), "compare")
}
