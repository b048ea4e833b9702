package layout

import (
	"testing"
)

func TestKey(t *testing.T) {
	if got := Key("inv:", []string{"42"}); got != "inv:{42}" {
		t.Fatalf("Key = %q", got)
	}
	if got := Key("p:", []string{"7", "wh-1"}); got != "p:{7:wh-1}" {
		t.Fatalf("composite Key = %q", got)
	}
}

func TestSeqEncodingOrders(t *testing.T) {
	seqs := []Seq{{1, 4, 0}, {1, 4, 1}, {1, 900, 0}, {2, 4, 0}, {10, 1, 0}, {4294967295, 4294967295, 9999999}}
	for i := 1; i < len(seqs); i++ {
		a := string(AppendSeq(nil, seqs[i-1]))
		b := string(AppendSeq(nil, seqs[i]))
		if len(a) != seqWidth || len(b) != seqWidth {
			t.Fatalf("width %d %d", len(a), len(b))
		}
		if !(a < b) || !seqs[i-1].Less(seqs[i]) {
			t.Fatalf("%v !< %v (%s, %s)", seqs[i-1], seqs[i], a, b)
		}
		back, err := ParseSeq(b)
		if err != nil || back != seqs[i] {
			t.Fatalf("ParseSeq(%s) = %v, %v", b, back, err)
		}
	}
}

func TestSlot(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	cases := map[string]uint16{"123456789": 12739, "foo": 12182, "{user1000}.following": Slot("user1000"), "a{}b": Slot("a{}b")}
	for k, want := range cases {
		if got := Slot(k); got != want {
			t.Errorf("Slot(%q) = %d, want %d", k, got, want)
		}
	}
	if Slot("inv:{42}") != Slot("stock:{42}") {
		t.Error("keys with the same hash tag must share a slot")
	}
}

func TestCompositeKeysAreUnambiguous(t *testing.T) {
	a := Key("inv:", []string{"x:y", "z"})
	b := Key("inv:", []string{"x", "y:z"})
	if a == b {
		t.Fatalf("('x:y','z') and ('x','y:z') share the key %s", a)
	}
	for _, pk := range [][]string{{"x:y", "z"}, {"x", "y:z"}, {`a\`, "b"}, {`a\:`, `:\`}, {"", ""}, {"1", "2", "3"}, {"é", "😀:"}} {
		_, inner, ok := InnerOf(Key("p:", pk))
		if !ok {
			t.Fatalf("InnerOf(%q)", Key("p:", pk))
		}
		got, err := SplitInner(inner, len(pk))
		if err != nil || len(got) != len(pk) {
			t.Fatalf("SplitInner(%q, %d) = %q, %v", inner, len(pk), got, err)
		}
		for i := range pk {
			if got[i] != pk[i] {
				t.Fatalf("round trip of %q gave %q", pk, got)
			}
		}
	}
	// A single-column key is its text as it is (keys written before stay the same).
	if k := Key("inv:", []string{`a:b\c`}); k != `inv:{a:b\c}` {
		t.Fatalf("single-column key %s", k)
	}
	if _, err := SplitInner(`x:y`, 3); err == nil {
		t.Fatal("a key with the wrong number of parts is not refused")
	}
	if _, err := SplitInner(`x\`, 2); err == nil {
		t.Fatal("a lone escape is not refused")
	}
}
