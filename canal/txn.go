package canal

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// Transaction boundaries (NOTES-go-mysql.md, trap 9). Only three things end a
// transaction: an XID event, a COMMIT query event, and a statement outside a
// transaction (a DDL). Everything else that a transaction can hold is followed here:
//
//   - ROLLBACK TO SAVEPOINT is logged (with the rows after the savepoint before it) only
//     when the transaction also changed a non-transactional table; a ROLLBACK query event
//     ends only such a transaction. So rows that may still be rolled back are held in
//     memory until the transaction ends, and dropped by ROLLBACK TO or ROLLBACK: on
//     MariaDB the whole group when its GTID event is not flagged FL_TRANSACTIONAL (it
//     touched a non-transactional table), nothing otherwise; on MySQL, whose GTID events
//     do not say, up to holdLimit rows of every transaction and, after a SAVEPOINT, every
//     row up to maxHold.
//   - Holding is bounded: past its limit a transaction's rows stream, and if a part of
//     it that was handed over is rolled back after all, the tables those rows belong to
//     are reloaded (Handler.Reload, with the stream paused), so memory stays bounded and
//     nothing rolled back stays in Redis.
//   - XA: the rows of an XA transaction's prepare group (MariaDB 10.5+ and MySQL 8 log
//     it apart from the XA COMMIT, possibly far apart) are held until its XA COMMIT,
//     and dropped at XA ROLLBACK. While a prepared transaction with rows is pending, every
//     commit is reported with the position before its prepare group: the checkpoint
//     stays there, so a restart reads the prepare group again.
//
// The rows of an XA transaction are handed over at its XA COMMIT with the sequence of
// the XA COMMIT event (row index in the order they were read): that is when they became
// visible, and a reload stamped with a position between prepare and commit (which could
// not see them) must not win over them. An XA transaction too large to hold streams
// its rows and has its tables reloaded at its end.

// MariaDB's GTID event flags (sql/log_event.h).
const (
	mariadbFlTransactional = 4
	mariadbFlDDL           = 32
	mariadbFlPreparedXA    = 64
)

// holdLimit is how many rows of a transaction that may still end in ROLLBACK (MySQL,
// whose GTID events do not say) are held before they start to stream.
const holdLimit = 20_000

// maxHold is how many rows are held at most in a transaction that must be held to its
// end (after a SAVEPOINT on MySQL, a MariaDB group that touched a non-transactional
// table, an XA prepare group); past it they stream (see above).
var maxHold = 200_000

// maxHeldIndex bounds the row index of a sequence (layout.Seq has seven digits; the
// greatest is kept for repairs).
const maxHeldIndex = 9_999_998

// group is the state of the event group (transaction) being read.
type group struct {
	open     bool  // between its start (BEGIN, a non-standalone GTID, XA START) and its end
	ddl      bool  // a group that holds a DDL (MariaDB FL_DDL: CREATE ... SELECT)
	holding  bool  // rows are held instead of handed over
	holdAll  bool  // ... until the end (up to maxHold)
	streamed bool  // rows that could be rolled back were handed over (holding overflowed)
	mayRedo  bool  // ROLLBACK TO SAVEPOINT can be logged in it (not known to be transactional-only)
	held     []Row // rows not handed over yet
	// settles are the settlements of a transaction that streams (held no longer): they
	// are handed over at its end, after its changes.
	settles    []Row
	savepoints []savepoint
	emitted    []bool // by table index: rows of it were handed over (kept, cleared, between groups)
}

type savepoint struct {
	name string
	at   int // len(held) when it was set; -1 once rows after it may have been handed over
}

// preparedXA is a prepared XA transaction whose rows wait for its XA COMMIT.
type preparedXA struct {
	xid      string
	rows     []Row
	streamed map[int]bool    // tables whose rows were handed over already (too many to hold)
	before   source.Position // the position before its prepare group: where a restart must read from
	since    time.Time       // when it was read
}

