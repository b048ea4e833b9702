package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
)

// Issue 14, README promises with no test before: the source unreachable. A killed
// replication connection is reconnected at once (invsync_stream_restarts_total); a
// source that cannot be reached (the proxy in front of it stopped: every connection cut,
// new ones refused) makes /readyz answer 503 while run waits and retries, and once it is
// back the daemon streams again from its checkpoint; writes committed meanwhile end up
// in Redis.
func TestSourceUnreachable(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	proxy := newProxy(t, "source", testenv.MySQLAddr())
	e.cfg.Source.Addr = proxy.Listen
	loadRows(t, e, 200)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	base := "http://" + r.d.Addr()
	reg := r.d.Registry()

	// The replication connection killed on the server.
	admin := testenv.DB(t, "")
	var dump int64
	waitFor(t, "the binlog dump thread", 10*time.Second, func() bool {
		err := admin.QueryRow("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%' AND USER = ? ORDER BY ID DESC LIMIT 1", testenv.AppUser()).Scan(&dump)
		return err == nil
	})
	_, err := admin.Exec("KILL ?", dump)
	testenv.Must(t, err, "kill the binlog dump connection")
	execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku < 50")
	waitFor(t, "the stream restarted", 30*time.Second, func() bool { return counterSum(t, reg, "invsync_stream_restarts_total") >= 1 })
	e.waitEqual(30 * time.Second)

	// The source unreachable for a while.
	proxy.Stop()
	waitHTTP(t, base+"/readyz", 503, 30*time.Second)
	execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku >= 100",
		"DELETE FROM inventory WHERE sku >= 190")
	time.Sleep(3 * time.Second)
	if code, err := httpGet(base + "/readyz"); code != 503 {
		t.Fatalf("/readyz = %d (%v) while the source cannot be reached, want 503", code, err)
	}
	if err := e.compare(); err == nil {
		t.Fatal("Redis equals MySQL while the source cannot be reached: the test changed nothing")
	}
	testenv.Must(t, proxy.Start(), "start the proxy again")
	waitHTTP(t, base+"/readyz", 200, 60*time.Second)
	e.waitEqual(30 * time.Second)
	if body, _ := httpBody(base + "/readyz"); !strings.Contains(body, "ready") {
		t.Fatalf("/readyz body %q", body)
	}
}
