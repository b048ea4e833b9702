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
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/backoff"
	"github.com/invsync/invsync/internal/redisscan"
	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
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
	cfg      *config.Config
	tables   []*canal.Table
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

// New returns a snapshot of tables (from canal.LoadTables) written through w. After each
// table, the keys under its prefix that hold a live row the snapshot did not find are
// turned into tombstones (rdb is used to find them). progress, if not nil, is called
// every second (or snapshot.progress_interval if shorter) and at the end.
func New(cfg *config.Config, tables []*canal.Table, w Writer, rdb redis.UniversalClient, log *zap.Logger, progress func(Progress)) *Snapshot {
	return &Snapshot{cfg: cfg, tables: tables, w: w, rdb: rdb, log: log, progress: progress, seed: maphash.MakeSeed()}
}

// Run records the current binlog position (via position, called before any row is
// read), loads every table and returns that position: streaming must start from it.
func (s *Snapshot) Run(ctx context.Context, position func(context.Context) (canal.Position, error)) (canal.Position, Stats, error) {
	conn, err := canal.Connect(ctx, s.cfg.Source)
	if err != nil {
		return canal.Position{}, Stats{}, fmt.Errorf("snapshot: connect to the source %s: %w", s.cfg.Source.Addr, err)
	}
	defer conn.Close()
	if err := PrepareSession(conn, s.cfg.Source.TimeZone); err != nil {
		return canal.Position{}, Stats{}, fmt.Errorf("snapshot: prepare the session: %w", err)
	}
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
	s                      *Snapshot
	conn                   *client.Conn
	start, lastReport      time.Time
	rows, applied, skipped int64
	swept                  int64
	estimate               int64
	seen                   map[uint64]struct{} // hashes of the keys of the current table
}

func estimateRows(conn *client.Conn, t *canal.Table) int64 {
	res, err := conn.Execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = '" + quote(t.Schema) + "' AND TABLE_NAME = '" + quote(t.Name) + "'")
	if err != nil || res.RowNumber() == 0 {
		return 0
	}
	defer res.Close()
	n, _ := res.GetInt(0, 0)
	return n
}

// tableQuery is how the rows of one table are selected and turned into changes.
type tableQuery struct {
	t         *canal.Table
	cols      []canal.ColumnInfo
	pkAt      []int // index in cols of each primary key part
	versionAt int   // index in cols of the version column, or -1
	pkCols    []string
	base      string // SELECT ... FROM ...
}

