package canal

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/invsync/invsync/config"
)

// ErrTable is wrapped by every error about a configured table's definition.
var ErrTable = errors.New("table definition")

// Table is a configured table with its definition as read from information_schema.
type Table struct {
	// Index is the position of the table in the config's tables list.
	Index         int
	Schema, Name  string
	KeyPrefix     string
	VersionColumn string
	mirror        map[string]bool // nil: every column
	// charsets maps the server's collation ids to their character sets (for the
	// binlog's per-column collations).
	charsets map[uint64]string
	// db reads the server's own character set mappings when a binlog column needs one
	// (see Table.decoder).
	db *sql.DB
	// Columns in ordinal order, and the primary key's column names in key order.
	Columns []ColumnInfo
	PK      []string
}

// ColumnInfo is one column as information_schema describes it.
type ColumnInfo struct {
	Name, DataType, ColumnType string
	// Charset is the column's character set ("" for a column without one).
	Charset string
}

// FullName is schema.table.
func (t *Table) FullName() string { return t.Schema + "." + t.Name }

// LoadTables reads the definition of every configured table and checks that it can be
// mirrored: it exists, has a primary key, and has the configured columns and version
// column. Every problem is reported at once.
func LoadTables(ctx context.Context, db *sql.DB, cfgs []config.Table) ([]*Table, error) {
	charsets, err := loadCharsets(ctx, db)
	if err != nil {
		return nil, err
	}
	var tables []*Table
	var problems []string
	for i, tc := range cfgs {
		t, err := loadTable(ctx, db, i, tc)
		if t != nil {
			t.charsets = charsets
			t.db = db
		}
		if err != nil {
			if !errors.Is(err, ErrTable) {
				return nil, err
			}
			problems = append(problems, err.Error())
			continue
		}
		tables = append(tables, t)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrTable, strings.Join(problems, "; "))
	}
	return tables, nil
}

// loadCharsets maps every collation id of the server to its character set.
// MariaDB 10.10+ lists some collation ids only in COLLATION_CHARACTER_SET_APPLICABILITY.
func loadCharsets(ctx context.Context, db *sql.DB) (map[uint64]string, error) {
	out := map[uint64]string{}
	read := func(q string) error {
		rows, err := db.QueryContext(ctx, q)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id uint64
			var cs string
			if err := rows.Scan(&id, &cs); err != nil {
				return err
			}
			out[id] = cs
		}
		return rows.Err()
	}
	if err := read("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL"); err != nil {
		return nil, fmt.Errorf("read the server's collations: %w", err)
	}
	_ = read("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY WHERE ID IS NOT NULL") // MariaDB 10.10+ only
	return out, nil
}

var intTypes = map[string]bool{"tinyint": true, "smallint": true, "mediumint": true, "int": true, "bigint": true}

func loadTable(ctx context.Context, db *sql.DB, idx int, tc config.Table) (*Table, error) {
	t := &Table{Index: idx, Schema: tc.Schema, Name: tc.Table, KeyPrefix: tc.KeyPrefix, VersionColumn: tc.VersionColumn}
	rows, err := db.QueryContext(ctx, `SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IFNULL(CHARACTER_SET_NAME, '') FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, tc.Schema, tc.Table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", t.FullName(), err)
	}
	for rows.Next() {
		var c ColumnInfo
		if err := rows.Scan(&c.Name, &c.DataType, &c.ColumnType, &c.Charset); err != nil {
			rows.Close()
			return nil, err
		}
		c.DataType = strings.ToLower(c.DataType)
		t.Columns = append(t.Columns, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(t.Columns) == 0 {
		return nil, fmt.Errorf("%w: tables[%d] %s does not exist or the user cannot see it (fix: create the table, correct schema/table in the config, or GRANT SELECT on it)", ErrTable, idx, t.FullName())
	}
	rows, err = db.QueryContext(ctx, `SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION`, tc.Schema, tc.Table)
	if err != nil {
		return nil, fmt.Errorf("read primary key of %s: %w", t.FullName(), err)
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return nil, err
		}
		t.PK = append(t.PK, name)
	}
	rows.Close()
	if len(t.PK) == 0 {
		return nil, fmt.Errorf("%w: tables[%d] %s has no primary key (fix: add one, e.g. ALTER TABLE %s ADD PRIMARY KEY (...); invsync keys Redis by the primary key)", ErrTable, idx, t.FullName(), t.FullName())
	}
	byName := map[string]ColumnInfo{}
	for _, c := range t.Columns {
		byName[strings.ToLower(c.Name)] = c
	}
	if len(tc.Columns) > 0 {
		t.mirror = map[string]bool{}
		for _, c := range tc.Columns {
			if _, ok := byName[strings.ToLower(c)]; !ok {
				return nil, fmt.Errorf("%w: tables[%d] %s has no column %q listed in columns (fix: correct the columns list)", ErrTable, idx, t.FullName(), c)
			}
			t.mirror[strings.ToLower(c)] = true
		}
		for _, c := range t.PK {
			t.mirror[strings.ToLower(c)] = true
		}
	}
	if tc.VersionColumn != "" {
		c, ok := byName[strings.ToLower(tc.VersionColumn)]
		if !ok {
			return nil, fmt.Errorf("%w: tables[%d] %s has no version_column %q (fix: correct version_column, or leave it empty to derive _v from the binlog position)", ErrTable, idx, t.FullName(), tc.VersionColumn)
		}
		if !intTypes[c.DataType] {
			return nil, fmt.Errorf("%w: tables[%d] %s version_column %q is %s, not an integer type", ErrTable, idx, t.FullName(), tc.VersionColumn, c.ColumnType)
		}
	}
	return t, nil
}

// Mirrored reports whether a column is written to Redis.
func (t *Table) Mirrored(name string) bool {
	return t.mirror == nil || t.mirror[strings.ToLower(name)]
}

func (t *Table) info(name string) (ColumnInfo, bool) {
	for _, c := range t.Columns {
		if strings.EqualFold(c.Name, name) {
			return c, true
		}
	}
	return ColumnInfo{}, false
}

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

var valuesRe = regexp.MustCompile(`'((?:[^']|'')*)'`)