func (g *group) reset() {
	clear(g.emitted)
	clear(g.settles)
	*g = group{held: g.held[:0], savepoints: g.savepoints[:0], emitted: g.emitted, settles: g.settles[:0]}
	if cap(g.held) > 4096 {
		g.held = nil // do not keep a big transaction's buffer
	}
}

// emittedTables returns the tables whose rows were handed over (nil for none).
func (g *group) emittedTables() map[int]bool {
	var m map[int]bool
	for i, e := range g.emitted {
		if e {
			if m == nil {
				m = map[int]bool{}
			}
			m[i] = true
		}
	}
	return m
}

// holdMode says how a transaction's rows are held from its start.
type holdMode int

const (
	holdNone  holdMode = iota // it cannot end in ROLLBACK (MariaDB: flagged transactional)
	holdSome                  // up to holdLimit rows (MySQL: nothing tells)
	holdWhole                 // until its end (XA, MariaDB: not flagged transactional)
)

// begin marks the start of a transaction (see the top of this file for mode).
func (g *group) begin(xa bool, mode holdMode) {
	g.open = true
	if xa { // an XA prepare group: its rows wait for the XA COMMIT
		mode = holdWhole
	}
	g.holding = mode != holdNone
	g.holdAll = mode == holdWhole
	g.mayRedo = mode != holdNone
}

// row hands r over, or holds it.
func (s *Source) row(ctx context.Context, r Row, h Handler) error {
	g := &s.grp
	if !g.holding {
		return s.handOver(ctx, r, h)
	}
	g.held = append(g.held, r)
	limit := holdLimit
	if g.holdAll {
		limit = maxHold
	}
	if len(g.held) < limit {
		return nil
	}
	// Too many to hold: stream them. A rollback of what was handed over reloads.
	if g.holdAll || len(g.savepoints) > 0 {
		s.log.Warn("a transaction too large to hold in memory streams before its end; should it be rolled back, its tables are reloaded",
			zap.Int("rows", len(g.held)), zap.String("binlog_file", s.file))
	}
	g.holding, g.streamed = false, true
	for i := range g.savepoints {
		g.savepoints[i].at = -1
	}
	held := g.held
	g.held = g.held[:0]
	for _, r := range attachSettlements(held) {
		if err := s.handOver(ctx, r, h); err != nil {
			return err
		}
	}
	clear(held)
	return nil
}

func (s *Source) handOver(ctx context.Context, r Row, h Handler) error {
	g := &s.grp
	if r.Table >= len(g.emitted) {
		g.emitted = append(g.emitted, make([]bool, r.Table+1-len(g.emitted))...)
	}
	g.emitted[r.Table] = true // a slice store: this runs for every row
	return h.Row(ctx, r)
}

// heldTables adds the tables of rows into m.
func heldTables(m map[int]bool, rows []Row) map[int]bool {
	if m == nil {
		m = map[int]bool{}
	}
	for _, r := range rows {
		m[r.Table] = true
	}
	return m
}

// statementKind classifies a query event.
type statementKind int

const (
	stmtOther statementKind = iota // a DDL, or a statement inside a transaction
	stmtBegin
	stmtCommit
	stmtRollback
	stmtSavepoint
	stmtRollbackTo
	stmtRelease
	stmtXAStart
	stmtXACommit
	stmtXARollback
	stmtXAOther // XA END, XA PREPARE as a query
)

