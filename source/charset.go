package source

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
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
// macce, geostd8 or armscii8, have no table in Go, and swe7 is not even ASCII-compatible)
// and the CJK multi-byte ones, whose variants differ between vendors (MariaDB's big5 is
// not WHATWG's Big5; sjis maps 0x8160 to U+301C where Go says U+FF5E; ...). The server's
// mapping is what a SELECT prints.
var derivedMultiByte = map[string]bool{"big5": true, "sjis": true, "cp932": true, "ujis": true, "eucjpms": true, "euckr": true, "gb2312": true, "gbk": true}

// serverDecoderCache holds the decoders built, by character set: a process follows one
// source, and a server's mappings do not change while it runs.
var serverDecoderCache sync.Map

// serverDecoderFor returns the server's decoder of cs (nil, nil when cs decodes without
// the server: UTF-8, binary, the UTF-16/32 family, or a set the server does not list).
// It is built once per process, on first use (only the binlog path needs it).
func serverDecoderFor(db *sql.DB, cs string) (func([]byte) (string, error), error) {
	if v, ok := serverDecoderCache.Load(cs); ok {
		return v.(func([]byte) (string, error)), nil
	}
	switch cs {
	case "", "utf8", "utf8mb3", "utf8mb4", "ascii", "binary", "ucs2", "utf16", "utf16le", "utf32", "gb18030":
		return nil, nil
	}
	if db == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dec, err := buildServerDecoder(ctx, db, cs)
	if err != nil {
		return nil, fmt.Errorf("read the server's mapping of character set %s: %w", cs, err)
	}
	if dec != nil {
		serverDecoderCache.Store(cs, dec)
	}
	return dec, nil
}

// buildServerDecoder asks the server what each character of cs is in utf8mb4: for a
// single-byte set, its 256 bytes; for a CJK set, every byte that is a character alone,
// every two-byte sequence (one lead byte per query, the sequences separated by a newline,
// which is never a trail byte), and EUC-JP's three-byte 0x8F sequences. A well-formed
// sequence the server has no Unicode character for is '?', as a SELECT prints it.
func buildServerDecoder(ctx context.Context, db *sql.DB, cs string) (func([]byte) (string, error), error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// Its session settings are changed: never back into the pool.
	defer conn.Raw(func(any) error { return driver.ErrBadConn })
	var maxLen int
	if err := conn.QueryRowContext(ctx, "SELECT MAXLEN FROM information_schema.CHARACTER_SETS WHERE CHARACTER_SET_NAME = ?", cs).Scan(&maxLen); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		return nil, err
	}
	if maxLen > 1 && !derivedMultiByte[cs] {
		return nil, nil
	}
	// Malformed sequences become '?' instead of an error or NULL (MySQL 8's strict mode).
	if _, err := conn.ExecContext(ctx, "SET SESSION sql_mode = ''"); err != nil {
		return nil, err
	}
	convert := func(b []byte) ([]string, error) {
		var s sql.NullString
		if err := conn.QueryRowContext(ctx, "SELECT CONVERT(CONVERT(UNHEX('"+hex.EncodeToString(b)+"') USING "+cs+") USING utf8mb4)").Scan(&s); err != nil {
			return nil, err
		}
		if !s.Valid {
			return nil, fmt.Errorf("the server converted nothing")
		}
		return strings.Split(s.String, "\n"), nil
	}
	if maxLen == 1 {
		return singleByteDecoder(convert)
	}
	return multiByteDecoder(cs, convert)
}

// oneChar returns the piece of a sequence when the server read it as one character.
func oneChar(p string) (string, bool) { return p, utf8.RuneCountInString(p) == 1 }

// singleByteDecoder asks the server (through convert) for the character of each byte.
func singleByteDecoder(convert func([]byte) ([]string, error)) (func([]byte) (string, error), error) {
	var table [256]string
	for i := range table {
		table[i] = "?"
	}
	var buf []byte
	for i := 0; i < 256; i++ {
		if i != '\n' {
			buf = append(buf, byte(i), '\n')
		}
	}
	pieces, err := convert(buf)
	if err != nil {
		return nil, err
	}
	k := 0
	for i := 0; i < 256; i++ {
		if i == '\n' {
			table[i] = "\n"
			continue
		}
		if k < len(pieces) {
			if p, ok := oneChar(pieces[k]); ok {
				table[i] = p
			}
		}
		k++
	}
	asciiSame := true // not a given: swe7 has 'é' at 0x60
	for i := 0; i < 0x80; i++ {
		asciiSame = asciiSame && table[i] == string(rune(i))
	}
	return singleByteDecode(&table, asciiSame), nil
}

