// Package canal follows the binlog of the source as a replica and turns the row events
// of the configured tables into row changes for the sink, each carrying its binlog
// sequence, and a commit mark with the position after each transaction.
//
// It reads the binlog with go-mysql's replication.BinlogSyncer, the reader that
// go-mysql's canal package is built on, and not with canal.Canal itself, because canal
// drops row events of tables it cannot describe without a word, decodes rows with the
// table's current definition instead of the one they were written with, and reports a
// position on Close that the sink may not have written (docs/design-notes.md).
//
// Guarantees: rows are handed over in binlog order; Commit is called after the last row
// of its transaction with the position after its commit; a row of a configured table is
// never skipped: a row that cannot be decoded stops the stream with an error naming the
// table, the column and the position.
package canal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// Row is one row change of a configured table.
type Row struct {
	// Txn is the transaction's number in this stream (increasing from 1).
	Txn uint64
	// Table is the index of the table in the config.
	Table int
	// Change is what to write to Redis. For an upsert its Version and Fields are left
	// empty: they are rendered from Image by the sink worker that writes the change (in
	// parallel, and not at all for a change that a newer one of the same key supersedes
	// first).
	Change layout.Change
	// Image is the row's after-image (zero for a delete).
	Image Image
	// before is a delete's image, to render its version again when it is handed over
	// with another sequence (an XA transaction's rows, at its XA COMMIT).
	before Image
	// settling marks a settlement (see settle.go) not yet attached to its row's change.
	settling bool
}

// Image is a decoded row image, rendered into fields on demand.
type Image struct {
	dec *decoder
	row []any
}

// TextImage returns an image of mirrored text columns (as the binlog gives strings,
// blobs and JSON) with no version column, for tests of the code that consumes rows: a
// value that is neither a string nor bytes is one the decoder does not expect.
func TextImage(names []string, row []any) Image {
	d := &decoder{names: names, version: -1, mirrored: len(names)}
	for _, n := range names {
		d.cols = append(d.cols, column{name: n, kind: kindText, mirror: true, pk: -1})
	}
	return Image{dec: d, row: row}
}

// IsZero reports whether there is no image (a delete).
func (im Image) IsZero() bool { return im.dec == nil }

// VersionValue is the version column's value as a number; ok is false for a table
// without a version column (its versions grow with the binlog position).
func (im Image) VersionValue() (v uint64, ok bool) {
	if im.dec == nil || im.dec.version < 0 {
		return 0, false
	}
	i, isInt := asInt64(im.row[im.dec.version])
	if !isInt {
		return 0, true // NULL: version 0
	}
	return unsignedOf(im.row[im.dec.version], i), true
}

// Version renders _v of the image (seq is the change's binlog sequence).
func (im Image) Version(seq layout.Seq) string { return im.dec.versionText(im.row, seq) }

// Fields renders the mirrored non-NULL columns as the text MySQL returns for them. A
// value of a type the column does not expect is rendered as well as possible and
// reported in err (the row is still written: the stream must not stop behind it).
func (im Image) Fields() (fields []layout.Field, err error) {
	d := im.dec
	fields = make([]layout.Field, 0, d.mirrored)
	for i := range d.cols {
		col := &d.cols[i]
		if !col.mirror || i >= len(im.row) {
			continue
		}
		v, ok, rerr := col.render(im.row[i])
		if rerr != nil && err == nil {
			err = rerr
		}
		if ok {
			fields = append(fields, layout.Field{Name: col.name, Value: v})
		}
	}
	return fields, err
}

// Commit marks the end of transaction Txn.
type Commit struct {
	Txn uint64
	// Rows is the number of Row calls made for the transaction.
	Rows int
	// Pos is the position after the commit.
	Pos source.Position
	// Time is the commit timestamp from the binlog.
	Time time.Time
}

// Handler receives the stream. Calls come from one goroutine, in binlog order; a
// handler may block (that is the backpressure that pauses reading).
type Handler interface {
	Row(ctx context.Context, r Row) error
	Commit(ctx context.Context, c Commit) error
	// Heartbeat is called when the server reports that it has nothing more to send.
	Heartbeat(ctx context.Context) error
	// TableChanged is called after a DDL statement that may have changed a mirrored
	// table, before its commit: the rows before it are decoded with the old definition,
	// those after with the new one, and rows that the statement changed without row
	// events (a new column's default, a dropped or renamed column) need loading again.
	// at is the statement's position. rowsChanged is true when the statement may have
	// replaced the table's rows whatever its definition (TRUNCATE, RENAME, DROP or CREATE
	// TABLE): the table must be loaded again. The handler may update *t.
	TableChanged(ctx context.Context, t *source.Table, at source.Position, rowsChanged bool) error
	// Reload is called when rows of t that were handed over must be replaced by the
	// table's current content (rows of a transaction that was rolled back after they
	// were handed over); reason names why, for metrics. at is the position of the event.
	Reload(ctx context.Context, t *source.Table, at source.Position, reason string) error
}