// Values returns the members of an ENUM or SET column, in their defined order.
func (c ColumnInfo) Values() []string { return parseValues(c.ColumnType) }

func parseValues(columnType string) []string {
	var out []string
	for _, m := range valuesRe.FindAllStringSubmatch(columnType, -1) {
		out = append(out, strings.ReplaceAll(m[1], "''", "'"))
	}
	return out
}

// newDecoder maps the columns of a table map event to names and renderings. With
// binlog_row_metadata=FULL the event names its columns (so rows are decoded with the
// definition they were written with); otherwise the columns are taken to be those of
// information_schema, in order.
func newDecoder(t *Table, tm *replication.TableMapEvent, mariadb bool) (*decoder, error) {
	d := &decoder{types: append([]byte(nil), tm.ColumnType...), version: -1}
	n := int(tm.ColumnCount)
	names := tm.ColumnNameString()
	if len(names) != n {
		if len(t.Columns) != n {
			return nil, fmt.Errorf("%w: %s has %d columns in the binlog but %d now, and the binlog does not name them (fix: set binlog_row_metadata=FULL on the server)", ErrTable, t.FullName(), n, len(t.Columns))
		}
		names = make([]string, n)
		for i, c := range t.Columns {
			names[i] = c.Name
		}
	}
	d.names = names
	unsigned := unsignedMap(tm, mariadb)
	enums, sets := tm.EnumStrValueMap(), tm.SetStrValueMap()
	collations, enumColls := tm.CollationMap(), tm.EnumSetCollationMap()
	d.cols = make([]column, n)
	for i := 0; i < n; i++ {
		info, known := t.info(names[i])
		c := column{name: names[i], mirror: t.Mirrored(names[i]), pk: -1}
		if unsigned != nil {
			c.unsigned = unsigned[i]
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
			switch {
			case tm.IsEnumColumn(i) || (known && info.DataType == "enum"):
				c.kind = kindEnum
			case tm.IsSetColumn(i) || (known && info.DataType == "set"):
				c.kind = kindSet
			default:
				c.kind = kindText
				isBinary := false
				if collations != nil {
					coll, ok := collations[i]
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
				c.values = enums[i]
				if c.kind == kindSet {
					c.values = sets[i]
				}
				if c.values != nil {
					// The binlog's member strings are in the column's character set.
					dec, err := t.decoder(t.charsetOf(enumColls, i, info, known))
					if err != nil {
						return nil, err
					}
					if dec != nil {
						vals := make([]string, len(c.values))
						for j, v := range c.values {
							vals[j], _ = dec([]byte(v))
						}
						c.values = vals
					}
				} else if known {
					c.values = parseValues(info.ColumnType)
				}
			}
			if c.kind == kindText {
				var err error
				if c.decode, err = t.decoder(t.charsetOf(collations, i, info, known)); err != nil {
					return nil, err
				}
			}
		case mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_BLOB, mysql.MYSQL_TYPE_TINY_BLOB,
			mysql.MYSQL_TYPE_MEDIUM_BLOB, mysql.MYSQL_TYPE_LONG_BLOB:
			c.kind = kindText
			var err error
			if c.decode, err = t.decoder(t.charsetOf(collations, i, info, known)); err != nil {
				return nil, err
			}
		default:
			c.kind = kindText
		}
		for p, name := range t.PK {
			if strings.EqualFold(name, names[i]) {
				c.pk = p
			}
		}
		if t.VersionColumn != "" && strings.EqualFold(t.VersionColumn, names[i]) {
			c.version = true
			d.version = i
			if c.kind != kindInt && c.kind != kindInt24 {
				return nil, fmt.Errorf("%w: %s version column %s is not an integer in the binlog", ErrTable, t.FullName(), names[i])
			}
		}
		d.cols[i] = c
		if c.mirror {
			d.mirrored++
		}
	}
	d.pkIdx = make([]int, len(t.PK))
	for p, name := range t.PK {
		d.pkIdx[p] = -1
		for i, c := range d.cols {
			if strings.EqualFold(c.name, name) {
				d.pkIdx[p] = i
			}
		}
		if d.pkIdx[p] < 0 {
			return nil, fmt.Errorf("%w: %s primary key column %s is missing from the binlog row (fix: keep binlog_row_image=FULL)", ErrTable, t.FullName(), name)
		}
	}
	if t.VersionColumn != "" && d.version < 0 {
		return nil, fmt.Errorf("%w: %s version column %s is missing from the binlog row", ErrTable, t.FullName(), t.VersionColumn)
	}
	return d, nil
}

// charsetOf is the character set of column i: from the binlog's collation id (FULL row
// metadata), else from information_schema.
func (t *Table) charsetOf(collations map[int]uint64, i int, info ColumnInfo, known bool) string {
	if id, ok := collations[i]; ok {
		if cs, ok := t.charsets[id]; ok {
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
