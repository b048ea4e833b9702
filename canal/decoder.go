package canal

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/source"
)

// decoder renders the rows of one table map.
type decoder struct {
	types    []byte
	names    []string
	cols     []column
	pkIdx    []int // event column index of each primary key part
	version  int   // event column index of the version column, or -1
	mirrored int   // number of mirrored columns
	scratch  []byte
	part     []byte // a composite key's part being rendered
}

// newDecoder maps the columns of a table map event to names and renderings. With
// binlog_row_metadata=FULL the event names its columns (so rows are decoded with the
// definition they were written with); otherwise the columns are taken to be those of
// information_schema, in order.
func newDecoder(t *source.Table, tm *replication.TableMapEvent, mariadb bool) (*decoder, error) {
	d := &decoder{types: append([]byte(nil), tm.ColumnType...), version: -1}
	n := int(tm.ColumnCount)
	names, err := columnNames(t, tm, n)
	if err != nil {
		return nil, err
	}
	d.names = names
	m := tableMap{t: t, tm: tm, unsigned: unsignedMap(tm, mariadb)}
	m.enums, m.sets = tm.EnumStrValueMap(), tm.SetStrValueMap()
	m.collations, m.enumColls = tm.CollationMap(), tm.EnumSetCollationMap()
	d.cols = make([]column, n)
	for i := 0; i < n; i++ {
		c, err := m.column(i, names[i])
		if err != nil {
			return nil, err
		}
		if t.VersionColumn != "" && strings.EqualFold(t.VersionColumn, names[i]) {
			c.version = true
			d.version = i
			if c.kind != kindInt && c.kind != kindInt24 {
				return nil, fmt.Errorf("%w: %s version column %s is not an integer in the binlog", source.ErrTable, t.FullName(), names[i])
			}
		}
		d.cols[i] = c
		if c.mirror {
			d.mirrored++
		}
	}
	if err := d.indexPK(t); err != nil {
		return nil, err
	}
	if t.VersionColumn != "" && d.version < 0 {
		return nil, fmt.Errorf("%w: %s version column %s is missing from the binlog row", source.ErrTable, t.FullName(), t.VersionColumn)
	}
	return d, nil
}

// columnNames names tm's n columns: as the binlog does, else as information_schema does.
func columnNames(t *source.Table, tm *replication.TableMapEvent, n int) ([]string, error) {
	names := tm.ColumnNameString()
	if len(names) != n {
		if len(t.Columns) != n {
			return nil, fmt.Errorf("%w: %s has %d columns in the binlog but %d now, and the binlog does not name them (fix: set binlog_row_metadata=FULL on the server)", source.ErrTable, t.FullName(), n, len(t.Columns))
		}
		names = make([]string, n)
		for i, c := range t.Columns {
			names[i] = c.Name
		}
	}
	return names, nil
}

// tableMap is what newDecoder reads from a table map event once for all of its columns.
type tableMap struct {
	t                     *source.Table
	tm                    *replication.TableMapEvent
	unsigned              map[int]bool
	enums, sets           map[int][]string
	collations, enumColls map[int]uint64
}