// Errors the stream returns, for callers that choose between retrying and stopping.
var (
	// ErrHistoryChanged is wrapped when the stream finds the server's binlog replaced
	// under it (a rotate back to an earlier file: RESET MASTER). The caller checks the
	// source's history again before it streams on.
	ErrHistoryChanged = errors.New("the source's binlog history changed under the stream")
)

// Source streams the binlog.
type Source struct {
	cfg    config.Source
	tables map[string]*source.Table // by schema.table
	// settlements are the settlement tables by schema.table; reserving the tables (by
	// index) with reservations (see settle.go).
	settlements map[string]*Settlement
	reserving   map[int]bool
	// settleInvalid is called for each settlement row that cannot be read.
	settleInvalid func()
	tz            *time.Location
	log           *zap.Logger

	decoders map[uint64]*decoder
	file     string
	epoch    uint32
	fileIdx  uint32 // the file part of sequences (source.Position.SeqFile)
	txn      uint64
	txnRows  int
	grp      group           // the transaction being read
	prepared []*preparedXA   // prepared XA transactions with rows, oldest first
	lastEnd  source.Position // the position after the last group that ended
	xaWarned time.Time       // when a long-prepared XA transaction was last logged
}

// NewSource returns a source for the given tables (from LoadTables).
func NewSource(cfg config.Source, tables []*source.Table, log *zap.Logger) (*Source, error) {
	tz, err := config.ParseTimeZone(cfg.TimeZone)
	if err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg, tables: map[string]*source.Table{}, tz: tz, log: log, decoders: map[uint64]*decoder{},
		settlements: map[string]*Settlement{}, reserving: map[int]bool{}}
	for _, t := range tables {
		s.tables[t.FullName()] = t
	}
	return s, nil
}

// Run streams from start until ctx ends or an error occurs. It returns ctx.Err() on
// cancellation. start must be set (a file:pos, or a GTID set).
func (s *Source) Run(ctx context.Context, start source.Position, h Handler) error {
	syncer, err := s.newSyncer()
	if err != nil {
		return err
	}
	// Closing kills the binlog connection from a new one (go-mysql's BinlogSyncer.close),
	// which waits for a server that cannot be reached (a partition) up to its dial
	// timeout: a stop or a lost lock does not wait for that.
	defer closeSoon(syncer)

	var streamer *replication.BinlogStreamer
	if start.GTID != "" {
		gset, perr := mysql.ParseGTIDSet(s.cfg.Flavor, start.GTID)
		if perr != nil {
			return fmt.Errorf("%w: checkpoint GTID set %q: %v", source.ErrPermanent, start.GTID, perr)
		}
		streamer, err = syncer.StartSyncGTID(gset)
	} else {
		streamer, err = syncer.StartSync(mysql.Position{Name: start.File, Pos: start.Pos})
	}
	if err != nil {
		return classify(err, start)
	}
	s.file, s.epoch = start.File, start.Epoch
	if s.file != "" {
		if s.fileIdx, err = start.SeqFile(); err != nil {
			return fmt.Errorf("%w: %v", source.ErrPermanent, err)
		}
	}
	s.txnRows = 0
	s.txn++
	s.grp.reset()
	s.prepared = nil
	s.lastEnd = start
	gtid := start.GTID
	for {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return classify(err, s.at(0, gtid))
		}
		if err := s.event(ctx, ev, &gtid, h); err != nil {
			return err
		}
	}
}

// newSyncer is the binlog reader of the source, as a replica with the configured
// server id; row events of tables that are not mirrored are not decoded.
func (s *Source) newSyncer() (*replication.BinlogSyncer, error) {
	host, portStr, err := net.SplitHostPort(s.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: source.addr: %v", source.ErrPermanent, err)
	}
	port, _ := strconv.Atoi(portStr)
	tc, err := s.cfg.TLS.Config(config.HostOf(s.cfg.Addr))
	if err != nil {
		return nil, fmt.Errorf("%w: source.tls: %v", source.ErrPermanent, err)
	}
	return replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		TLSConfig:               tc,
		ServerID:                s.cfg.ServerID,
		Flavor:                  s.cfg.Flavor,
		Host:                    host,
		Port:                    uint16(port),
		User:                    s.cfg.User,
		Password:                s.cfg.Password,
		Charset:                 "utf8mb4",
		HeartbeatPeriod:         s.cfg.HeartbeatPeriod,
		ReadTimeout:             s.cfg.ReadTimeout,
		TimestampStringLocation: s.tz,
		UseDecimal:              false,
		ParseTime:               false,
		DisableRetrySync:        true,
		// Decoded events waiting for the reader: each holds its rows' values, so this
		// bounds memory (64 of ~100 rows each: BenchmarkBigTransaction's peak RSS
		// 186-197 -> 176-183 MB against 256, W1's time unchanged).
		EventCacheCount: 64,
		Logger:          slogDiscard(),
		RowsEventDecodeFunc: func(ev *replication.RowsEvent, data []byte) error {
			pos, err := ev.DecodeHeader(data)
			if err != nil {
				return err
			}
			name := string(ev.Table.Schema) + "." + string(ev.Table.Table)
			if _, ok := s.tables[name]; !ok && s.settlements[name] == nil {
				return nil
			}
			return ev.DecodeData(pos, data)
		},
	}), nil
}

