package main

import (
	"runtime/debug"
	"testing"
)

// The daemon collects garbage at GOGC=50 unless GOGC is set in its environment (peak RSS
// of a 500,000-row transaction: 270 MB at Go's default of 100, 190 MB at 50).
func TestGCPercentDefault(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	tuneGC(func(string) (string, bool) { return "", false })
	if got := debug.SetGCPercent(100); got != defaultGCPercent || defaultGCPercent != 50 {
		t.Fatalf("GOGC unset: GC percent %d, want 50", got)
	}
	tuneGC(func(k string) (string, bool) { return "200", k == "GOGC" })
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC set: the runtime's own setting was changed to %d", got)
	}
}
