package canal

import (
	"strings"

	"github.com/invsync/invsync/source"
	"go.uber.org/zap"
)

// ddlChange is a mirrored table a statement may have changed.
type ddlChange struct {
	table  *source.Table
	reload bool // the rows may have been replaced, whatever the definition
}

// ddl returns the mirrored tables a statement (run with default schema) may change,
// and forgets cached decoders then, so that the next table map builds them again. The
// match is by name, erring on the side of reloading: a statement that names the table
// (qualified, or unqualified in its schema) counts.
func (s *Source) ddl(schema, q string) []ddlChange {
	lq := strings.ToLower(strings.ReplaceAll(q, "`", ""))
	replaces := replacesRows(lq)
	var out []ddlChange
	w := strings.Fields(lq)
	dropsSchema := len(w) >= 3 && w[0] == "drop" && (w[1] == "database" || w[1] == "schema")
	for name, t := range s.tables {
		n := strings.ToLower(t.Name)
		named := containsWord(lq, strings.ToLower(t.Schema)+"."+n) || (strings.EqualFold(schema, t.Schema) && containsWord(lq, n))
		if dropsSchema {
			named = strings.EqualFold(strings.TrimSuffix(w[len(w)-1], ";"), t.Schema)
		}
		if !named {
			continue
		}
		s.log.Info("DDL on a mirrored table", zap.String("table", name), zap.String("query", truncate(q, 200)))
		s.decoders = map[uint64]*decoder{}
		out = append(out, ddlChange{table: t, reload: replaces || dropsSchema})
	}
	return out
}

// replacesRows reports whether a statement (lower case, unquoted) can replace a table's
// rows without row events whatever its definition: TRUNCATE, RENAME, DROP or CREATE of a
// table (a drop and create, an online schema change's cut-over), or an ALTER that renames.
func replacesRows(lq string) bool {
	w := strings.Fields(lq)
	if len(w) < 2 {
		return false
	}
	hasTable := func(from int) bool {
		for i := from; i < len(w) && i < from+4; i++ {
			if w[i] == "table" || w[i] == "tables" {
				return true
			}
		}
		return false
	}
	switch w[0] {
	case "truncate":
		return true
	case "rename":
		return hasTable(1)
	case "drop", "create":
		return hasTable(1)
	case "alter":
		// RENAME, and the partition operations that remove or swap rows.
		for i, x := range w[1:] {
			switch x {
			case "rename", "truncate", "exchange":
				return true
			case "drop":
				if i+2 < len(w) && w[i+2] == "partition" {
					return true
				}
			}
		}
	}
	return false
}

// containsWord reports whether w occurs in s not as part of a longer identifier.
func containsWord(s, w string) bool {
	isIdent := func(b byte) bool {
		return b == '_' || b == '$' || (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || b >= 0x80
	}
	for i := 0; ; {
		j := strings.Index(s[i:], w)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(w)
		if (start == 0 || !isIdent(s[start-1])) && (end == len(s) || !isIdent(s[end])) {
			return true
		}
		i = start + 1
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
