// Package e2e holds the end-to-end tests: a real MariaDB with the binlog on and a real
// Redis (scripts/services.sh), the daemon in-process or as a separate process, and
// every test ends by comparing MySQL with Redis row by row.
package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "invsync-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "invsync")
	out, err := exec.Command("go", "build", "-o", binary, "../cmd/invsync").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build invsync: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's isolated world: a schema, a state schema, a key prefix.
type env struct {
	t      *testing.T
	schema string
	db     *sql.DB
	rdb    redis.UniversalClient
	cfg    *config.Config
}

// tableSpec describes a mirrored table of a test.
type tableSpec struct {
	name, ddl, version string
}

func newEnv(t *testing.T, tables ...tableSpec) *env {
	t.Helper()
	schema, db := testenv.Schema(t)
	rdb := testenv.Redis(t)
	e := &env{t: t, schema: schema, db: db, rdb: rdb}
	cfg := config.Default()
	cfg.Source.Addr = testenv.MySQLAddr()
	cfg.Source.User = testenv.AppUser()
	cfg.Source.Password = testenv.AppPassword()
	cfg.Source.Flavor = "mariadb"
	cfg.Source.ServerID = testenv.ServerID()
	cfg.State.Schema = testenv.StateSchema(t)
	t.Cleanup(func() { rdb.Del(context.Background(), "invsync:marker:"+cfg.State.Schema) })
	dropClaims(t, rdb, cfg.State.Schema)
	cfg.Redis.Addrs = []string{testenv.RedisAddr()}
	cfg.Checkpoint.Interval = 100 * time.Millisecond
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Sink.Workers = 4
	for _, ts := range tables {
		if _, err := db.Exec(ts.ddl); err != nil {
			t.Fatalf("create %s: %v", ts.name, err)
		}
		cfg.Tables = append(cfg.Tables, config.Table{Schema: schema, Table: ts.name, KeyPrefix: testenv.Prefix(t, rdb), VersionColumn: ts.version})
	}
	// Sized for the tests' tables, as before the default became a size from the table's
	// rows; a test of that default sets cfg.Bloom.ExpectedItems = 0 (not written then).
	cfg.Bloom.ExpectedItems = 1_000_000
	t.Cleanup(func() {
		for _, tc := range cfg.Tables {
			rdb.Del(context.Background(), cfg.BloomKey(tc), cfg.BloomKey(tc)+":meta")
		}
	})
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e.cfg = &cfg
	return e
}

// running is a daemon started in-process.
type running struct {
	d      *daemon.Daemon
	cancel context.CancelFunc
	done   chan error
}

