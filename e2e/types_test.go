package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
)

const typesDDL = `CREATE TABLE all_types (
	id INT NOT NULL PRIMARY KEY,
	ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
	mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
	de DECIMAL(30,10), de0 DECIMAL(5,0), f FLOAT, d DOUBLE,
	b1 BIT(1), b10 BIT(10), b64 BIT(64),
	dt DATE, dtm DATETIME(6), dtm0 DATETIME, ts TIMESTAMP(6) NULL, ts3 TIMESTAMP(3) NULL, tm TIME, tm6 TIME(6), yr YEAR,
	ch CHAR(8), vc VARCHAR(64), tx TEXT, mtx MEDIUMTEXT,
	bn BINARY(6), vb VARBINARY(16), bl BLOB,
	js JSON, en ENUM('small','medium','large'), st SET('red','green','blue'),
	version INT UNSIGNED NOT NULL DEFAULT 1
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`

// Acceptance 4: a table with every MySQL column type; each Redis field equals what the
// text protocol's SELECT returns for it (TIMESTAMP in the configured zone, UTC, while
// the writing session is not in UTC).
func TestEveryColumnTypeMatchesSelectText(t *testing.T) {
	e := newEnv(t, tableSpec{name: "all_types", ddl: typesDDL, version: "version"})
	r := e.start(nil)
	waitReady(t, r)
	conn := e.db
	stmts := []string{
		"SET time_zone = '+05:30'",
		`INSERT INTO all_types VALUES (1,
			-128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,
			12345678901234567890.1234567890, -99999, 3.14159265, 2.718281828459045,
			b'1', b'1010101010', b'1111111111111111111111111111111111111111111111111111111111111111',
			'2024-02-29', '2024-01-02 03:04:05.123456', '9999-12-31 23:59:59', '2024-06-01 12:00:00.654321', '2038-01-19 03:14:07.999', '-838:59:59', '12:34:56.789012', 2155,
			'ab', 'héllo wörld 🚀📦', 'long text with emoji 😀 and a NUL-free body', REPEAT('x', 70000),
			x'000102', x'00ff00', x'00000000ff',
			'{"a": [1, 2.5, "x"], "b": {"c": null}}', 'medium', 'red,blue', 1)`,
		`INSERT INTO all_types VALUES (2,
			127, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0,
			-0.0000000001, 0, -1.5e-7, 1e100,
			b'0', b'0', b'0',
			'1000-01-01', '1000-01-01 00:00:00.000000', '1000-01-01 00:00:00', '1970-01-01 05:30:01.000001', '1970-01-01 05:30:01', '00:00:00', '-00:00:00.000001', 1901,
			'', '', '', '',
			x'', x'', x'',
			'[]', 'small', '', 1)`,
		`INSERT INTO all_types (id, f, d) VALUES (3, 1e20, 1.2345678901234568e17)`,
		`INSERT INTO all_types (id, f, d, yr) VALUES (4, 123456789, 0.1, 0)`,
		`INSERT INTO all_types (id, f, d, de0) VALUES (5, -3.4e38, 1.7976931348623157e308, 0)`,
		`UPDATE all_types SET vc = NULL, version = version + 1 WHERE id = 1`,
		`UPDATE all_types SET vc = 'héllo again 🚀', version = version + 1 WHERE id = 1`,
	}
	c, err := conn.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range stmts {
		if _, err := c.ExecContext(t.Context(), q); err != nil {
			t.Fatalf("%.60s: %v", q, err)
		}
	}
	e.waitEqual(30 * time.Second)
	// The same rows rendered by the other paths equal what the binlog wrote: reconcile's
	// read (a difference would be reported), then a reload by `invsync snapshot`, which
	// over a checkpoint replaces every row with its own rendering.
	r.stop(t)
	cfgPath := e.writeConfig(nil)
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	if code, out := runCLI(t, time.Minute, pw, "reconcile", "-c", cfgPath); code != 0 || !strings.Contains(out, "no drift") {
		t.Fatalf("reconcile after the binlog wrote every type: exit %d\n%s", code, out)
	}
	if code, out := runCLI(t, time.Minute, pw, "snapshot", "-c", cfgPath); code != 0 {
		t.Fatalf("snapshot: exit %d\n%s", code, out)
	}
	e.waitEqual(10 * time.Second)
}

