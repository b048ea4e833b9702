package canal

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"
	"golang.org/x/text/encoding/unicode"
	"golang.org/x/text/encoding/unicode/utf32"
)

// Character columns arrive in the binlog as raw bytes in the column's charset; a SELECT
// under SET NAMES utf8mb4 (the snapshot, reconcile, the retrier, the read path) returns
// UTF-8. decodeCharset turns the binlog's bytes into that same UTF-8 text, so every path
// writes one text and builds one key (NOTES-go-mysql.md, trap 11).

// charsetEncodings maps a MySQL/MariaDB character set to its encoding. utf8mb4, utf8mb3,
// ascii and binary need no decoding and are not listed.
var charsetEncodings = map[string]encoding.Encoding{
	"latin2": charmap.ISO8859_2, "latin5": charmap.ISO8859_9, "latin7": charmap.ISO8859_13,
	"greek": charmap.ISO8859_7, "hebrew": charmap.ISO8859_8, "cp1250": charmap.Windows1250, "cp1251": charmap.Windows1251,
	"cp1256": charmap.Windows1256, "cp1257": charmap.Windows1257, "koi8r": charmap.KOI8R, "koi8u": charmap.KOI8U,
	"cp850": charmap.CodePage850, "cp852": charmap.CodePage852, "cp866": charmap.CodePage866, "macroman": charmap.Macintosh,
	"tis620": charmap.Windows874,
	"gbk":    simplifiedchinese.GBK, "gb2312": simplifiedchinese.GBK, "gb18030": simplifiedchinese.GB18030,
	"big5": traditionalchinese.Big5,
	"sjis": japanese.ShiftJIS, "cp932": japanese.ShiftJIS, "ujis": japanese.EUCJP, "eucjpms": japanese.EUCJP,
	"euckr": korean.EUCKR,
	"ucs2":  unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM), "utf16": unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM),
	"utf16le": unicode.UTF16(unicode.LittleEndian, unicode.IgnoreBOM), "utf32": utf32.UTF32(utf32.BigEndian, utf32.IgnoreBOM),
}

// charsetDecoder returns how to turn a column's bytes in charset into UTF-8: nil when
// they are UTF-8 (or binary) already.
func charsetDecoder(charset string) func([]byte) (string, error) {
	charset = strings.ToLower(charset)
	switch charset {
	case "", "utf8", "utf8mb3", "utf8mb4", "ascii", "binary":
		return nil
	case "latin1":
		return decodeLatin1
	}
	enc, ok := charsetEncodings[charset]
	if !ok {
		return func(b []byte) (string, error) {
			if utf8.Valid(b) {
				return string(b), nil
			}
			return string(b), fmt.Errorf("character set %s is not supported by invsync: written as its raw bytes", charset)
		}
	}
	return func(b []byte) (string, error) {
		out, err := enc.NewDecoder().Bytes(b)
		if err != nil {
			return string(b), fmt.Errorf("decode %s text: %w", charset, err)
		}
		return string(out), nil
	}
}

// decodeLatin1 decodes MySQL's latin1, which is Windows-1252 with the five bytes that
// code page leaves undefined mapped to the C1 controls of the same number.
func decodeLatin1(b []byte) (string, error) {
	var sb strings.Builder
	sb.Grow(len(b) + len(b)/2)
	for _, c := range b {
		switch {
		case c < 0x80:
			sb.WriteByte(c)
		case c == 0x81 || c == 0x8D || c == 0x8F || c == 0x90 || c == 0x9D:
			sb.WriteRune(rune(c))
		default:
			sb.WriteRune(charmap.Windows1252.DecodeByte(c))
		}
	}
	return sb.String(), nil
}

// Character sets whose decoding invsync takes from the server itself, not from a code
// page table: every single-byte character set (some, such as dec8, hp8, swe7, keybcs2,
// macce, geostd8 or armscii8, have no table in Go, and the server's mapping is what a
// SELECT prints), and the double-byte ones whose variants differ between vendors (MariaDB's
// big5 is not WHATWG's Big5, sjis and cp932 differ, ...).
var derivedMultiByte = map[string]bool{"big5": true, "sjis": true, "cp932": true, "ujis": true, "eucjpms": true, "euckr": true, "gb2312": true, "gbk": true}

