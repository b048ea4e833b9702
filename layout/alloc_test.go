package layout_test

import (
	"context"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
)

// The write path's allocations per row stay few (issue 17: the daemon's CPU per row in a
// bulk write went largely to the garbage collector and to go-redis's argument encoding):
// a row's own strings (its fields, version, key, seq) go to Redis without a copy boxed
// per argument, and the argument lists are reused.
func TestApplyAllocationsPerRow(t *testing.T) {
	rdb := testenv.Redis(t)
	pfx := testenv.Prefix(t, rdb)
	w := layout.NewWriter(rdb, time.Hour, false)
	ctx := context.Background()
	const batch = 512
	changes := make([]layout.Change, batch)
	out := make([]layout.Outcome, batch)
	for j := range changes {
		changes[j] = newRow(pfx, j, layout.Seq{File: 1, Pos: uint32(j + 1)})
	}
	testenv.Must(t, w.Apply(ctx, changes, out), "apply")
	perRow := testing.AllocsPerRun(5, func() {
		if err := w.Apply(ctx, changes, out); err != nil {
			t.Fatal(err)
		}
	}) / batch
	t.Logf("%.1f allocations per row", perRow)
	if perRow > 1 {
		t.Fatalf("%.1f allocations per row written, want at most 1", perRow)
	}
}