// Issue 12, part 1: integers after a YEAR column keep their own signedness (MariaDB's
// table map counts YEAR in its signedness bitmap), and temporal values with a zero
// fraction keep it (TIME(2) '10:00:00.00' as a SELECT prints it), on the binlog path and
// in the snapshot alike.
func TestSignednessAfterYearAndZeroFractions(t *testing.T) {
	const ddl = `CREATE TABLE after_year (
		id INT NOT NULL PRIMARY KEY,
		y YEAR, a INT UNSIGNED, b INT, c INT UNSIGNED, m MEDIUMINT, mu MEDIUMINT UNSIGNED,
		t TINYINT, tu TINYINT UNSIGNED, s SMALLINT, su SMALLINT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
		y2 YEAR, de DECIMAL(10,2) UNSIGNED, dn DECIMAL(10,2), f FLOAT UNSIGNED, d DOUBLE,
		t0 TIME(2), t6 TIME(6), dt3 DATETIME(3), ts4 TIMESTAMP(4) NULL, t1 TIME(1)
	) ENGINE=InnoDB`
	rows := []string{
		`(1, 2024, 4294967295, -5, 4294967295, -8388608, 16777215, -128, 255, -32768, 65535, -9223372036854775808, 18446744073709551615,
			1999, 12.50, -3.25, 1.5, -2.5, '10:00:00.00', '-838:59:59.000000', '2024-01-01 00:00:00.000', '2024-01-01 00:00:00.0000', '00:00:00.0')`,
		`(2, 1901, 0, 2147483647, 0, 8388607, 0, 127, 0, 32767, 0, 9223372036854775807, 0,
			2155, 0, 0, 0, 0, '-838:59:59.00', '838:59:59.000000', '1000-01-01 00:00:00.000', '1970-01-01 00:00:01.0000', '-00:00:01.0')`,
		`(3, NULL, 7, -7, 7, -7, 7, -7, 7, -7, 7, -7, 7, NULL, 1, -1, 1, -1, '00:00:00.50', '-00:00:00.000001', '2024-02-29 23:59:59.999', NULL, '12:00:00.5')`,
	}
	e := newEnv(t, tableSpec{name: "after_year", ddl: ddl})
	// Row 1 exists before the first start: written by the snapshot; rows 2 and 3 come
	// from the binlog; then every row is updated through the binlog.
	execAll(t, e.db, "INSERT INTO after_year VALUES "+rows[0])
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	execAll(t, e.db, "INSERT INTO after_year VALUES "+rows[1]+", "+rows[2])
	e.waitEqual(30 * time.Second)
	execAll(t, e.db, "UPDATE after_year SET b = b - 1, m = m + 1 WHERE id IN (1, 3)", "UPDATE after_year SET b = -2147483648 WHERE id = 2")
	e.waitEqual(30 * time.Second)
}

