package source

import "testing"

func TestCharsetsDecodeToUTF8(t *testing.T) {
	for _, c := range []struct {
		charset string
		in      []byte
		want    string
	}{
		{"latin1", []byte("caf\xe9 \x80 \x81"), "café € \u0081"},
		{"gbk", []byte{0xbf, 0xe2, 0xb4, 0xe6}, "库存"},
		{"ucs2", []byte{0x03, 0xa9, 0x26, 0x03}, "Ω☃"},
		{"utf16", []byte{0xd8, 0x3d, 0xde, 0x00}, "😀"},
		{"utf32", []byte{0x00, 0x01, 0xf6, 0x00}, "😀"},
		{"cp1251", []byte{0xcf, 0xf0, 0xe8}, "При"},
		{"latin2", []byte{0xa3}, "Ł"},
	} {
		dec := charsetDecoder(c.charset)
		if dec == nil {
			t.Fatalf("%s: no decoder", c.charset)
		}
		got, err := dec(c.in)
		if err != nil || got != c.want {
			t.Errorf("%s: %q (%v), want %q", c.charset, got, err, c.want)
		}
	}
	for _, cs := range []string{"utf8mb4", "utf8mb3", "UTF8", "binary", "ascii", ""} {
		if charsetDecoder(cs) != nil {
			t.Errorf("%s needs no decoding", cs)
		}
	}
	if _, err := charsetDecoder("armscii8")([]byte{0xff}); err == nil {
		t.Error("an unsupported character set with non-UTF-8 bytes is not reported")
	}
}