func newTableQuery(t *canal.Table) (*tableQuery, error) {
	q := &tableQuery{t: t, versionAt: -1}
	for _, c := range t.Columns {
		if t.Mirrored(c.Name) {
			q.cols = append(q.cols, c)
		}
	}
	names := make([]string, len(q.cols))
	q.pkAt = make([]int, len(t.PK))
	for i, c := range q.cols {
		names[i] = ident(c.Name)
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
		q.pkCols[i] = ident(pk)
	}
	q.base = "SELECT " + strings.Join(names, ", ") + " FROM " + ident(t.Schema) + "." + ident(t.Name)
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
// exist. conn must be a session prepared like the snapshot's (see PrepareSession).
func Fetch(conn *client.Conn, t *canal.Table, pk []string, positionVersion string) (c layout.Change, found bool, err error) {
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

// PrepareSession sets a session up to read values as the binlog renders them: TIMESTAMP
// in the configured zone, and literals where only quotes need escaping.
func PrepareSession(conn *client.Conn, timeZone string) error {
	_, err := conn.Execute("SET SESSION time_zone = '" + config.TimeZoneOffset(timeZone) + "', SESSION sql_mode = 'NO_BACKSLASH_ESCAPES', NAMES utf8mb4")
	return err
}

func (r *run) table(ctx context.Context, t *canal.Table, p0 canal.Position) error {
	tq, err := newTableQuery(t)
	if err != nil {
		return err
	}
	pkCols := tq.pkCols
	base := tq.base
	order := " ORDER BY " + strings.Join(pkCols, ", ") + " LIMIT " + strconv.Itoa(r.s.cfg.Snapshot.ChunkSize)
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
	// A writer goroutine applies one chunk while the next is read.
	writes := make(chan []layout.Change, 1)
	werr := make(chan error, 1)
	wctx, stopWriter := context.WithCancel(ctx)
	defer stopWriter()
	go func() {
		out := make([]layout.Outcome, r.s.cfg.Snapshot.ChunkSize)
		for changes := range writes {
			if err := r.write(wctx, changes, out); err != nil {
				werr <- err
				for range writes {
				}
				return
			}
			r.report(t.FullName(), false)
		}
		werr <- nil
	}()
	finish := func() error {
		close(writes)
		return <-werr
	}
	for {
		if err := ctx.Err(); err != nil {
			_ = finish()
			return err
		}
		q := base
		if after != nil {
			q += " WHERE (" + strings.Join(pkCols, ", ") + ") > (" + strings.Join(after, ", ") + ")"
		}
		chunkStart := time.Now()
		// A reload that runs while the stream writes stamps each chunk with the exact
		// binlog position of the consistent snapshot it is read in: its rows are then
		// ordered against the stream's by position. Versions cannot order them: a row
		// read before a DELETE may carry a higher version than the tombstone of a later
		// incarnation whose version restarted.
		// A replacing reload (the stream is paused) stamps its chunks the same way: a
		// binlog change after the chunk's position then replaces the row, one before it
		// (replayed when the stream resumes) cannot.
		var stamp layout.Seq
		var res *mysql.Result
		if r.s.noSweep || r.s.replace {
			pos, err := r.readAt(ctx, q+order, &res)
			if err != nil {
				_ = finish()
				return fmt.Errorf("snapshot: read %s: %w", t.FullName(), err)
			}
			stamp = SeqOf(pos)
			if tq.versionAt < 0 {
				positionVersion = strconv.FormatUint(positionVersionOf(pos), 10)
			}
		} else if res, err = r.conn.Execute(q + order); err != nil {
			_ = finish()
			return fmt.Errorf("snapshot: read %s: %w", t.FullName(), err)
		}
		n := len(res.RowDatas)
		changes := make([]layout.Change, 0, n)
		var last [][]byte
		for _, raw := range res.RowDatas {
			vals, nulls, err := splitRow(raw, len(tq.cols))
			if err != nil {
				res.Close()
				_ = finish()
				return fmt.Errorf("snapshot: %s: %w", t.FullName(), err)
			}
			c := tq.change(vals, nulls, positionVersion, r.s.replace)
			c.Seq = stamp
			if r.seen != nil {
				r.seen[maphash.String(r.s.seed, c.Key)] = struct{}{}
			}
			changes = append(changes, c)
			last = vals
		}
		if n > 0 {
			after = make([]string, len(tq.pkAt))
			for p, i := range tq.pkAt {
				after[p] = literal(tq.cols[i], last[i])
			}
		}
		res.Close()
		select {
		case writes <- changes:
		case err := <-werr:
			close(writes)
			return err
		}
		if n < r.s.cfg.Snapshot.ChunkSize {
			if err := finish(); err != nil {
				return err
			}
			return r.sweep(ctx, t, p0)
		}
		if limit := r.s.cfg.Snapshot.RowsPerSecond; limit > 0 {
			want := time.Duration(float64(n) / float64(limit) * float64(time.Second))
			if wait := want - time.Since(chunkStart); wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					_ = finish()
					return ctx.Err()
				}
			}
		}
	}
}

// handOffPosition asks position for the snapshot's position; with HandOffAtLeast, again
// until it is at or after the floor (see floorReached).
func (s *Snapshot) handOffPosition(ctx context.Context, conn *client.Conn, position func(context.Context) (canal.Position, error)) (canal.Position, error) {
	poll := backoff.New(5*time.Millisecond, 200*time.Millisecond)
	var waitingSince time.Time
	for {
		p0, err := position(ctx)
		if err != nil || !s.handOff || s.floor.IsZero() || !SeqOf(p0).Less(s.floor) {
			return p0, err
		}
		if ok, err := s.floorReachable(conn, p0, &waitingSince); err != nil || !ok {
			return p0, err
		}
		if err := poll.Wait(ctx); err != nil {
			return p0, err
		}
	}
}

