// Package snapshot loads every configured table into Redis: it records the source's
// binlog position P0 first, then reads each table by primary key in chunks (keyset
// pagination, never OFFSET, never a global read lock) with the text protocol, so that
// every value is the exact text a SELECT returns, and writes the rows through the
// versioned write path as writes that do not come from the binlog. Streaming then starts
// from P0: changes made while the snapshot ran are read again from the binlog, and the
// version guard makes that overlap harmless.
package snapshot

import (
	"context"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Writer applies rows; layout.Writer is the implementation.
type Writer interface {
	Apply(ctx context.Context, changes []layout.Change, out []layout.Outcome) error
}

// Progress is reported while the snapshot runs.
type Progress struct {
	Table     string
	Rows      int64 // rows written so far, all tables
	Estimate  int64 // estimated rows in all tables (information_schema), 0 if unknown
	Elapsed   time.Duration
	RowsPerS  float64
	Remaining time.Duration // estimate; 0 if unknown
}

// Stats describes a finished snapshot.
type Stats struct {
	Rows     int64
	Applied  int64
	Skipped  int64
	Swept    int64 // live rows in Redis that the source no longer has, now tombstones
	Duration time.Duration
}

// Snapshot runs one full load.
type Snapshot struct {
	src      source.Config
	opts     config.Snapshot
	tables   []*source.Table
	w        Writer
	rdb      redis.UniversalClient
	log      *zap.Logger
	progress func(Progress)
	seed     maphash.Seed
	replace  bool
	noSweep  bool
	floor    layout.Seq // chunks are read at or after it (AtLeast)
	handOff  bool       // the position Run returns is at or after floor too (HandOffAtLeast)
	epoch    uint32     // of the positions chunks are read at (p0's)
}

// WithoutSweep is for a reload that runs while the binlog stream writes: keys the
// snapshot did not find are left alone (a key the stream inserts after its range was read
// is not stale), and each chunk is stamped with the binlog position recorded before it
// was read (see SeqOf), so that its rows are ordered against the stream's by position.
func (s *Snapshot) WithoutSweep() *Snapshot {
	s.noSweep = true
	return s
}

// AtLeast makes every stamped chunk (WithoutSweep, Replacing) read at a position at or
// after floor: a reload after Redis lost data must see what the stream had already
// written there, including a transaction that is in the binlog but not yet visible to
// readers (its chunk waits until it is).
func (s *Snapshot) AtLeast(floor layout.Seq) *Snapshot {
	s.floor = floor
	return s
}

// HandOffAtLeast makes the position Run returns (where the stream resumes, and the stamp
// of the sweep's tombstones) at or after the floor too: position is asked again until it
// is. A consistent read's position lags a transaction that is in the binlog but not yet
// visible to readers; the stream, resumed before such a transaction it had already
// written, would replay it over rows read after it (a version going down, a deleted row
// back for a moment).
func (s *Snapshot) HandOffAtLeast() *Snapshot {
	s.handOff = true
	return s
}

// Replacing makes every row written replace what Redis holds (layout.Change.Replace):
// for a reload after a DDL, with the binlog stream paused.
func (s *Snapshot) Replacing() *Snapshot {
	s.replace = true
	return s
}

// New returns a snapshot of tables (from source.LoadTables) written through w. After each
// table, the keys under its prefix that hold a live row the snapshot did not find are
// turned into tombstones (rdb is used to find them). progress, if not nil, is called
// every second (or snapshot.progress_interval if shorter) and at the end.
func New(src source.Config, opts config.Snapshot, tables []*source.Table, w Writer, rdb redis.UniversalClient, log *zap.Logger, progress func(Progress)) *Snapshot {
	return &Snapshot{src: src, opts: opts, tables: tables, w: w, rdb: rdb, log: log, progress: progress, seed: maphash.MakeSeed()}
}

// Run records the current binlog position (via position, called before any row is
// read), loads every table and returns that position: streaming must start from it.
func (s *Snapshot) Run(ctx context.Context, position func(context.Context) (source.Position, error)) (source.Position, Stats, error) {
	conn, err := s.src.Dial(ctx)
	if err != nil {
		return source.Position{}, Stats{}, fmt.Errorf("snapshot: connect to the source %s: %w", s.src.Addr, err)
	}
	defer conn.Close()
	p0, err := s.handOffPosition(ctx, conn, position)
	if err != nil {
		return p0, Stats{}, err
	}
	s.epoch = p0.Epoch
	s.log.Info("snapshot started", p0.Fields()...)
	var estimate int64
	for _, t := range s.tables {
		estimate += estimateRows(conn, t)
	}
	r := &run{s: s, conn: conn, start: time.Now(), estimate: estimate, lastReport: time.Now()}
	var st Stats
	for _, t := range s.tables {
		if err := r.table(ctx, t, p0); err != nil {
			return p0, st, err
		}
	}
	st = Stats{Rows: r.rows, Applied: r.applied, Skipped: r.skipped, Swept: r.swept, Duration: time.Since(r.start)}
	r.report("", true)
	s.log.Info("snapshot finished", append(p0.Fields(), zap.Int64("rows", st.Rows), zap.Int64("swept", st.Swept), zap.Duration("duration", st.Duration),
		zap.Float64("rows_per_second", float64(st.Rows)/st.Duration.Seconds()))...)
	return p0, st, nil
}

type run struct {
	s     *Snapshot
	conn  *client.Conn
	start time.Time
	// mu guards the counts and lastReport below: chunkWriters write chunks at once.
	mu                     sync.Mutex
	lastReport             time.Time
	rows, applied, skipped int64
	swept                  int64
	estimate               int64
	seen                   map[uint64]struct{} // hashes of the keys of the current table
}

func estimateRows(conn *client.Conn, t *source.Table) int64 {
	res, err := conn.Execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = '" + quote(t.Schema) + "' AND TABLE_NAME = '" + quote(t.Name) + "'")
	if err != nil || res.RowNumber() == 0 {
		return 0
	}
	defer res.Close()
	n, _ := res.GetInt(0, 0)
	return n
}

// CountRows returns how many rows t holds (an exact COUNT(*): the estimate of
// information_schema lags far behind a bulk load, and a Bloom filter sized from it would
// be too small), on a connection of its own from dial. When ctx ends first, the count
// ends on the server too (KILL QUERY from a second connection: MySQL notices a closed
// connection only when it sends the result, and the count of a big table can take
// minutes), and the error wraps ctx's.
func CountRows(ctx context.Context, dial func(context.Context) (*client.Conn, error), t *source.Table) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	conn, err := dial(ctx)
	if err != nil {
		return 0, fmt.Errorf("count the rows of %s: %w", t.FullName(), err)
	}
	defer conn.Close()
	// The client does not take a context: a cancelled count returns by the connection's
	// deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	query := "SELECT COUNT(*) FROM " + source.QuoteIdent(t.Schema) + "." + source.QuoteIdent(t.Name)
	res, err := conn.Execute(query)
	if err != nil {
		if ctx.Err() != nil {
			killQuery(dial, conn.GetConnectionID(), query)
			return 0, fmt.Errorf("count the rows of %s: %w", t.FullName(), ctx.Err())
		}
		return 0, fmt.Errorf("count the rows of %s: %w", t.FullName(), err)
	}
	defer res.Close()
	n, err := res.GetUint(0, 0)
	if err != nil {
		return 0, fmt.Errorf("count the rows of %s: %w", t.FullName(), err)
	}
	return n, nil
}

