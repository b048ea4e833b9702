package main

import (
	"os"
	"path/filepath"
	"testing"
)

// INVSYNC_CPUPROFILE and INVSYNC_MEMPROFILE write their profiles, named after the
// command, when it ends.
func TestProfilesAreWritten(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"INVSYNC_CPUPROFILE": filepath.Join(dir, "cpu-%c.prof"), "INVSYNC_MEMPROFILE": filepath.Join(dir, "mem-%c.prof")}
	stop := profile(func(k string) string { return env[k] }, []string{"invsync", "snapshot"})
	_ = make([]byte, 1<<20)
	stop()
	for _, name := range []string{"cpu-snapshot.prof", "mem-snapshot.prof"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
}
