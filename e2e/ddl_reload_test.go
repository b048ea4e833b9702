package e2e

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
)

// Issue 11, part 5: every statement that can change the rows of a mirrored table without
// row events reloads it (replacing every row, tombstoning keys whose rows are gone), even
// when the table's definition is the same afterwards.

// tolerantWriters runs 3 writers over skus that ignore errors (the table may be missing
// for a moment) until stopped, and a watcher of the first watchedSKUs keys (whose
// versions only grow, across deletes and inserts too).
type tolerantWriters struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	writes    atomic.Int64
	reinserts atomic.Int64
	watch     *watcher
	watchDone chan struct{}
}

func startTolerantWriters(e *env, skus int) *tolerantWriters {
	ctx, cancel := context.WithCancel(context.Background())
	w := &tolerantWriters{cancel: cancel, watch: newWatcher(e.rdb, e.cfg.Tables[0].KeyPrefix, watchedSKUs), watchDone: make(chan struct{})}
	go func() { defer close(w.watchDone); w.watch.run(ctx) }()
	for i := 0; i < 3; i++ {
		w.wg.Add(1)
		go func(seed uint64) {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(seed, 3))
			for ctx.Err() == nil {
				sku := rng.IntN(skus)
				var q string
				args := []any{sku}
				switch rng.IntN(5) {
				case 0, 1:
					// A watched SKU inserted again takes a version above every earlier one.
					q = "INSERT INTO inventory (sku, stock, version) VALUES (?, 7, ?) ON DUPLICATE KEY UPDATE stock = stock + 1, version = version + 1"
					version := int64(1)
					if sku < watchedSKUs {
						version = 1_000_000_000 + 100_000*w.reinserts.Add(1)
					}
					args = append(args, version)
				case 2:
					q = "DELETE FROM inventory WHERE sku = ?"
				default:
					q = "UPDATE inventory SET stock = stock - 1, version = version + 1 WHERE sku = ?"
				}
				if _, err := e.db.ExecContext(ctx, q, args...); err == nil {
					w.writes.Add(1)
				}
			}
		}(uint64(i + 1))
	}
	return w
}

func (w *tolerantWriters) stop() int64 {
	w.cancel()
	w.wg.Wait()
	<-w.watchDone
	return w.writes.Load()
}

// versionsNeverWentDown fails on what the watcher saw.
func (w *tolerantWriters) versionsNeverWentDown(t *testing.T) {
	t.Helper()
	if bad := w.watch.bad.list(); len(bad) > 0 {
		t.Fatalf("watcher saw versions go down: %v", bad)
	}
	if w.watch.reads.Load() < 20 {
		t.Fatalf("the watcher made only %d reads", w.watch.reads.Load())
	}
}

// reloadsFor is invsync_resnapshots_total{reason} of a running daemon.
func reloadsFor(t *testing.T, r *running, reason string) float64 {
	t.Helper()
	mfs, err := r.d.Registry().Gather()
	testenv.Must(t, err, "gather")
	for _, mf := range mfs {
		if mf.GetName() != "invsync_resnapshots_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// An online schema change's cut-over (gh-ost, pt-online-schema-change): a ghost table
// of the same definition whose rows differ, swapped in by RENAME TABLE while writers run.
func TestOnlineSchemaChangeCutOver(t *testing.T) {
	e, r := streaming(t, 3000)
	w := startTolerantWriters(e, 3500)
	time.Sleep(300 * time.Millisecond)
	// The ghost: same columns, every stock changed, some rows missing, a row of its own;
	// the versions are copied as they are, so only a reload can bring its rows.
	execAll(t, e.db, "CREATE TABLE _inventory_gho LIKE inventory",
		"INSERT INTO _inventory_gho SELECT sku, stock + 1000, price, name, version FROM inventory WHERE sku % 10 <> 3",
		"INSERT INTO _inventory_gho (sku, stock, version) VALUES (999999, 5, 1)")
	time.Sleep(300 * time.Millisecond)
	execAll(t, e.db, "RENAME TABLE inventory TO _inventory_del, _inventory_gho TO inventory")
	time.Sleep(500 * time.Millisecond)
	execAll(t, e.db, "DROP TABLE _inventory_del")
	time.Sleep(300 * time.Millisecond)
	t.Logf("%d writes ran across the cut-over", w.stop())
	e.waitEqual(60 * time.Second)
	if got := reloadsFor(t, r, "ddl"); got < 1 {
		t.Fatalf("invsync_resnapshots_total{reason=ddl} = %v after the cut-over, want >= 1", got)
	}
}

// TRUNCATE TABLE while writers run: every row MySQL no longer has is a tombstone, the
// rows written after it are there.
func TestTruncateWhileStreaming(t *testing.T) {
	e, r := streaming(t, 3000)
	w := startTolerantWriters(e, 3500)
	time.Sleep(300 * time.Millisecond)
	execAll(t, e.db, "TRUNCATE TABLE inventory")
	time.Sleep(500 * time.Millisecond)
	t.Logf("%d writes ran across the TRUNCATE", w.stop())
	e.waitEqual(60 * time.Second)
	w.versionsNeverWentDown(t)
	if got := reloadsFor(t, r, "ddl"); got != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=ddl} = %v, want 1", got)
	}
}