// killQuery ends query, which connection id runs, from a connection of its own (a user
// may kill its own statements). It kills only a thread of that id that runs query, so
// that a second connection that reached another server (a load balancer in front of
// several) kills nothing there. Best effort: it waits at most killWait, errors ignored.
func killQuery(dial func(context.Context) (*client.Conn, error), id uint32, query string) {
	ctx, cancel := context.WithTimeout(context.Background(), killWait)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cancel()
		conn, err := dial(ctx) // the handshake may ignore ctx: the caller waits at most killWait
		if err != nil {
			return
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
		defer stop()
		ids := strconv.FormatUint(uint64(id), 10)
		res, err := conn.Execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = "+ids+" AND INFO = ?", query)
		if err != nil {
			return
		}
		n, err := res.GetUint(0, 0)
		res.Close()
		if err == nil && n == 1 {
			_, _ = conn.Execute("KILL QUERY " + ids)
		}
	}()
	select {
	case <-done:
	case <-time.After(killWait):
	}
}

// killWait bounds how long a cancelled count waits for its KILL QUERY.
const killWait = 5 * time.Second

// tableQuery is how the rows of one table are selected and turned into changes.
type tableQuery struct {
	t         *source.Table
	cols      []source.ColumnInfo
	pkAt      []int // index in cols of each primary key part
	versionAt int   // index in cols of the version column, or -1
	pkCols    []string
	base      string // SELECT ... FROM ...
}