// serverDecoders builds, for each character set in used that the server can describe,
// a decoder from the server's own conversion to utf8mb4: for a single-byte set, the 256
// characters its bytes stand for; for a double-byte set, every valid two-byte sequence
// (asked one lead byte at a time). Sets it cannot describe decode with charsetDecoder.
func serverDecoders(ctx context.Context, db *sql.DB, used map[string]bool) map[string]func([]byte) (string, error) {
	out := map[string]func([]byte) (string, error){}
	for cs := range used {
		if dec := cachedServerDecoder(ctx, db, cs); dec != nil {
			out[cs] = dec
		}
	}
	return out
}

// serverDecoderCache holds the decoders built, by character set: a process follows one
// source, and a server's mappings do not change while it runs.
var serverDecoderCache sync.Map

func cachedServerDecoder(ctx context.Context, db *sql.DB, cs string) func([]byte) (string, error) {
	if v, ok := serverDecoderCache.Load(cs); ok {
		return v.(func([]byte) (string, error))
	}
	dec := serverDecoder(ctx, db, cs)
	if dec != nil {
		serverDecoderCache.Store(cs, dec)
	}
	return dec
}

func serverDecoder(ctx context.Context, db *sql.DB, cs string) func([]byte) (string, error) {
	switch cs {
	case "", "utf8", "utf8mb3", "utf8mb4", "ascii", "binary", "ucs2", "utf16", "utf16le", "utf32", "gb18030":
		return nil
	}
	var maxLen int
	if err := db.QueryRowContext(ctx, "SELECT MAXLEN FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME = ?", cs).Scan(&maxLen); err != nil {
		return nil
	}
	convert := func(b []byte) (string, error) {
		var s sql.NullString
		err := db.QueryRowContext(ctx, "SELECT CONVERT(CONVERT(UNHEX('"+hex.EncodeToString(b)+"') USING "+cs+") USING utf8mb4)").Scan(&s)
		return s.String, err
	}
	if maxLen == 1 {
		all := make([]byte, 256)
		for i := range all {
			all[i] = byte(i)
		}
		text, err := convert(all)
		runes := []rune(text)
		if err != nil || len(runes) != 256 {
			return nil
		}
		var table [256]string
		for i, r := range runes {
			table[i] = string(r)
		}
		return func(b []byte) (string, error) {
			var sb strings.Builder
			sb.Grow(len(b) + len(b)/2)
			for _, c := range b { // not even ASCII is a given: swe7 has 'é' at 0x60
				sb.WriteString(table[c])
			}
			return sb.String(), nil
		}
	}
	if !derivedMultiByte[cs] {
		return nil
	}
	pairs := map[uint16]string{}
	for lead := 0x81; lead <= 0xFE; lead++ {
		var buf []byte
		for trail := 0x40; trail <= 0xFE; trail++ {
			buf = append(buf, byte(lead), byte(trail), '\n')
		}
		text, err := convert(buf)
		if err != nil {
			return nil
		}
		pieces := strings.Split(text, "\n")
		if len(pieces) < 0xFE-0x40+1 {
			return nil
		}
		for k := 0; k <= 0xFE-0x40; k++ {
			if p := pieces[k]; utf8.RuneCountInString(p) == 1 && p != "?" {
				pairs[uint16(lead)<<8|uint16(0x40+k)] = p
			}
		}
	}
	fallback := charsetDecoder(cs)
	return func(b []byte) (string, error) {
		var sb strings.Builder
		sb.Grow(len(b) * 2)
		for i := 0; i < len(b); {
			c := b[i]
			if c < 0x80 {
				sb.WriteByte(c)
				i++
				continue
			}
			if i+1 < len(b) {
				if p, ok := pairs[uint16(c)<<8|uint16(b[i+1])]; ok {
					sb.WriteString(p)
					i += 2
					continue
				}
			}
			// Not a two-byte character the server knows (a three-byte EUC-JP sequence, say):
			// the code page decoder, for the rest of this value.
			if fallback == nil {
				return sb.String() + string(b[i:]), fmt.Errorf("character set %s: no decoding for the bytes at %d", cs, i)
			}
			rest, err := fallback(b[i:])
			return sb.String() + rest, err
		}
		return sb.String(), nil
	}
}

// decoder returns the decoder of charset: the server's own (serverDecoders) when the
// table has it, else charsetDecoder's.
func (t *Table) decoder(charset string) func([]byte) (string, error) {
	if d, ok := t.decoders[strings.ToLower(charset)]; ok {
		return d
	}
	return charsetDecoder(charset)
}
