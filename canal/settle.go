package canal

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// Settlements (reservations, see layout/holds.go). The application confirms an order in
// one MySQL transaction that takes the stock (an UPDATE of the mirrored row) and inserts
// a row into its settlement table. The source reads the settlement table's inserts as
// settlements of the stock rows they name, never as rows to mirror. The rows of a
// transaction that touches a table with reservations or a settlement table are held until
// its end; there each settlement is attached to the transaction's last change of its
// stock row (layout.Change.Settles), so that the worker writes the new stock and ends the
// hold in one script call; a settlement whose stock row did not change in the
// transaction is handed over alone (layout.OpSettle).

// Settlement is a settlement table and how its rows name an order of a stock table.
type Settlement struct {
	// Table is the settlement table's definition (source.LoadTables), Stock the table
	// whose rows its orders take stock from.
	Table, Stock *source.Table
	// Order, Quantity and User (optional) are its columns of the order id, the units and
	// the buyer; Key its columns of the stock row's primary key, in key order.
	Order, Quantity, User string
	Key                   []string
}

// WithSettlements makes the source read settlement tables (see Settlement); invalid, if
// not nil, is called for each settlement row that cannot be read (logged and skipped:
// its hold then expires, and reconcile reports it as settled_hold).
func (s *Source) WithSettlements(sts []Settlement, invalid func()) *Source {
	s.settleInvalid = invalid
	for i := range sts {
		st := &sts[i]
		s.settlements[st.Table.FullName()] = st
		s.reserving[st.Stock.Index] = true
	}
	return s
}

// holdForSettlements starts holding the current transaction's rows to its end (up to
// maxHold) when a row of a table with reservations or of a settlement table is read.
func (s *Source) holdForSettlements(table int, settlement bool) {
	if g := &s.grp; !g.holdAll && (settlement || s.reserving[table]) && !g.streamed {
		g.holding, g.holdAll = true, true
	}
}

// settleRows turns the inserts of a settlement table into settlement rows of the
// transaction (held to its end, see holdForSettlements).
func (s *Source) settleRows(ctx context.Context, hdr *replication.EventHeader, e *replication.RowsEvent, st *Settlement, h Handler) error {
	op, err := s.rowsOp(hdr)
	if err != nil || op != "insert" {
		return err // updates and deletes of settlement rows settle nothing
	}
	s.holdForSettlements(st.Stock.Index, true)
	d, err := s.decoderOf(st.Table, hdr, e)
	if err != nil {
		s.invalidSettlements(st, hdr, len(e.Rows), err)
		return nil
	}
	for i, row := range e.Rows {
		r, err := d.settlement(st, row)
		if err != nil {
			s.invalidSettlements(st, hdr, 1, err)
			continue
		}
		r.Txn, r.Change.Seq = s.txn, layout.Seq{File: s.fileIdx, Pos: hdr.LogPos, Index: uint32(i)}
		if !s.grp.holding {
			// The transaction streams (too large to hold): its settlements wait for its
			// end, after its stock changes (available may dip meanwhile, never rise).
			s.grp.settles = append(s.grp.settles, r)
			continue
		}
		s.txnRows++
		if err := s.row(ctx, r, h); err != nil {
			return err
		}
	}
	return nil
}

// invalidSettlements logs and counts n settlement rows that cannot be read; they are
// skipped, not a reason to stop the stream.
func (s *Source) invalidSettlements(st *Settlement, hdr *replication.EventHeader, n int, err error) {
	s.log.Error("a settlement row cannot be read: skipped (its hold expires; reconcile reports it)",
		zap.String("table", st.Table.FullName()), zap.String("binlog_file", s.file), zap.Uint32("binlog_pos", hdr.LogPos), zap.Int("rows", n), zap.Error(err))
	if s.settleInvalid != nil {
		for range n {
			s.settleInvalid()
		}
	}
}

// settlement renders a settlement row: a Row of the stock table whose Change is an
// OpSettle of the stock row's key.
func (d *decoder) settlement(st *Settlement, row []any) (Row, error) {
	text := func(name string) (string, error) {
		for i := range d.cols {
			if strings.EqualFold(d.cols[i].name, name) && i < len(row) {
				v, ok, err := d.cols[i].render(row[i])
				if err == nil && !ok && !strings.EqualFold(name, st.User) {
					err = fmt.Errorf("column %s is NULL", name) // a NULL user is none
				}
				return v, err
			}
		}
		return "", fmt.Errorf("column %s is not in the binlog row", name)
	}
	order, err := text(st.Order)
	if err != nil {
		return Row{}, err
	}
	qtyText, err := text(st.Quantity)
	if err != nil {
		return Row{}, err
	}
	whole, frac, _ := strings.Cut(qtyText, ".") // a DECIMAL quantity such as 2.00
	qty, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || qty <= 0 || qty > layout.MaxHoldQty || strings.Trim(frac, "0") != "" {
		return Row{}, fmt.Errorf("quantity %q of order %s is not a positive integer", qtyText, order)
	}
	var user string
	if st.User != "" {
		if user, err = text(st.User); err != nil {
			return Row{}, err
		}
	}
	pk := make([]string, len(st.Key))
	for i, c := range st.Key {
		if pk[i], err = text(c); err != nil {
			return Row{}, err
		}
	}
	if strings.ContainsRune(order, '|') || strings.ContainsRune(user, '|') {
		return Row{}, fmt.Errorf("order id %q or user id %q contains '|'", order, user)
	}
	c := layout.Change{Key: layout.Key(st.Stock.KeyPrefix, pk), Op: layout.OpSettle,
		Settles: []layout.Settle{{Order: order, User: user, Qty: qty}}}
	return Row{Table: st.Stock.Index, Change: c, settling: true}, nil
}

// attachSettlements hands the settlements among rows (a transaction's held rows, in
// order) to the last change of their stock row, and returns the rows to hand over: the
// changes, then the settlements whose row did not change, alone (OpSettle).
func attachSettlements(rows []Row) []Row {
	var n int
	for i := range rows {
		if rows[i].settling {
			n++
		}
	}
	if n == 0 {
		return rows
	}
	last := map[string]int{} // key → index in rows of its last change
	for i := range rows {
		if !rows[i].settling {
			last[rows[i].Change.Key] = i
		}
	}
	out := rows[:0:0]
	var alone []Row
	for i := range rows {
		r := rows[i]
		if !r.settling {
			continue
		}
		if j, ok := last[r.Change.Key]; ok {
			rows[j].Change.Settles = append(rows[j].Change.Settles, r.Change.Settles...)
			continue
		}
		r.settling = false
		alone = append(alone, r)
	}
	for i := range rows {
		if !rows[i].settling {
			out = append(out, rows[i])
		}
	}
	return append(out, alone...)
}