func (e *env) start(logger *zap.Logger, opts ...daemon.Option) *running {
	e.t.Helper()
	if logger == nil {
		logger = zaptest.NewLogger(e.t, zaptest.Level(zap.WarnLevel))
	}
	cfg := *e.cfg
	d := daemon.New(&cfg, logger, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

func (r *running) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("daemon exited with %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Error("daemon did not stop within 60s")
	}
}

// waitEqual polls until Redis equals MySQL for every table, or fails after timeout.
func (e *env) waitEqual(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = e.compare(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("Redis does not equal MySQL after %s: %v", timeout, err)
}

// compare checks every configured table: each MySQL row equals its Redis hash (every
// column as the text protocol returns it, and _v), every other key under the prefix is
// a tombstone or a null marker.
func (e *env) compare() error {
	ctx := context.Background()
	for _, tc := range e.cfg.Tables {
		if err := compareTable(ctx, e.db, e.rdb, tc, e.cfg.BloomKey(tc)); err != nil {
			return fmt.Errorf("%s: %w", tc.Table, err)
		}
	}
	return nil
}

// compareTable compares the rows of a table with their hashes, and checks that every row
// is in the table's Bloom filter in Redis (bloomKey; "" skips that).
func compareTable(ctx context.Context, db *sql.DB, rdb redis.UniversalClient, tc config.Table, bloomKey string) error {
	pk, err := primaryKey(ctx, db, tc)
	if err != nil {
		return err
	}
	want, err := selectRows(ctx, db, tc, pk)
	if err != nil {
		return err
	}
	keys, err := testenv.ScanKeys(ctx, rdb, tc.KeyPrefix)
	if err != nil {
		return err
	}
	keys = slices.DeleteFunc(keys, layout.IsHoldKey) // reservations beside the rows
	got, err := hashes(ctx, rdb, keys)
	if err != nil {
		return err
	}
	var diffs []string
	for key, fields := range want {
		h, ok := got[key]
		if !ok {
			diffs = append(diffs, key+" missing in Redis")
			continue
		}
		if d := diffHash(fields, h, tc.VersionColumn != ""); d != "" {
			diffs = append(diffs, key+": "+d)
		}
	}
	for key, h := range got {
		if _, ok := want[key]; ok {
			continue
		}
		if h[layout.FieldDeleted] != "1" && h[layout.FieldNull] != "1" {
			diffs = append(diffs, fmt.Sprintf("%s: live hash for a row that does not exist: %v", key, h))
		}
	}
	if bloomKey != "" {
		f, err := bloom.NewMirror(rdb, bloomKey).Load(ctx)
		if err != nil {
			return fmt.Errorf("bloom filter: %w", err)
		}
		for key := range want {
			if pk := key[len(tc.KeyPrefix)+1 : len(key)-1]; !f.Test(pk) {
				diffs = append(diffs, key+" is not in the Bloom filter")
			}
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		if len(diffs) > 5 {
			diffs = append(diffs[:5], fmt.Sprintf("... and %d more", len(diffs)-5))
		}
		return fmt.Errorf("%d difference(s): %s", len(diffs), strings.Join(diffs, "; "))
	}
	return nil
}

func diffHash(want, got map[string]string, checkVersion bool) string {
	var d []string
	for k, v := range want {
		if k == layout.FieldVersion && !checkVersion {
			continue
		}
		if g, ok := got[k]; !ok {
			d = append(d, fmt.Sprintf("%s missing, want %q", k, v)) // an empty string is not a NULL
		} else if g != v {
			d = append(d, fmt.Sprintf("%s=%q want %q", k, g, v))
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && k != layout.FieldSeq && !(k == layout.FieldVersion && !checkVersion) {
			d = append(d, fmt.Sprintf("extra %s=%q", k, v))
		}
	}
	sort.Strings(d)
	return strings.Join(d, ", ")
}

func primaryKey(ctx context.Context, db *sql.DB, tc config.Table) ([]string, error) {
	rows, err := db.QueryContext(ctx, `SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION`, tc.Schema, tc.Table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var pk []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		pk = append(pk, c)
	}
	return pk, rows.Err()
}

// selectRows reads the table with the text protocol, in a UTC session, keeping the
// exact bytes the server sends (database/sql drivers parse numbers; go-mysql's raw row
// data does not), and returns the expected hash of each row by key.
func selectRows(ctx context.Context, _ *sql.DB, tc config.Table, pk []string) (map[string]map[string]string, error) {
	conn, err := client.ConnectWithContext(ctx, testenv.MySQLAddr(), testenv.AdminUser(), testenv.AdminPassword(), tc.Schema, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if _, err := conn.Execute("SET time_zone = '+00:00'"); err != nil {
		return nil, err
	}
	res, err := conn.Execute("SELECT * FROM " + testenv.Quote(tc.Schema) + "." + testenv.Quote(tc.Table))
	if err != nil {
		return nil, err
	}
	defer res.Close()
	out := map[string]map[string]string{}
	for _, raw := range res.RowDatas {
		h := map[string]string{}
		rest := []byte(raw)
		for _, f := range res.Fields {
			v, isNull, n, err := gomysql.LengthEncodedString(rest)
			if err != nil {
				return nil, err
			}
			rest = rest[n:]
			name := string(f.Name)
			if !isNull {
				h[name] = string(v)
			}
			if strings.EqualFold(name, tc.VersionColumn) {
				h[layout.FieldVersion] = string(v)
			}
		}
		parts := make([]string, len(pk))
		for i, p := range pk {
			parts[i] = h[p]
		}
		out[layout.Key(tc.KeyPrefix, parts)] = h
	}
	return out, nil
}

func hashes(ctx context.Context, rdb redis.UniversalClient, keys []string) (map[string]map[string]string, error) {
	out := make(map[string]map[string]string, len(keys))
	for i := 0; i < len(keys); i += 500 {
		chunk := keys[i:min(i+500, len(keys))]
		pipe := rdb.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(chunk))
		for j, k := range chunk {
			cmds[j] = pipe.HGetAll(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			return nil, err
		}
		for j, k := range chunk {
			if h := cmds[j].Val(); len(h) > 0 {
				out[k] = h
			}
		}
	}
	return out, nil
}

// snapshotRedis returns every hash under the prefixes, for before/after comparisons.
func (e *env) snapshotRedis() map[string]map[string]string {
	e.t.Helper()
	all := map[string]map[string]string{}
	for _, tc := range e.cfg.Tables {
		keys, err := testenv.ScanKeys(context.Background(), e.rdb, tc.KeyPrefix)
		testenv.Must(e.t, err, "scan")
		h, err := hashes(context.Background(), e.rdb, keys)
		testenv.Must(e.t, err, "hashes")
		for k, v := range h {
			all[k] = v
		}
	}
	return all
}

// checkpointStore opens the test's checkpoint table.
func (e *env) checkpointStore() *checkpoint.Store { return openStore(e.t, e.cfg.State.Schema) }

func openStore(tb testing.TB, schema string) *checkpoint.Store {
	tb.Helper()
	st, err := checkpoint.Open(context.Background(), testenv.DB(tb, ""), schema, "default")
	testenv.Must(tb, err, "open checkpoint")
	return st
}

// ownRedisDB points the env (the daemon's config and e.rdb) at Redis database db, which
// the test flushes freely; it is flushed again when the test ends.
func (e *env) ownRedisDB(db int) {
	e.cfg.Redis.DB = db
	e.rdb = redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(), DB: db})
	e.t.Cleanup(func() { e.rdb.FlushDB(context.Background()); e.rdb.Close() })
}

// currentPosition is the source's binlog position now (of a consistent snapshot: every
// transaction before it is committed).
func (e *env) currentPosition() source.Position {
	e.t.Helper()
	pos, err := source.CurrentPosition(context.Background(), testenv.DB(e.t, ""), "mariadb", nil)
	testenv.Must(e.t, err, "current position")
	return pos
}

// writeConfig writes the env's config as YAML for the binary.
func (e *env) writeConfig(mutate func(*config.Config)) string {
	e.t.Helper()
	cfg := *e.cfg
	if mutate != nil {
		mutate(&cfg)
	}
	return writeConfigTo(e.t, &cfg)
}

// writeConfigTo writes cfg as YAML (without the password, which the process gets from
// INVSYNC_SOURCE_PASSWORD) and returns the file's path.
func writeConfigTo(tb testing.TB, cfg *config.Config) string {
	path := filepath.Join(tb.TempDir(), "invsync.yaml")
	testenv.Must(tb, os.WriteFile(path, []byte(renderConfig(cfg)), 0o600), "write config")
	return path
}

// renderConfig is cfg as YAML, without the source password.
func renderConfig(cfg *config.Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "source: { addr: %q, user: %q, flavor: %s, server_id: %d, on_position_lost: %s }\n", cfg.Source.Addr, cfg.Source.User, cfg.Source.Flavor, cfg.Source.ServerID, cfg.Source.OnPositionLost)
	fmt.Fprintf(&b, "state: { schema: %s }\n", cfg.State.Schema)
	fmt.Fprintf(&b, "redis: { addrs: [%q], db: %d }\n", cfg.Redis.Addrs[0], cfg.Redis.DB)
	fmt.Fprintf(&b, "checkpoint: { interval: %s }\n", cfg.Checkpoint.Interval)
	fmt.Fprintf(&b, "sink: { workers: %d, batch_size: %d, flush_interval: %s }\n", cfg.Sink.Workers, cfg.Sink.BatchSize, cfg.Sink.FlushInterval)
	fmt.Fprintf(&b, "http: { listen: %q }\n", cfg.HTTP.Listen)
	fmt.Fprintf(&b, "log: { level: %s, format: %s }\n", cfg.Log.Level, cfg.Log.Format)
	expected := ""
	if cfg.Bloom.ExpectedItems > 0 {
		expected = fmt.Sprintf("expected_items: %d, ", cfg.Bloom.ExpectedItems)
	}
	fmt.Fprintf(&b, "bloom: { %sfalse_positive_rate: %v, null_ttl: %s, tombstone_ttl: %s, key_prefix: %q }\n",
		expected, cfg.Bloom.FalsePositiveRate, cfg.Bloom.NullTTL, cfg.Bloom.TombstoneTTL, cfg.Bloom.KeyPrefix)
	if cfg.Snapshot.ChunkSize > 0 {
		fmt.Fprintf(&b, "snapshot: { chunk_size: %d, rows_per_second: %d }\n", cfg.Snapshot.ChunkSize, cfg.Snapshot.RowsPerSecond)
	}
	fmt.Fprintf(&b, "reconcile: { schedule: %q, chunk_size: %d, repair: %v, recheck_for: %s }\n",
		cfg.Reconcile.Schedule, cfg.Reconcile.ChunkSize, cfg.Reconcile.Repair, cfg.Reconcile.RecheckFor)
	b.WriteString("tables:\n")
	for _, t := range cfg.Tables {
		fmt.Fprintf(&b, "  - { schema: %s, table: %s, key_prefix: %q, version_column: %q", t.Schema, t.Table, t.KeyPrefix, t.VersionColumn)
		if r := t.Reservations; r != nil {
			st := r.Settlement
			fmt.Fprintf(&b, ", reservations: { stock_column: %s, per_user_limit: %d, hold_ttl: %s, record_ttl: %s, settlement: { schema: %s, table: %s, order_column: %s, quantity_column: %s, user_column: %q, key_columns: [%s] } }",
				r.StockColumn, r.PerUserLimit, r.HoldTTL, r.RecordTTL, st.Schema, st.Table, st.OrderColumn, st.QuantityColumn, st.UserColumn, strings.Join(st.KeyColumns, ", "))
		}
		b.WriteString(" }\n")
	}
	return b.String()
}

// collect is a concurrency-safe list of problems found by background checkers.
type collect struct {
	mu    sync.Mutex
	items []string
}

func (c *collect) add(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.items) < 20 {
		c.items = append(c.items, fmt.Sprintf(format, args...))
	}
}

func (c *collect) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.items...)
}

func redisClient(t *testing.T, addr string) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// dropClaims deletes, when the test ends, the claims in Redis (invsync:owner:*) of the
// pipeline of stateSchema.
func dropClaims(t testing.TB, rdb redis.UniversalClient, stateSchema string) {
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := testenv.ScanKeys(ctx, rdb, "invsync:owner:")
		for _, k := range keys {
			if v, _ := rdb.Get(ctx, k).Result(); strings.Contains(v, `"state_schema":"`+stateSchema+`"`) {
				rdb.Del(ctx, k)
			}
		}
	})
}

// conns opens the connections of the env's config (closed at the end of the test).
func (e *env) conns() *daemon.Conns {
	e.t.Helper()
	c, err := daemon.Open(e.cfg)
	testenv.Must(e.t, err, "open the config's connections")
	e.t.Cleanup(c.Close)
	return c
}

// tables reads the definitions of the env's configured tables.
func (e *env) tables() []*source.Table {
	e.t.Helper()
	tables, err := e.conns().Tables(context.Background())
	testenv.Must(e.t, err, "load the tables")
	return tables
}
