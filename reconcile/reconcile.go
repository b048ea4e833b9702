// Package reconcile compares every mirrored table with Redis and repairs the drift: it
// walks each table by primary key in chunks (keyset pagination), reads the same keys from
// Redis with pipelined calls, then scans the keys under the table's prefix for hashes
// whose row does not exist.
//
// A difference is reported only when it survives a re-check: the row is read again from
// MySQL (after recording the binlog position P), Redis is read again, and a key that the
// binlog stream wrote after P (its _s is later) is left alone: it holds a full row image
// newer than the re-read. Re-checks repeat with backoff for a while, so a daemon that is
// a little behind catches up instead of being reported.
//
// Repairs are compare-and-set writes (layout.Writer.Repair) stamped with P: they apply
// only if the key is still as observed, so they can never undo a change the daemon wrote
// meanwhile; a later binlog change replaces them and an earlier one is skipped.
package reconcile

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Kind is a kind of difference.
type Kind string

const (
	// Missing: the row exists, Redis has no live hash for it (no key, a tombstone or a
	// null marker).
	Missing Kind = "missing"
	// Stale: Redis holds a lower version than MySQL.
	Stale Kind = "stale"
	// Mismatch: the values differ at the same version (or, for a table without a version
	// column, the values differ; or Redis holds a higher version than MySQL).
	Mismatch Kind = "mismatch"
	// Extra: a live hash under the table's prefix whose row does not exist.
	Extra Kind = "extra"
	// WrongType: a key under the table's prefix holds a value that is not a hash.
	WrongType Kind = "wrong_type"
)

// Kinds lists every kind, in report order.
var Kinds = []Kind{Missing, Stale, Mismatch, Extra, WrongType, HeldTotal, ExpiredHold, SettledHold}

// Deps is what a run reads and writes.
type Deps struct {
	Source source.Config
	DB     *sql.DB // the source (table size estimates)
	// ChunkSize is the number of rows read per query (reconcile.chunk_size).
	ChunkSize int
	// Epoch is the epoch of the source's history that positions belong to (the
	// checkpoint's).
	Epoch  func() uint32
	Tables []*source.Table
	RDB    redis.UniversalClient
	Writer *layout.Writer
	// Ensure, if set, is called with the rows a repair is about to write (the Bloom bits
	// go first).
	Ensure func(context.Context, []layout.Change) error
	// Applied, if set, returns the position up to which a running daemon has written
	// every change to Redis or parked it for a retry (its applied markers; zero when
	// unknown): Redis is read again only once the daemon has reached the position the
	// rows were re-read at, so that its lag is not taken for drift (see waitApplied).
	// AppliedEvery is how often the daemon moves it (checkpoint.interval).
	Applied      func(context.Context) (layout.Seq, error)
	AppliedEvery time.Duration
	// OnKeys, if set, is called with the primary keys of every chunk read from MySQL (a
	// Bloom rebuild from the same scan); table is the index in Tables.
	OnKeys func(table int, pks []string)
	// Holds, by index in Tables, checks the reservations of the tables that have them.
	Holds map[int]HoldCheck
	Log   *zap.Logger
}

// Options tune a run.
type Options struct {
	// Repair fixes what is found.
	Repair bool
	// Tables restricts the run to these tables (schema.table or the bare name).
	Tables []string
	// Samples is how many keys of each kind the report lists. Default 100.
	Samples int
	// Recheck is how long differences are re-checked before they are reported (the
	// daemon's lag). Default 5s.
	Recheck time.Duration
	// Progress, if set, is called after every chunk.
	Progress func(Progress)
}

// Progress is reported while a run goes.
type Progress struct {
	Table    string
	Rows     int64 // rows checked so far, all tables
	Estimate int64 // estimated rows of all tables
	RowsPerS float64
}