// singleByteDecode returns the decoder that maps each byte through table.
func singleByteDecode(table *[256]string, asciiSame bool) func([]byte) (string, error) {
	return func(b []byte) (string, error) {
		if asciiSame {
			i := 0
			for i < len(b) && b[i] < 0x80 {
				i++
			}
			if i == len(b) {
				return string(b), nil
			}
		}
		var sb strings.Builder
		sb.Grow(len(b) + len(b)/2)
		for _, c := range b {
			sb.WriteString(table[c])
		}
		return sb.String(), nil
	}
}

// multiByteDecoder asks the server (through convert) for the characters of CJK set cs.
func multiByteDecoder(cs string, convert func([]byte) ([]string, error)) (func([]byte) (string, error), error) {
	var singles [256]string
	pairs := map[uint16]string{}
	triples := map[uint32]string{}
	var buf []byte
	for c := 0x80; c <= 0xFF; c++ {
		buf = append(buf, byte(c), '\n')
	}
	pieces, err := convert(buf)
	if err != nil {
		return nil, err
	}
	for k := 0; k < 0x80 && k < len(pieces); k++ {
		if p, ok := oneChar(pieces[k]); ok && p != "?" { // a lone lead byte is '?' too
			singles[0x80+k] = p
		}
	}
	// each asks for prefix+last, for every last byte from lo to hi, in one query, and
	// calls put with the last byte of each sequence the server read as one character.
	each := func(prefix []byte, lo, hi int, put func(last int, p string)) error {
		buf = buf[:0]
		for last := lo; last <= hi; last++ {
			buf = append(append(buf, prefix...), byte(last), '\n')
		}
		pieces, err := convert(buf)
		if err != nil {
			return err
		}
		for k := 0; k <= hi-lo && k < len(pieces); k++ {
			if p, ok := oneChar(pieces[k]); ok {
				put(lo+k, p)
			}
		}
		return nil
	}
	for lead := 0x81; lead <= 0xFE; lead++ {
		if err := each([]byte{byte(lead)}, 0x40, 0xFE, func(trail int, p string) { pairs[uint16(lead)<<8|uint16(trail)] = p }); err != nil {
			return nil, err
		}
	}
	if cs == "ujis" || cs == "eucjpms" {
		for b2 := 0xA1; b2 <= 0xFE; b2++ {
			if err := each([]byte{0x8F, byte(b2)}, 0xA1, 0xFE, func(b3 int, p string) { triples[uint32(b2)<<8|uint32(b3)] = p }); err != nil {
				return nil, err
			}
		}
	}
	return multiByteDecode(&singles, pairs, triples), nil
}

// multiByteDecode returns the decoder that maps EUC-JP triples, pairs, then single bytes.
func multiByteDecode(singles *[256]string, pairs map[uint16]string, triples map[uint32]string) func([]byte) (string, error) {
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
			if c == 0x8F && i+2 < len(b) {
				if p, ok := triples[uint32(b[i+1])<<8|uint32(b[i+2])]; ok {
					sb.WriteString(p)
					i += 3
					continue
				}
			}
			if i+1 < len(b) {
				if p, ok := pairs[uint16(c)<<8|uint16(b[i+1])]; ok {
					sb.WriteString(p)
					i += 2
					continue
				}
			}
			if p := singles[c]; p != "" {
				sb.WriteString(p)
			} else {
				sb.WriteByte('?') // not well-formed: the server prints '?' too
			}
			i++
		}
		return sb.String(), nil
	}
}

// Decoder returns the decoder of charset, which turns a column's raw bytes in the binlog
// into the UTF-8 text a SELECT returns: the server's own (see derivedMultiByte) when it
// has one, else charsetDecoder's.
func (t *Table) Decoder(charset string) (func([]byte) (string, error), error) {
	cs := strings.ToLower(charset)
	d, err := serverDecoderFor(t.db, cs)
	if err != nil || d != nil {
		return d, err
	}
	return charsetDecoder(cs), nil
}
