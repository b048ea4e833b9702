package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// loadRows inserts n rows (sku 0..n-1) in multi-row statements.
func loadRows(t testing.TB, e *env, n int) {
	t.Helper()
	for base := 0; base < n; base += 2000 {
		var sb strings.Builder
		sb.WriteString("INSERT INTO inventory (sku, stock, price, name, version) VALUES ")
		for j := base; j < min(base+2000, n); j++ {
			if j > base {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "(%d, %d, %d.%02d, 'sku-%d', 1)", j, j%1000, j%500, j%100, j)
		}
		_, err := e.db.Exec(sb.String())
		testenv.Must(t, err, "load rows")
	}
}

// Issue 3, acceptance 1: a first start on a table that already holds 200,000 rows, with
// 4 writers running during the snapshot: afterwards Redis equals MySQL, and the
// snapshot reported its progress.
func TestSnapshotOnFirstStartWithWritersRunning(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 200_000)
	e.cfg.Snapshot.ProgressInterval = 200 * time.Millisecond
	e.cfg.Snapshot.ChunkSize = 500

	var progress, finished atomic.Int64
	core := zapcore.RegisterHooks(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&bytes.Buffer{}), zap.InfoLevel), func(en zapcore.Entry) error {
		switch en.Message {
		case "snapshot progress":
			progress.Add(1)
		case "snapshot finished":
			finished.Add(1)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wl := &workload{db: e.db, table: "inventory", skus: 200_000, writers: 4, txns: 1_000_000, maxRows: 10}
	wdone := make(chan error, 1)
	go func() { wdone <- wl.run(ctx) }()
	time.Sleep(200 * time.Millisecond) // writers are running before the snapshot starts
	r := e.start(zap.New(core))
	for deadline := time.Now().Add(120 * time.Second); finished.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("snapshot did not finish within 120s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Writers keep going a little after the snapshot, then stop.
	time.Sleep(500 * time.Millisecond)
	cancel()
	if err := <-wdone; err != nil && ctx.Err() == nil {
		t.Fatalf("workload: %v", err)
	}
	t.Logf("writers committed %d transactions during and after the snapshot", wl.done.Load())
	if wl.done.Load() < 50 {
		t.Fatalf("only %d transactions ran during the snapshot", wl.done.Load())
	}
	e.waitEqual(60 * time.Second)
	if progress.Load() == 0 {
		t.Fatal("the snapshot reported no progress")
	}
	waitReady(t, r)
}

// `invsync snapshot` loads the tables, records the position and exits 0; `run` then
// resumes from it without loading again.
func TestSnapshotCommand(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL})
	loadRows(t, e, 5_000)
	cfgPath := e.writeConfig(nil)
	code, out := runCLI(t, 60*time.Second, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "snapshot", "-c", cfgPath)
	if code != 0 || !strings.Contains(out, "snapshot done; streaming will start from") || !strings.Contains(out, "snapshot finished") {
		t.Fatalf("snapshot: exit %d\n%s", code, out)
	}
	if err := e.compare(); err != nil {
		t.Fatalf("after the snapshot: %v", err)
	}
	pos, ok, err := e.checkpointStore().Load(context.Background())
	if err != nil || !ok || pos.File == "" {
		t.Fatalf("no checkpoint recorded: %v %v %v", pos, ok, err)
	}
	// Changes after the snapshot stream in from the recorded position.
	_, err = e.db.Exec("UPDATE inventory SET stock = stock + 1 WHERE sku < 100")
	testenv.Must(t, err, "update")
	core, logs := observer.New(zapcore.InfoLevel)
	r := e.start(zap.New(core))
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	// The snapshot left the checkpoint, the data-loss marker and its load records: run
	// streams from the checkpoint and loads nothing again (a first-start load is not a
	// "resnapshot", so the log says which happened).
	time.Sleep(1500 * time.Millisecond)
	if got := counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got != 0 {
		t.Fatalf("run after snapshot reloaded %v times, want 0", got)
	}
	if logs.FilterMessage("snapshot started").Len() != 0 || logs.FilterMessage("resuming from the checkpoint").Len() != 1 {
		t.Fatalf("run after snapshot did not just resume from the checkpoint: %v", logs.All())
	}
}

// snapshot.rows_per_second spares the primary: 3,000 rows at 1,000 rows/s in chunks of
// 500 cannot take less than 2.5 s (five full chunks wait out their share).
func TestSnapshotRateLimit(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL})
	loadRows(t, e, 3_000)
	cfgPath := e.writeConfig(nil)
	start := time.Now()
	code, out := runCLI(t, 60*time.Second, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword(),
		"INVSYNC_SNAPSHOT_ROWS_PER_SECOND=1000", "INVSYNC_SNAPSHOT_CHUNK_SIZE=500"}, "snapshot", "-c", cfgPath)
	if code != 0 {
		t.Fatalf("snapshot: exit %d\n%s", code, out)
	}
	// Not faster than the rate, and not much slower (at most 3 s more than 3 s).
	if d := time.Since(start); d < 2500*time.Millisecond || d > 6*time.Second {
		t.Fatalf("3,000 rows at 1,000 rows/s took %s; want about 3 s", d)
	}
	if err := e.compare(); err != nil {
		t.Fatal(err)
	}
}
