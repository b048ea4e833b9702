package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/source"
)

// Issue 14, README promises with no test before: the exit statuses of the table in
// README ("Running it"). SIGINT exits 0 after writing the final checkpoint (with
// checkpoints otherwise an hour apart, only that one can cover the last change); `invsync
// snapshot` exits 1 while an instance leads; `run` exits 1 naming a mirrored table missing
// at start; `status` exits 1 when the source cannot be read; `compensation purge` 0.
func TestExitStatuses(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 100)
	addr := freeAddr(t)
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addr; c.Checkpoint.Interval = time.Hour })
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	p := startProc(t, cfgPath, addr)
	execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku < 10")
	end := e.currentPosition()
	e.waitEqual(30 * time.Second)

	// snapshot while an instance leads: 1, naming why.
	if code, out := runCLI(t, time.Minute, pw, "snapshot", "-c", cfgPath); code != 1 || !strings.Contains(out, "leads this config") {
		t.Fatalf("snapshot while an instance leads: exit %d, want 1; output:\n%s", code, out)
	}

	// SIGINT: 0, and the final checkpoint covers the last change.
	testenv.Must(t, p.cmd.Process.Signal(syscall.SIGINT), "SIGINT")
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("run exited with %v after SIGINT, want 0", err)
	}
	cp, ok, err := e.checkpointStore().Load(context.Background())
	if err != nil || !ok || less(cp, source.Position{File: end.File, Pos: end.Pos}) {
		t.Fatalf("the final checkpoint %s (%v, found %v) is short of the last change %s", cp, err, ok, end)
	}

	// compensation purge: 0.
	if code, out := runCLI(t, time.Minute, pw, "compensation", "purge", "--older-than", "1h", "-c", cfgPath); code != 0 {
		t.Fatalf("compensation purge: exit %d, want 0; output:\n%s", code, out)
	}

	// status with the source unreachable: 1.
	dead := e.writeConfig(func(c *config.Config) {
		c.HTTP.Listen = addr
		c.Source.Addr = freeAddr(t)
		c.Source.ConnectTimeout = 2 * time.Second
	})
	if code, out := runCLI(t, time.Minute, pw, "status", "-c", dead); code != 1 {
		t.Fatalf("status with the source unreachable: exit %d, want 1; output:\n%s", code, out)
	}

	// run with a mirrored table missing: 1, naming it.
	execAll(t, e.db, "RENAME TABLE inventory TO inventory_old")
	if code, out := runCLI(t, time.Minute, pw, "run", "-c", cfgPath); code != 1 || !strings.Contains(out, e.schema+".inventory") {
		t.Fatalf("run with a mirrored table missing: exit %d, want 1 naming %s.inventory; output:\n%s", code, e.schema, out)
	}
}
