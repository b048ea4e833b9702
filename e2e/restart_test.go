package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Issue 13, part 2: a table added to `tables`, or given another key_prefix, is loaded by
// the restart that the reload warning asks for, although a checkpoint exists; a table
// removed from the config and added again later is loaded again (its rows changed while
// nobody mirrored them). Each case ends with the row-by-row comparison of every
// configured table (extras under the prefix included) and changes streamed after it.
func TestTablesAddedOrReprefixedAreLoadedAfterRestart(t *testing.T) {
	e, r := streaming(t, 300)
	ctx := context.Background()
	// A second table that nobody mirrors yet.
	execAll(t, e.db,
		strings.Replace(inventoryDDL, "CREATE TABLE inventory", "CREATE TABLE extra", 1),
		"INSERT INTO extra (sku, stock, price, name, version) SELECT seq, seq % 50, 1.50, CONCAT('extra-', seq), 1 FROM seq_0_to_499")
	execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku < 100")
	e.waitEqual(30 * time.Second)
	r.stop(t)
	oldPrefix := e.cfg.Tables[0].KeyPrefix

	// Restart 1: extra added, inventory moved to another prefix; both changed while stopped.
	extra := config.Table{Schema: e.schema, Table: "extra", KeyPrefix: testenv.Prefix(t, e.rdb), VersionColumn: "version"}
	e.cfg.Tables = append(e.cfg.Tables, extra)
	e.cfg.Tables[0].KeyPrefix = testenv.Prefix(t, e.rdb)
	testenv.Must(t, e.cfg.Validate(), "config")
	execAll(t, e.db,
		"UPDATE inventory SET stock = stock + 7, version = version + 1 WHERE sku BETWEEN 50 AND 149",
		"DELETE FROM inventory WHERE sku >= 290",
		"UPDATE extra SET stock = stock + 3, version = version + 1 WHERE sku < 100")
	core, logs := observer.New(zapcore.WarnLevel)
	r = e.start(zap.New(core))
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	if warned := logs.FilterMessageSnippet("key_prefix").FilterMessageSnippet(oldPrefix).Len() +
		logs.FilterField(zap.String("old_key_prefix", oldPrefix)).Len(); warned == 0 {
		t.Errorf("no warning names the table's old key prefix %q; logged: %v", oldPrefix, logs.All())
	}
	// The old prefix's keys are left as they were (documented): not updated, not removed.
	if keys, err := testenv.ScanKeys(ctx, e.rdb, oldPrefix); err != nil || len(keys) != 300 {
		t.Errorf("%d keys under the old prefix (%v), want the 300 left as they were", len(keys), err)
	}
	check := watchingWith(t, newWatcher(e.rdb, extra.KeyPrefix, 100), 3)
	execAll(t, e.db,
		"UPDATE extra SET stock = stock + 1, version = version + 1 WHERE sku < 200",
		"INSERT INTO extra (sku, stock, price, name, version) SELECT seq, 1, 2.00, 'new', 1 FROM seq_500_to_599",
		"UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku < 200")
	e.waitEqual(30 * time.Second)
	check()
	r.stop(t)

	// Restart 2: extra removed from the config; changed while the daemon streams
	// without it (its checkpoint moves past those changes).
	e.cfg.Tables = e.cfg.Tables[:1]
	r = e.start(nil)
	waitReady(t, r)
	execAll(t, e.db,
		"DELETE FROM extra WHERE sku >= 550",
		"UPDATE extra SET name = 'changed while unmirrored' WHERE sku < 20",
		"INSERT INTO extra (sku, stock, price, name, version) SELECT seq, 9, 9.00, 'added while unmirrored', 1 FROM seq_1000_to_1049",
		"UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku < 10")
	end := e.currentPosition()
	e.waitEqual(30 * time.Second)
	store := e.checkpointStore()
	waitFor(t, "the checkpoint passes the unmirrored changes", 30*time.Second, func() bool {
		pos, _, err := store.Load(ctx)
		return err == nil && !pos.Before(end)
	})
	r.stop(t)

	// Restart 3: extra added again under its prefix: loaded again, rows gone are tombstones.
	e.cfg.Tables = append(e.cfg.Tables, extra)
	r = e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	execAll(t, e.db, "UPDATE extra SET stock = stock + 1, version = version + 1 WHERE sku < 300")
	e.waitEqual(30 * time.Second)
}
