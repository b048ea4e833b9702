package canal

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// kind says how a decoded binlog value becomes the text a SELECT returns.
type kind uint8

const (
	kindText   kind = iota // strings, blobs, temporal strings, JSON text: as decoded
	kindInt                // TINYINT..BIGINT
	kindInt24              // MEDIUMINT (sign-extended by the decoder)
	kindYear               // YEAR: four digits, 0000 for zero
	kindFloat              // FLOAT: six significant digits, as MariaDB/MySQL print it
	kindDouble             // DOUBLE: shortest round-trip digits
	kindBit                // BIT(M): big-endian bytes, (M+7)/8 of them
	kindEnum               // ENUM: 1-based index into the values
	kindSet                // SET: bitmask over the values
	kindBinary             // BINARY(N): right-padded with zero bytes to N
	kindTime               // TIME(n): the decoder drops a zero fraction; SELECT prints n digits
)

// column says how one column of a rows event is rendered and used.
type column struct {
	name     string
	kind     kind
	unsigned bool
	size     int // BIT bytes, BINARY length, TIME fraction digits, or FLOAT(M,D)/DOUBLE(M,D) decimals + 1
	zerofill int // ZEROFILL: the display width the server pads to with zeros
	values   []string
	decode   func([]byte) (string, error) // text in another character set than UTF-8
	mirror   bool
	pk       int // position in the primary key, or -1
	version  bool
}

// render returns the SELECT text of v, and false for NULL.
func (c *column) render(v any) (string, bool, error) {
	s, ok, err := c.text(v)
	if ok && c.zerofill > len(s) {
		s = strings.Repeat("0", c.zerofill-len(s)) + s
	}
	return s, ok, err
}

// text is render without ZEROFILL's padding.
func (c *column) text(v any) (string, bool, error) {
	if v == nil {
		return "", false, nil
	}
	switch c.kind {
	case kindInt, kindInt24, kindYear:
		i, ok := asInt64(v)
		if !ok {
			break
		}
		switch {
		case c.kind == kindYear:
			if i == 0 {
				return "0000", true, nil
			}
			return strconv.FormatInt(i, 10), true, nil
		case c.kind == kindInt24 && c.unsigned:
			return strconv.FormatUint(uint64(uint32(i)&0xFFFFFF), 10), true, nil
		case c.unsigned:
			return strconv.FormatUint(unsignedOf(v, i), 10), true, nil
		}
		return strconv.FormatInt(i, 10), true, nil
	case kindFloat:
		if f, ok := v.(float32); ok {
			return c.floatText(f), true, nil
		}
	case kindDouble:
		if f, ok := v.(float64); ok {
			return c.doubleText(f), true, nil
		}
	case kindBit:
		if i, ok := asInt64(v); ok {
			return c.bitText(i), true, nil
		}
	case kindEnum:
		if i, ok := asInt64(v); ok {
			if i <= 0 || int(i) > len(c.values) {
				return "", true, nil
			}
			return c.values[i-1], true, nil
		}
	case kindSet:
		if i, ok := asInt64(v); ok {
			return c.setText(i), true, nil
		}
	case kindBinary:
		s := asString(v)
		if len(s) < c.size {
			s += strings.Repeat("\x00", c.size-len(s))
		}
		return s, true, nil
	case kindTime:
		if x, ok := v.(string); ok {
			return timeText(x, c.size), true, nil
		}
	case kindText:
		if c.decode != nil {
			switch x := v.(type) {
			case string:
				s, err := c.decode([]byte(x))
				return s, true, err
			case []byte:
				s, err := c.decode(x)
				return s, true, err
			}
		}
		switch x := v.(type) {
		case string:
			return x, true, nil
		case []byte:
			return string(x), true, nil
		}
	}
	return c.otherText(v)
}

// otherText is text for what the decoder returned that the column kind does not expect.
func (c *column) otherText(v any) (string, bool, error) {
	switch x := v.(type) {
	case string:
		return x, true, nil
	case []byte:
		return string(x), true, nil
	}
	return fmt.Sprint(v), true, fmt.Errorf("column %s: unexpected %T value for its type", c.name, v)
}

// floatText is the text of a FLOAT value.
func (c *column) floatText(f float32) string {
	if c.size > 0 { // FLOAT(M,D): D decimals
		return strconv.FormatFloat(float64(f), 'f', c.size-1, 64)
	}
	return FormatFloat(float64(f), 6)
}

