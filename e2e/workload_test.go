package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
)

const inventoryDDL = `CREATE TABLE inventory (
	sku BIGINT UNSIGNED NOT NULL PRIMARY KEY,
	stock INT NOT NULL,
	price DECIMAL(10,2) NULL,
	name VARCHAR(64) NULL,
	version BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB`

// watchedSKUs are SKUs whose version never goes down, even across a delete and a
// re-insert (re-inserts take a version above any earlier one); SKUs from
// restartFromSKU up re-insert with version 1, the version-restart case.
const (
	watchedSKUs    = 200
	restartFromSKU = 1000
)

// workload runs random transactions against the inventory table.
type workload struct {
	db        *sql.DB
	table     string
	skus      int
	writers   int
	txns      int // in total
	maxRows   int
	reinserts atomic.Int64
	done      atomic.Int64
}

func (w *workload) run(ctx context.Context) error {
	// Re-insert versions are numbered per key in a table of their own (not mirrored).
	if _, err := w.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+w.table+"_incarnations (sku BIGINT UNSIGNED NOT NULL PRIMARY KEY, n BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB"); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, w.writers)
	per := w.txns / w.writers
	for i := 0; i < w.writers; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, seed*7+1))
			for n := 0; n < per; n++ {
				if ctx.Err() != nil {
					return
				}
				if err := w.txn(ctx, rng); err != nil {
					if ctx.Err() != nil {
						return // stopped: database/sql rolls back a transaction whose context ends (sql.ErrTxDone at its commit)
					}
					errs <- err
					return
				}
				w.done.Add(1)
			}
		}(uint64(i + 1))
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (w *workload) txn(ctx context.Context, rng *rand.Rand) error {
	n := 1 + rng.IntN(w.maxRows)
	skus := make([]int, n)
	for i := range skus {
		skus[i] = rng.IntN(w.skus)
	}
	sort.Ints(skus) // one lock order: fewer deadlocks
	ops := make([]int, n)
	for i := range ops {
		ops[i] = rng.IntN(100)
	}
	for attempt := 0; ; attempt++ {
		err := w.try(ctx, rng, skus, ops)
		var me *mysql.MySQLError
		if err != nil && errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205) && attempt < 20 {
			continue
		}
		return err
	}
}

func (w *workload) try(ctx context.Context, rng *rand.Rand, skus, ops []int) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for i, sku := range skus {
		var q string
		var args []any
		switch op := ops[i]; {
		case op < 35: // insert, or update when present
			version := uint64(1)
			if sku < restartFromSKU {
				// The version of a re-insert must exceed every earlier one of the key: it
				// is numbered under a lock of the key's own counter row, held to the
				// commit, not chosen before (a slower writer could then insert an older
				// version after a newer incarnation was deleted).
				if _, err := tx.ExecContext(ctx, "INSERT INTO "+w.table+"_incarnations (sku, n) VALUES (?, 1) ON DUPLICATE KEY UPDATE n = n + 1", sku); err != nil {
					return err
				}
				var n uint64
				if err := tx.QueryRowContext(ctx, "SELECT n FROM "+w.table+"_incarnations WHERE sku = ?", sku).Scan(&n); err != nil {
					return err
				}
				w.reinserts.Add(1)
				version = 1_000_000_000 + 100_000*n
			}
			q = "INSERT INTO " + w.table + " (sku, stock, price, name, version) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE stock = VALUES(stock), price = VALUES(price), name = VALUES(name), version = version + 1"
			args = []any{sku, rng.IntN(1000), fmt.Sprintf("%d.%02d", rng.IntN(500), rng.IntN(100)), "item-" + strconv.Itoa(rng.IntN(1e6)), version}
		case op < 70:
			q = "UPDATE " + w.table + " SET stock = stock - 1, version = version + 1 WHERE sku = ?"
			args = []any{sku}
		case op < 80: // set NULLs
			q = "UPDATE " + w.table + " SET price = NULL, name = NULL, version = version + 1 WHERE sku = ?"
			args = []any{sku}
		case op < 85: // change a column but not the version
			q = "UPDATE " + w.table + " SET name = ? WHERE sku = ?"
			args = []any{"renamed-" + strconv.Itoa(rng.IntN(1e6)), sku}
		default:
			q = "DELETE FROM " + w.table + " WHERE sku = ?"
			args = []any{sku}
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// watcher reads _v and _s of keys every millisecond and records any that goes down.
type watcher struct {
	rdb   redis.UniversalClient
	keys  []string
	bad   collect
	reads atomic.Int64
}

func newWatcher(rdb redis.UniversalClient, prefix string, n int) *watcher {
	w := &watcher{rdb: rdb}
	for i := 0; i < n; i++ {
		w.keys = append(w.keys, layout.Key(prefix, []string{strconv.Itoa(i)}))
	}
	return w
}

func (w *watcher) run(ctx context.Context) {
	lastV := make([]uint64, len(w.keys))
	lastS := make([]string, len(w.keys))
	var failing time.Time
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pipe := w.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(w.keys))
		for i, k := range w.keys {
			cmds[i] = pipe.HMGet(ctx, k, layout.FieldVersion, layout.FieldSeq)
		}
		if _, err := pipe.Exec(ctx); err != nil && ctx.Err() == nil && err != redis.Nil {
			// A slow read on a loaded machine (the race detector, CI) is not the
			// daemon's fault: retry, and fail only when reads keep failing.
			if failing.IsZero() {
				failing = time.Now()
			}
			if time.Since(failing) > 5*time.Second {
				w.bad.add("watcher read failing for 5s: %v", err)
				return
			}
			continue
		}
		failing = time.Time{}
		w.reads.Add(1)
		for i, c := range cmds {
			vals := c.Val()
			if len(vals) != 2 || vals[0] == nil {
				continue
			}
			v, err := strconv.ParseUint(vals[0].(string), 10, 64)
			if err != nil {
				w.bad.add("%s: _v %q not a number", w.keys[i], vals[0])
				continue
			}
			s, _ := vals[1].(string)
			if v < lastV[i] {
				w.bad.add("%s: _v went down from %d to %d (_s from %q to %q)", w.keys[i], lastV[i], v, lastS[i], s)
			}
			if s < lastS[i] {
				w.bad.add("%s: _s went down from %s to %s", w.keys[i], lastS[i], s)
			}
			lastV[i], lastS[i] = v, s
		}
	}
}