// classifyStatement returns the kind of q and its argument (a savepoint name or an xid).
func classifyStatement(q string) (statementKind, string) {
	q = strings.TrimSpace(q)
	q = strings.TrimRight(q, "; \t\r\n")
	words := strings.Fields(q)
	if len(words) == 0 {
		return stmtOther, ""
	}
	w0 := strings.ToUpper(words[0])
	rest := func(n int) string {
		// The text after the first n words, as written.
		r := q
		for i := 0; i < n; i++ {
			r = strings.TrimSpace(r)
			if j := strings.IndexAny(r, " \t\r\n"); j >= 0 {
				r = r[j:]
			} else {
				r = ""
			}
		}
		return strings.TrimSpace(r)
	}
	switch w0 {
	case "BEGIN":
		if len(words) == 1 || strings.EqualFold(words[1], "WORK") {
			return stmtBegin, ""
		}
	case "START":
		if len(words) >= 2 && strings.EqualFold(words[1], "TRANSACTION") {
			return stmtBegin, ""
		}
	case "COMMIT":
		return stmtCommit, ""
	case "ROLLBACK":
		if len(words) >= 2 && strings.EqualFold(words[1], "TO") {
			n := 2
			if len(words) >= 3 && strings.EqualFold(words[2], "SAVEPOINT") {
				n = 3
			}
			return stmtRollbackTo, identifier(rest(n))
		}
		return stmtRollback, ""
	case "SAVEPOINT":
		return stmtSavepoint, identifier(rest(1))
	case "RELEASE":
		if len(words) >= 3 && strings.EqualFold(words[1], "SAVEPOINT") {
			return stmtRelease, identifier(rest(2))
		}
	case "XA":
		if len(words) < 2 {
			return stmtOther, ""
		}
		switch strings.ToUpper(words[1]) {
		case "START", "BEGIN":
			return stmtXAStart, normalizeXID(rest(2))
		case "COMMIT":
			return stmtXACommit, normalizeXID(rest(2))
		case "ROLLBACK":
			return stmtXARollback, normalizeXID(rest(2))
		default:
			return stmtXAOther, ""
		}
	}
	return stmtOther, ""
}

// identifier unquotes a savepoint name; names compare case-insensitively.
func identifier(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '`' && s[len(s)-1] == '`' {
		s = strings.ReplaceAll(s[1:len(s)-1], "``", "`")
	}
	return strings.ToLower(s)
}

// normalizeXID brings an xid as a statement writes it (X'..',X'..',N, possibly followed
// by ONE PHASE or other words) to one form, so that the prepare and the commit match.
func normalizeXID(s string) string {
	s = strings.TrimSpace(s)
	for _, suffix := range []string{"ONE PHASE", "JOIN", "RESUME", "SUSPEND", "FOR MIGRATE", "SUSPEND FOR MIGRATE"} {
		if len(s) > len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix) {
			s = strings.TrimSpace(s[:len(s)-len(suffix)])
		}
	}
	return strings.ToLower(strings.ReplaceAll(s, " ", ""))
}

// xidOfPrepare decodes the xid of an XA_PREPARE_LOG_EVENT (one_phase byte, format id,
// gtrid length, bqual length, data) as a statement writes it.
func xidOfPrepare(data []byte) (xid string, onePhase bool, ok bool) {
	if len(data) < 13 {
		return "", false, false
	}
	onePhase = data[0] != 0
	format := int32(binary.LittleEndian.Uint32(data[1:]))
	gl := int(binary.LittleEndian.Uint32(data[5:]))
	bl := int(binary.LittleEndian.Uint32(data[9:]))
	if gl < 0 || bl < 0 || 13+gl+bl > len(data) {
		return "", onePhase, false
	}
	g, b := data[13:13+gl], data[13+gl:13+gl+bl]
	return fmt.Sprintf("x'%s',x'%s',%d", hex.EncodeToString(g), hex.EncodeToString(b), format), onePhase, true
}

// resumeAt is the position a checkpoint taken after a commit at pos may hold: pos, or,
// while a prepared XA transaction with rows is pending, the position before the oldest
// one's prepare group.
func (s *Source) resumeAt(pos source.Position) source.Position {
	if len(s.prepared) > 0 {
		if p := s.prepared[0]; time.Since(p.since) > time.Minute && time.Since(s.xaWarned) > time.Minute {
			s.xaWarned = time.Now()
			s.log.Warn("a prepared XA transaction holds the checkpoint before its prepare (restarts read from there) until it is committed or rolled back (XA RECOVER lists it)",
				zap.String("xid", p.xid), zap.Duration("prepared_for", time.Since(p.since).Round(time.Second)), zap.String("checkpoint", p.before.String()))
		}
		return s.prepared[0].before
	}
	return pos
}

