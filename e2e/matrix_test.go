package e2e

import (
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
)

// typeMatrix builds a table with a column for every data type and attribute MariaDB
// offers (integers of every width, signed and unsigned, before and after YEAR columns;
// BIT, DECIMAL, FLOAT, DOUBLE; TIME, DATETIME and TIMESTAMP at every fraction width;
// character columns in every character set the server ships; binary strings; ENUM and
// SET in non-UTF-8 character sets; JSON; generated columns; defaults), and rows that
// reach every edge: minima and maxima, zero fractions, zero dates, NULLs and defaults.
func typeMatrix(t *testing.T, db *sql.DB) (ddl string, rows []string, update string) {
	t.Helper()
	var charsets []string
	rs, err := db.Query("SELECT CHARACTER_SET_NAME FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME NOT IN ('binary', 'filename') ORDER BY 1")
	testenv.Must(t, err, "character sets")
	for rs.Next() {
		var cs string
		testenv.Must(t, rs.Scan(&cs), "scan")
		charsets = append(charsets, cs)
	}
	testenv.Must(t, rs.Err(), "character sets")
	rs.Close()

	ints := []string{"TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT"}
	var cols []string
	add := func(format string, args ...any) { cols = append(cols, fmt.Sprintf(format, args...)) }
	add("id INT NOT NULL PRIMARY KEY")
	for _, place := range []string{"b", "a", "z"} { // before, between and after the YEARs
		for _, it := range ints {
			add("%s_%s %s, %s_%s_u %s UNSIGNED", place, strings.ToLower(it), it, place, strings.ToLower(it), it)
		}
		if place != "z" {
			add("y_%s YEAR", place)
		}
	}
	add("bit1 BIT(1), bit17 BIT(17), bit64 BIT(64)")
	add("dec65 DECIMAL(65,30), dec10u DECIMAL(10,0) UNSIGNED, dec5_5 DECIMAL(5,5), fl FLOAT, flu FLOAT UNSIGNED, db DOUBLE, fl7_3 FLOAT(7,3)")
	add("db10_2 DOUBLE(10,2), zf_int INT(8) ZEROFILL, zf_bi BIGINT ZEROFILL, zf_dec DECIMAL(8,2) ZEROFILL, zf_fl FLOAT(8,3) ZEROFILL, zf_db DOUBLE ZEROFILL")
	add("da DATE")
	for n := 0; n <= 6; n++ {
		add("tm%d TIME(%d), dt%d DATETIME(%d), ts%d TIMESTAMP(%d) NULL", n, n, n, n, n, n)
	}
	for _, cs := range charsets {
		add("c_%s VARCHAR(24) CHARACTER SET %s", cs, cs)
	}
	add("ch_l1 CHAR(10) CHARACTER SET latin1, tt_u3 TINYTEXT CHARACTER SET utf8mb3, tx_gbk TEXT CHARACTER SET gbk, mt_u4 MEDIUMTEXT CHARACTER SET utf8mb4")
	add("bn BINARY(4), vb VARBINARY(8), bl BLOB")
	add("en ENUM('café','thé','€uro') CHARACTER SET latin1, st SET('库','存','量') CHARACTER SET gbk, js JSON")
	add("g_v BIGINT AS (b_int + 1) VIRTUAL, g_s VARCHAR(40) AS (CONCAT(c_utf8mb4, '!')) STORED")
	add("d_int INT NOT NULL DEFAULT 42, d_str VARCHAR(10) CHARACTER SET latin1 DEFAULT 'défaut', d_dec DECIMAL(6,2) DEFAULT -1.50")
	ddl = "CREATE TABLE type_matrix (\n\t" + strings.Join(cols, ",\n\t") + "\n) ENGINE=InnoDB DEFAULT CHARSET=latin1"

	// A row: every column named, from a function of the column's kind.
	text := "aé€ßΩЖ中あ한ğşčł😀"
	row := func(id int, intVal func(typ string, unsigned bool) string, tm, dt, ts string, fr string, chars string) string {
		var v []string
		name := []string{}
		put := func(n, val string) { name = append(name, n); v = append(v, val) }
		put("id", fmt.Sprint(id))
		for _, place := range []string{"b", "a", "z"} {
			for _, it := range ints {
				lt := strings.ToLower(it)
				put(place+"_"+lt, intVal(it, false))
				put(place+"_"+lt+"_u", intVal(it, true))
			}
			if place != "z" {
				put("y_"+place, intVal("YEAR", true))
			}
		}
		for n := 0; n <= 6; n++ {
			f := ""
			if n > 0 {
				f = "." + fr[:n]
			}
			put(fmt.Sprintf("tm%d", n), "'"+tm+f+"'")
			put(fmt.Sprintf("dt%d", n), "'"+dt+f+"'")
			put(fmt.Sprintf("ts%d", n), "'"+ts+f+"'")
		}
		for _, cs := range charsets {
			put("c_"+cs, "'"+chars+"'")
		}
		return "(" + strings.Join(name, ", ") + ") VALUES (" + strings.Join(v, ", ") + ")"
	}
	minInt := map[string]string{"TINYINT": "-128", "SMALLINT": "-32768", "MEDIUMINT": "-8388608", "INT": "-2147483648", "BIGINT": "-9223372036854775808", "YEAR": "1901"}
	maxInt := map[string]string{"TINYINT": "127", "SMALLINT": "32767", "MEDIUMINT": "8388607", "INT": "2147483647", "BIGINT": "9223372036854775807", "YEAR": "2155"}
	maxUint := map[string]string{"TINYINT": "255", "SMALLINT": "65535", "MEDIUMINT": "16777215", "INT": "4294967295", "BIGINT": "18446744073709551615", "YEAR": "2155"}
	rows = []string{
		// Minima, zero fractions.
		"INSERT INTO type_matrix " + row(1, func(typ string, u bool) string {
			if u {
				return "0"
			}
			return minInt[typ]
		}, "-838:59:59", "1000-01-01 00:00:00", "1970-01-01 00:00:01", "000000", text),
		// Maxima, full fractions.
		"INSERT INTO type_matrix " + row(2, func(typ string, u bool) string {
			if u {
				return maxUint[typ]
			}
			return maxInt[typ]
		}, "838:59:59", "9999-12-31 23:59:59", "2038-01-19 03:14:07", "999999", "plain ascii"),
		// Zero dates (sql_mode without NO_ZERO_DATE), small values, negative fractions.
		"INSERT INTO type_matrix " + row(3, func(typ string, u bool) string {
			if typ == "YEAR" {
				return "0"
			}
			if u {
				return "1"
			}
			return "-1"
		}, "-00:00:00", "0000-00-00 00:00:00", "0000-00-00 00:00:00", "000001", ""),
		// Only the key: NULLs and defaults everywhere else.
		"INSERT INTO type_matrix (id) VALUES (4)",
	}
	rows[0] = strings.Replace(rows[0], ") VALUES (", ", db10_2, zf_int, zf_bi, zf_dec, zf_fl, zf_db, bit1, bit17, bit64, dec65, dec10u, dec5_5, fl, flu, db, fl7_3, da, ch_l1, tt_u3, tx_gbk, mt_u4, bn, vb, bl, en, st, js, d_int, d_str, d_dec) VALUES (", 1)
	rows[0] = strings.TrimSuffix(rows[0], ")") + ", -12345678.91, 4294967295, 18446744073709551615, 999999.99, 99999.999, 1e300, b'0', b'10000000000000000', b'1000000000000000000000000000000000000000000000000000000000000000'," +
		" -99999999999999999999999999999999999.999999999999999999999999999999, 0, -0.00001, -3.4e38, 0, -1.7976931348623157e308, -9999.999," +
		" '1000-01-01', 'é€ ', 'héllo ✓', '库存 中文', REPEAT('x😀', 3000), x'00', x'', x'00ff', 'café', '库,量', '{\"a\": [1, 2.5, \"é\"], \"b\": null}', -7, '', 0)"
	rows[1] = strings.Replace(rows[1], ") VALUES (", ", db10_2, zf_int, zf_bi, zf_dec, zf_fl, zf_db, bit1, bit17, bit64, dec65, dec10u, dec5_5, fl, flu, db, fl7_3, da, ch_l1, bn, vb, bl, en, st, js) VALUES (", 1)
	rows[1] = strings.TrimSuffix(rows[1], ")") + ", 0.005, 42, 7, 3.5, 1.5, 2.25, b'1', b'11111111111111111', b'1111111111111111111111111111111111111111111111111111111111111111'," +
		" 99999999999999999999999999999999999.999999999999999999999999999999, 9999999999, 0.99999, 3.4e38, 1.5, 1.7976931348623157e308, 9999.999," +
		" '9999-12-31', 'ÿ', x'ffffffff', x'0102030405060708', REPEAT(x'ff', 100), '€uro', '库,存,量', '[]')"
	rows[2] = strings.Replace(rows[2], ") VALUES (", ", da, dec65, fl, db, en, st, js) VALUES (", 1)
	rows[2] = strings.TrimSuffix(rows[2], ")") + ", '0000-00-00', 0.000000000000000000000000000001, 1e-38, 5e-324, 'thé', '', 'null')"
	update = "UPDATE type_matrix SET b_int = b_int DIV 2, a_bigint_u = a_bigint_u DIV 3, tm3 = '10:00:00.000', dt6 = '2024-02-29 12:00:00.000000', ts0 = '2024-06-01 00:00:00', " +
		"c_utf8mb4 = 'updated 🚀', c_latin1 = 'über €', c_gbk = '更新', js = JSON_OBJECT('k', 'ü'), en = 'thé', d_int = d_int + 1, zf_int = 5, zf_db = 1e300, zf_dec = 0"
	return ddl, rows, update
}

