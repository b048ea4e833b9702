package e2e

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
)

// Issue 11, part 3: the source's history can be renumbered (RESET MASTER, a failover to
// another primary) or lost (a purged binlog). invsync starts a new epoch whose writes
// order after every earlier one, and its reload replaces what Redis holds: rows deleted
// and inserted again with their version restarted, or updated without a new version,
// never stay stale.

// gapChanges changes rows in ways the version guard alone cannot order: skus 0..39
// deleted and inserted again with the version restarted at 1, skus 40..79 renamed
// without a new version, skus 280..299 deleted.
func gapChanges(t *testing.T, e *env) {
	t.Helper()
	execAll(t, e.db,
		"DELETE FROM inventory WHERE sku < 40",
		"INSERT INTO inventory (sku, stock, price, name, version) SELECT seq, 777, 7.77, 'again', 1 FROM seq_0_to_39",
		"UPDATE inventory SET name = 'renamed in the gap' WHERE sku BETWEEN 40 AND 79",
		"DELETE FROM inventory WHERE sku >= 280 AND sku < 300")
}

// bumpVersions makes Redis hold versions above 1 for skus < 80 (so that a re-insert
// with version 1 is older by version).
func bumpVersions(t *testing.T, e *env) {
	t.Helper()
	execAll(t, e.db, "UPDATE inventory SET version = version + 5, stock = stock + 1 WHERE sku < 80")
}

// watchFrom watches _v/_s of skus from..from+n-1 (keys whose versions only grow).
func watchFrom(e *env, from, n int) *watcher {
	w := &watcher{rdb: e.rdb}
	for i := from; i < from+n; i++ {
		w.keys = append(w.keys, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{strconv.Itoa(i)}))
	}
	return w
}

// runWatched runs fn with a watcher of skus 80..279 (whose versions only grow here) and
// fails on what it saw.
func runWatched(t *testing.T, e *env, fn func()) {
	t.Helper()
	check := watchingWith(t, watchFrom(e, 80, 200), 20)
	fn()
	check()
}

// historyEnv is streaming with 300 rows whose versions were bumped for skus < 80.
func historyEnv(t *testing.T) (*env, *running) {
	t.Helper()
	e, r := streaming(t, 300)
	bumpVersions(t, e)
	e.waitEqual(30 * time.Second)
	return e, r
}

// A purged gap: the reload after on_position_lost replaces what it finds.
func TestPurgedGapIsReplacedWhole(t *testing.T) {
	e, r := historyEnv(t)
	r.stop(t)
	cp, _, err := e.checkpointStore().Load(context.Background())
	testenv.Must(t, err, "checkpoint")
	gapChanges(t, e)
	purgeAll(t, cp.File)
	runWatched(t, e, func() {
		r = e.start(nil)
		waitReady(t, r)
		e.waitEqual(60 * time.Second)
		// And the stream goes on after it.
		execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku BETWEEN 100 AND 199")
		e.waitEqual(30 * time.Second)
	})
	if got := reloadsFor(t, r, "position_lost"); got != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=position_lost} = %v, want 1", got)
	}
}

// RESET MASTER while the daemon streams, with changes after it: a new epoch, a reload
// that replaces what Redis holds, and later binlog writes apply (before, every one of
// them was refused as older than what Redis held).
func TestBinlogResetStartsANewEpoch(t *testing.T) {
	e, r := historyEnv(t)
	root := testenv.DB(t, "")
	// Move to a later binlog file first, so that the reset numbers files lower.
	for i := 0; i < 3; i++ {
		execAll(t, root, "FLUSH BINARY LOGS")
	}
	runWatched(t, e, func() {
		execAll(t, root, "RESET MASTER")
		gapChanges(t, e)
		e.waitEqual(60 * time.Second)
		for i := 0; i < 5; i++ {
			execAll(t, e.db, fmt.Sprintf("UPDATE inventory SET stock = %d, version = version + 1 WHERE sku BETWEEN 100 AND 199", i))
		}
		execAll(t, e.db, "UPDATE inventory SET stock = 0 WHERE sku = 0")
		e.waitEqual(30 * time.Second)
	})
	if got := reloadsFor(t, r, "binlog_reset"); got != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=binlog_reset} = %v, want 1", got)
	}
	if got := counterSum(t, r.d.Registry(), "invsync_source_epochs_total"); got != 1 {
		t.Fatalf("invsync_source_epochs_total = %v, want 1", got)
	}
	cp, _, err := e.checkpointStore().Load(context.Background())
	testenv.Must(t, err, "checkpoint")
	if cp.Epoch != 1 {
		t.Fatalf("checkpoint %s: epoch %d, want 1", cp, cp.Epoch)
	}
}

// Another server answers at the source's address (a failover to another primary, a
// replaced server): the identity recorded with the checkpoint differs, so a new epoch
// and a replacing reload. (The other server is simulated by the recorded identity: this
// machine runs one MariaDB.)
func TestAnotherSourceStartsANewEpoch(t *testing.T) {
	e, r := historyEnv(t)
	r.stop(t)
	execAll(t, e.db, "UPDATE "+testenv.Quote(e.cfg.State.Schema)+".checkpoint SET source_id = 'mariadb server_id=999 gtid_domain_id=0'")
	gapChanges(t, e)
	runWatched(t, e, func() {
		r = e.start(nil)
		waitReady(t, r)
		e.waitEqual(60 * time.Second)
	})
	if got := reloadsFor(t, r, "source_changed"); got != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=source_changed} = %v, want 1", got)
	}
	cp, _, err := e.checkpointStore().Load(context.Background())
	testenv.Must(t, err, "checkpoint")
	if cp.Epoch != 1 {
		t.Fatalf("checkpoint %s: epoch %d, want 1", cp, cp.Epoch)
	}
}
