package snapshot

import (
	"testing"

	"github.com/invsync/invsync/source"
)

func TestLiteralKeepsIndexOrder(t *testing.T) {
	cases := []struct {
		typ, v, want string
	}{
		{"bigint", "18446744073709551615", "18446744073709551615"},
		{"decimal", "-1.50", "-1.50"},
		{"varchar", "it's", "'it''s'"},
		{"varbinary", "\x00\xff", "X'00ff'"},
		{"datetime", "2024-01-02 03:04:05", "'2024-01-02 03:04:05'"},
	}
	for _, c := range cases {
		if got := literal(source.ColumnInfo{DataType: c.typ}, []byte(c.v)); got != c.want {
			t.Errorf("literal(%s, %q) = %s, want %s", c.typ, c.v, got, c.want)
		}
	}
	// ENUM and SET compare by their numbers, as their index orders them.
	enum := source.ColumnInfo{DataType: "enum", ColumnType: "enum('z','a','m','it''s')"}
	set := source.ColumnInfo{DataType: "set", ColumnType: "set('z','a','m')"}
	for _, c := range []struct {
		col  source.ColumnInfo
		v    string
		want string
	}{{enum, "z", "1"}, {enum, "m", "3"}, {enum, "it's", "4"}, {enum, "", "0"}, {set, "", "0"}, {set, "z,m", "5"}, {set, "a", "2"}} {
		if got := literal(c.col, []byte(c.v)); got != c.want {
			t.Errorf("literal(%s, %q) = %s, want %s", c.col.ColumnType, c.v, got, c.want)
		}
	}
}

func TestSplitRow(t *testing.T) {
	raw := []byte{2, 'a', 'b', 0xfb, 0}
	vals, nulls, err := splitRow(raw, 3)
	if err != nil || string(vals[0]) != "ab" || !nulls[1] || nulls[2] || len(vals[2]) != 0 {
		t.Fatalf("splitRow: %q %v %v", vals, nulls, err)
	}
}