func newTableQuery(t *source.Table) (*tableQuery, error) {
	q := &tableQuery{t: t, versionAt: -1}
	for _, c := range t.Columns {
		if t.Mirrored(c.Name) {
			q.cols = append(q.cols, c)
		}
	}
	names := make([]string, len(q.cols))
	q.pkAt = make([]int, len(t.PK))
	for i, c := range q.cols {
		names[i] = source.QuoteIdent(c.Name)
		for p, pk := range t.PK {
			if strings.EqualFold(pk, c.Name) {
				q.pkAt[p] = i
			}
		}
		if t.VersionColumn != "" && strings.EqualFold(t.VersionColumn, c.Name) {
			q.versionAt = i
		}
	}
	if t.VersionColumn != "" && q.versionAt < 0 {
		return nil, fmt.Errorf("snapshot: %s: version column %s is not mirrored", t.FullName(), t.VersionColumn)
	}
	q.pkCols = make([]string, len(t.PK))
	for i, pk := range t.PK {
		q.pkCols[i] = source.QuoteIdent(pk)
	}
	q.base = "SELECT " + strings.Join(names, ", ") + " FROM " + source.QuoteIdent(t.Schema) + "." + source.QuoteIdent(t.Name)
	return q, nil
}

// change turns one text-protocol row into a write that does not come from the binlog;
// positionVersion is _v for a table without a version column.
func (q *tableQuery) change(vals [][]byte, nulls []bool, positionVersion string, replace bool) layout.Change {
	c := layout.Change{Op: layout.OpUpsert, Replace: replace, Fields: make([]layout.Field, 0, len(q.cols))}
	for i, col := range q.cols {
		if !nulls[i] {
			c.Fields = append(c.Fields, layout.Field{Name: col.Name, Value: string(vals[i])})
		}
	}
	pk := make([]string, len(q.pkAt))
	for p, i := range q.pkAt {
		pk[p] = string(vals[i])
	}
	c.Key = layout.Key(q.t.KeyPrefix, pk)
	switch {
	case q.versionAt < 0:
		c.Version = positionVersion
	case nulls[q.versionAt]:
		c.Version = "0"
	default:
		c.Version = string(vals[q.versionAt])
	}
	return c
}

// Fetch reads the current row of t with primary key pk (the text of each part) with the
// text protocol, as the snapshot would write it. found is false when the row does not
// exist. conn must be a session prepared like the snapshot's (see source.PrepareSession).
func Fetch(conn *client.Conn, t *source.Table, pk []string, positionVersion string) (c layout.Change, found bool, err error) {
	q, err := newTableQuery(t)
	if err != nil {
		return c, false, err
	}
	if len(pk) != len(q.pkAt) {
		return c, false, fmt.Errorf("%s: primary key has %d parts, got %d", t.FullName(), len(q.pkAt), len(pk))
	}
	if !keyable(q, pk) {
		return c, false, nil
	}
	lits := make([]string, len(pk))
	for p, i := range q.pkAt {
		lits[p] = literal(q.cols[i], []byte(pk[p]))
	}
	res, err := conn.Execute(q.base + " WHERE (" + strings.Join(q.pkCols, ", ") + ") = (" + strings.Join(lits, ", ") + ")")
	if err != nil {
		return c, false, fmt.Errorf("read %s: %w", t.FullName(), err)
	}
	defer res.Close()
	if len(res.RowDatas) == 0 {
		return c, false, nil
	}
	vals, nulls, err := splitRow(res.RowDatas[0], len(q.cols))
	if err != nil {
		return c, false, err
	}
	return q.change(vals, nulls, positionVersion, false), true, nil
}