// column returns how column i, named name, of the table map is rendered and used.
func (m *tableMap) column(i int, name string) (column, error) {
	t, tm := m.t, m.tm
	info, known := t.Column(name)
	c := column{name: name, mirror: t.Mirrored(name), pk: -1}
	if m.unsigned != nil {
		c.unsigned = m.unsigned[i]
	} else if known {
		c.unsigned = strings.Contains(strings.ToLower(info.ColumnType), "unsigned")
	}
	typ := tm.ColumnType[i]
	meta := tm.ColumnMeta[i]
	if known {
		c.zerofill = zerofillWidth(info.ColumnType)
	}
	switch typ {
	case mysql.MYSQL_TYPE_TINY, mysql.MYSQL_TYPE_SHORT, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_LONGLONG:
		c.kind = kindInt
	case mysql.MYSQL_TYPE_INT24:
		c.kind = kindInt24
	case mysql.MYSQL_TYPE_YEAR:
		c.kind = kindYear
	case mysql.MYSQL_TYPE_TIME2:
		c.kind, c.size = kindTime, int(meta)
	case mysql.MYSQL_TYPE_FLOAT:
		c.kind = kindFloat
		if known {
			c.size = floatScale(info.ColumnType)
		}
	case mysql.MYSQL_TYPE_DOUBLE:
		c.kind = kindDouble
		if known {
			c.size = floatScale(info.ColumnType)
		}
	case mysql.MYSQL_TYPE_BIT:
		c.kind = kindBit
		c.size = (int((meta>>8)*8+(meta&0xFF)) + 7) / 8
	case mysql.MYSQL_TYPE_ENUM, mysql.MYSQL_TYPE_SET, mysql.MYSQL_TYPE_STRING:
		if err := m.stringColumn(&c, i, meta, info, known); err != nil {
			return c, err
		}
	case mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_BLOB, mysql.MYSQL_TYPE_TINY_BLOB,
		mysql.MYSQL_TYPE_MEDIUM_BLOB, mysql.MYSQL_TYPE_LONG_BLOB:
		c.kind = kindText
		var err error
		if c.decode, err = t.Decoder(charsetOf(t, m.collations, i, info, known)); err != nil {
			return c, err
		}
	default:
		c.kind = kindText
	}
	for p, pk := range t.PK {
		if strings.EqualFold(pk, name) {
			c.pk = p
		}
	}
	return c, nil
}

// stringColumn sets how column i, logged as a string (CHAR, BINARY, ENUM, SET), renders.
func (m *tableMap) stringColumn(c *column, i int, meta uint16, info source.ColumnInfo, known bool) error {
	switch {
	case m.tm.IsEnumColumn(i) || (known && info.DataType == "enum"):
		c.kind = kindEnum
	case m.tm.IsSetColumn(i) || (known && info.DataType == "set"):
		c.kind = kindSet
	default:
		c.kind = kindText
		isBinary := false
		if m.collations != nil {
			coll, ok := m.collations[i]
			isBinary = ok && coll == 63
		} else if known {
			isBinary = info.DataType == "binary"
		}
		if isBinary {
			c.kind = kindBinary
			c.size = stringLength(meta)
		}
	}
	if c.kind == kindEnum || c.kind == kindSet {
		if err := m.members(c, i, info, known); err != nil {
			return err
		}
	}
	if c.kind == kindText {
		var err error
		if c.decode, err = m.t.Decoder(charsetOf(m.t, m.collations, i, info, known)); err != nil {
			return err
		}
	}
	return nil
}

// members sets the member strings, in UTF-8, of column i, an ENUM or a SET.
func (m *tableMap) members(c *column, i int, info source.ColumnInfo, known bool) error {
	c.values = m.enums[i]
	if c.kind == kindSet {
		c.values = m.sets[i]
	}
	if c.values != nil {
		// The binlog's member strings are in the column's character set.
		dec, err := m.t.Decoder(charsetOf(m.t, m.enumColls, i, info, known))
		if err != nil {
			return err
		}
		if dec != nil {
			vals := make([]string, len(c.values))
			for j, v := range c.values {
				vals[j], _ = dec([]byte(v))
			}
			c.values = vals
		}
	} else if known {
		c.values = info.Values()
	}
	return nil
}

// indexPK finds the event column of each primary key part.
func (d *decoder) indexPK(t *source.Table) error {
	d.pkIdx = make([]int, len(t.PK))
	for p, name := range t.PK {
		d.pkIdx[p] = -1
		for i, c := range d.cols {
			if strings.EqualFold(c.name, name) {
				d.pkIdx[p] = i
			}
		}
		if d.pkIdx[p] < 0 {
			return fmt.Errorf("%w: %s primary key column %s is missing from the binlog row (fix: keep binlog_row_image=FULL)", source.ErrTable, t.FullName(), name)
		}
	}
	return nil
}

