package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bloomv3 "github.com/bits-and-blooms/bloom/v3"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/client"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// testLoader reads a row of table from MySQL as an application would (database/sql,
// text of each column), counting its calls; before, if set, runs first.
type testLoader struct {
	db      *sql.DB
	version string // the version column, or ""
	calls   atomic.Int64
	before  func(pk []string)
	after   func(pk []string)
}

func (l *testLoader) load(ctx context.Context, table string, pk []string) (*client.Row, error) {
	l.calls.Add(1)
	if l.before != nil {
		l.before(pk)
	}
	name := table[strings.LastIndexByte(table, '.')+1:]
	rows, err := l.db.QueryContext(ctx, "SELECT * FROM "+testenv.Quote(name)+" WHERE sku = ?", pk[0])
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		if l.after != nil {
			l.after(pk)
		}
		return nil, rows.Err()
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, err
	}
	row := &client.Row{Fields: map[string]string{}}
	for i, c := range cols {
		if vals[i] != nil {
			row.Fields[c] = string(vals[i])
		}
		if c == l.version {
			row.Version = string(vals[i])
		}
	}
	if l.after != nil {
		l.after(pk)
	}
	return row, nil
}

func (e *env) client(t *testing.T, l *testLoader, reg prometheus.Registerer) *client.Client {
	t.Helper()
	c, err := client.New(e.rdb, e.conns().ClientTables(), l.load, client.Options{NullTTL: e.cfg.Bloom.NullTTL, Registerer: reg})
	testenv.Must(t, err, "client")
	return c
}