// end ends the current group at hdr: its held rows are handed over and the transaction
// is committed.
func (s *Source) end(ctx context.Context, hdr *replication.EventHeader, gtid string, h Handler) error {
	for _, r := range attachSettlements(s.grp.held) {
		if err := h.Row(ctx, r); err != nil {
			return err
		}
	}
	for _, r := range attachSettlements(s.grp.settles) {
		s.txnRows++
		if err := h.Row(ctx, r); err != nil {
			return err
		}
	}
	s.grp.reset()
	return s.commit(ctx, hdr, gtid, h)
}

// rollback ends the current group without applying it: held rows are dropped; tables
// whose rows were already handed over are reloaded.
func (s *Source) rollback(ctx context.Context, hdr *replication.EventHeader, gtid string, h Handler, why string) error {
	emitted := s.grp.emittedTables()
	if n := len(s.grp.held); n > 0 {
		s.log.Info("transaction rolled back: its held rows are dropped", zap.String("statement", why), zap.Int("rows", n),
			zap.String("binlog_file", s.file), zap.Uint32("binlog_pos", hdr.LogPos))
	}
	s.grp.reset()
	if err := s.heal(ctx, emitted, s.at(hdr.LogPos, gtid), why, h); err != nil {
		return err
	}
	return s.commit(ctx, hdr, gtid, h)
}

// heal reloads the tables of rows that were rolled back after they were handed over
// (they reached Redis or may have). at is the rollback's position.
func (s *Source) heal(ctx context.Context, tables map[int]bool, at source.Position, why string, h Handler) error {
	for _, t := range s.tables {
		if !tables[t.Index] {
			continue
		}
		s.log.Warn("rows of a rolled-back transaction were already applied: reloading the table", zap.String("table", t.FullName()),
			zap.String("statement", why), zap.String("binlog_file", at.File), zap.Uint32("binlog_pos", at.Pos))
		if err := h.Reload(ctx, t, at, "rollback"); err != nil {
			return err
		}
	}
	return nil
}

// query handles a query event.
func (s *Source) query(ctx context.Context, hdr *replication.EventHeader, e *replication.QueryEvent, gtid string, h Handler) error {
	q := string(e.Query)
	kind, arg := classifyStatement(q)
	g := &s.grp
	switch kind {
	case stmtBegin:
		if !g.open {
			g.begin(false, holdSome)
		}
		return nil
	case stmtXAStart:
		g.begin(true, holdWhole)
		return nil
	case stmtXAOther:
		return nil
	case stmtCommit:
		return s.end(ctx, hdr, gtid, h)
	case stmtRollback:
		return s.rollback(ctx, hdr, gtid, h, "ROLLBACK")
	case stmtSavepoint:
		g.setSavepoint(arg)
		return nil
	case stmtRelease:
		for i := len(g.savepoints) - 1; i >= 0; i-- {
			if g.savepoints[i].name == arg {
				g.savepoints = g.savepoints[:i]
				break
			}
		}
		return nil
	case stmtRollbackTo:
		return s.rollbackTo(ctx, hdr, gtid, h, arg)
	case stmtXACommit, stmtXARollback:
		return s.completeXA(ctx, hdr, gtid, h, arg, kind == stmtXACommit)
	}
	return s.ddlQuery(ctx, hdr, e, q, gtid, h)
}

// setSavepoint records SAVEPOINT name, holding what follows if it can be rolled back to.
func (g *group) setSavepoint(name string) {
	if g.mayRedo || !g.open {
		// A ROLLBACK TO it may be logged: hold what follows (MySQL, or a MariaDB group
		// that touched a non-transactional table, which is held already).
		if !g.streamed {
			g.holding, g.holdAll = true, true
		}
		at := len(g.held)
		if g.streamed {
			at = -1
		}
		g.savepoints = append(g.savepoints, savepoint{name: name, at: at})
	}
}

