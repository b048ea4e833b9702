package redisscan

import "testing"

func TestGlobEscape(t *testing.T) {
	if got := GlobEscape(`inv:*?[x]\`); got != `inv:\*\?\[x\]\\` {
		t.Fatalf("GlobEscape = %q", got)
	}
}
