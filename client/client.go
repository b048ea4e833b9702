// Package client is the read path for application servers: it reads inventory rows that
// invsync mirrors into Redis, and keeps lookups of keys that do not exist away from
// MySQL.
//
// Get reads the row's hash. When Redis has no key for it, the table's Bloom filter
// (kept by the daemon, see package bloom) answers "not found" for almost every key that
// never existed; otherwise the application's Loader reads MySQL, once per key at a time
// however many callers ask (singleflight), and the answer is written back to Redis
// through invsync's versioned script: the row, only where Redis still holds no key (a
// fill never overwrites anything the daemon wrote meanwhile), or a short-lived null
// marker when MySQL has no such row. Tombstones
// (deleted rows) and null markers read as "not found".
//
// The hash is read before the Bloom filter is consulted, not after: a live row's bits are
// always set before the row is written, so the answer is the same, and a hot read costs
// one HGETALL instead of k GETBITs more.
package client

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/layout"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"
)

// Source tells where an answer came from.
type Source string

const (
	// FromBloom: not found, the table's Bloom filter has no such key.
	FromBloom Source = "bloom"
	// FromNullCache: not found, a recent lookup found no such row in MySQL.
	FromNullCache Source = "null cache"
	// FromCache: the row invsync mirrors in Redis (or its tombstone: deleted).
	FromCache Source = "cache"
	// FromDatabase: the loader read MySQL (the answer was then written to Redis).
	FromDatabase Source = "mysql"
)

// Row is one row as invsync mirrors it.
type Row struct {
	// Fields are the non-NULL columns, each as the text MySQL returns for it.
	Fields map[string]string
	// Version is the row's _v: its version column, or a number derived from its binlog
	// position; "0" for a row a loader filled without a version.
	Version string
}

// Result is Get's answer.
type Result struct {
	Found  bool
	Source Source
	// Row is set when Found.
	Row Row
	// Deleted is set when Redis holds the row's tombstone.
	Deleted bool
}

// Loader reads one row from MySQL for a key Redis does not hold. It returns nil when
// there is no such row. Return the mirrored columns as MySQL's text (scan into
// sql.RawBytes or []byte; leave NULL columns out), and Version as the table's version
// column (tables.version_column), or "" for a table without one: the fill is then
// written only where Redis holds no key at all.
type Loader func(ctx context.Context, table string, pk []string) (*Row, error)

// Table is one mirrored table, as in invsync's config.
type Table struct {
	// Name is schema.table (Get also accepts the bare table name when it is unique).
	Name string
	// KeyPrefix is tables[].key_prefix (default "inv:").
	KeyPrefix string
	// BloomKey is the filter's key: bloom.key_prefix + Name (default
	// "invsync:bloom:" + Name); empty for no filter.
	BloomKey string
	// PK names the primary key's columns, in key order (optional). With it, a row the
	// loader returns is filled under the key of its own primary key as MySQL stores it:
	// under a case-insensitive or PAD SPACE collation a lookup of 'ABC' may load row
	// 'abc', whose key is {abc}; a key {ABC} would be a second copy nothing updates.
	PK []string
	// Reservations, when set, lets Reserve, Release and Available hold units of the
	// table's rows (tables[].reservations of invsync's config).
	Reservations *Reservations
}

// Options tune a Client.
type Options struct {
	// NullTTL is the lifetime of a null marker (bloom.null_ttl). Default 60s.
	NullTTL time.Duration
	// LoadTimeout bounds one loader call and its fill. Default 5s.
	LoadTimeout time.Duration
	// Registerer, when set, receives the client's metrics.
	Registerer prometheus.Registerer
	// MaxLoads bounds the loader calls in flight (reads of MySQL for keys Redis does not
	// hold); a lookup that would start one more fails at once with ErrOverloaded.
	// Callers that give up (their context ends) leave their loads running to their
	// LoadTimeout, so this is what bounds the load on MySQL. Default DefaultMaxLoads.
	MaxLoads int
}

// DefaultMaxLoads is Options.MaxLoads's default.
const DefaultMaxLoads = 64

// ErrOverloaded is returned by Get when Options.MaxLoads loader calls are in flight.
var ErrOverloaded = errors.New("client: overloaded: too many loader calls in flight (Options.MaxLoads); try again later")

