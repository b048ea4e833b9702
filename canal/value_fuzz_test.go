package canal

import (
	"math"
	"strconv"
	"testing"
)

// The renderer never panics on any value the decoder may hand it, for any column kind;
// the append form (primary keys) gives the same text as render; integers and doubles
// read back as the value they render.
func FuzzRender(f *testing.F) {
	f.Add(int64(-5), uint8(kindInt), true, uint8(0), uint8(0), 1.5, "12:34:56")
	f.Add(int64(300), uint8(kindYear), false, uint8(0), uint8(4), -0.0, "")
	f.Add(int64(7), uint8(kindSet), false, uint8(3), uint8(0), 1e300, "x\x00y")
	f.Add(int64(-1), uint8(kindBit), true, uint8(9), uint8(0), math.Inf(1), "-838:59:59.5")
	f.Fuzz(func(t *testing.T, i int64, k uint8, unsigned bool, size, zerofill uint8, fl float64, s string) {
		c := &column{name: "c", kind: kind(k % (uint8(kindTime) + 1)), unsigned: unsigned, size: int(size % 10),
			zerofill: int(zerofill % 30), values: []string{"a", "b", "c"}}
		for _, v := range []any{i, int32(i), int16(i), int8(i), uint64(i), fl, float32(fl), s, []byte(s)} {
			txt, ok, _ := c.render(v)
			if !ok {
				t.Fatalf("%+v: a non-NULL %T rendered as NULL", c, v)
			}
			app, _ := c.appendText(nil, v)
			if string(app) != txt {
				t.Fatalf("%+v, %T %v: appendText %q, render %q", c, v, v, app, txt)
			}
		}
		if c.kind == kindInt && !c.unsigned && c.zerofill == 0 {
			if txt, _, _ := c.render(i); txt != strconv.FormatInt(i, 10) {
				t.Fatalf("BIGINT %d rendered %q", i, txt)
			}
		}
		if !math.IsNaN(fl) && !math.IsInf(fl, 0) {
			if back, err := strconv.ParseFloat(FormatFloat(fl, -1), 64); err != nil || back != fl {
				t.Fatalf("DOUBLE %v rendered %q, read back %v (%v)", fl, FormatFloat(fl, -1), back, err)
			}
		}
		if _, ok, _ := c.render(nil); ok {
			t.Fatal("NULL rendered as a value")
		}
	})
}
