package snapshot

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
)

// Row is one row read from the source: as the snapshot would write it, and its primary
// key's parts (the text of each).
type Row struct {
	Change layout.Change
	PK     []string
}

// Rows reads a table in primary key order with keyset pagination (reconciliation).
type Rows struct {
	q     *tableQuery
	conn  *client.Conn
	chunk int
	pv    string
	after []string
	done  bool
}

// NewRows reads t through conn (a session of source.Config.Dial), chunk rows per
// query; positionVersion is _v for a table without a version column.
func NewRows(conn *client.Conn, t *source.Table, chunk int, positionVersion string) (*Rows, error) {
	q, err := newTableQuery(t)
	if err != nil {
		return nil, err
	}
	return &Rows{q: q, conn: conn, chunk: chunk, pv: positionVersion}, nil
}

// Next returns the next chunk; an empty one at the end.
func (r *Rows) Next() ([]Row, error) {
	b, err := r.NextBatch()
	if err != nil || b == nil {
		return nil, err
	}
	return b.Rows()
}

// Batch is a chunk read but not decoded yet (decoding can run on another goroutine
// while the next chunk is read).
type Batch struct {
	q   *tableQuery
	res *mysql.Result
	pv  string
}

// Len is the number of rows in the batch.
func (b *Batch) Len() int { return len(b.res.RowDatas) }

// Rows decodes the batch (once; it releases the batch's buffers).
func (b *Batch) Rows() ([]Row, error) {
	defer b.res.Close()
	rows, _, err := b.q.rows(b.res.RowDatas, b.pv)
	return rows, err
}

// NextBatch reads the next chunk without decoding it; nil at the end.
func (r *Rows) NextBatch() (*Batch, error) {
	if r.done {
		return nil, nil
	}
	q := r.q.base
	if r.after != nil {
		q += " WHERE (" + strings.Join(r.q.pkCols, ", ") + ") > (" + strings.Join(r.after, ", ") + ")"
	}
	res, err := r.conn.Execute(q + " ORDER BY " + strings.Join(r.q.pkCols, ", ") + " LIMIT " + strconv.Itoa(r.chunk))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.q.t.FullName(), err)
	}
	n := len(res.RowDatas)
	if n < r.chunk {
		r.done = true
	}
	if n == 0 {
		res.Close()
		return nil, nil
	}
	last, _, err := splitRow(res.RowDatas[n-1], len(r.q.cols))
	if err != nil {
		res.Close()
		return nil, fmt.Errorf("%s: %w", r.q.t.FullName(), err)
	}
	r.after = make([]string, len(r.q.pkAt))
	for p, i := range r.q.pkAt {
		r.after[p] = literal(r.q.cols[i], last[i])
	}
	return &Batch{q: r.q, res: res, pv: r.pv}, nil
}

func (q *tableQuery) rows(raws []mysql.RowData, pv string) ([]Row, [][]byte, error) {
	out := make([]Row, 0, len(raws))
	var last [][]byte
	for _, raw := range raws {
		vals, nulls, err := splitRow(raw, len(q.cols))
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", q.t.FullName(), err)
		}
		pk := make([]string, len(q.pkAt))
		for p, i := range q.pkAt {
			pk[p] = string(vals[i])
		}
		out = append(out, Row{Change: q.change(vals, nulls, pv, false), PK: pk})
		last = vals
	}
	return out, last, nil
}

// FetchRows reads the current rows of t with the given primary keys (each the text of
// its parts), as many per query as given; rows that do not exist are absent from the
// result, which is keyed by Redis key.
func FetchRows(conn *client.Conn, t *source.Table, pks [][]string, positionVersion string) (map[string]Row, error) {
	q, err := newTableQuery(t)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Row, len(pks))
	if len(pks) == 0 {
		return out, nil
	}
	tuples := make([]string, 0, len(pks))
	for _, pk := range pks {
		if len(pk) != len(q.pkAt) {
			return nil, fmt.Errorf("%s: primary key has %d parts, got %d", t.FullName(), len(q.pkAt), len(pk))
		}
		if !keyable(q, pk) {
			continue // no row has this key (see keyable)
		}
		lits := make([]string, len(pk))
		for p, i := range q.pkAt {
			lits[p] = literal(q.cols[i], []byte(pk[p]))
		}
		tuples = append(tuples, "("+strings.Join(lits, ", ")+")")
	}
	if len(tuples) == 0 {
		return out, nil
	}
	res, err := conn.Execute(q.base + " WHERE (" + strings.Join(q.pkCols, ", ") + ") IN (" + strings.Join(tuples, ", ") + ")")
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", t.FullName(), err)
	}
	defer res.Close()
	rows, _, err := q.rows(res.RowDatas, positionVersion)
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		out[r.Change.Key] = r
	}
	return out, nil
}

// keyable reports whether pk can be the key of a row: the text of a character column is
// read as UTF-8, so a key part that is not valid UTF-8 (a key written from a charset's
// raw bytes by an older invsync) names no row, and as a literal it would make the query
// fail ("Illegal mix of collations").
func keyable(q *tableQuery, pk []string) bool {
	for p, i := range q.pkAt {
		switch q.cols[i].DataType {
		case "binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit":
			continue
		}
		if !utf8.ValidString(pk[p]) {
			return false
		}
	}
	return true
}