// TableReport is the outcome for one table.
type TableReport struct {
	Table       string            `json:"table"`
	RowsChecked int64             `json:"rows_checked"`
	KeysScanned int64             `json:"redis_keys_scanned"`
	Differences map[Kind]int64    `json:"differences"`
	Repaired    map[Kind]int64    `json:"repaired"`
	Samples     map[Kind][]string `json:"samples"`
	// Unverifiable counts keys under the prefix that are not a key of the table's kind
	// (not layout.SplitInner's encoding of its primary key); they are not judged.
	Unverifiable int64   `json:"unverifiable,omitempty"`
	Seconds      float64 `json:"duration_seconds"`
	// Error says why the table could not be reconciled ("" when it was).
	Error string `json:"error,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Started  time.Time     `json:"started"`
	Finished time.Time     `json:"finished"`
	Seconds  float64       `json:"duration_seconds"`
	Repair   bool          `json:"repair"`
	Tables   []TableReport `json:"tables"`
	// Differences counts every difference found; Unrepaired those still there.
	Differences int64 `json:"differences"`
	Unrepaired  int64 `json:"unrepaired"`
	RowsChecked int64 `json:"rows_checked"`
}

// Drift reports whether differences remain.
func (r *Report) Drift() bool { return r.Unrepaired > 0 }

// candidate is a key that differed.
type candidate struct {
	key  string
	pk   []string
	seen time.Time // when it was first seen differing: re-checked for Recheck from then
	// sight is the key's _s in Redis when it was first seen differing: once the stream
	// (or a reload) has written the key since, a difference that is only lag (Redis
	// behind MySQL) is a newer change still on its way (a hot key that a lagging daemon
	// keeps behind MySQL at every re-read is lag, not drift).
	sight string
	kind  Kind
	row   *snapshot.Row // nil: no row in MySQL
	obs   layout.Observed
}

// recheckBatch bounds the candidates held before they are re-checked.
const recheckBatch = 20_000

// fetchBatch is how many rows one re-read query asks for.
const fetchBatch = 500

// Run reconciles the configured tables (or opts.Tables).
func Run(ctx context.Context, d Deps, opts Options) (*Report, error) {
	if opts.Samples <= 0 {
		opts.Samples = 100
	}
	if opts.Recheck <= 0 {
		opts.Recheck = 5 * time.Second
	}
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	rep := &Report{Started: time.Now(), Repair: opts.Repair}
	var selected []int
	for i, t := range d.Tables {
		if len(opts.Tables) == 0 || slices.ContainsFunc(opts.Tables, func(n string) bool { return n == t.FullName() || n == t.Name }) {
			selected = append(selected, i)
		}
	}
	if len(selected) == 0 {
		return nil, fmt.Errorf("reconcile: none of the tables %v is configured", opts.Tables)
	}
	// One session walks the tables, another re-reads the rows that differ.
	var conns [2]*client.Conn
	for i := range conns {
		conn, err := d.Source.Dial(ctx)
		if err != nil {
			return nil, fmt.Errorf("reconcile: connect to the source %s: %w", d.Source.Addr, err)
		}
		defer conn.Close()
		conns[i] = conn
	}
	r := &runner{d: d, opts: opts, conn: conns[0], recheck: conns[1], seed: maphash.MakeSeed(), start: time.Now()}
	for _, i := range selected {
		r.estimate += estimateRows(ctx, d.DB, d.Tables[i])
	}
	var failed []string
	for _, i := range selected {
		tr, err := r.table(ctx, i)
		if hc, ok := d.Holds[i]; ok && err == nil {
			err = r.holds(ctx, d.Tables[i], hc, tr)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			// One table's problem (a query the server refuses for it) does not stop the
			// others: it is reported, and the run ends with an error.
			d.Log.Error("reconcile: a table could not be reconciled; going on with the others", zap.String("table", d.Tables[i].FullName()), zap.Error(err))
			tr = &TableReport{Table: d.Tables[i].FullName(), Differences: map[Kind]int64{}, Repaired: map[Kind]int64{}, Error: err.Error()}
			failed = append(failed, d.Tables[i].FullName()+": "+err.Error())
		}
		rep.Tables = append(rep.Tables, *tr)
		for _, k := range Kinds {
			rep.Differences += tr.Differences[k]
			rep.Unrepaired += tr.Differences[k] - tr.Repaired[k]
		}
		rep.RowsChecked += tr.RowsChecked
	}
	rep.Finished = time.Now()
	rep.Seconds = rep.Finished.Sub(rep.Started).Seconds()
	if len(failed) > 0 {
		return rep, fmt.Errorf("%w: %s", ErrTablesFailed, strings.Join(failed, "; "))
	}
	return rep, nil
}

// ErrTablesFailed is returned, with the report of every table, when some tables could not
// be reconciled (each has its error in the report).
var ErrTablesFailed = errors.New("some tables could not be reconciled")

type runner struct {
	d        Deps
	opts     Options
	conn     *client.Conn // walks the tables
	recheck  *client.Conn // re-reads rows
	seed     maphash.Seed
	start    time.Time
	rows     int64
	estimate int64
	// lagWaited is how long waitApplied has waited in this run; noDaemon is set once it
	// found the markers still (no daemon writes): it does not wait again.
	lagWaited time.Duration
	noDaemon  bool
}

func estimateRows(ctx context.Context, db *sql.DB, t *source.Table) int64 {
	var n sql.NullInt64
	_ = db.QueryRowContext(ctx, "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?", t.Schema, t.Name).Scan(&n)
	return n.Int64
}

// chunkResult is one compared chunk.
type chunkResult struct {
	n     int
	cands []candidate
	seen  []uint64
}

// table reconciles table ti: its rows against Redis, then the keys no row stands for.
func (r *runner) table(ctx context.Context, ti int) (*TableReport, error) {
	t := r.d.Tables[ti]
	start := time.Now()
	tr := &TableReport{Table: t.FullName(), Differences: map[Kind]int64{}, Repaired: map[Kind]int64{}, Samples: map[Kind][]string{}}
	rows, err := snapshot.NewRows(r.conn, t, r.d.ChunkSize, "")
	if err != nil {
		return nil, err
	}
	// The reader queries MySQL while two comparers decode the rows and read Redis; the
	// first error ends the three.
	chunks := make(chan *snapshot.Batch, 2)
	results := make(chan chunkResult, 4)
	stopCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(stopCtx)
	g.Go(func() error { return readBatches(gctx, rows, chunks) })
	var comparing sync.WaitGroup
	for range 2 {
		comparing.Add(1)
		g.Go(func() error {
			defer comparing.Done()
			return r.compareBatches(gctx, ti, t, chunks, results)
		})
	}
	g.Go(func() error { comparing.Wait(); close(results); return nil })
	seen, cands, err := r.collect(ctx, t, tr, results)
	if err != nil {
		stop()
		_ = g.Wait()
		return nil, err
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.settle(ctx, t, tr, cands); err != nil {
		return nil, err
	}
	// Keys under the prefix that no row stands for.
	slices.Sort(seen)
	if err := r.extras(ctx, t, tr, seen); err != nil {
		return nil, err
	}
	tr.Seconds = time.Since(start).Seconds()
	r.d.Log.Info("reconciled", zap.String("table", t.FullName()), zap.Int64("rows", tr.RowsChecked), zap.Any("differences", tr.Differences),
		zap.Any("repaired", tr.Repaired), zap.Float64("seconds", tr.Seconds))
	return tr, nil
}

// readBatches sends rows' chunks until the last one, a read error or the end of ctx;
// it closes chunks when it returns.
func readBatches(ctx context.Context, rows *snapshot.Rows, chunks chan<- *snapshot.Batch) error {
	defer close(chunks)
	for {
		c, err := rows.NextBatch()
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		if c == nil {
			return nil
		}
		select {
		case chunks <- c:
		case <-ctx.Done():
			return nil
		}
	}
}

// compareBatches compares each chunk of table ti with Redis until chunks is closed, an
// error, or the end of ctx.
func (r *runner) compareBatches(ctx context.Context, ti int, t *source.Table, chunks <-chan *snapshot.Batch, results chan<- chunkResult) error {
	for b := range chunks {
		c, err := b.Rows()
		if err != nil {
			return err
		}
		if r.d.OnKeys != nil {
			pks := make([]string, len(c))
			for i := range c {
				pks[i] = layout.KeyInner(c[i].PK) // the Bloom item
			}
			r.d.OnKeys(ti, pks)
		}
		res, err := r.compareChunk(ctx, t, c)
		if err != nil {
			return err
		}
		select {
		case results <- res:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// collect gathers compared chunks, settling candidates as they reach recheckBatch.
func (r *runner) collect(ctx context.Context, t *source.Table, tr *TableReport, results <-chan chunkResult) ([]uint64, []candidate, error) {
	var seen []uint64
	var cands []candidate
	for res := range results {
		tr.RowsChecked += int64(res.n)
		r.rows += int64(res.n)
		seen = append(seen, res.seen...)
		cands = append(cands, res.cands...)
		if len(cands) >= recheckBatch {
			if err := r.settle(ctx, t, tr, cands); err != nil {
				return nil, nil, err
			}
			cands = cands[:0]
		}
		if r.opts.Progress != nil {
			r.opts.Progress(Progress{Table: t.FullName(), Rows: r.rows, Estimate: r.estimate, RowsPerS: float64(r.rows) / time.Since(r.start).Seconds()})
		}
	}
	return seen, cands, nil
}

// compareChunk reads the keys of a chunk of rows from Redis and returns those that
// differ.
func (r *runner) compareChunk(ctx context.Context, t *source.Table, rows []snapshot.Row) (chunkResult, error) {
	res := chunkResult{n: len(rows), seen: make([]uint64, len(rows))}
	pipe := r.d.RDB.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(rows))
	for i := range rows {
		cmds[i] = pipe.HGetAll(ctx, rows[i].Change.Key)
		res.seen[i] = maphash.String(r.seed, rows[i].Change.Key)
	}
	if _, err := pipe.Exec(ctx); err != nil && !allKeyErrors(cmds) {
		return res, fmt.Errorf("reconcile: read Redis: %w", err)
	}
	versioned := t.VersionColumn != ""
	for i := range rows {
		h, err := cmds[i].Result()
		if k, ok := classify(&rows[i], h, err, versioned); ok {
			res.cands = append(res.cands, candidate{key: rows[i].Change.Key, pk: rows[i].PK, kind: k, seen: time.Now(), sight: h[layout.FieldSeq]})
		}
	}
	return res, nil
}

func allKeyErrors(cmds []*redis.MapStringStringCmd) bool {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !layout.IsWrongType(err) {
			return false
		}
	}
	return true
}

// classify compares a row (nil: none in MySQL) with what Redis holds for its key.
func classify(row *snapshot.Row, h map[string]string, herr error, versioned bool) (Kind, bool) {
	if layout.IsWrongType(herr) {
		return WrongType, true
	}
	live := len(h) > 0 && h[layout.FieldDeleted] == "" && h[layout.FieldNull] == ""
	if row == nil {
		return Extra, live
	}
	if !live {
		return Missing, true
	}
	if versioned {
		switch c := cmpDecimal(h[layout.FieldVersion], row.Change.Version); {
		case c < 0:
			return Stale, true
		case c > 0:
			return Mismatch, true
		}
	}
	if !sameFields(row.Change.Fields, h) {
		return Mismatch, true
	}
	return "", false
}

func sameFields(want []layout.Field, h map[string]string) bool {
	n := 0
	for k := range h {
		if !strings.HasPrefix(k, "_") {
			n++
		}
	}
	if n != len(want) {
		return false
	}
	for _, f := range want {
		if v, ok := h[f.Name]; !ok || v != f.Value {
			return false
		}
	}
	return true
}

// cmpDecimal compares non-negative decimal integers given as text.
func cmpDecimal(a, b string) int {
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		if len(a) < len(b) {
			return -1
		}
		return 1
	}
	return strings.Compare(a, b)
}

// observe describes what Redis holds for a key, for a compare-and-set repair.
func observe(h map[string]string, herr error) layout.Observed {
	switch {
	case layout.IsWrongType(herr):
		return layout.Observed{Type: "other"}
	case len(h) == 0:
		return layout.Observed{Type: "none"}
	}
	return layout.Observed{Type: "hash", Seq: h[layout.FieldSeq], Version: h[layout.FieldVersion]}
}