// Acceptance 1: random workload of 4 writers, 4,000 transactions of 1-20 rows over
// 2,000 SKUs; Redis equals MySQL afterwards, and _v of 200 watched keys never goes
// down while it runs.
func TestRandomWorkloadMirrorsExactly(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	r := e.start(nil)
	// Let the stream start before the first write.
	waitReady(t, r)
	_, w := watchedWorkload(t, e)
	if w.reads.Load() < 100 {
		t.Fatalf("watcher made only %d reads", w.reads.Load())
	}
	t.Logf("watcher: %d reads of %d keys", w.reads.Load(), len(w.keys))
	// There are tombstones: deletes happened and are mirrored as such.
	snap := e.snapshotRedis()
	tomb := 0
	for _, h := range snap {
		if h[layout.FieldDeleted] == "1" {
			tomb++
		}
	}
	if tomb == 0 {
		t.Fatal("no tombstones after a workload with deletes")
	}
}

// watchedWorkload runs the random workload (4 writers, 4,000 transactions of 1-20 rows
// over 2,000 SKUs) while a watcher checks that _v and _s of the watched keys never go
// down, waits until Redis equals MySQL and fails on what the watcher saw.
func watchedWorkload(t *testing.T, e *env) (*workload, *watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newWatcher(e.rdb, e.cfg.Tables[0].KeyPrefix, watchedSKUs)
	wdone := make(chan struct{})
	go func() { defer close(wdone); w.run(ctx) }()
	wl := &workload{db: e.db, table: "inventory", skus: 2000, writers: 4, txns: 4000, maxRows: 20}
	start := time.Now()
	if err := wl.run(ctx); err != nil {
		t.Fatalf("workload: %v", err)
	}
	t.Logf("workload: %d transactions in %s", wl.done.Load(), time.Since(start).Round(time.Millisecond))
	e.waitEqual(60 * time.Second)
	cancel()
	<-wdone
	if bad := w.bad.list(); len(bad) > 0 {
		t.Fatalf("watcher saw versions go down: %v", bad)
	}
	return wl, w
}

func waitReady(t *testing.T, r *running) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if addr := r.d.Addr(); addr != "" {
			if resp, err := httpGet("http://" + addr + "/readyz"); err == nil && resp == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("daemon not ready within 30s")
}

// during runs an endless random workload of 4 writers over skus while fn runs, then
// stops it and returns it (for its counts).
func during(t *testing.T, e *env, skus int, fn func(wl *workload)) *workload {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wl := &workload{db: e.db, table: "inventory", skus: skus, writers: 4, txns: 1_000_000, maxRows: 10}
	done := make(chan error, 1)
	go func() { done <- wl.run(ctx) }()
	fn(wl)
	cancel()
	// After cancel, a transaction in flight may fail any way (the driver reports "bad
	// connection" for a query it cancelled): only errors before it count.
	if err := <-done; err != nil && ctx.Err() == nil {
		t.Fatalf("workload: %v", err)
	}
	return wl
}

// watching runs a watcher of the first watchedSKUs keys until the returned function is
// called; that function fails the test on what it saw.
func watching(t *testing.T, e *env) (check func()) {
	return watchingWith(t, newWatcher(e.rdb, e.cfg.Tables[0].KeyPrefix, watchedSKUs), 20)
}

// watchingWith runs w until the returned function is called; that function fails the
// test on what it saw, or when it made fewer than minReads reads.
func watchingWith(t *testing.T, w *watcher, minReads int64) (check func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		<-done
		if bad := w.bad.list(); len(bad) > 0 {
			t.Fatalf("watcher saw versions go down: %v", bad)
		}
		if w.reads.Load() < minReads {
			t.Fatalf("the watcher made only %d reads", w.reads.Load())
		}
	}
}

// streaming is newEnv with the inventory table loaded with rows, and a daemon that has
// mirrored them.
func streaming(t *testing.T, rows int) (*env, *running) {
	t.Helper()
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, rows)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	return e, r
}