// floorReachable is asked while a read (at pos) waits for the floor to become visible: after
// floorPatience it checks that the source's binlog reaches the floor at all; when it does
// not (the floor is from a history the source no longer has: a reset binlog), it drops
// the floor and returns false (read on from what the source has now).
func (s *Snapshot) floorReachable(conn *client.Conn, pos canal.Position, waitingSince *time.Time) (bool, error) {
	if waitingSince.IsZero() {
		*waitingSince = time.Now()
		return true, nil
	}
	waited := time.Since(*waitingSince)
	if waited <= floorPatience {
		return true, nil
	}
	// A commit on its way can take long (semi-sync waits for a replica up to its
	// timeout), but when even the server's binlog ends before the floor, the floor is
	// from a history the source no longer has.
	end, err := canal.MasterStatus(conn)
	if err != nil {
		return false, err
	}
	end.Epoch = s.epoch
	if SeqOf(end).Less(s.floor) {
		s.log.Warn("the source's binlog ends before the position the stream had read (its history was replaced): the reload reads on from the source's current state",
			append(end.Fields(), zap.Duration("waited", waited))...)
		s.floor = layout.Seq{}
		return false, nil
	}
	s.log.Warn("a reload waits for transactions the stream already read to become visible to readers (semi-sync waiting for a replica?)",
		append(pos.Fields(), zap.Duration("waited", waited))...)
	*waitingSince = time.Now()
	return true, nil
}

// floorPatience is how long a chunk waits for its floor (AtLeast) to become visible before
// it checks that the floor is still in the source's binlog (and says that it waits).
const floorPatience = 10 * time.Second

// readAt runs query inside a consistent snapshot at or after the snapshot's floor and
// returns that snapshot's exact position (see canal.ReadConsistent).
func (r *run) readAt(ctx context.Context, query string, res **mysql.Result) (canal.Position, error) {
	poll := backoff.New(5*time.Millisecond, 200*time.Millisecond)
	var waitingSince time.Time
	for {
		pos, err := canal.ReadConsistent(r.conn, r.s.cfg.Source.Flavor, r.s.epoch, func(err error) {
			r.s.log.Warn("reload chunks may miss a transaction committing as they are read", zap.Error(err))
		},
			func(canal.Position) error {
				var err error
				*res, err = r.conn.Execute(query)
				return err
			})
		if err != nil || r.s.floor.IsZero() || !SeqOf(pos).Less(r.s.floor) {
			return pos, err
		}
		// The stream has written a transaction this snapshot does not see yet: it is in
		// the binlog, its commit is still on its way. Read again once it is visible.
		(*res).Close()
		if ok, err := r.s.floorReachable(r.conn, pos, &waitingSince); err != nil {
			return pos, err
		} else if !ok {
			continue // the floor dropped: read on from what the source has now
		}
		if err := poll.Wait(ctx); err != nil {
			return pos, err
		}
	}
}

// Gone turns every live row under t's prefix into a tombstone: the table no longer
// exists on the source (at is the position where that was seen; with Replacing, the
// tombstones replace whatever version Redis holds and carry at). It returns how many.
func (s *Snapshot) Gone(ctx context.Context, t *canal.Table, at canal.Position) (int64, error) {
	r := &run{s: s, seen: map[uint64]struct{}{}}
	err := r.sweep(ctx, t, at)
	return r.swept, err
}

