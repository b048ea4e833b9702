package canal

import (
	"fmt"
	"strings"
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