// rollbackTo handles ROLLBACK TO SAVEPOINT arg: rows after it are dropped, or reloaded.
func (s *Source) rollbackTo(ctx context.Context, hdr *replication.EventHeader, gtid string, h Handler, arg string) error {
	g := &s.grp
	for i := len(g.savepoints) - 1; i >= 0; i-- {
		if g.savepoints[i].name != arg {
			continue
		}
		at := g.savepoints[i].at
		g.savepoints = g.savepoints[:i+1]
		if at < 0 {
			// Rows after it were handed over: drop what is held, reload what was not.
			tables := heldTables(g.emittedTables(), g.held)
			clear(g.held)
			g.held = g.held[:0]
			return s.heal(ctx, tables, s.at(hdr.LogPos, gtid), "ROLLBACK TO "+arg, h)
		}
		if dropped := len(g.held) - at; dropped > 0 {
			s.log.Info("ROLLBACK TO SAVEPOINT: the rows after the savepoint are dropped", zap.String("savepoint", arg),
				zap.Int("rows", dropped), zap.String("binlog_file", s.file), zap.Uint32("binlog_pos", hdr.LogPos))
		}
		clear(g.held[at:])
		g.held = g.held[:at]
		return nil
	}
	// A savepoint this stream does not know by that name (the server compares names
	// with its own collation, accents and all): every row of the transaction may be
	// rolled back. Its tables are reloaded once the transaction is read whole, with
	// the rows held so far applied first (the reload, stamped later, wins over them).
	s.log.Warn("ROLLBACK TO a savepoint invsync did not match: the transaction's tables are reloaded", zap.String("savepoint", arg),
		zap.String("binlog_file", s.file), zap.Uint32("binlog_pos", hdr.LogPos))
	return s.heal(ctx, heldTables(g.emittedTables(), g.held), s.at(hdr.LogPos, gtid), "ROLLBACK TO "+arg, h)
}

// ddlQuery handles the other statements: a DDL, or a leftover inside a transaction.
func (s *Source) ddlQuery(ctx context.Context, hdr *replication.EventHeader, e *replication.QueryEvent, q, gtid string, h Handler) error {
	g := &s.grp
	opensTxn := isCreateSelect(q)
	if g.open && !g.ddl {
		// Another statement inside a transaction (statement-logged leftovers): it does
		// not end the transaction.
		return nil
	}
	// A DDL. On its own it ends its group; a CREATE ... SELECT is followed by its rows in
	// the same group (MariaDB flags the group FL_DDL; MySQL 8.0.21+ logs the CREATE with
	// START TRANSACTION), which ends at its XID.
	at := s.at(hdr.LogPos, gtid)
	for _, c := range s.ddl(string(e.Schema), q) {
		if err := h.TableChanged(ctx, c.table, at, c.reload); err != nil {
			return err
		}
	}
	if g.ddl {
		return nil
	}
	if opensTxn {
		g.begin(false, holdNone)
		return nil
	}
	return s.end(ctx, hdr, gtid, h)
}

// isCreateSelect reports whether a statement is MySQL's atomic CREATE TABLE ... SELECT,
// logged as "CREATE ... START TRANSACTION" with its rows and an XID after it.
func isCreateSelect(q string) bool {
	q = strings.TrimRight(strings.TrimSpace(q), "; ")
	return len(q) > 17 && strings.EqualFold(q[len(q)-17:], "START TRANSACTION") && strings.HasPrefix(strings.ToUpper(strings.TrimSpace(q)), "CREATE")
}

