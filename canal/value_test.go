package canal

import (
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// Expected strings are what MariaDB 10.11 prints for these FLOAT and DOUBLE values in
// a SELECT (mariadb client, text protocol).
func TestFormatFloatMatchesServer(t *testing.T) {
	doubles := map[float64]string{
		3.141592653589793: "3.141592653589793", 1e100: "1e100", 1.7976931348623157e308: "1.7976931348623157e308",
		1.5e-7: "0.00000015", 123456789012345678: "1.2345678901234568e17", 100000: "100000", 1e15: "1e15",
		1e16: "1e16", 0.0001: "0.0001", 1.1: "1.1", 0: "0", -2.5: "-2.5", 1e14: "100000000000000", 1e-16: "1e-16",
	}
	for f, want := range doubles {
		if got := FormatFloat(f, -1); got != want {
			t.Errorf("DOUBLE %v: got %q want %q", f, got, want)
		}
	}
	floats := map[float32]string{
		3.14159265: "3.14159", 1e20: "1e20", 1.1: "1.1", -3.4e38: "-3.4e38", 1e-5: "0.00001",
		123456789: "123457000", 0.1: "0.1", 1234567: "1234570", 12345678: "12345700", 0.0001: "0.0001",
	}
	for f, want := range floats {
		if got := FormatFloat(float64(f), 6); got != want {
			t.Errorf("FLOAT %v: got %q want %q", f, got, want)
		}
	}
}

func TestRenderKinds(t *testing.T) {
	cases := []struct {
		c    column
		v    any
		want string
	}{
		{column{kind: kindInt, unsigned: true}, int64(-1), "18446744073709551615"},
		{column{kind: kindInt, unsigned: true}, int8(-1), "255"},
		{column{kind: kindInt24, unsigned: true}, int32(-1), "16777215"},
		{column{kind: kindYear}, 0, "0000"},
		{column{kind: kindBit, size: 2}, int64(0x2AA), "\x02\xaa"},
		{column{kind: kindEnum, values: []string{"a", "b"}}, int64(2), "b"},
		{column{kind: kindEnum, values: []string{"a", "b"}}, int64(0), ""},
		{column{kind: kindSet, values: []string{"r", "g", "b"}}, int64(5), "r,b"},
		{column{kind: kindBinary, size: 4}, "ab", "ab\x00\x00"},
		{column{kind: kindText}, []byte("x\x00y"), "x\x00y"},
	}
	for _, c := range cases {
		got, ok, err := c.c.render(c.v)
		if err != nil || !ok || got != c.want {
			t.Errorf("render(%v) kind %d = %q, %v, %v; want %q", c.v, c.c.kind, got, ok, err, c.want)
		}
	}
	if _, ok, _ := (&column{kind: kindInt}).render(nil); ok {
		t.Error("NULL must render as no field")
	}
}

func TestContainsWord(t *testing.T) {
	cases := map[string]bool{
		"alter table inventory add column x int":     true,
		"alter table shop.inventory drop column x":   true,
		"alter table inventory_log add column x int": false,
		"create table old_inventory (id int)":        false,
		"rename table inventory to inventory2":       true,
	}
	for q, want := range cases {
		if got := containsWord(q, "inventory"); got != want {
			t.Errorf("containsWord(%q) = %v", q, got)
		}
	}
}

func TestTimeTextKeepsItsFraction(t *testing.T) {
	for _, c := range []struct {
		in   string
		fsp  int
		want string
	}{
		{"10:00:00", 2, "10:00:00.00"}, {"-838:59:59", 6, "-838:59:59.000000"}, {"00:00:00", 1, "00:00:00.0"},
		{"12:34:56.5", 3, "12:34:56.500"}, {"12:34:56.789012", 6, "12:34:56.789012"}, {"10:00:00", 0, "10:00:00"},
	} {
		if got := timeText(c.in, c.fsp); got != c.want {
			t.Errorf("timeText(%q, %d) = %q, want %q", c.in, c.fsp, got, c.want)
		}
	}
}

func TestSignednessCountsYearOnMariaDB(t *testing.T) {
	// (id INT, y YEAR, a INT UNSIGNED, b INT, c INT UNSIGNED): MariaDB's bitmap has a bit for
	// y (0), a (1), b (0), c (1) after id (0): 0 0 1 0 1 -> 0b00101000.
	tm := &replication.TableMapEvent{ColumnCount: 5, ColumnType: []byte{mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_YEAR, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_LONG},
		ColumnMeta: make([]uint16, 5), SignednessBitmap: []byte{0b00101000}}
	got := unsignedMap(tm, true)
	if got[2] != true || got[3] != false || got[4] != true || got[0] != false {
		t.Fatalf("mariadb: %v", got)
	}
	// MySQL's bitmap has no bit for YEAR: id, a, b, c -> 0 1 0 1.
	tm.SignednessBitmap = []byte{0b01010000}
	got = unsignedMap(tm, false)
	if got[2] != true || got[3] != false || got[4] != true {
		t.Fatalf("mysql: %v", got)
	}
}

func TestZerofillWidth(t *testing.T) {
	for ct, want := range map[string]int{
		"int(8) unsigned zerofill": 8, "bigint(20) unsigned zerofill": 20, "decimal(8,2) unsigned zerofill": 9,
		"decimal(5,0) unsigned zerofill": 5, "float(8,3) unsigned zerofill": 8, "double unsigned zerofill": 22,
		"float unsigned zerofill": 12, "tinyint unsigned zerofill": 3, "double(10,2) unsigned zerofill": 10,
		"int(8) unsigned": 0, "varchar(10)": 0,
	} {
		if got := zerofillWidth(ct); got != want {
			t.Errorf("%s: %d, want %d", ct, got, want)
		}
	}
	for ct, want := range map[string]int{"float(7,3)": 4, "double(10,2) unsigned": 3, "float": 0, "double": 0, "float(12)": 0} {
		if got := floatScale(ct); got != want {
			t.Errorf("floatScale(%s) = %d, want %d", ct, got, want)
		}
	}
}