// table loads t chunk by chunk, a writer goroutine applying one while the next is read.
func (r *run) table(ctx context.Context, t *source.Table, p0 source.Position) error {
	tq, err := newTableQuery(t)
	if err != nil {
		return err
	}
	pkCols := tq.pkCols
	base := tq.base
	order := " ORDER BY " + strings.Join(pkCols, ", ") + " LIMIT " + strconv.Itoa(r.s.opts.ChunkSize)
	positionVersion := ""
	if tq.versionAt < 0 {
		// Without a version column, a snapshot row is as new as P0 at least; the binlog
		// changes after P0 carry greater versions and win.
		positionVersion = strconv.FormatUint(positionVersionOf(p0), 10)
	}
	if !r.s.noSweep {
		r.seen = make(map[uint64]struct{})
	}
	var after []string // the last primary key read, as SQL literals
	wctx, stopWriter := context.WithCancel(ctx)
	defer stopWriter()
	writes, failed, finish := r.startWriter(wctx, t)
	// abort ends the writers on an error of the reader: their retries (Redis down) must
	// not hold the error back.
	abort := func() {
		stopWriter()
		_ = finish()
	}
	for {
		if err := ctx.Err(); err != nil {
			abort()
			return err
		}
		q := base
		if after != nil {
			q += " WHERE (" + strings.Join(pkCols, ", ") + ") > (" + strings.Join(after, ", ") + ")"
		}
		chunkStart := time.Now()
		var stamp layout.Seq
		var res *mysql.Result
		if res, stamp, positionVersion, err = r.readChunk(ctx, tq, q+order, positionVersion); err != nil {
			abort()
			return fmt.Errorf("snapshot: read %s: %w", t.FullName(), err)
		}
		n := len(res.RowDatas)
		changes, last, err := r.chunkChanges(tq, res, positionVersion, stamp)
		if err != nil {
			res.Close()
			abort()
			return fmt.Errorf("snapshot: %s: %w", t.FullName(), err)
		}
		if n > 0 {
			after = tq.keyLiterals(last)
		}
		res.Close()
		select {
		case <-failed: // first: a free slot in writes must not hide the writer's failure
			return finish()
		default:
		}
		select {
		case writes <- changes:
		case <-failed:
			return finish()
		}
		if n < r.s.opts.ChunkSize {
			if err := finish(); err != nil {
				return err
			}
			return r.sweep(ctx, t, p0)
		}
		if !r.pace(ctx, n, chunkStart) {
			abort()
			return ctx.Err()
		}
	}
}

// chunkWriters is how many chunks are written at once. A chunk's keys are its own (the
// keyset pages do not overlap), so their order does not matter; several in flight keep
// Redis busy while the daemon renders the next ones and waits for replies.
const chunkWriters = 4

// startWriter starts the writers that apply chunks while the next ones are read: send
// chunks on writes; failed is closed when a write fails; finish ends the writers and
// returns the first error.
func (r *run) startWriter(ctx context.Context, t *source.Table) (writes chan<- []layout.Change, failed <-chan struct{}, finish func() error) {
	ch := make(chan []layout.Change, chunkWriters)
	fail := make(chan struct{})
	var once sync.Once
	var writer errgroup.Group
	for range chunkWriters {
		writer.Go(func() error {
			err := r.writeChunks(ctx, t, ch)
			if err != nil {
				once.Do(func() { close(fail) })
			}
			return err
		})
	}
	return ch, fail, func() error {
		close(ch)
		return writer.Wait()
	}
}

// write applies a chunk, retrying while Redis is unreachable.
func (r *run) write(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	wait := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		err := r.s.w.Apply(ctx, changes, out[:len(changes)])
		var failed []layout.Change
		r.mu.Lock()
		for i, o := range out[:len(changes)] {
			switch o.Result {
			case layout.Applied:
				r.applied++
				r.rows++
			case layout.Skipped:
				r.skipped++
				r.rows++
			default:
				failed = append(failed, changes[i])
			}
		}
		r.mu.Unlock()
		if len(failed) == 0 {
			return nil
		}
		if err == nil {
			err = out[0].Err
			for _, o := range out[:len(changes)] {
				if o.Err != nil {
					err = o.Err
					break
				}
			}
		}
		r.s.log.Warn("snapshot: writes failed; retrying", zap.Int("rows", len(failed)), zap.Error(err), zap.Duration("backoff", wait.Current()))
		changes = failed
		if err := wait.Wait(ctx); err != nil {
			return err
		}
	}
}

