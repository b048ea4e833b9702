// Package layout is the one write path to Redis: it builds row keys, and applies row
// states through versioned Lua scripts that guarantee a key never returns to an older
// state and that replaying a change is harmless.
//
// Every writer (the binlog sink, the snapshot and the reloads, the compensation
// retrier, reconcile's repair and the read path's fills) goes through Writer.Apply, so
// the guard is written and tested once. The layout itself (key format, hash fields,
// tombstones, null markers) is README.md's "Redis layout"; why the rules are what they
// are is docs/design-notes.md.
//
// Ordering rules (Change and the apply script in writer.go):
//   - A change stamped with Seq (a binlog position: file index, event end position, row
//     index in the event) stores it in the field _s and is applied when its Seq is
//     greater than the stored _s. The binlog stream stamps each row with its own
//     position; reloads, the compensation retrier and reconcile's repair stamp a row
//     with the position of the consistent read it came from, so they are ordered
//     against the stream by position. Over a key without _s, a stamped change applies
//     when its (coalesced) version is at least the stored _v, and over a tombstone
//     without _s always; a null marker is always overwritten.
//   - A change without Seq is applied only where no key exists, over a null marker, or
//     when its _v is strictly greater than the stored _v: it never overwrites a value it
//     cannot prove older. Such a delete (a row found absent) replaces only a live row
//     whose _v is not above its own. A fill (IfAbsent) lands only where no key or a null
//     marker is.
//   - A replacing change (Replace: a reload while the stream is paused) is applied
//     whatever Redis holds.
package layout

import (
	"fmt"
	"strconv"
	"strings"
)

// Reserved hash fields. Column names cannot start with an underscore in the config.
const (
	FieldVersion = "_v"
	FieldSeq     = "_s"
	FieldDeleted = "_deleted"
	FieldNull    = "_null"
)

// Key returns the Redis key of a row: prefix{inner}, where inner is KeyInner(pk). The
// braces are the Redis Cluster hash tag.
func Key(prefix string, pk []string) string {
	n := len(prefix) + 2
	for _, p := range pk {
		n += len(p) + 1
	}
	b := AppendKeyStart(make([]byte, 0, n), prefix)
	return string(AppendKeyEnd(AppendKeyInner(b, pk)))
}

// AppendKeyStart appends a row key's start (prefix and the opening brace) to dst: the
// allocation-free form of Key for the hot path is AppendKeyStart, AppendKeyInner or
// AppendKeyPart per part (':' between parts of a composite key), then AppendKeyEnd.
func AppendKeyStart(dst []byte, prefix string) []byte {
	return append(append(dst, prefix...), '{')
}

// AppendKeyEnd closes a row key started with AppendKeyStart.
func AppendKeyEnd(dst []byte) []byte { return append(dst, '}') }

// KeyInner encodes a primary key between the braces of its row key (and as its Bloom
// filter item): a single-column key is its text as it is; a composite key joins its
// parts with ':' after escaping, inside each part, '\' as "\\" and ':' as "\:", so that
// ('x:y', 'z') and ('x', 'y:z') have different keys. SplitInner takes it apart.
func KeyInner(pk []string) string {
	if len(pk) == 1 {
		return pk[0]
	}
	return string(AppendKeyInner(nil, pk))
}

// AppendKeyInner appends KeyInner(pk) to dst.
func AppendKeyInner(dst []byte, pk []string) []byte {
	if len(pk) == 1 {
		return append(dst, pk[0]...)
	}
	for i, p := range pk {
		if i > 0 {
			dst = append(dst, ':')
		}
		dst = AppendKeyPart(dst, p)
	}
	return dst
}

// AppendKeyPart appends one part of a composite key, escaped (see KeyInner).
func AppendKeyPart[S ~string | ~[]byte](dst []byte, part S) []byte {
	for i := 0; i < len(part); i++ {
		if c := part[i]; c == '\\' || c == ':' {
			dst = append(dst, '\\')
		}
		dst = append(dst, part[i])
	}
	return dst
}

// SplitInner takes apart what KeyInner encoded: n is the number of key columns (1: the
// text is the key as it is); n < 0 splits a composite key of any size. It fails when
// the text does not hold n parts or ends in a lone escape.
func SplitInner(inner string, n int) ([]string, error) {
	if n == 1 {
		return []string{inner}, nil
	}
	var parts []string
	var cur []byte
	for i := 0; i < len(inner); i++ {
		switch c := inner[i]; c {
		case '\\':
			if i+1 == len(inner) {
				return nil, fmt.Errorf("layout: key %q ends in a lone escape", inner)
			}
			i++
			cur = append(cur, inner[i])
		case ':':
			parts = append(parts, string(cur))
			cur = cur[:0]
		default:
			cur = append(cur, c)
		}
	}
	parts = append(parts, string(cur))
	if n > 0 && len(parts) != n {
		return nil, fmt.Errorf("layout: key %q has %d parts, the table's primary key %d", inner, len(parts), n)
	}
	return parts, nil
}

// InnerOf returns what a row key holds between its braces (the encoded primary key).
func InnerOf(key string) (prefix, inner string, ok bool) {
	i := strings.IndexByte(key, '{')
	if i < 0 || len(key) < i+2 || key[len(key)-1] != '}' {
		return "", "", false
	}
	return key[:i], key[i+1 : len(key)-1], true
}

// Op is the kind of change.
type Op uint8

