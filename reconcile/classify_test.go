package reconcile

import (
	"testing"

	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/snapshot"
)

func TestClassify(t *testing.T) {
	row := &snapshot.Row{Change: layout.Change{Version: "10", Fields: []layout.Field{{Name: "sku", Value: "1"}, {Name: "stock", Value: "5"}}}}
	live := func(v, stock string) map[string]string {
		return map[string]string{"_v": v, "_s": "x", "sku": "1", "stock": stock}
	}
	cases := []struct {
		name      string
		row       *snapshot.Row
		h         map[string]string
		err       error
		versioned bool
		want      Kind
	}{
		{"equal", row, live("10", "5"), nil, true, ""},
		{"missing", row, nil, nil, true, Missing},
		{"tombstone over a row", row, map[string]string{"_v": "10", "_deleted": "1"}, nil, true, Missing},
		{"null marker over a row", row, map[string]string{"_null": "1"}, nil, true, Missing},
		{"stale", row, live("9", "5"), nil, true, Stale},
		{"stale by digits", row, live("09", "5"), nil, true, Stale},
		{"mismatch", row, live("10", "6"), nil, true, Mismatch},
		{"extra field", row, map[string]string{"_v": "10", "sku": "1", "stock": "5", "old": "x"}, nil, true, Mismatch},
		{"missing field", row, map[string]string{"_v": "10", "sku": "1"}, nil, true, Mismatch},
		{"higher version", row, live("11", "5"), nil, true, Mismatch},
		{"no version column: values only", row, live("999", "5"), nil, false, ""},
		{"no version column: mismatch", row, live("999", "4"), nil, false, Mismatch},
		{"wrong type", row, nil, replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), true, WrongType},
		{"extra", nil, live("1", "5"), nil, true, Extra},
		{"no row, tombstone", nil, map[string]string{"_v": "1", "_deleted": "1"}, nil, true, ""},
		{"no row, nothing", nil, nil, nil, true, ""},
	}
	for _, c := range cases {
		got, differs := classify(c.row, c.h, c.err, c.versioned)
		if differs != (c.want != "") || got != c.want && c.want != "" {
			t.Errorf("%s: got %q (%v), want %q", c.name, got, differs, c.want)
		}
	}
	if cmpDecimal("18446744073709551615", "18446744073709551614") != 1 || cmpDecimal("007", "7") != 0 || cmpDecimal("", "0") != 0 {
		t.Error("cmpDecimal")
	}
}

// replyError is a Redis error reply, as go-redis returns one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}