func (r *run) report(table string, final bool) {
	if r.s.progress == nil && !final {
		return
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock() // progress is called by one writer at a time
	if !final && now.Sub(r.lastReport) < min(r.s.opts.ProgressInterval, time.Second) {
		return
	}
	r.lastReport = now
	p := Progress{Table: table, Rows: r.rows, Estimate: r.estimate, Elapsed: now.Sub(r.start)}
	if secs := p.Elapsed.Seconds(); secs > 0 {
		p.RowsPerS = float64(r.rows) / secs
	}
	if p.RowsPerS > 0 && r.estimate > r.rows {
		p.Remaining = time.Duration(float64(r.estimate-r.rows) / p.RowsPerS * float64(time.Second))
	}
	if r.s.progress != nil {
		r.s.progress(p)
	}
}

// splitRow splits a text-protocol row into its column values (exactly the bytes the
// server sent) and NULL flags.
func splitRow(raw []byte, n int) ([][]byte, []bool, error) {
	vals := make([][]byte, n)
	nulls := make([]bool, n)
	for i := 0; i < n; i++ {
		v, isNull, m, err := mysql.LengthEncodedString(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("malformed row from the server: %w", err)
		}
		vals[i], nulls[i] = v, isNull
		raw = raw[m:]
	}
	return vals, nulls, nil
}

// literal renders a primary key value read with the text protocol as an SQL literal
// that compares the way the index orders: numbers as they are, binary strings as hex,
// other strings quoted (so that the column's collation applies).
func literal(c source.ColumnInfo, v []byte) string {
	switch c.DataType {
	case "tinyint", "smallint", "mediumint", "int", "bigint", "decimal", "year":
		return string(v)
	case "enum", "set":
		// An index orders ENUM and SET by their numbers (the member's position, the
		// members' bitmask), and a quoted string would compare as a string: compare the
		// numbers.
		return strconv.FormatUint(memberNumber(c, string(v)), 10)
	case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit":
		return "X'" + hex.EncodeToString(v) + "'"
	}
	return "'" + quote(string(v)) + "'"
}

// memberNumber is the number MySQL stores for an ENUM value (its 1-based position; 0 for
// the empty error value) or a SET value (the bitmask of its members).
func memberNumber(c source.ColumnInfo, v string) uint64 {
	members := c.Values()
	if c.DataType == "enum" {
		for i, m := range members {
			if m == v {
				return uint64(i + 1)
			}
		}
		return 0
	}
	var mask uint64
	if v == "" {
		return 0
	}
	for _, part := range strings.Split(v, ",") {
		for i, m := range members {
			if m == part && i < 64 {
				mask |= 1 << uint(i)
			}
		}
	}
	return mask
}

func quote(s string) string { return strings.ReplaceAll(s, "'", "''") }

// SeqOf is the binlog sequence of a state read at position p (after p was recorded):
// after every row of the events that end at or before p. A write stamped with it is
// ordered against the binlog stream's writes by position, as a binlog write is: a change
// committed after p replaces it, one committed before p cannot.
func SeqOf(p source.Position) layout.Seq {
	f, _ := p.SeqFile()
	return layout.Seq{File: f, Pos: p.Pos, Index: 9_999_999}
}

// PositionVersion is _v, for a table without a version column, of a row read at p.
func PositionVersion(p source.Position) uint64 { return positionVersionOf(p) }

func positionVersionOf(p source.Position) uint64 {
	f, _ := p.SeqFile()
	return layout.PositionVersion(layout.Seq{File: f, Pos: p.Pos})
}

// ScanKeys reads every primary key of t with keyset pagination, chunk keys at a time,
// and calls fn with each key's text as it appears in the row key (parts joined with
// ':'). conn must be a session prepared like the snapshot's (see source.PrepareSession).
func ScanKeys(ctx context.Context, conn *client.Conn, t *source.Table, chunk int, fn func(pk string)) error {
	tq, err := newTableQuery(t)
	if err != nil {
		return err
	}
	cols := make([]source.ColumnInfo, len(tq.pkAt))
	for p, i := range tq.pkAt {
		cols[p] = tq.cols[i]
	}
	base := "SELECT " + strings.Join(tq.pkCols, ", ") + " FROM " + source.QuoteIdent(t.Schema) + "." + source.QuoteIdent(t.Name)
	order := " ORDER BY " + strings.Join(tq.pkCols, ", ") + " LIMIT " + strconv.Itoa(chunk)
	var after []string
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		q := base
		if after != nil {
			q += " WHERE (" + strings.Join(tq.pkCols, ", ") + ") > (" + strings.Join(after, ", ") + ")"
		}
		res, err := conn.Execute(q + order)
		if err != nil {
			return fmt.Errorf("read the keys of %s: %w", t.FullName(), err)
		}
		n := len(res.RowDatas)
		var last [][]byte
		for _, raw := range res.RowDatas {
			vals, _, err := splitRow(raw, len(cols))
			if err != nil {
				res.Close()
				return fmt.Errorf("%s: %w", t.FullName(), err)
			}
			parts := make([]string, len(vals))
			for p, v := range vals {
				parts[p] = string(v)
			}
			fn(layout.KeyInner(parts))
			last = vals
		}
		res.Close()
		if n > 0 {
			after = make([]string, len(cols))
			for p := range cols {
				after[p] = literal(cols[p], last[p])
			}
		}
		if n < chunk {
			return nil
		}
	}
}
