package canal

import (
	"fmt"
	"strconv"

	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
)

// key builds the row's Redis key (layout.Key, with its escaping of composite keys) into
// d's scratch buffer, so that a key costs one allocation: this runs for every row read.
func (d *decoder) key(t *source.Table, row []any) (string, error) {
	b := layout.AppendKeyStart(d.scratch[:0], t.KeyPrefix)
	for p, i := range d.pkIdx {
		if i >= len(row) {
			return "", fmt.Errorf("primary key column %d missing from row", i)
		}
		if row[i] == nil {
			return "", fmt.Errorf("primary key column %s is NULL", d.cols[i].name)
		}
		if p > 0 {
			b = append(b, ':')
		}
		var err error
		if len(d.pkIdx) == 1 {
			if b, err = d.cols[i].appendText(b, row[i]); err != nil {
				return "", err
			}
			continue
		}
		// A part of a composite key, escaped (layout.KeyInner).
		if d.part, err = d.cols[i].appendText(d.part[:0], row[i]); err != nil {
			return "", err
		}
		b = layout.AppendKeyPart(b, d.part)
	}
	b = layout.AppendKeyEnd(b)
	d.scratch = b
	return string(b), nil
}

func (d *decoder) change(t *source.Table, row []any, seq layout.Seq, del bool) (layout.Change, error) {
	key, err := d.key(t, row)
	if err != nil {
		return layout.Change{}, err
	}
	c := layout.Change{Key: key, Op: layout.OpUpsert, Seq: seq}
	if del {
		c.Op = layout.OpDelete
	}
	if d.version >= 0 {
		col := &d.cols[d.version]
		if i, ok := asInt64(row[d.version]); ok && i < 0 && !col.unsigned {
			return c, fmt.Errorf("version column %s is negative (%d); versions must be non-negative", col.name, i)
		}
	}
	if del {
		c.Version = d.versionText(row, seq)
	}
	// An upsert's version is rendered with its fields, by the worker that writes it.
	return c, nil
}

// versionText is _v for a row: the version column's text ("0" when NULL), or the
// number derived from the binlog position.
func (d *decoder) versionText(row []any, seq layout.Seq) string {
	if d.version < 0 {
		return strconv.FormatUint(layout.PositionVersion(seq), 10)
	}
	v, ok, _ := d.cols[d.version].render(row[d.version])
	if !ok {
		return "0"
	}
	return v
}

// samePK reports whether two images have the same primary key values, without
// rendering them.
func (d *decoder) samePK(a, b []any) bool {
	for _, i := range d.pkIdx {
		if i >= len(a) || i >= len(b) {
			return false
		}
		x, y := a[i], b[i]
		if xb, ok := x.([]byte); ok {
			yb, ok := y.([]byte)
			if !ok || string(xb) != string(yb) {
				return false
			}
			continue
		}
		if _, ok := y.([]byte); ok || x != y {
			return false
		}
	}
	return true
}
