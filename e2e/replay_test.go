package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
)

// counterSum is the sum of the series of a counter or gauge.
func counterSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	testenv.Must(t, err, "gather")
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// Acceptance 3: rewind the checkpoint to an older position and restart: nothing in
// Redis changes, and the skipped counter shows the replayed rows.
func TestReplayFromOlderCheckpointChangesNothing(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	r := e.start(nil)
	waitReady(t, r)
	store := e.checkpointStore()
	old, ok, err := store.Load(context.Background())
	if err != nil || !ok {
		t.Fatalf("checkpoint: %v", err)
	}
	wl := &workload{db: e.db, table: "inventory", skus: 300, writers: 2, txns: 400, maxRows: 10}
	testenv.Must(t, wl.run(context.Background()), "workload")
	e.waitEqual(60 * time.Second)
	applied := counterSum(t, r.d.Registry(), "invsync_rows_applied_total") + counterSum(t, r.d.Registry(), "invsync_rows_coalesced_total")
	r.stop(t)
	before := e.snapshotRedis()

	// Rewind twice: each replay must leave every hash, _s included, as it was.
	for round := 1; round <= 2; round++ {
		testenv.Must(t, store.Save(context.Background(), old), "rewind checkpoint")
		r2 := e.start(nil)
		waitReady(t, r2)
		deadline := time.Now().Add(60 * time.Second)
		var skipped float64
		for time.Now().Before(deadline) {
			skipped = counterSum(t, r2.d.Registry(), "invsync_rows_skipped_total")
			if skipped >= applied {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if skipped < applied {
			t.Fatalf("round %d: skipped counter %v, want at least the %v rows first applied", round, skipped, applied)
		}
		if got := counterSum(t, r2.d.Registry(), "invsync_rows_applied_total") + counterSum(t, r2.d.Registry(), "invsync_rows_coalesced_total"); got != 0 {
			t.Fatalf("round %d: replay applied %v rows, want 0", round, got)
		}
		r2.stop(t)
		after := e.snapshotRedis()
		if len(after) != len(before) {
			t.Fatalf("round %d: %d keys before, %d after", round, len(before), len(after))
		}
		for k, h := range before {
			if d := diffHash(h, after[k], true); d != "" {
				t.Fatalf("round %d: replay changed %s: %s", round, k, d)
			}
		}
		t.Logf("round %d: replayed %v rows, all skipped", round, skipped)
	}
	if err := e.compare(); err != nil {
		t.Fatal(err)
	}
}

// Acceptance 6: composite primary keys, and two configured tables at once.
func TestCompositeKeysAndTwoTables(t *testing.T) {
	e := newEnv(t,
		tableSpec{name: "stock_by_wh", version: "version", ddl: `CREATE TABLE stock_by_wh (
			sku BIGINT NOT NULL, warehouse VARCHAR(16) NOT NULL, qty INT NOT NULL, version INT UNSIGNED NOT NULL,
			PRIMARY KEY (sku, warehouse))`},
		tableSpec{name: "inventory", ddl: inventoryDDL}, // no version column: _v from the binlog position
	)
	r := e.start(nil)
	waitReady(t, r)
	stmts := []string{
		"INSERT INTO stock_by_wh VALUES (1, 'sh', 10, 1), (1, 'bj', 5, 1), (2, 'sh', 7, 1)",
		"UPDATE stock_by_wh SET qty = qty - 1, version = version + 1 WHERE sku = 1",
		"UPDATE stock_by_wh SET warehouse = 'gz', version = version + 1 WHERE sku = 2 AND warehouse = 'sh'",
		"DELETE FROM stock_by_wh WHERE sku = 1 AND warehouse = 'bj'",
		"INSERT INTO inventory VALUES (1, 3, 1.50, 'a', 1), (2, 4, NULL, NULL, 1)",
		"UPDATE inventory SET stock = 0 WHERE sku = 1",
		// A primary key shift in one statement: key 3 is deleted and key 2 re-created
		// within the same rows event.
		"INSERT INTO inventory VALUES (5, 9, 9.99, 'e', 1), (6, 8, 8.88, 'f', 1)",
		"UPDATE inventory SET sku = sku - 1 WHERE sku >= 5 ORDER BY sku",
	}
	for _, q := range stmts {
		if _, err := e.db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	e.waitEqual(30 * time.Second)
	snap := e.snapshotRedis()
	key := e.cfg.Tables[0].KeyPrefix + "{1:sh}"
	if snap[key]["qty"] != "9" || snap[key]["warehouse"] != "sh" {
		t.Fatalf("composite key %s = %v", key, snap[key])
	}
	moved := e.cfg.Tables[0].KeyPrefix + "{2:sh}"
	if snap[moved]["_deleted"] != "1" {
		t.Fatalf("old key of a moved row must be a tombstone: %v", snap[moved])
	}
	shifted := e.cfg.Tables[1].KeyPrefix + "{5}"
	if snap[shifted]["name"] != "f" || snap[e.cfg.Tables[1].KeyPrefix+"{6}"]["_deleted"] != "1" {
		t.Fatalf("primary key shift: {5} = %v", snap[shifted])
	}
	for k := range snap {
		if !strings.HasPrefix(k, e.cfg.Tables[0].KeyPrefix) && !strings.HasPrefix(k, e.cfg.Tables[1].KeyPrefix) {
			t.Fatalf("unexpected key %s", k)
		}
	}
}

// seriesValue is the value of the series of a counter or gauge whose labels include
// every pair of labels (name=value, ...); 0 when there is none.
func seriesValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	testenv.Must(t, err, "gather")
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if got[labels[i]] != labels[i+1] {
					continue series
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}
