package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
)

// purgeAll makes the server forget every binlog before the current one. The server
// keeps a file that a replica connection still reads, and notices a closed replica
// connection only after a while, so it retries until the file is gone.
func purgeAll(t *testing.T, file string) {
	t.Helper()
	root := testenv.DB(t, "")
	_, err := root.Exec("FLUSH BINARY LOGS")
	testenv.Must(t, err, "flush")
	pos := (&env{t: t}).currentPosition()
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, err = root.Exec("PURGE BINARY LOGS TO '" + pos.File + "'")
		testenv.Must(t, err, "purge")
		var name string
		if root.QueryRow("SHOW BINARY LOGS").Scan(&name, new(any)) == nil && name == pos.File {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server keeps %s (oldest %s) after PURGE", file, name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Issue 3, acceptance 2: the binlog is purged under the checkpoint while invsync is
// stopped. With on_position_lost: fail, run exits non-zero naming the position, the
// oldest binlog and the fix; by default it loads every table again (rows deleted in the
// gap become tombstones) and ends equal.
func TestPurgedBinlogUnderTheCheckpoint(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	r := e.start(nil)
	waitReady(t, r)
	loadRows(t, e, 300)
	e.waitEqual(30 * time.Second)
	r.stop(t)
	cp, _, err := e.checkpointStore().Load(t.Context())
	testenv.Must(t, err, "checkpoint")

	for _, q := range []string{
		"UPDATE inventory SET stock = stock - 1, version = version + 1 WHERE sku < 100",
		"DELETE FROM inventory WHERE sku >= 250",
		"INSERT INTO inventory VALUES (1000, 1, 1.00, 'new', 1)",
	} {
		_, err := e.db.Exec(q)
		testenv.Must(t, err, "%s", q)
	}
	purgeAll(t, cp.File)

	failCfg := e.writeConfig(func(c *config.Config) { c.Source.OnPositionLost = "fail"; c.HTTP.Listen = "" })
	code, out := runCLI(t, 60*time.Second, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "run", "-c", failCfg)
	if code != 1 || !strings.Contains(out, cp.File) || !strings.Contains(out, "oldest binlog") || !strings.Contains(out, "invsync snapshot") {
		t.Fatalf("on_position_lost fail: exit %d, output:\n%s", code, out)
	}

	r = e.start(nil)
	waitReady(t, r)
	e.waitEqual(60 * time.Second)
	if got, all := seriesValue(t, r.d.Registry(), "invsync_resnapshots_total", "reason", "position_lost"), counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got != 1 || all != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=position_lost} = %v (all reasons %v), want 1", got, all)
	}
	snap := e.snapshotRedis()
	if h := snap[layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"260"})]; h[layout.FieldDeleted] != "1" {
		t.Fatalf("a row deleted while the binlog was lost must be a tombstone: %v", h)
	}
}
