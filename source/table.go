package source

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ErrTable is wrapped by every error about a configured table's definition.
var ErrTable = errors.New("table definition")

// Spec names a table to mirror and how (one entry of the config's tables list).
type Spec struct {
	Schema, Table string
	KeyPrefix     string
	// Columns to mirror (empty: every column); the primary key is always mirrored.
	Columns       []string
	VersionColumn string
}

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
func LoadTables(ctx context.Context, db *sql.DB, cfgs []Spec) ([]*Table, error) {
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

func loadTable(ctx context.Context, db *sql.DB, idx int, tc Spec) (*Table, error) {
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

// Column returns the definition of the column called name (any case).
func (t *Table) Column(name string) (ColumnInfo, bool) {
	for _, c := range t.Columns {
		if strings.EqualFold(c.Name, name) {
			return c, true
		}
	}
	return ColumnInfo{}, false
}

var valuesRe = regexp.MustCompile(`'((?:[^']|'')*)'`)

// Values returns the members of an ENUM or SET column, in their defined order.
func (c ColumnInfo) Values() []string {
	var out []string
	for _, m := range valuesRe.FindAllStringSubmatch(c.ColumnType, -1) {
		out = append(out, strings.ReplaceAll(m[1], "''", "'"))
	}
	return out
}

// CollationCharset is the character set of the server's collation id (as the binlog's
// FULL row metadata names a column's collation).
func (t *Table) CollationCharset(id uint64) (string, bool) {
	cs, ok := t.charsets[id]
	return cs, ok
}

// QuoteIdent quotes a MySQL identifier (a schema, table or column name).
func QuoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }
