package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
)

// Issue 13, part 3: several sources into one Redis. Two shards of one logical table
// (two primaries, each with an invsync of its own: here two schemas and two state
// schemas on the project's MariaDB) under one key_prefix would tombstone and hide each
// other's rows (the snapshot's sweep, reconcile's extras, the shared Bloom bitmap).
// Sharding is not supported; it is refused clearly: check-config, run, snapshot and
// reconcile of the second shard fail naming the setting, the other instance and the fix,
// and write nothing. Sources that keep apart (a prefix, a Bloom key and a state schema
// each) run side by side.
func TestTwoSourcesIntoOnePrefixAreRefused(t *testing.T) {
	e, r := streaming(t, 200)
	ctx := context.Background()

	// Shard B: the same table on "another primary", rows 1000..1199, same key prefix.
	schemaB, dbB := testenv.Schema(t)
	execAll(t, dbB, inventoryDDL,
		"INSERT INTO inventory (sku, stock, price, name, version) SELECT seq, 5, 1.00, CONCAT('b-', seq), 1 FROM seq_1000_to_1199")
	b := *e.cfg
	b.Tables = []config.Table{e.cfg.Tables[0]}
	b.Tables[0].Schema = schemaB
	b.State.Schema = testenv.StateSchema(t)
	dropClaims(t, e.rdb, b.State.Schema)
	b.HTTP.Listen = freeAddr(t)
	pathB := writeConfigTo(t, &b)
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	wantRefused := func(what string, code int, out, setting string) {
		t.Helper()
		if code != 1 || !strings.Contains(out, setting) || !strings.Contains(out, "written by another invsync") ||
			!strings.Contains(out, "not supported") || !strings.Contains(out, "redis-cli DEL invsync:owner:") {
			t.Fatalf("%s: exit %d, want 1 and an error naming %s, the other invsync and the fix; output:\n%s", what, code, setting, out)
		}
	}
	code, out := runCLI(t, 60*time.Second, pw, "check-config", "-c", pathB)
	wantRefused("check-config", code, out, "tables[0].key_prefix")
	code, out = runCLI(t, 60*time.Second, pw, "run", "-c", pathB)
	wantRefused("run", code, out, "tables[0].key_prefix")
	code, out = runCLI(t, 60*time.Second, pw, "snapshot", "-c", pathB)
	wantRefused("snapshot", code, out, "tables[0].key_prefix")
	code, out = runCLI(t, 60*time.Second, pw, "reconcile", "--repair", "-c", pathB)
	if code == 0 || !strings.Contains(out, "written by another invsync") {
		t.Fatalf("reconcile --repair: exit %d, want an error naming the other invsync; output:\n%s", code, out)
	}
	// Shard B wrote nothing: none of its rows, and shard A's rows are all live and exact.
	if n, _ := e.rdb.Exists(ctx, layout.Key(b.Tables[0].KeyPrefix, []string{"1000"})).Result(); n != 0 {
		t.Fatal("the refused shard wrote its rows")
	}
	execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku < 50")
	e.waitEqual(30 * time.Second)

	// A second source reading the same table under its own key prefix shares the
	// table's Bloom bitmap (named by schema.table): refused until it has a
	// bloom.key_prefix of its own; then both mirror exactly, side by side.
	c := *e.cfg
	c.Tables = []config.Table{e.cfg.Tables[0]}
	c.Tables[0].KeyPrefix = testenv.Prefix(t, e.rdb)
	c.State.Schema = testenv.StateSchema(t)
	dropClaims(t, e.rdb, c.State.Schema)
	c.HTTP.Listen = freeAddr(t)
	code, out = runCLI(t, 60*time.Second, pw, "check-config", "-c", writeConfigTo(t, &c))
	wantRefused("check-config (shared Bloom bitmap)", code, out, "bloom.key_prefix")
	c.Bloom.KeyPrefix = "invsync:bloom:" + strings.TrimSuffix(c.Tables[0].KeyPrefix, ":") + ":"
	t.Cleanup(func() { e.rdb.Del(context.Background(), c.BloomKey(c.Tables[0]), c.BloomKey(c.Tables[0])+":meta") })
	pathC := writeConfigTo(t, &c)
	if code, out = runCLI(t, 60*time.Second, pw, "check-config", "-c", pathC); code != 0 {
		t.Fatalf("check-config of a source that keeps apart: exit %d:\n%s", code, out)
	}
	pc := startProc(t, pathC, c.HTTP.Listen)
	execAll(t, e.db, "UPDATE inventory SET stock = stock + 2, version = version + 1 WHERE sku >= 100",
		"DELETE FROM inventory WHERE sku >= 190")
	waitFor(t, "both sources mirror the table", 30*time.Second, func() bool {
		return e.compare() == nil && compareTable(ctx, e.db, e.rdb, c.Tables[0], c.BloomKey(c.Tables[0])) == nil
	})
	pc.terminate(t)
	r.stop(t)
}