// sweep turns into tombstones the live rows under t's prefix that the snapshot did not
// find: rows deleted while invsync could not follow the binlog, or leftovers. A key
// whose hash matches a found key's is left alone (a collision is harmless that way). A
// replacing reload tombstones them whatever their version, stamped with p0 (the position
// recorded before the table was read): a later binlog write of the key wins.
func (r *run) sweep(ctx context.Context, t *canal.Table, p0 canal.Position) error {
	if r.s.noSweep {
		r.seen = nil
		return nil
	}
	var pending []layout.Change
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		// The guard tombstones only a live row whose _v is still the one read here.
		out := make([]layout.Outcome, len(pending))
		err := r.s.w.Apply(ctx, pending, out)
		for _, o := range out {
			if o.Result == layout.Applied {
				r.swept++
			}
		}
		pending = pending[:0]
		return err
	}
	check := func(ctx context.Context, all []string) error {
		var keys []string
		for _, k := range all {
			if _, ok := r.seen[maphash.String(r.s.seed, k)]; !ok {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return nil
		}
		// Read through the client: in a cluster it follows a key that moved (MOVED, ASK).
		pipe := r.s.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.HMGet(ctx, k, layout.FieldVersion, layout.FieldDeleted, layout.FieldNull)
		}
		_, _ = pipe.Exec(ctx)
		for i, k := range keys {
			v, err := cmds[i].Result()
			if err != nil || len(v) != 3 || v[0] == nil || v[1] != nil || v[2] != nil {
				continue // not a live row of ours (or not a hash)
			}
			ver, _ := v[0].(string)
			c := layout.Change{Key: k, Op: layout.OpDelete, Version: ver}
			if r.s.replace {
				c.Replace, c.Seq = true, SeqOf(p0)
			}
			pending = append(pending, c)
		}
		return flush()
	}
	// Tombstoning is idempotent (the guard compares _v): a scan done again after the
	// cluster resharded under it may see a key twice.
	scanErr := redisscan.Keys(ctx, r.s.rdb, globEscape(t.KeyPrefix)+"{*}", 500, check, nil)
	r.seen = nil
	if errors.Is(scanErr, redisscan.ErrIncomplete) {
		// A cluster stuck with a slot migrating would stop every load (and a DDL reload
		// would hold the stream) for good: the sweep only removes leftovers, so go on.
		r.s.log.Error("the sweep of keys of rows that are gone may have missed some: the Redis Cluster kept resharding, or a slot is stuck migrating "+
			"(fix: finish it with redis-cli --cluster fix, then run invsync reconcile --repair)", zap.String("table", t.FullName()), zap.Error(scanErr))
		return nil
	}
	if scanErr != nil {
		return fmt.Errorf("snapshot: sweep %s: %w", t.FullName(), scanErr)
	}
	return nil
}

// write applies a chunk, retrying while Redis is unreachable.
func (r *run) write(ctx context.Context, changes []layout.Change, out []layout.Outcome) error {
	wait := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		err := r.s.w.Apply(ctx, changes, out[:len(changes)])
		var failed []layout.Change
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
	if !final && now.Sub(r.lastReport) < min(r.s.cfg.Snapshot.ProgressInterval, time.Second) {
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
func literal(c canal.ColumnInfo, v []byte) string {
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
func memberNumber(c canal.ColumnInfo, v string) uint64 {
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

func ident(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// SeqOf is the binlog sequence of a state read at position p (after p was recorded):
// after every row of the events that end at or before p. A write stamped with it is
// ordered against the binlog stream's writes by position, as a binlog write is: a change
// committed after p replaces it, one committed before p cannot.
func SeqOf(p canal.Position) layout.Seq {
	f, _ := p.SeqFile()
	return layout.Seq{File: f, Pos: p.Pos, Index: 9_999_999}
}

// PositionVersion is _v, for a table without a version column, of a row read at p.
func PositionVersion(p canal.Position) uint64 { return positionVersionOf(p) }

func positionVersionOf(p canal.Position) uint64 {
	f, _ := p.SeqFile()
	return layout.PositionVersion(layout.Seq{File: f, Pos: p.Pos})
}

// globEscape escapes the characters SCAN MATCH treats as a pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ScanKeys reads every primary key of t with keyset pagination, chunk keys at a time,
// and calls fn with each key's text as it appears in the row key (parts joined with
// ':'). conn must be a session prepared like the snapshot's (see PrepareSession).
func ScanKeys(ctx context.Context, conn *client.Conn, t *canal.Table, chunk int, fn func(pk string)) error {
	tq, err := newTableQuery(t)
	if err != nil {
		return err
	}
	cols := make([]canal.ColumnInfo, len(tq.pkAt))
	for p, i := range tq.pkAt {
		cols[p] = tq.cols[i]
	}
	base := "SELECT " + strings.Join(tq.pkCols, ", ") + " FROM " + ident(t.Schema) + "." + ident(t.Name)
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