// DROP TABLE then CREATE TABLE and INSERTs, while writers run: the rows of the dropped
// table become tombstones, the new table's rows arrive, and the daemon keeps running.
func TestDropAndCreateTableWhileStreaming(t *testing.T) {
	e, r := streaming(t, 2000)
	w := startTolerantWriters(e, 2500)
	time.Sleep(300 * time.Millisecond)
	execAll(t, e.db, "DROP TABLE inventory")
	time.Sleep(700 * time.Millisecond) // the daemon reads the DROP while the table is gone
	execAll(t, e.db, inventoryDDL)
	execAll(t, e.db, "INSERT INTO inventory (sku, stock, price, name, version) VALUES (4000, 1, 1.00, 'new', 1), (5000, 2, 2.00, 'new', 1)")
	time.Sleep(500 * time.Millisecond)
	t.Logf("%d writes ran across the DROP and CREATE", w.stop())
	e.waitEqual(60 * time.Second)
	w.versionsNeverWentDown(t)
	select {
	case err := <-r.done:
		t.Fatalf("the daemon stopped: %v", err)
	default:
	}
	if got := reloadsFor(t, r, "ddl"); got < 2 {
		t.Fatalf("invsync_resnapshots_total{reason=ddl} = %v, want >= 2 (the drop, the create)", got)
	}
}

// CREATE OR REPLACE TABLE ... SELECT (logged by MariaDB as a DDL group with its rows),
// then partition operations that remove rows without row events: each reloads.
func TestCreateSelectAndPartitionOperations(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL + " PARTITION BY RANGE (sku) (PARTITION p0 VALUES LESS THAN (1000), PARTITION p1 VALUES LESS THAN (2000), PARTITION p2 VALUES LESS THAN MAXVALUE)", version: "version"})
	loadRows(t, e, 3000)
	execAll(t, e.db, "CREATE TABLE src LIKE inventory", "ALTER TABLE src REMOVE PARTITIONING",
		"INSERT INTO src SELECT sku, stock + 5, price, name, version FROM inventory WHERE sku % 3 = 0")
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	w := startTolerantWriters(e, 3500)
	time.Sleep(300 * time.Millisecond)
	execAll(t, e.db, "ALTER TABLE inventory TRUNCATE PARTITION p1")
	time.Sleep(300 * time.Millisecond)
	execAll(t, e.db, "CREATE TABLE swap LIKE inventory", "ALTER TABLE swap REMOVE PARTITIONING",
		"ALTER TABLE inventory EXCHANGE PARTITION p0 WITH TABLE swap")
	time.Sleep(300 * time.Millisecond)
	execAll(t, e.db, "CREATE OR REPLACE TABLE inventory (sku BIGINT UNSIGNED NOT NULL PRIMARY KEY, stock INT NOT NULL, price DECIMAL(10,2) NULL, name VARCHAR(64) NULL, version BIGINT UNSIGNED NOT NULL) SELECT * FROM src")
	time.Sleep(500 * time.Millisecond)
	t.Logf("%d writes ran across the statements", w.stop())
	e.waitEqual(60 * time.Second)
	if got := reloadsFor(t, r, "ddl"); got < 3 {
		t.Fatalf("invsync_resnapshots_total{reason=ddl} = %v, want >= 3", got)
	}
}