// charsetOf is the character set of column i: from the binlog's collation id (FULL row
// metadata), else from information_schema.
func charsetOf(t *source.Table, collations map[int]uint64, i int, info source.ColumnInfo, known bool) string {
	if id, ok := collations[i]; ok {
		if cs, ok := t.CollationCharset(id); ok {
			return cs
		}
		if id == 63 {
			return "binary"
		}
	}
	if known {
		return info.Charset
	}
	return ""
}

// unsignedMap decodes the table map's signedness bitmap (FULL row metadata): one bit per
// numeric column, in column order, set for UNSIGNED. MariaDB counts YEAR among the
// numeric columns, MySQL does not; go-mysql's UnsignedMap follows MySQL, which on
// MariaDB gives every integer after a YEAR column its neighbour's flag.
func unsignedMap(tm *replication.TableMapEvent, mariadb bool) map[int]bool {
	if len(tm.SignednessBitmap) == 0 {
		return nil
	}
	ret := make(map[int]bool)
	bit := 0
	for i := 0; i < int(tm.ColumnCount); i++ {
		if !tm.IsNumericColumn(i) && !(mariadb && tm.ColumnType[i] == mysql.MYSQL_TYPE_YEAR) {
			continue
		}
		if bit/8 >= len(tm.SignednessBitmap) {
			break
		}
		ret[i] = tm.SignednessBitmap[bit/8]&(0x80>>(bit%8)) != 0
		bit++
	}
	return ret
}

// stringLength is the declared byte length of a CHAR/BINARY column from its table map
// metadata (the real type and length are packed together).
func stringLength(meta uint16) int {
	b0, b1 := meta>>8, meta&0xFF
	if b0&0x30 != 0x30 {
		return int(b1 | ((b0&0x30)^0x30)<<4)
	}
	return int(b1)
}

// matches reports whether the decoder was built for an identical table map.
func (d *decoder) matches(tm *replication.TableMapEvent) bool {
	if len(d.types) != len(tm.ColumnType) || string(d.types) != string(tm.ColumnType) {
		return false
	}
	names := tm.ColumnNameString()
	if names == nil {
		return true
	}
	for i, n := range names {
		if d.names[i] != n {
			return false
		}
	}
	return true
}

// floatScale returns D+1 for a FLOAT(M,D) or DOUBLE(M,D) column (the server prints its
// values with exactly D decimals), 0 for a plain FLOAT or DOUBLE.
func floatScale(columnType string) int {
	_, args, ok := strings.Cut(columnType, "(")
	if !ok {
		return 0
	}
	args, _, _ = strings.Cut(args, ")")
	_, d, ok := strings.Cut(args, ",")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(d))
	if err != nil || n < 0 {
		return 0
	}
	return n + 1
}

// zerofillWidth returns the width a ZEROFILL column's values are padded to with zeros
// (as the server prints them), 0 for a column without ZEROFILL: the display width of an
// integer type, M of FLOAT(M,D) and DOUBLE(M,D), M plus the decimal point of
// DECIMAL(M,D), 12 for a plain FLOAT and 22 for a plain DOUBLE.
func zerofillWidth(columnType string) int {
	ct := strings.ToLower(columnType)
	if !strings.Contains(ct, "zerofill") {
		return 0
	}
	base, args, hasArgs := strings.Cut(ct, "(")
	base = strings.TrimSpace(strings.Fields(base + " ")[0])
	var m, d int
	if hasArgs {
		args, _, _ = strings.Cut(args, ")")
		ms, ds, hasD := strings.Cut(args, ",")
		m, _ = strconv.Atoi(strings.TrimSpace(ms))
		if hasD {
			d, _ = strconv.Atoi(strings.TrimSpace(ds))
		}
	}
	switch base {
	case "decimal", "numeric":
		if m == 0 {
			m = 10
		}
		if d > 0 {
			return m + 1
		}
		return m
	case "float":
		if m > 0 {
			return m
		}
		return 12
	case "double", "real":
		if m > 0 {
			return m
		}
		return 22
	}
	if m > 0 {
		return m
	}
	return map[string]int{"tinyint": 3, "smallint": 5, "mediumint": 8, "int": 10, "integer": 10, "bigint": 20}[base]
}
