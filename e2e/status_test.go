package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
)

// `invsync status`: checkpoint, source position, leader, daemon lag, compensations and
// Bloom filters, as a readable table; with the daemon running and stopped.
func TestStatusCommand(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	before := e.writeConfig(nil)
	code, out := runCLI(t, 30*time.Second, pw, "status", "-c", before)
	t.Logf("before the first run:\n%s", out)
	if code != 0 || !strings.Contains(out, "checkpoint    none yet") || !strings.Contains(out, "leader        none") ||
		!strings.Contains(out, "not built") {
		t.Fatalf("status before the first run: exit %d", code)
	}
	loadRows(t, e, 1000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = r.d.Addr() })
	code, out = runCLI(t, 30*time.Second, pw, "status", "-c", cfgPath)
	t.Logf("running:\n%s", out)
	for _, re := range []string{
		`checkpoint\s+\S+\.\d+:\d+.*\(written [0-9.]+m?s ago\)`,
		`source\s+\S+\.\d+:\d+`,
		`leader\s+an instance leads\s+\(\S+, pid \d+, http://` + regexp.QuoteMeta(r.d.Addr()) + `; state database connection \d+ holds invsync:` + e.cfg.State.Schema + `\)`,
		`daemon\s+streaming\s+\(lag \d+\.\d\ds, 0 keys queued`,
		`compensation\s+0 pending, 0 dead`,
		e.schema + `\.inventory\s+invsync:bloom:` + e.schema + `\.inventory\s+yes\s+14377588\s+10\s+(99\d|100\d)\s+\S+`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("status lacks %s", re)
		}
	}
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r.stop(t)
	code, out = runCLI(t, 30*time.Second, pw, "status", "-c", cfgPath)
	if code != 0 || !strings.Contains(out, "leader        none") || !strings.Contains(out, "daemon        not reachable") {
		t.Fatalf("status with the daemon stopped: exit %d\n%s", code, out)
	}
	if strings.Contains(out, testenv.AppPassword()) {
		t.Fatal("status prints the password")
	}
}