// doubleText is the text of a DOUBLE value.
func (c *column) doubleText(f float64) string {
	if c.size > 0 { // DOUBLE(M,D): D decimals
		return strconv.FormatFloat(f, 'f', c.size-1, 64)
	}
	return FormatFloat(f, -1)
}

// bitText is the text of a BIT value: its (M+7)/8 bytes, big-endian.
func (c *column) bitText(i int64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	n := min(max(c.size, 1), 8)
	return string(b[8-n:])
}

// setText is the text of a SET value: its members in bitmask i, comma-separated.
func (c *column) setText(i int64) string {
	var parts []string
	for b := 0; b < len(c.values) && b < 64; b++ {
		if uint64(i)&(1<<uint(b)) != 0 {
			parts = append(parts, c.values[b])
		}
	}
	return strings.Join(parts, ",")
}

// appendText appends the SELECT text of a non-NULL v, without an intermediate string
// for the integer kinds (primary keys are usually integers).
func (c *column) appendText(dst []byte, v any) ([]byte, error) {
	if c.zerofill > 0 {
		s, _, err := c.render(v) // padded
		return append(dst, s...), err
	}
	if c.kind == kindInt && !c.unsigned {
		if i, ok := asInt64(v); ok {
			return strconv.AppendInt(dst, i, 10), nil
		}
	}
	if c.kind == kindInt && c.unsigned {
		if i, ok := asInt64(v); ok {
			return strconv.AppendUint(dst, unsignedOf(v, i), 10), nil
		}
	}
	s, _, err := c.render(v)
	return append(dst, s...), err
}

// timeText is a decoded TIME value with its fraction as a SELECT prints it: fsp digits,
// zeros included (go-mysql leaves out a zero fraction).
func timeText(v string, fsp int) string {
	if fsp <= 0 {
		return v
	}
	dot := strings.IndexByte(v, '.')
	if dot < 0 {
		return v + "." + strings.Repeat("0", fsp)
	}
	if n := len(v) - dot - 1; n < fsp {
		return v + strings.Repeat("0", fsp-n)
	}
	return v
}

func asString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	}
	return fmt.Sprint(v)
}

func asInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case int:
		return int64(x), true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		return int64(x), true
	case uint:
		return int64(x), true
	}
	return 0, false
}

// unsignedOf reinterprets a signed decoded integer as the unsigned value of its width.
func unsignedOf(v any, i int64) uint64 {
	switch v.(type) {
	case int8:
		return uint64(uint8(i))
	case int16:
		return uint64(uint16(i))
	case int32:
		return uint64(uint32(i))
	}
	return uint64(i)
}

// FormatFloat renders f the way MariaDB and MySQL print a DOUBLE (digits = -1: the
// shortest digits that round-trip) or a FLOAT (digits = 6, FLT_DIG significant digits):
// plain decimal notation while the decimal exponent is within [-14, 15], scientific
// notation ("1e20", "1.5e-16") outside, trailing zeros dropped.
func FormatFloat(f float64, digits int) string {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	neg := math.Signbit(f)
	if neg {
		f = -f
	}
	var e string
	if digits < 0 {
		e = strconv.FormatFloat(f, 'e', -1, 64)
	} else {
		e = strconv.FormatFloat(f, 'e', digits-1, 64)
	}
	// e is d[.ddd]e±XX
	mant, exps, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(exps)
	ds := strings.Replace(mant, ".", "", 1)
	ds = strings.TrimRight(ds, "0")
	if ds == "" {
		ds = "0"
	}
	sign := ""
	if neg {
		sign = "-"
	}
	if ds == "0" {
		return sign + "0"
	}
	decpt := exp + 1 // digits before the decimal point
	n := len(ds)
	if decpt >= -14 && (decpt <= 15 || n > decpt) {
		switch {
		case decpt <= 0:
			return sign + "0." + strings.Repeat("0", -decpt) + ds
		case decpt < n:
			return sign + ds[:decpt] + "." + ds[decpt:]
		default:
			return sign + ds + strings.Repeat("0", decpt-n)
		}
	}
	out := sign + ds[:1]
	if n > 1 {
		out += "." + ds[1:]
	}
	return out + "e" + strconv.Itoa(exp)
}