// Issue 12, part 1: for every data type and attribute, the binlog path, the snapshot and
// reconcile's read all produce the server's own SELECT text, byte for byte, with FULL row
// metadata and without it (MINIMAL: character sets and signedness then come from
// information_schema). Row 1 is written by the first snapshot; rows 2-4 and an UPDATE of
// every row come from the binlog; then a reconciliation must find no difference.
func TestTypeMatrixOnEveryPath(t *testing.T) {
	for _, metadata := range []string{"FULL", "MINIMAL"} {
		t.Run(metadata, func(t *testing.T) {
			admin := testenv.DB(t, "")
			var was string
			testenv.Must(t, admin.QueryRow("SELECT @@GLOBAL.binlog_row_metadata").Scan(&was), "binlog_row_metadata")
			execAll(t, admin, "SET GLOBAL binlog_row_metadata = "+metadata)
			t.Cleanup(func() { execAll(t, admin, "SET GLOBAL binlog_row_metadata = "+was) })
			ddl, rows, update := typeMatrix(t, admin)
			e := newEnv(t, tableSpec{name: "type_matrix", ddl: ddl},
				// Key columns whose text the binlog path builds itself: ZEROFILL, a
				// single-byte and a double-byte character set.
				tableSpec{name: "zf_key", ddl: "CREATE TABLE zf_key (id INT(5) UNSIGNED ZEROFILL NOT NULL, c VARCHAR(8) CHARACTER SET sjis NOT NULL, l VARCHAR(8) CHARACTER SET swe7 NOT NULL, v INT, PRIMARY KEY (id, c, l)) ENGINE=InnoDB"})
			c, err := e.db.Conn(t.Context())
			testenv.Must(t, err, "conn")
			defer c.Close()
			exec := func(q string) {
				t.Helper()
				if _, err := c.ExecContext(t.Context(), q); err != nil {
					t.Fatalf("%.200s: %v", q, err)
				}
			}
			// Zero dates and characters a column's charset lacks (stored as '?') need a
			// lenient sql_mode; the writer's time zone differs from the mirror's.
			exec("SET SESSION sql_mode = '', SESSION time_zone = '+05:30'")
			exec(rows[0])
			exec("INSERT INTO zf_key VALUES (5, 'ｱ〜', 'é`', 1)")
			r := e.start(nil)
			waitReady(t, r)
			e.waitEqual(30 * time.Second)
			for _, q := range rows[1:] {
				exec(q)
			}
			e.waitEqual(30 * time.Second)
			exec(update)
			exec("INSERT INTO zf_key VALUES (42, 'ｶﾀｶﾅ〜ｱ', 'Zé', 2), (7, '〜', '`', 3)")
			exec("UPDATE zf_key SET v = v + 10")
			exec("DELETE FROM zf_key WHERE id = 5")
			e.waitEqual(30 * time.Second)
			cfgPath := e.writeConfig(nil)
			code, out := runCLI(t, time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "reconcile", "-c", cfgPath)
			if code != 0 || !strings.Contains(out, "no drift: 6 rows") {
				t.Fatalf("reconcile: exit %d\n%s", code, out)
			}
		})
	}
}