// Issue 5, acceptance 1: after the sync of 100,000 rows, 100,000 lookups of SKUs that
// never existed make at most fp_rate x 100,000 x 1.5 loader calls in a first pass and
// none in a second (the null cache); every present SKU is found, also those inserted
// after the snapshot (INSERT events add to the filter).
func TestLookupsOfMissingSKUsStayOffMySQL(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Bloom.ExpectedItems = 110_000
	e.cfg.Bloom.FalsePositiveRate = 0.001
	loadRows(t, e, 100_000)
	r := e.start(nil)
	waitReady(t, r)
	// 1,000 more rows through the binlog.
	for base := 100_000; base < 101_000; base += 100 {
		var sb strings.Builder
		sb.WriteString("INSERT INTO inventory (sku, stock, price, name, version) VALUES ")
		for j := base; j < base+100; j++ {
			if j > base {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "(%d, 5, 1.00, 'late-%d', 1)", j, j)
		}
		_, err := e.db.Exec(sb.String())
		testenv.Must(t, err, "insert")
	}
	e.waitEqual(60 * time.Second)

	reg := prometheus.NewRegistry()
	l := &testLoader{db: e.db, version: "version"}
	c := e.client(t, l, reg)
	ctx := context.Background()
	const n = 100_000
	pass := func(from int, check func(sku int, res client.Result)) {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(32)
		for i := 0; i < n; i += 1000 {
			g.Go(func() error {
				for sku := from + i; sku < from+i+1000; sku++ {
					res, err := c.Get(gctx, "inventory", strconv.Itoa(sku))
					if err != nil {
						return err
					}
					check(sku, res)
				}
				return nil
			})
		}
		testenv.Must(t, g.Wait(), "lookups")
	}
	var bad collect
	var bySource sync.Map
	count := func(s client.Source) {
		v, _ := bySource.LoadOrStore(s, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	missing := func(sku int, res client.Result) {
		count(res.Source)
		if res.Found {
			bad.add("SKU %d that never existed was found (%s)", sku, res.Source)
		}
	}
	pass(10_000_000, missing)
	first := l.calls.Load()
	limit := int64(0.001 * n * 1.5)
	t.Logf("first pass over %d missing SKUs: %d loader calls (limit %d); answers by source: %s", n, first, limit, sources(&bySource))
	if first > limit {
		t.Errorf("%d loader calls in the first pass, more than %d", first, limit)
	}
	bySource = sync.Map{}
	pass(10_000_000, missing)
	second := l.calls.Load() - first
	t.Logf("second pass: %d loader calls; answers by source: %s", second, sources(&bySource))
	if second != 0 {
		t.Errorf("%d loader calls in the second pass, want 0 (null cache)", second)
	}
	bySource = sync.Map{}
	pass(1_000, func(sku int, res client.Result) {
		count(res.Source)
		if sku < 101_000 && (!res.Found || res.Source != client.FromCache || res.Row.Fields["sku"] != strconv.Itoa(sku)) {
			bad.add("present SKU %d: %+v", sku, res)
		}
	})
	if l.calls.Load() != first {
		t.Errorf("lookups of present SKUs called the loader %d times", l.calls.Load()-first)
	}
	for _, p := range bad.list() {
		t.Error(p)
	}
	// The metrics: the client's rejects and null-cache hits, the daemon's filter figures.
	if got := counterSum(t, reg, "invsync_client_null_cache_hits_total"); got != float64(first) {
		t.Errorf("null-cache hits %v, want %d", got, first)
	}
	if got := counterSum(t, reg, "invsync_client_bloom_rejects_total"); got != float64(2*(n-first)) {
		t.Errorf("bloom rejects %v, want %d", got, 2*(n-first))
	}
	items := counterSum(t, r.d.Registry(), "invsync_bloom_items")
	bits := counterSum(t, r.d.Registry(), "invsync_bloom_bits")
	fp := counterSum(t, r.d.Registry(), "invsync_bloom_estimated_false_positive_rate")
	t.Logf("daemon: bloom items %.0f, bits %.0f, estimated false-positive rate %.5f", items, bits, fp)
	if items < 100_900 || items > 101_100 || bits < 1_500_000 || fp <= 0 || fp > 0.0015 {
		t.Errorf("bloom metrics: items %.0f bits %.0f fp %.5f", items, bits, fp)
	}
}

func sources(m *sync.Map) string {
	var parts []string
	m.Range(func(k, v any) bool {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	return strings.Join(parts, " ")
}

// waitApplied waits until the daemon has written key from the binlog with _v = version
// (or, with version "", any binlog write), and returns the hash.
func (e *env) waitApplied(t *testing.T, key, version string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		h := e.rdb.HGetAll(context.Background(), key).Val()
		if h[layout.FieldSeq] != "" && h[layout.FieldDeleted] == "" && (version == "" || h[layout.FieldVersion] == version) {
			return h
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%s was not written by the daemon (version %q) within 20s: %v", key, version, e.rdb.HGetAll(context.Background(), key).Val())
	return nil
}

// expireTombstone deletes a row, waits for the daemon's tombstone, and removes it as its
// TTL would: the key is then absent from Redis while the Bloom filter still has it.
func (e *env) expireTombstone(t *testing.T, table, key, sku string) {
	t.Helper()
	ctx := context.Background()
	_, err := e.db.Exec("DELETE FROM "+table+" WHERE sku = ?", sku)
	testenv.Must(t, err, "delete")
	deadline := time.Now().Add(20 * time.Second)
	for e.rdb.HGet(ctx, key, layout.FieldDeleted).Val() != "1" {
		if time.Now().After(deadline) {
			t.Fatalf("no tombstone for %s", key)
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.rdb.Del(ctx, key)
}

// Issue 5, acceptance 2: (a) a null marker sits on a key and the row is inserted: the row
// is readable as soon as the daemon applied it, also when the marker is written after
// the daemon's row (the loader read MySQL before the insert); (b) the loader reads an
// old row, the daemon applies a newer version, then the fill runs: Redis keeps the
// newer version; with and without a version column.
func TestReadPathRaces(t *testing.T) {
	e := newEnv(t,
		tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"},
		tableSpec{name: "plain", ddl: strings.Replace(inventoryDDL, "inventory", "plain", 1)})
	loadRows(t, e, 100)
	_, err := e.db.Exec("INSERT INTO plain SELECT * FROM inventory")
	testenv.Must(t, err, "load plain")
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	inv, plain := e.cfg.Tables[0], e.cfg.Tables[1]
	key := func(tc int, sku string) string { return layout.Key(e.cfg.Tables[tc].KeyPrefix, []string{sku}) }

	t.Run("null marker then insert", func(t *testing.T) {
		l := &testLoader{db: e.db, version: "version"}
		c := e.client(t, l, nil)
		k := key(0, "7")
		e.expireTombstone(t, "inventory", k, "7")
		res, err := c.Get(ctx, "inventory", "7")
		testenv.Must(t, err, "get")
		if res.Found || res.Source != client.FromDatabase || l.calls.Load() != 1 {
			t.Fatalf("first get: %+v, %d loader calls", res, l.calls.Load())
		}
		if e.rdb.HGet(ctx, k, layout.FieldNull).Val() != "1" {
			t.Fatal("no null marker written")
		}
		if res, _ := c.Get(ctx, "inventory", "7"); res.Found || res.Source != client.FromNullCache {
			t.Fatalf("second get: %+v", res)
		}
		_, err = e.db.Exec("INSERT INTO inventory (sku, stock, version) VALUES (7, 42, 9)")
		testenv.Must(t, err, "insert")
		e.waitApplied(t, k, "9")
		res, err = c.Get(ctx, "inventory", "7")
		testenv.Must(t, err, "get")
		if !res.Found || res.Source != client.FromCache || res.Row.Fields["stock"] != "42" || res.Row.Version != "9" {
			t.Fatalf("after the daemon applied the insert: %+v", res)
		}
	})

	t.Run("null marker written after the insert was applied", func(t *testing.T) {
		k := key(0, "8")
		e.expireTombstone(t, "inventory", k, "8")
		l := &testLoader{db: e.db, version: "version"}
		// The loader finds no row; before it returns, the row is inserted and applied.
		l.after = func([]string) {
			_, err := e.db.Exec("INSERT INTO inventory (sku, stock, version) VALUES (8, 43, 10)")
			testenv.Must(t, err, "insert")
			e.waitApplied(t, k, "10")
		}
		c := e.client(t, l, nil)
		res, err := c.Get(ctx, "inventory", "8")
		testenv.Must(t, err, "get")
		if !res.Found || res.Row.Fields["stock"] != "43" {
			t.Fatalf("get: %+v", res)
		}
		if h := e.rdb.HGetAll(ctx, k).Val(); h["stock"] != "43" || h[layout.FieldNull] != "" {
			t.Fatalf("the null marker replaced the row: %v", h)
		}
	})

	for _, tc := range []struct {
		name, table, version string
		idx                  int
	}{{"stale fill, version column", inv.Table, "version", 0}, {"stale fill, no version column", plain.Table, "", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			k := key(tc.idx, "20")
			e.rdb.Del(ctx, k) // a miss for a row that exists
			l := &testLoader{db: e.db, version: tc.version}
			// The loader has read the row (stock 20); the row changes and the daemon
			// applies the change before the fill runs.
			l.after = func([]string) {
				_, err := e.db.Exec("UPDATE " + tc.table + " SET stock = 999, version = version + 1 WHERE sku = 20")
				testenv.Must(t, err, "update")
				deadline := time.Now().Add(20 * time.Second)
				for e.rdb.HGet(ctx, k, "stock").Val() != "999" {
					if time.Now().After(deadline) {
						t.Fatal("update not applied")
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
			c := e.client(t, l, nil)
			res, err := c.Get(ctx, tc.table, "20")
			testenv.Must(t, err, "get")
			h := e.rdb.HGetAll(ctx, k).Val()
			if h["stock"] != "999" || h[layout.FieldSeq] == "" {
				t.Fatalf("the stale fill overwrote the newer row: %v", h)
			}
			if !res.Found || res.Row.Fields["stock"] != "999" || res.Source != client.FromCache {
				t.Fatalf("get returned %+v; want the newer row from the cache", res)
			}
		})
	}
	e.waitEqual(30 * time.Second)
}

// Issue 5, acceptance 3: 1,000 concurrent Gets of one key Redis does not hold make one
// loader call: for a row that exists (filled) and for one that does not (null marker).
func TestConcurrentMissesLoadOnce(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 100)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	gone := layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"50"})
	e.expireTombstone(t, "inventory", gone, "50")
	present := layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"60"})
	e.rdb.Del(ctx, present)
	for _, tc := range []struct {
		sku   string
		found bool
	}{{"60", true}, {"50", false}} {
		l := &testLoader{db: e.db, version: "version", before: func([]string) { time.Sleep(50 * time.Millisecond) }}
		c := e.client(t, l, nil)
		start := make(chan struct{})
		var wg sync.WaitGroup
		var wrong atomic.Int64
		for i := 0; i < 1000; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				res, err := c.Get(ctx, "inventory", tc.sku)
				if err != nil || res.Found != tc.found || (tc.found && res.Row.Fields["sku"] != tc.sku) {
					wrong.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		t.Logf("sku %s: 1000 concurrent gets, %d loader call(s), %d wrong answers", tc.sku, l.calls.Load(), wrong.Load())
		if l.calls.Load() != 1 || wrong.Load() != 0 {
			t.Errorf("sku %s: %d loader calls (want 1), %d wrong answers", tc.sku, l.calls.Load(), wrong.Load())
		}
	}
}

// Issue 5, acceptance 4: readers running through rebuilds (swapped in while writers
// insert, each sized differently as the table outgrows bloom.expected_items) never get
// a false "not found" for a present SKU.
func TestRebuildNeverHidesPresentSKUs(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Bloom.ExpectedItems = 10_000
	loadRows(t, e, 20_000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(60 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := e.client(t, &testLoader{db: e.db, version: "version"}, nil)
	prefix := e.cfg.Tables[0].KeyPrefix

	// A writer inserts new SKUs; readers check SKUs known present in Redis.
	var high atomic.Int64 // SKUs below it are in Redis
	high.Store(20_000)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for sku := 20_000; ctx.Err() == nil; sku += 10 {
			if err := insertSKUs(e.db, sku, sku+10); err != nil {
				return
			}
			last := layout.Key(prefix, []string{strconv.Itoa(sku + 9)})
			for ctx.Err() == nil && e.rdb.Exists(ctx, last).Val() == 0 {
				time.Sleep(time.Millisecond)
			}
			high.Store(int64(sku + 10))
		}
	}()
	var checks atomic.Int64
	var bad collect
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				sku := strconv.Itoa(rand.IntN(int(high.Load())))
				ok, err := c.MayExist(ctx, "inventory", sku)
				if ctx.Err() != nil {
					return
				}
				if err != nil || !ok {
					bad.add("bloom: present SKU %s reported absent (%v)", sku, err)
				}
				res, err := c.Get(ctx, "inventory", sku)
				if ctx.Err() == nil && (err != nil || !res.Found) {
					bad.add("get: present SKU %s: %+v %v", sku, res, err)
				}
				checks.Add(1)
			}
		}()
	}
	var sizes []string
	for i := 0; i < 6; i++ {
		time.Sleep(200 * time.Millisecond)
		resp, err := http.Post("http://"+r.d.Addr()+"/bloom/rebuild", "", nil)
		testenv.Must(t, err, "rebuild")
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("rebuild: %s", resp.Status)
		}
		sizes = append(sizes, fmt.Sprintf("%.0f", counterSum(t, r.d.Registry(), "invsync_bloom_bits")))
	}
	cancel()
	wg.Wait()
	t.Logf("%d checks by 4 readers during 6 rebuilds; filter sizes (bits) after each: %s; SKUs at the end: %d",
		checks.Load(), strings.Join(sizes, ", "), high.Load())
	for _, p := range bad.list() {
		t.Error(p)
	}
	if checks.Load() < 100 {
		t.Errorf("only %d checks ran", checks.Load())
	}
	if got := counterSum(t, r.d.Registry(), "invsync_bloom_over_capacity_total"); got < 1 {
		t.Errorf("growth past expected_items not counted (%v)", got)
	}
	if got := counterSum(t, r.d.Registry(), "invsync_bloom_rebuilds_total"); got < 7 {
		t.Errorf("rebuilds counted %v, want at least 7 (snapshot + 6)", got)
	}
	if sizes[0] == fmt.Sprint(bloomBits(10_000, 0.001)) {
		t.Errorf("the rebuild after the growth was not sized larger (%s bits)", sizes[0])
	}
}

func bloomBits(n uint, fp float64) uint {
	m, _ := bloomv3.EstimateParameters(n, fp)
	return m
}

// `invsync get`: the operator's read path, with each kind of answer and its exit status.
func TestGetCommand(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 100)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	cfgPath := e.writeConfig(nil)
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	table := e.schema + ".inventory"
	key := func(sku string) string { return layout.Key(e.cfg.Tables[0].KeyPrefix, []string{sku}) }

	code, out := runCLI(t, 20*time.Second, pw, "get", "-c", cfgPath, table, "5", "6")
	if code != 0 || !strings.Contains(out, table+` 5 (cache): {"_v":"1","name":"sku-5","price":"5.05","sku":"5","stock":"5","version":"1"}`) ||
		!strings.Contains(out, table+" 6 (cache):") {
		t.Fatalf("get of present rows: exit %d\n%s", code, out)
	}
	if code, out = runCLI(t, 20*time.Second, pw, "get", "-c", cfgPath, "inventory", "123456789"); code != 1 || !strings.Contains(out, "123456789: not found (bloom)") {
		t.Fatalf("get of a SKU that never existed: exit %d\n%s", code, out)
	}
	e.expireTombstone(t, "inventory", key("7"), "7")
	if code, out = runCLI(t, 20*time.Second, pw, "get", "-c", cfgPath, table, "7"); code != 1 || !strings.Contains(out, "7: not found (mysql)") {
		t.Fatalf("get of a deleted SKU whose tombstone expired: exit %d\n%s", code, out)
	}
	if code, out = runCLI(t, 20*time.Second, pw, "get", "-c", cfgPath, table, "7"); code != 1 || !strings.Contains(out, "7: not found (null cache)") {
		t.Fatalf("second get: exit %d\n%s", code, out)
	}
	_, err := e.db.Exec("DELETE FROM inventory WHERE sku = 8")
	testenv.Must(t, err, "delete")
	for deadline := time.Now().Add(20 * time.Second); e.rdb.HGet(context.Background(), key("8"), layout.FieldDeleted).Val() != "1"; {
		if time.Now().After(deadline) {
			t.Fatal("no tombstone")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, out = runCLI(t, 20*time.Second, pw, "get", "-c", cfgPath, table, "8"); code != 1 || !strings.Contains(out, "8: not found (tombstone: deleted)") {
		t.Fatalf("get of a deleted SKU: exit %d\n%s", code, out)
	}
	// A row Redis lost is read from MySQL and filled.
	e.rdb.Del(context.Background(), key("9"))
	if code, out = runCLI(t, 20*time.Second, pw, "get", "-c", cfgPath, table, "9"); code != 0 || !strings.Contains(out, table+" 9 (mysql): ") {
		t.Fatalf("get of a row missing from Redis: exit %d\n%s", code, out)
	}
	if e.rdb.HGet(context.Background(), key("9"), "name").Val() != "sku-9" {
		t.Fatal("the row read from MySQL was not filled")
	}
	if code, out = runCLI(t, 20*time.Second, pw, "get", "-c", cfgPath, "nosuch", "1"); code != 2 || !strings.Contains(out, `table "nosuch" is not in`) {
		t.Fatalf("unknown table: exit %d\n%s", code, out)
	}
	e.waitEqual(30 * time.Second)
}

// Issue 12, part 2: under a case-insensitive, PAD SPACE collation 'abc', 'ABC' and 'abc '
// are one row. A lookup by another spelling loads that row, and its fill goes under the
// row's own key ({abc}), never a second key that nothing would update.
func TestLookupByAnotherSpellingFillsTheRowsOwnKey(t *testing.T) {
	e := newEnv(t, tableSpec{name: "ci", ddl: "CREATE TABLE ci (name VARCHAR(16) NOT NULL PRIMARY KEY, stock INT) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"})
	execAll(t, e.db, "INSERT INTO ci VALUES ('abc', 5)")
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	tables := e.tables()
	ct := e.conns().ClientTables(tables...)
	ct[0].BloomKey = "" // no filter: every miss reaches the loader
	load := func(ctx context.Context, _ string, pk []string) (*client.Row, error) {
		var name string
		var stock int
		err := e.db.QueryRowContext(ctx, "SELECT name, stock FROM ci WHERE name = ?", pk[0]).Scan(&name, &stock)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		return &client.Row{Fields: map[string]string{"name": name, "stock": strconv.Itoa(stock)}}, err
	}
	c, err := client.New(e.rdb, ct, load, client.Options{NullTTL: time.Minute})
	testenv.Must(t, err, "client")
	// The daemon's key is gone (evicted, say): the lookups fill it again, under {abc}.
	testenv.Must(t, e.rdb.Del(ctx, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"abc"})).Err(), "del")
	for _, spelling := range []string{"ABC", "abc ", "Abc"} {
		res, err := c.Get(ctx, "ci", spelling)
		if err != nil || !res.Found || res.Row.Fields["stock"] != "5" {
			t.Fatalf("Get(%q): %+v, %v", spelling, res, err)
		}
		if n := e.rdb.Exists(ctx, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{spelling})).Val(); n != 0 {
			t.Fatalf("a lookup of %q created the key of that spelling", spelling)
		}
	}
	if h := e.rdb.HGetAll(ctx, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"abc"})).Val(); h["stock"] != "5" {
		t.Fatalf("the row's own key was not filled: %v", h)
	}
	// The daemon keeps that one key up to date.
	execAll(t, e.db, "UPDATE ci SET stock = 6 WHERE name = 'ABC'")
	e.waitEqual(30 * time.Second)
}