// Issue 12, part 2: the snapshot, reconcile's walk and the Bloom rebuild's key scan visit
// every row for every primary-key type, with pages of 2 rows so that every page boundary
// is crossed (ENUM and SET keys compared as strings skipped most rows).
func TestEveryPrimaryKeyTypeIsWalkedWhole(t *testing.T) {
	tables := []struct{ name, ddl, rows string }{
		{"pk_enum", "CREATE TABLE pk_enum (e ENUM('z','a','m','b','y','c') NOT NULL PRIMARY KEY, v INT)", "('z',1),('a',2),('m',3),('b',4),('y',5),('c',6)"},
		{"pk_set", "CREATE TABLE pk_set (s SET('z','a','m') NOT NULL PRIMARY KEY, v INT)", "('',0),('z',1),('a',2),('z,a',3),('m',4),('z,m',5),('a,m',6),('z,a,m',7)"},
		{"pk_decimal", "CREATE TABLE pk_decimal (d DECIMAL(10,3) NOT NULL PRIMARY KEY, v INT)", "(-10.5,1),(-0.001,2),(0,3),(0.5,4),(2,5),(10.25,6),(1000000,7)"},
		{"pk_datetime", "CREATE TABLE pk_datetime (t DATETIME(3) NOT NULL PRIMARY KEY, v INT)", "('1000-01-01 00:00:00',1),('1999-12-31 23:59:59.999',2),('2000-01-01',3),('2024-02-29 12:00:00.5',4),('9999-12-31 23:59:59',5)"},
		{"pk_binary", "CREATE TABLE pk_binary (b VARBINARY(8) NOT NULL PRIMARY KEY, v INT)", "(x'00',1),(x'0000',2),(x'01',3),(x'7f',4),(x'80',5),(x'ff',6),(x'ff00',7)"},
		{"pk_mixed", "CREATE TABLE pk_mixed (e ENUM('z','a') NOT NULL, d DECIMAL(4,1) NOT NULL, s VARCHAR(8) NOT NULL, PRIMARY KEY (e, d, s), v INT)",
			"('z',1.5,'b',1),('z',1.5,'c',2),('z',2,'a',3),('a',-1,'x',4),('a',0,'',5),('a',0,'y',6)"},
		{"pk_time", "CREATE TABLE pk_time (t TIME(2) NOT NULL PRIMARY KEY, v INT)", "('-838:59:59.00',1),('-00:00:01',2),('00:00:00',3),('10:00:00.50',4),('838:59:59',5)"},
	}
	var specs []tableSpec
	for _, tb := range tables {
		specs = append(specs, tableSpec{name: tb.name, ddl: tb.ddl})
	}
	e := newEnv(t, specs...)
	for _, tb := range tables {
		execAll(t, e.db, "INSERT INTO "+tb.name+" VALUES "+tb.rows)
	}
	e.cfg.Snapshot.ChunkSize = 2
	e.cfg.Reconcile.ChunkSize = 2
	httpAddr := freeAddr(t)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = httpAddr })
	p := startProc(t, cfgPath, httpAddr) // the first start loads every table
	e.waitEqual(30 * time.Second)
	// Reconcile walks every row of every table.
	report := filepath.Join(t.TempDir(), "report.json")
	code, out := runCLI(t, time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "reconcile", "-c", cfgPath, "--report", report)
	if code != 0 {
		t.Fatalf("reconcile: exit %d\n%s", code, out)
	}
	rep := readReport(t, report)
	for _, tb := range tables {
		var n int64
		testenv.Must(t, e.db.QueryRow("SELECT COUNT(*) FROM "+tb.name).Scan(&n), "count")
		found := false
		for _, tr := range rep.Tables {
			if strings.HasSuffix(tr.Table, "."+tb.name) {
				found = true
				if tr.RowsChecked != n {
					t.Errorf("reconcile checked %d of the %d rows of %s", tr.RowsChecked, n, tb.name)
				}
			}
		}
		if !found {
			t.Errorf("reconcile did not report %s", tb.name)
		}
	}
	// The Bloom rebuild's scan of the primary keys: every row still in the filter.
	code2, err := httpPost("http://" + httpAddr + "/bloom/rebuild")
	testenv.Must(t, err, "bloom rebuild")
	if code2 != 200 {
		t.Fatalf("bloom rebuild: %d", code2)
	}
	e.waitEqual(30 * time.Second)
	p.terminate(t)
}

// Issue 12, part 1: character columns in other character sets than UTF-8 (latin1 is
// MariaDB's default) reach Redis as the UTF-8 text a SELECT returns, on the binlog path
// and in the snapshot alike, and a latin1 primary key has one key whichever path wrote it.
func TestEveryCharacterSetIsWrittenAsUTF8(t *testing.T) {
	const ddl = `CREATE TABLE charsets (
		pk VARCHAR(16) NOT NULL PRIMARY KEY,
		l1 VARCHAR(32), ch CHAR(8), gb VARCHAR(32) CHARACTER SET gbk, u3 VARCHAR(32) CHARACTER SET utf8mb3,
		u2 VARCHAR(32) CHARACTER SET ucs2, u16 VARCHAR(32) CHARACTER SET utf16, u32 VARCHAR(32) CHARACTER SET utf32,
		cy VARCHAR(32) CHARACTER SET cp1251, b5 VARCHAR(32) CHARACTER SET big5, sj VARCHAR(32) CHARACTER SET sjis,
		kr VARCHAR(32) CHARACTER SET euckr, l2 VARCHAR(32) CHARACTER SET latin2, tx TEXT, en ENUM('café','thé','€uro'),
		st SET('crème','brûlée'), bin VARBINARY(8), u4 VARCHAR(32) CHARACTER SET utf8mb4
	) ENGINE=InnoDB DEFAULT CHARSET=latin1`
	row := func(pk string) string {
		return "('" + pk + "', 'café crème €', 'é', '库存 中文', 'héllo ✓', 'Ωmega ☃', 'emoji 😀', 'emoji 😀', 'Привет', '繁體', 'カタカナ', '한국어', 'Łódź', 'latin1 text ÿ', 'thé', 'crème,brûlée', x'00ff', 'utf8mb4 🚀')"
	}
	e := newEnv(t, tableSpec{name: "charsets", ddl: ddl})
	execAll(t, e.db, "INSERT INTO charsets VALUES "+row("café"))
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	execAll(t, e.db, "INSERT INTO charsets VALUES "+row("naïve")+", "+row("Ärger"),
		"UPDATE charsets SET l1 = 'über €', en = '€uro', st = 'brûlée', gb = '更新' WHERE pk = 'café'")
	e.waitEqual(30 * time.Second)
}

