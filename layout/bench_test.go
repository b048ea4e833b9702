package layout_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
)

// BenchmarkApplyUpdates measures the versioned script on updates of existing rows, the
// common case of a catch-up: Redis CPU per row is what limits throughput.
func BenchmarkApplyUpdates(b *testing.B) {
	rdb := testenv.Redis(b)
	pfx := testenv.Prefix(b, rdb)
	w := layout.NewWriter(rdb, time.Hour, false)
	ctx := context.Background()
	const keys, batch = 10000, 512
	changes := make([]layout.Change, batch)
	out := make([]layout.Outcome, batch)
	seq := layout.Seq{File: 1}
	mk := func(i int) layout.Change {
		seq.Pos++
		k := strconv.Itoa(i % keys)
		return layout.Change{Key: pfx + "{" + k + "}", Op: layout.OpUpsert, Version: strconv.Itoa(int(seq.Pos)), Seq: seq,
			Fields: []layout.Field{{"sku", k}, {"stock", "1000"}, {"price", "9.99"}, {"name", "sku-" + k}, {"version", "7"}}}
	}
	for i := 0; i < keys; i += batch {
		for j := range changes {
			changes[j] = mk(i + j)
		}
		testenv.Must(b, w.Apply(ctx, changes, out), "prefill")
	}
	cpu0 := testenv.RedisCPUSeconds(b, rdb)
	b.ResetTimer()
	rows := 0
	for n := 0; n < b.N; n++ {
		for j := range changes {
			changes[j] = mk(rows + j)
		}
		if err := w.Apply(ctx, changes, out); err != nil {
			b.Fatal(err)
		}
		rows += batch
	}
	b.StopTimer()
	b.ReportMetric((testenv.RedisCPUSeconds(b, rdb)-cpu0)*1e6/float64(rows), "redis-cpu-µs/row")
}

// BenchmarkApplyInserts measures the versioned script on rows new to Redis, the case of a
// first snapshot, a bulk import of new SKUs or a catch-up after a long outage (W2).
func BenchmarkApplyInserts(b *testing.B) {
	rdb := testenv.Redis(b)
	pfx := testenv.Prefix(b, rdb)
	w := layout.NewWriter(rdb, time.Hour, false)
	ctx := context.Background()
	const batch = 512
	changes := make([]layout.Change, batch)
	out := make([]layout.Outcome, batch)
	seq := layout.Seq{File: 1}
	cpu0 := testenv.RedisCPUSeconds(b, rdb)
	b.ResetTimer()
	rows := 0
	for n := 0; n < b.N; n++ {
		for j := range changes {
			seq.Pos++
			changes[j] = newRow(pfx, rows+j, seq)
		}
		if err := w.Apply(ctx, changes, out); err != nil {
			b.Fatal(err)
		}
		rows += batch
	}
	b.StopTimer()
	b.ReportMetric((testenv.RedisCPUSeconds(b, rdb)-cpu0)*1e6/float64(rows), "redis-cpu-µs/row")
}

// newRow is the upsert of row n (five fields, version 1) under pfx, at seq.
func newRow(pfx string, n int, seq layout.Seq) layout.Change {
	k := strconv.Itoa(n)
	return layout.Change{Key: pfx + "{" + k + "}", Op: layout.OpUpsert, Version: "1", Seq: seq,
		Fields: []layout.Field{{"sku", k}, {"stock", "1000"}, {"price", "9.99"}, {"name", "sku-" + k}, {"version", "1"}}}
}