// Issue 17 (memory): with bloom.expected_items unset, the snapshot sizes a table's filter
// from its rows (a 2,000-row table gets the smallest filter, not one for ten million keys),
// and a table that then outgrows it through the binlog gets a filter rebuilt larger by the
// daemon on its own, with every row still found.
func TestBloomIsSizedFromTheTableRows(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Bloom.ExpectedItems = 0
	loadRows(t, e, 2_000)
	r := e.start(nil)
	waitReady(t, r)
	ctx := context.Background()
	key := e.cfg.BloomKey(e.cfg.Tables[0])
	if n := e.rdb.StrLen(ctx, key).Val(); n > 200_000 {
		t.Fatalf("the bitmap of a 2,000-row table is %d bytes, want at most 200,000", n)
	}
	if got := counterSum(t, r.d.Registry(), "invsync_bloom_capacity_items"); got < float64(bloom.AutoMinItems) || got > 1.01*float64(bloom.AutoMinItems) {
		t.Fatalf("a 2,000-row table's filter is sized for %v items, want %d", got, bloom.AutoMinItems)
	}
	// 150,000 more rows through the binlog: past the filter's size.
	for base := 2_000; base < 152_000; base += 5_000 {
		testenv.Must(t, insertSKUs(e.db, base, base+5_000), "insert")
	}
	e.waitEqual(60 * time.Second)
	// Rebuilt larger (sized from the rows counted when it ran: at least the 100,001 that
	// outgrew the first filter, twice them) and no longer outgrown.
	deadline := time.Now().Add(30 * time.Second)
	for {
		capacity := counterSum(t, r.d.Registry(), "invsync_bloom_capacity_items")
		items := counterSum(t, r.d.Registry(), "invsync_bloom_items")
		if capacity >= 200_000 && capacity >= items {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the filter of 152,000 rows is sized for %v items and holds %v after 30 s, want a bigger one that holds them (rebuilds: %v)",
				capacity, items, counterSum(t, r.d.Registry(), "invsync_bloom_rebuilds_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := e.client(t, &testLoader{db: e.db, version: "version"}, nil)
	for sku := 0; sku < 152_000; sku += 997 {
		if ok, err := c.MayExist(ctx, "inventory", strconv.Itoa(sku)); err != nil || !ok {
			t.Fatalf("present SKU %d reported absent after the resize (%v)", sku, err)
		}
	}
}

// insertSKUs inserts the inventory rows of SKUs from..to-1 (stock 1, version 1) in one
// statement.
func insertSKUs(db *sql.DB, from, to int) error {
	var sb strings.Builder
	sb.WriteString("INSERT INTO inventory (sku, stock, version) VALUES ")
	for j := from; j < to; j++ {
		if j > from {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "(%d, 1, 1)", j)
	}
	_, err := db.Exec(sb.String())
	return err
}