// prepare ends an XA transaction's prepare group (an XA_PREPARE_LOG_EVENT): its rows
// wait for the XA COMMIT.
func (s *Source) prepare(ctx context.Context, ev *replication.BinlogEvent, gtid string, h Handler) error {
	var data []byte
	if ge, ok := ev.Event.(*replication.GenericEvent); ok {
		data = ge.Data
	}
	xid, onePhase, ok := xidOfPrepare(data)
	if onePhase {
		// XA COMMIT ... ONE PHASE logged as a prepare event: it commits.
		return s.end(ctx, ev.Header, gtid, h)
	}
	g := &s.grp
	streamed := g.emittedTables()
	if len(g.held) == 0 && len(g.settles) == 0 && streamed == nil {
		// Nothing mirrored in it: nothing to wait for.
		g.reset()
		s.lastEnd = s.at(ev.Header.LogPos, gtid)
		return nil
	}
	if !ok {
		return fmt.Errorf("%w: an XA PREPARE event at %s:%d has no readable xid", source.ErrPermanent, s.file, ev.Header.LogPos)
	}
	p := &preparedXA{xid: xid, rows: append(append([]Row(nil), g.held...), g.settles...), before: s.lastEnd, since: time.Now()}
	s.prepared = append(s.prepared, p)
	s.log.Info("XA transaction prepared: its rows wait for its XA COMMIT (the checkpoint stays before it meanwhile)",
		zap.String("xid", xid), zap.Int("rows", len(p.rows)), zap.String("binlog_file", s.file), zap.Uint32("binlog_pos", ev.Header.LogPos))
	if streamed != nil {
		// Too large to hold: its rows were handed over; their transaction is sealed now
		// (at the position before the prepare, which the checkpoint holds), and its
		// tables are reloaded at its end.
		p.streamed = streamed
		g.reset()
		return s.commit(ctx, ev.Header, gtid, h)
	}
	g.reset()
	s.lastEnd = s.at(ev.Header.LogPos, gtid)
	s.txn++ // the rows keep no transaction of their own until the XA COMMIT
	s.txnRows = 0
	return nil
}

// completeXA ends an XA COMMIT or XA ROLLBACK group.
func (s *Source) completeXA(ctx context.Context, hdr *replication.EventHeader, gtid string, h Handler, xid string, commit bool) error {
	var p *preparedXA
	for i, x := range s.prepared {
		if x.xid == xid {
			p = x
			s.prepared = append(s.prepared[:i], s.prepared[i+1:]...)
			break
		}
	}
	s.grp.reset()
	if p == nil {
		// Prepared before this stream's start without mirrored rows (a checkpoint stays
		// before a prepared transaction with rows), or one without mirrored rows.
		return s.commit(ctx, hdr, gtid, h)
	}
	if !commit {
		s.log.Info("XA ROLLBACK: the prepared rows are dropped", zap.String("xid", xid), zap.Int("rows", len(p.rows)))
		if err := s.heal(ctx, p.streamed, s.at(hdr.LogPos, gtid), "XA ROLLBACK", h); err != nil {
			return err
		}
		return s.commit(ctx, hdr, gtid, h)
	}
	if p.streamed != nil {
		// Rows handed over at their prepare carry its sequences: a reload stamped between
		// prepare and commit could have replaced them. Reload the tables after the commit.
		defer func() { p.rows = nil }()
		if err := s.heal(ctx, heldTables(p.streamed, p.rows), s.at(hdr.LogPos, gtid), "XA COMMIT", h); err != nil {
			return err
		}
		return s.commit(ctx, hdr, gtid, h)
	}
	if len(p.rows) > maxHeldIndex {
		return fmt.Errorf("%w: XA transaction %s has %d row changes, more than invsync can order at its commit (%d)", source.ErrPermanent, xid, len(p.rows), maxHeldIndex)
	}
	for i, r := range attachSettlements(p.rows) {
		r.Txn = s.txn
		r.Change.Seq = layout.Seq{File: s.fileIdx, Pos: hdr.LogPos, Index: uint32(i)}
		if r.Change.Op == layout.OpDelete {
			r.Change.Version = r.versionFor(r.Change.Seq)
		}
		s.txnRows++
		if err := h.Row(ctx, r); err != nil {
			return err
		}
	}
	return s.commit(ctx, hdr, gtid, h)
}

// versionFor renders the version of a held delete again for a new sequence (it derives
// from the position on a table without a version column).
func (r Row) versionFor(seq layout.Seq) string {
	if r.before.IsZero() {
		return r.Change.Version
	}
	return r.before.Version(seq)
}
