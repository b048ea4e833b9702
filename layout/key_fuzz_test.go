package layout_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/invsync/invsync/layout"
)

// The key encoding round-trips: any composite key taken apart gives back its parts, two
// different keys never share a Redis key, and the hot path's append form builds the same
// key as Key.
func FuzzKeyRoundTrip(f *testing.F) {
	f.Add("inv:", "a", "b", "c")
	f.Add("p:", "x:y", "z", "")
	f.Add("p:", "x", "y:z", `\`)
	f.Add("", `a\:`, `:\`, "{}")
	f.Fuzz(func(t *testing.T, prefix, a, b, c string) {
		for _, pk := range [][]string{{a}, {a, b}, {a, b, c}} {
			k := layout.Key(prefix, pk)
			if !strings.Contains(prefix, "{") {
				if p, in, ok := layout.InnerOf(k); !ok || p != prefix || in != layout.KeyInner(pk) {
					t.Fatalf("InnerOf(%q) = %q, %q, %v", k, p, in, ok)
				}
			}
			inner := k[len(prefix)+1 : len(k)-1]
			got, err := layout.SplitInner(inner, len(pk))
			if err != nil || !slices.Equal(got, pk) {
				t.Fatalf("Key(%q, %q) = %q: split back %q, %v", prefix, pk, k, got, err)
			}
			b := layout.AppendKeyStart(nil, prefix)
			for i, part := range pk {
				if len(pk) == 1 {
					b = append(b, part...)
					break
				}
				if i > 0 {
					b = append(b, ':')
				}
				b = layout.AppendKeyPart(b, part)
			}
			if s := string(layout.AppendKeyEnd(b)); s != k {
				t.Fatalf("append form %q, Key %q", s, k)
			}
		}
		if a != b && len(a)+len(b) > 0 {
			if layout.Key(prefix, []string{a, b}) == layout.Key(prefix, []string{b, a}) {
				t.Fatalf("(%q, %q) and (%q, %q) share a key", a, b, b, a)
			}
		}
		if layout.Key(prefix, []string{a + ":" + b, c}) == layout.Key(prefix, []string{a, b + ":" + c}) {
			t.Fatalf("a ':' inside a part moved the split: %q %q %q", a, b, c)
		}
	})
}