// at is the position pos in the current file.
func (s *Source) at(pos uint32, gtid string) source.Position {
	return source.Position{File: s.file, Pos: pos, GTID: gtid, Epoch: s.epoch}
}

// event handles one binlog event; gtid is the GTID set after the last group read.
func (s *Source) event(ctx context.Context, ev *replication.BinlogEvent, gtid *string, h Handler) error {
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		next := source.Position{File: string(e.NextLogName), Pos: uint32(e.Position), Epoch: s.epoch}
		if s.file != "" && ev.Header.LogPos != 0 && next.Before(s.at(0, "")) { // not the fake rotate that starts a stream
			// The server's binlog was reset under the stream: its sequences would order
			// before everything written so far.
			return fmt.Errorf("%w: the stream moved from %s back to %s", ErrHistoryChanged, s.file, next.File)
		}
		s.file = next.File
		var err error
		if s.fileIdx, err = s.at(0, "").SeqFile(); err != nil {
			return fmt.Errorf("%w: %v", source.ErrPermanent, err)
		}
	case *replication.MariadbGTIDEvent:
		s.grp.reset()
		if !e.IsStandalone() || e.Flags&mariadbFlPreparedXA != 0 {
			mode := holdNone
			if e.Flags&mariadbFlTransactional == 0 {
				mode = holdWhole // it touched a non-transactional table: it may end in ROLLBACK
			}
			s.grp.begin(e.Flags&mariadbFlPreparedXA != 0, mode)
			s.grp.ddl = e.Flags&mariadbFlDDL != 0
		}
	case *replication.TransactionPayloadEvent:
		// MySQL's binlog_transaction_compression: go-mysql gives the inner events without
		// positions of their own, which invsync's sequences need.
		return fmt.Errorf("%w: a compressed transaction at %s:%d (binlog_transaction_compression=ON) (fix: SET GLOBAL binlog_transaction_compression=OFF on the source; invsync cannot order the rows inside one)",
			source.ErrPermanent, s.file, ev.Header.LogPos)
	case *replication.RowsEvent:
		return s.rows(ctx, ev.Header, e, h)
	case *replication.XIDEvent:
		if e.GSet != nil {
			*gtid = e.GSet.String()
		}
		return s.end(ctx, ev.Header, *gtid, h)
	case *replication.QueryEvent:
		if e.GSet != nil {
			*gtid = e.GSet.String()
		}
		return s.query(ctx, ev.Header, e, *gtid, h)
	default:
		switch ev.Header.EventType {
		case replication.XA_PREPARE_LOG_EVENT:
			return s.prepare(ctx, ev, *gtid, h)
		case replication.HEARTBEAT_EVENT, replication.HEARTBEAT_LOG_EVENT_V2:
			return h.Heartbeat(ctx)
		}
	}
	return nil
}

// commit reports the end of the current transaction at hdr (with the position a
// checkpoint may hold, see resumeAt) and starts the next one.
func (s *Source) commit(ctx context.Context, hdr *replication.EventHeader, gtid string, h Handler) error {
	s.lastEnd = s.at(hdr.LogPos, gtid)
	c := Commit{Txn: s.txn, Rows: s.txnRows, Pos: s.resumeAt(s.lastEnd), Time: time.Unix(int64(hdr.Timestamp), 0)}
	s.txn++
	s.txnRows = 0
	return h.Commit(ctx, c)
}