const (
	// OpUpsert replaces the whole hash with Fields plus _v (and _s).
	OpUpsert Op = iota + 1
	// OpDelete writes a tombstone {_v, _s, _deleted: 1} that expires.
	OpDelete
	// OpNull writes a "does not exist" marker {_null: 1} that expires, only where no key
	// exists (never over a row or a tombstone).
	OpNull
	// OpSettle changes nothing of the row: it only carries Settles (a settlement whose
	// stock row did not change in its transaction).
	OpSettle
)

func (o Op) String() string {
	switch o {
	case OpUpsert:
		return "upsert"
	case OpDelete:
		return "delete"
	case OpNull:
		return "null"
	case OpSettle:
		return "settle"
	}
	return "unknown"
}

// Seq is the position of a row change in the binlog of one primary. It orders every
// change of one key: later in the binlog means greater.
type Seq struct {
	File  uint32 // binlog file index (the number in mysql-bin.000042)
	Pos   uint32 // end position of the rows event in that file
	Index uint32 // row index within the rows event
}

// IsZero reports whether s is unset (the change does not come from the binlog).
func (s Seq) IsZero() bool { return s == Seq{} }

// Less orders sequences.
func (s Seq) Less(o Seq) bool {
	if s.File != o.File {
		return s.File < o.File
	}
	if s.Pos != o.Pos {
		return s.Pos < o.Pos
	}
	return s.Index < o.Index
}

// seqWidth is the fixed width of an encoded Seq: 10 + 10 + 7 digits.
const seqWidth = 27

// AppendSeq appends the fixed-width decimal form of s, which the Lua guard compares.
func AppendSeq(dst []byte, s Seq) []byte {
	dst = appendPadded(dst, uint64(s.File), 10)
	dst = appendPadded(dst, uint64(s.Pos), 10)
	return appendPadded(dst, uint64(s.Index), 7)
}

// ParseSeq decodes what AppendSeq wrote.
func ParseSeq(s string) (Seq, error) {
	if len(s) != seqWidth {
		return Seq{}, fmt.Errorf("layout: seq %q has length %d, want %d", s, len(s), seqWidth)
	}
	f, err1 := strconv.ParseUint(s[:10], 10, 32)
	p, err2 := strconv.ParseUint(s[10:20], 10, 32)
	i, err3 := strconv.ParseUint(s[20:], 10, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		return Seq{}, fmt.Errorf("layout: seq %q is not numeric", s)
	}
	return Seq{File: uint32(f), Pos: uint32(p), Index: uint32(i)}, nil
}

// PositionVersion is the _v of a table without a version column: a number that grows
// with the binlog position on one primary (file index * 2^32 + end position). It is
// exact in a Lua double while the file index stays below 2^21.
func PositionVersion(s Seq) uint64 { return uint64(s.File)<<32 | uint64(s.Pos) }

func appendPadded(dst []byte, v uint64, width int) []byte {
	var buf [20]byte
	b := strconv.AppendUint(buf[:0], v, 10)
	for i := len(b); i < width; i++ {
		dst = append(dst, '0')
	}
	return append(dst, b...)
}

// Change is one row state to write.
type Change struct {
	// Key is the Redis key (see Key).
	Key string
	// Op is upsert or delete.
	Op Op
	// Version is _v: a non-negative decimal integer.
	Version string
	// Seq orders changes by binlog position: a binlog change's own, or the position of the
	// consistent read a reload, the retrier or a repair took the row from; zero for the
	// read path's fills.
	Seq Seq
	// MaxVersion, for a binlog change that stands for several (coalesced: newer changes
	// of the key replaced older ones before they were written), is the greatest version
	// among them; empty means Version. Over a value that did not come from the binlog
	// (a snapshot row), such a change applies when MaxVersion is at least the stored
	// _v: exactly when the changes, applied one by one, would have replaced it. Without
	// it a DELETE then INSERT with the version restarting at 1 could not replace a
	// snapshot row read before the DELETE.
	MaxVersion string
	// Replace replaces the row (or, on a delete, turns it into a tombstone) whatever
	// Redis holds, keeping Seq as its _s when set. Only for a reload made while the binlog
	// stream is paused (nothing else writes then) when versions cannot order its rows
	// against what Redis holds: after a DDL (rows changed their text without a new
	// version), after a purged binlog position or a replaced history (rows deleted and
	// inserted again with their version restarted, updated without a new version).
	Replace bool
	// IfAbsent, for an upsert that does not come from the binlog, writes it only where no
	// key or a null marker is (a read path's fill: whatever the stream wrote meanwhile,
	// a row or a tombstone, is a full binlog state and wins; versions cannot order them
	// across a delete and a re-insert whose version restarted).
	IfAbsent bool
	// Fields are name/value pairs of the non-NULL mirrored columns (upsert only).
	Fields []Field
	// Settles are the orders whose settlement rows the change's transaction inserted
	// (and merged changes' transactions): their holds on this row end, in the same
	// script call as the row's new stock (see holds.go).
	Settles []Settle
}

// Settle is one order settled in MySQL: its row in the settlement table.
type Settle struct {
	Order, User string
	Qty         int64
}

// Field is one column of a row as the text MySQL returns for it.
type Field struct {
	Name  string
	Value string
}

// Result of one Change.
type Result uint8

const (
	// Applied means Redis now holds the change.
	Applied Result = iota + 1
	// Skipped means Redis already held this state or a newer one.
	Skipped
	// Failed means the write of this key failed (see the error).
	Failed
)