// Client reads through Redis.
type Client struct {
	rdb     redis.UniversalClient
	tables  map[string]*table
	load    Loader
	w       *layout.Writer
	timeout time.Duration
	flight  singleflight.Group
	loads   *semaphore.Weighted
	m       clientMetrics
}

type table struct {
	Table
	bloom *bloom.Reader
	holds *layout.Holds // nil without reservations
}

type clientMetrics struct {
	gets        *prometheus.CounterVec
	rejects     *prometheus.CounterVec
	nullHits    *prometheus.CounterVec
	loads       *prometheus.CounterVec
	bloomErrors *prometheus.CounterVec
	fillErrors  *prometheus.CounterVec
	overloaded  *prometheus.CounterVec
	holds       *prometheus.CounterVec
	holdLatency *prometheus.HistogramVec
	falseAdmit  *prometheus.CounterVec
}

// New returns a client of the given tables; load reads MySQL on a miss.
func New(rdb redis.UniversalClient, tables []Table, load Loader, opts Options) (*Client, error) {
	if opts.NullTTL <= 0 {
		opts.NullTTL = time.Minute
	}
	if opts.LoadTimeout <= 0 {
		opts.LoadTimeout = 5 * time.Second
	}
	if load == nil {
		return nil, errors.New("client: a Loader is required")
	}
	if opts.MaxLoads <= 0 {
		opts.MaxLoads = DefaultMaxLoads
	}
	_, cluster := rdb.(*redis.ClusterClient)
	c := &Client{rdb: rdb, tables: map[string]*table{}, load: load, timeout: opts.LoadTimeout, loads: semaphore.NewWeighted(int64(opts.MaxLoads)),
		// Fills create no tombstones; the TTL is the writer's required argument only.
		w: layout.NewWriterWithNullTTL(rdb, 24*time.Hour, opts.NullTTL, cluster)}
	bare := map[string]int{}
	for _, t := range tables {
		if t.Name == "" || t.KeyPrefix == "" {
			return nil, fmt.Errorf("client: table %q needs a Name and a KeyPrefix", t.Name)
		}
		tt := &table{Table: t}
		if t.BloomKey != "" {
			tt.bloom = bloom.NewReader(rdb, t.BloomKey)
		}
		if r := t.Reservations; r != nil {
			if r.StockColumn == "" {
				return nil, fmt.Errorf("client: table %q: Reservations needs a StockColumn", t.Name)
			}
			tt.holds = newHolds(rdb, *r)
		}
		c.tables[t.Name] = tt
		if i := strings.LastIndexByte(t.Name, '.'); i >= 0 {
			bare[t.Name[i+1:]]++
		}
	}
	for _, t := range tables {
		if i := strings.LastIndexByte(t.Name, '.'); i >= 0 && bare[t.Name[i+1:]] == 1 {
			if _, taken := c.tables[t.Name[i+1:]]; !taken {
				c.tables[t.Name[i+1:]] = c.tables[t.Name]
			}
		}
	}
	c.m = clientMetrics{
		gets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_gets_total",
			Help: "Get calls by table, where the answer came from (bloom, null cache, cache, mysql) and whether the row was found."}, []string{"table", "source", "found"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_bloom_rejects_total",
			Help: "Lookups the Bloom filter answered \"not found\" without a query to MySQL."}, []string{"table"}),
		nullHits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_null_cache_hits_total",
			Help: "Lookups a null marker answered \"not found\" without a query to MySQL."}, []string{"table"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_loader_calls_total",
			Help: "Loader calls (reads of MySQL), by result: found, not_found, error, panic."}, []string{"table", "result"}),
		bloomErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_bloom_errors_total",
			Help: "Bloom checks that failed (the key was then treated as possibly present)."}, []string{"table"}),
		fillErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_fill_errors_total",
			Help: "Fills (the loader's row or a null marker written to Redis) that Redis refused; the loader's answer was returned all the same."}, []string{"table"}),
		overloaded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_overloaded_total",
			Help: "Lookups refused with ErrOverloaded because Options.MaxLoads loader calls were in flight."}, []string{"table"}),
		holds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_reservations_total",
			Help: "Reserve and Release calls by table, call and outcome (held, sold_out, limit, unknown_row, released, already_*, unknown_order, error)."}, []string{"table", "call", "outcome"}),
		holdLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "invsync_client_reservation_duration_seconds",
			Help: "Duration of Reserve, Release and Available calls.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14)}, []string{"call"}),
		falseAdmit: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "invsync_client_false_admissions_total",
			Help: "Confirmations MySQL refused for lack of stock after Reserve held the units (Refused); 0 when every sale goes through reservations."}, []string{"table"}),
	}
	if opts.Registerer != nil {
		for _, col := range []prometheus.Collector{c.m.gets, c.m.rejects, c.m.nullHits, c.m.loads, c.m.bloomErrors, c.m.fillErrors, c.m.overloaded, c.m.holds, c.m.holdLatency, c.m.falseAdmit} {
			if err := opts.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("client: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

func (c *Client) table(name string) (*table, error) {
	t := c.tables[name]
	if t == nil {
		return nil, fmt.Errorf("client: table %q is not configured", name)
	}
	return t, nil
}

// MayExist reports false only when the table's Bloom filter says the key was never
// inserted (true when the table has no complete filter).
func (c *Client) MayExist(ctx context.Context, tableName string, pk ...string) (bool, error) {
	t, err := c.table(tableName)
	if err != nil {
		return false, err
	}
	if t.bloom == nil {
		return true, nil
	}
	return t.bloom.MayContain(ctx, layout.KeyInner(pk))
}

// Get returns the row of tableName with primary key pk (one string per key column, each
// as MySQL's text of it).
func (c *Client) Get(ctx context.Context, tableName string, pk ...string) (Result, error) {
	t, err := c.table(tableName)
	if err != nil {
		return Result{}, err
	}
	if len(pk) == 0 {
		return Result{}, errors.New("client: no primary key given")
	}
	key := layout.Key(t.KeyPrefix, pk)
	res, present, err := c.read(ctx, key)
	if err != nil {
		return Result{}, err
	}
	if present {
		return c.done(t, res), nil
	}
	if t.bloom != nil {
		ok, err := t.bloom.MayContain(ctx, layout.KeyInner(pk))
		if err != nil {
			c.m.bloomErrors.WithLabelValues(t.Name).Inc()
		} else if !ok {
			c.m.rejects.WithLabelValues(t.Name).Inc()
			return c.done(t, Result{Source: FromBloom}), nil
		}
	}
	ch := c.flight.DoChan(t.Name+"\x00"+key, func() (any, error) {
		if !c.loads.TryAcquire(1) {
			c.m.overloaded.WithLabelValues(t.Name).Inc()
			return Result{}, ErrOverloaded
		}
		defer c.loads.Release(1)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		defer cancel()
		return c.loadAndFill(lctx, t, key, pk)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return Result{}, r.Err
		}
		res := r.Val.(Result)
		res.Row.Fields = copyFields(res.Row.Fields) // callers share one flight's answer
		return c.done(t, res), nil
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

func (c *Client) done(t *table, r Result) Result {
	found := "false"
	if r.Found {
		found = "true"
	}
	if r.Source == FromNullCache {
		c.m.nullHits.WithLabelValues(t.Name).Inc()
	}
	c.m.gets.WithLabelValues(t.Name, string(r.Source), found).Inc()
	return r
}

// loadAndFill runs once per key at a time: it reads Redis again (an earlier flight may
// have just filled it), then MySQL, and writes the answer to Redis.
func (c *Client) loadAndFill(ctx context.Context, t *table, key string, pk []string) (Result, error) {
	if res, present, err := c.read(ctx, key); err != nil || present {
		return res, err
	}
	row, err := c.callLoader(ctx, t, pk)
	if err != nil {
		return Result{}, fmt.Errorf("client: load %s %s: %w", t.Name, strings.Join(pk, ":"), err)
	}
	out := make([]layout.Outcome, 1)
	if row == nil {
		c.m.loads.WithLabelValues(t.Name, "not_found").Inc()
		if err := c.w.Apply(ctx, []layout.Change{{Key: key, Op: layout.OpNull}}, out); err != nil || out[0].Err != nil {
			// Redis refuses the marker (a replica after a failover, OOM): the answer
			// stands, only the next lookup reads MySQL again.
			c.m.fillErrors.WithLabelValues(t.Name).Inc()
			return Result{Source: FromDatabase}, nil
		}
		if out[0].Result == layout.Skipped {
			// A key appeared meanwhile (the daemon inserted the row): it is the answer.
			if res, present, err := c.read(ctx, key); err != nil || present {
				return res, err
			}
		}
		return Result{Source: FromDatabase}, nil
	}
	c.m.loads.WithLabelValues(t.Name, "found").Inc()
	version := row.Version
	if version == "" {
		version = "0"
	}
	if strings.Trim(version, "0123456789") != "" {
		return Result{}, fmt.Errorf("client: the loader returned version %q for %s: not a non-negative integer", row.Version, key)
	}
	key = ownKey(t, key, row)
	ch := layout.Change{Key: key, Op: layout.OpUpsert, Version: version, IfAbsent: true, Fields: make([]layout.Field, 0, len(row.Fields))}
	names := make([]string, 0, len(row.Fields))
	for n := range row.Fields {
		if strings.HasPrefix(n, "_") {
			return Result{}, fmt.Errorf("client: the loader returned field %q for %s: names starting with '_' are invsync's", n, key)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ch.Fields = append(ch.Fields, layout.Field{Name: n, Value: row.Fields[n]})
	}
	if err := c.w.Apply(ctx, []layout.Change{ch}, out); err != nil || out[0].Err != nil {
		// Redis refuses the fill: the row the loader found is the answer all the same.
		c.m.fillErrors.WithLabelValues(t.Name).Inc()
		return Result{Found: true, Source: FromDatabase, Row: Row{Fields: row.Fields, Version: version}}, nil
	}
	if out[0].Result == layout.Skipped {
		// Redis holds a newer state (the daemon wrote it meanwhile): that is the answer.
		if res, present, err := c.read(ctx, key); err != nil || present {
			return res, err
		}
	}
	return Result{Found: true, Source: FromDatabase, Row: Row{Fields: row.Fields, Version: version}}, nil
}

// callLoader calls the loader, turning a panic into an error for the callers of this key
// (singleflight would re-raise it in a goroutine of its own, where nothing can recover it).
func (c *Client) callLoader(ctx context.Context, t *table, pk []string) (row *Row, err error) {
	defer func() {
		if p := recover(); p != nil {
			c.m.loads.WithLabelValues(t.Name, "panic").Inc()
			row, err = nil, fmt.Errorf("the loader panicked: %v", p)
		}
	}()
	row, err = c.load(ctx, t.Name, pk)
	if err != nil {
		c.m.loads.WithLabelValues(t.Name, "error").Inc()
	}
	return row, err
}

// ownKey is the key of the row's own primary key (see Table.PK), or key when the table's
// key columns are not known or not all in the row.
func ownKey(t *table, key string, row *Row) string {
	if len(t.PK) == 0 {
		return key
	}
	parts := make([]string, len(t.PK))
	for i, c := range t.PK {
		v, ok := row.Fields[c]
		if !ok {
			return key
		}
		parts[i] = v
	}
	return layout.Key(t.KeyPrefix, parts)
}

// read returns the answer Redis holds for key; present is false when it holds no key.
func (c *Client) read(ctx context.Context, key string) (Result, bool, error) {
	h, err := c.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return Result{}, false, fmt.Errorf("client: read %s: %w", key, err)
	}
	if len(h) == 0 {
		return Result{}, false, nil
	}
	if _, ok := h[layout.FieldNull]; ok {
		return Result{Source: FromNullCache}, true, nil
	}
	if _, ok := h[layout.FieldDeleted]; ok {
		return Result{Source: FromCache, Deleted: true}, true, nil
	}
	row := Row{Fields: make(map[string]string, len(h)), Version: h[layout.FieldVersion]}
	for k, v := range h {
		if !strings.HasPrefix(k, "_") {
			row.Fields[k] = v
		}
	}
	return Result{Found: true, Source: FromCache, Row: row}, true, nil
}

func copyFields(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