// A key an older invsync wrote from a latin1 primary key's raw bytes ({caf\xe9}) is an
// extra key to reconcile, not a query the server refuses ("Illegal mix of collations"),
// and one table's problem never stops the run for the others.
func TestReconcileOfALatin1TableWithStaleRawKeys(t *testing.T) {
	e := newEnv(t, tableSpec{name: "l1", ddl: "CREATE TABLE l1 (pk VARCHAR(16) NOT NULL PRIMARY KEY, v INT) DEFAULT CHARSET=latin1"},
		tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	execAll(t, e.db, "INSERT INTO l1 VALUES ('café', 1), ('thé', 2)")
	loadRows(t, e, 50)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := t.Context()
	stale := e.cfg.Tables[0].KeyPrefix + "{caf\xe9}"
	testenv.Must(t, e.rdb.HSet(ctx, stale, "pk", "caf\xe9", "v", "1", "_v", "1").Err(), "stale key")
	testenv.Must(t, e.rdb.HSet(ctx, e.cfg.Tables[1].KeyPrefix+"{7}", "stock", "-1").Err(), "drift")
	cfgPath := e.writeConfig(nil)
	report := filepath.Join(t.TempDir(), "report.json")
	code, out := runCLI(t, time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "reconcile", "-c", cfgPath, "--repair", "--report", report)
	if code != 0 {
		t.Fatalf("reconcile --repair: exit %d\n%s", code, out)
	}
	rep := readReport(t, report)
	if len(rep.Tables) != 2 || rep.Tables[0].Differences["extra"] != 1 || rep.Tables[1].Differences["stale"]+rep.Tables[1].Differences["mismatch"] != 1 {
		t.Fatalf("report: %+v", rep.Tables)
	}
	e.waitEqual(30 * time.Second)
}

// Issue 12, part 2: composite keys whose parts contain ':' or '\' have one key each
// (('x:y','z') and ('x','y:z') used to share {x:y:z}); every path builds and splits them
// the same way: the snapshot, the binlog, reconcile's extras, `invsync get`.
func TestCompositeKeysWithColonsAreDistinct(t *testing.T) {
	e := newEnv(t, tableSpec{name: "ck", ddl: "CREATE TABLE ck (a VARCHAR(16) NOT NULL, b VARCHAR(16) NOT NULL, v INT, PRIMARY KEY (a, b))"})
	execAll(t, e.db, `INSERT INTO ck VALUES ('x:y', 'z', 1), ('x', 'y:z', 2), ('a\\', 'b', 3), ('a', '\\b', 4)`)
	httpAddr := freeAddr(t)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = httpAddr })
	p := startProc(t, cfgPath, httpAddr)
	e.waitEqual(30 * time.Second)
	execAll(t, e.db, `INSERT INTO ck VALUES ('p:q', 'r:s', 5), ('p', 'q:r:s', 6)`, "UPDATE ck SET v = v + 10 WHERE a = 'x'", "DELETE FROM ck WHERE a = 'x:y'")
	e.waitEqual(30 * time.Second)
	env := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	report := filepath.Join(t.TempDir(), "report.json")
	code, out := runCLI(t, time.Minute, env, "reconcile", "-c", cfgPath, "--report", report)
	if rep := readReport(t, report); code != 0 || rep.Tables[0].Unverifiable != 0 || rep.Tables[0].RowsChecked != 5 {
		t.Fatalf("reconcile: exit %d, %+v\n%s", code, rep.Tables, out)
	}
	code, out = runCLI(t, time.Minute, env, "get", "-c", cfgPath, "ck", `p\:q:r\:s`, `a\\:b`)
	if code != 0 || !strings.Contains(out, `"v":"5"`) || !strings.Contains(out, `"v":"3"`) {
		t.Fatalf("invsync get: exit %d\n%s", code, out)
	}
	p.terminate(t)
}
