package canal

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
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

// WithSettlements makes the source read settlement tables (see Settlement).
func (s *Source) WithSettlements(sts []Settlement) *Source {
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
	d, err := s.decoderOf(st.Table, hdr, e)
	if err != nil {
		return err
	}
	s.holdForSettlements(st.Stock.Index, true)
	for i, row := range e.Rows {
		r, err := d.settlement(st, row)
		if err != nil {
			return fmt.Errorf("%w: %s settlement row at %s:%d: %v", source.ErrPermanent, st.Table.FullName(), s.file, hdr.LogPos, err)
		}
		r.Txn, r.Change.Seq = s.txn, layout.Seq{File: s.fileIdx, Pos: hdr.LogPos, Index: uint32(i)}
		s.txnRows++
		if err := s.row(ctx, r, h); err != nil {
			return err
		}
	}
	return nil
}

// settlement renders a settlement row: a Row of the stock table whose Change is an
// OpSettle of the stock row's key.
func (d *decoder) settlement(st *Settlement, row []any) (Row, error) {
	text := func(name string) (string, error) {
		for i := range d.cols {
			if strings.EqualFold(d.cols[i].name, name) && i < len(row) {
				v, ok, err := d.cols[i].render(row[i])
				if err == nil && !ok {
					err = fmt.Errorf("column %s is NULL", name)
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
	qty, err := strconv.ParseInt(qtyText, 10, 64)
	if err != nil || qty <= 0 {
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