// rows hands the rows of a rows event of a mirrored table to the transaction being read.
func (s *Source) rows(ctx context.Context, hdr *replication.EventHeader, e *replication.RowsEvent, h Handler) error {
	name := string(e.Table.Schema) + "." + string(e.Table.Table)
	t, ok := s.tables[name]
	if !ok {
		if st := s.settlements[name]; st != nil {
			return s.settleRows(ctx, hdr, e, st, h)
		}
		return nil
	}
	if len(s.reserving) > 0 {
		s.holdForSettlements(t.Index, false)
	}
	d, err := s.decoderOf(t, hdr, e)
	if err != nil {
		return err
	}
	op, err := s.rowsOp(hdr)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		return fmt.Errorf("%w: %s row at %s:%d: %v", source.ErrPermanent, t.FullName(), s.file, hdr.LogPos, err)
	}
	emit := func(c layout.Change, row []any) error {
		s.txnRows++
		r := Row{Txn: s.txn, Table: t.Index, Change: c}
		if c.Op == layout.OpUpsert {
			r.Image = Image{dec: d, row: row}
		} else if s.grp.holding {
			r.before = Image{dec: d, row: row}
		}
		return s.row(ctx, r, h)
	}
	seq := layout.Seq{File: s.fileIdx, Pos: hdr.LogPos}
	switch op {
	case "insert", "delete":
		for i, row := range e.Rows {
			seq.Index = uint32(i)
			c, err := d.change(t, row, seq, op == "delete")
			if err != nil {
				return fail(err)
			}
			if err := emit(c, row); err != nil {
				return err
			}
		}
	case "update":
		if len(e.Rows)%2 != 0 {
			return fail(errors.New("update event with an odd number of row images"))
		}
		for i := 0; i+1 < len(e.Rows); i += 2 {
			before, after := e.Rows[i], e.Rows[i+1]
			seq.Index = uint32(i + 1)
			c, err := d.change(t, after, seq, false)
			if err != nil {
				return fail(err)
			}
			if !d.samePK(before, after) {
				// The primary key changed: the old key is deleted first.
				seq.Index = uint32(i)
				dc, err := d.change(t, before, seq, true)
				if err != nil {
					return fail(err)
				}
				if dc.Key != c.Key {
					if err := emit(dc, before); err != nil {
						return err
					}
				}
			}
			if err := emit(c, after); err != nil {
				return err
			}
		}
	}
	return nil
}

// decoderOf returns the decoder of e's table map, made anew when the map changed.
func (s *Source) decoderOf(t *source.Table, hdr *replication.EventHeader, e *replication.RowsEvent) (*decoder, error) {
	d := s.decoders[e.TableID]
	if d == nil || !d.matches(e.Table) {
		var err error
		if d, err = newDecoder(t, e.Table, s.cfg.Flavor == "mariadb"); err != nil {
			return nil, fmt.Errorf("%w: %v at %s:%d", source.ErrPermanent, err, s.file, hdr.LogPos)
		}
		s.decoders[e.TableID] = d
	}
	return d, nil
}

// rowsOp names the operation of a rows event: insert, update or delete.
func (s *Source) rowsOp(hdr *replication.EventHeader) (string, error) {
	switch hdr.EventType {
	case replication.WRITE_ROWS_EVENTv0, replication.WRITE_ROWS_EVENTv1, replication.WRITE_ROWS_EVENTv2, replication.MARIADB_WRITE_ROWS_COMPRESSED_EVENT_V1:
		return "insert", nil
	case replication.UPDATE_ROWS_EVENTv0, replication.UPDATE_ROWS_EVENTv1, replication.UPDATE_ROWS_EVENTv2, replication.MARIADB_UPDATE_ROWS_COMPRESSED_EVENT_V1:
		return "update", nil
	case replication.DELETE_ROWS_EVENTv0, replication.DELETE_ROWS_EVENTv1, replication.DELETE_ROWS_EVENTv2, replication.MARIADB_DELETE_ROWS_COMPRESSED_EVENT_V1:
		return "delete", nil
	}
	return "", fmt.Errorf("%w: unsupported rows event %s at %s:%d", source.ErrPermanent, hdr.EventType, s.file, hdr.LogPos)
}

// classify wraps a stream error as permanent when retrying cannot help, with the fix.
func classify(err error, at source.Position) error {
	var me *mysql.MyError
	if errors.As(err, &me) {
		switch me.Code {
		case mysql.ER_ACCESS_DENIED_ERROR, mysql.ER_DBACCESS_DENIED_ERROR:
			return fmt.Errorf("%w: source refused the login: %s (fix: check source.user and source.password; the password is never logged)", source.ErrPermanent, me.Message)
		case mysql.ER_SPECIFIC_ACCESS_DENIED_ERROR:
			return fmt.Errorf("%w: %s (fix: GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* to the invsync user; see README)", source.ErrPermanent, me.Message)
		case mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG:
			return fmt.Errorf("%w: %w: reading from %s: %s (fix: the server purged it; start from a fresh snapshot, see README)", source.ErrPermanent, source.ErrPositionLost, at, me.Message)
		}
	}
	return fmt.Errorf("binlog stream at %s: %w", at, err)
}

// closeSoon closes syncer, waiting at most closeWait for it.
func closeSoon(syncer *replication.BinlogSyncer) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		syncer.Close()
	}()
	select {
	case <-done:
	case <-time.After(closeWait):
	}
}

// closeWait bounds how long closing the binlog stream may hold up a stop.
const closeWait = time.Second
