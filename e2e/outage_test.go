package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/internal/testenv"
)

// ownRedis runs a redis-server of the test's own on addr (no persistence).
type ownRedis struct {
	addr string
	cmd  *exec.Cmd
}

func startOwnRedis(t *testing.T, addr string) *ownRedis {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(redisServer(), "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	testenv.Must(t, cmd.Start(), "start redis-server")
	r := &ownRedis{addr: addr, cmd: cmd}
	t.Cleanup(r.stop)
	c := redisClient(t, addr)
	waitFor(t, "redis-server answers", 10*time.Second, func() bool { return c.Ping(context.Background()).Err() == nil })
	return r
}

func (r *ownRedis) stop() {
	if r.cmd.ProcessState == nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
}

// Issue 4, acceptance 3: Redis stopped for 20 s during a workload of 4 writers, then
// started again, empty: the outage is not copied into the compensation table (at most a
// handful of rows), and the end state equals MySQL.
func TestRedisOutageDuringWorkload(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	addr := freeAddr(t)
	srv := startOwnRedis(t, addr)
	e.cfg.Redis.Addrs = []string{addr}
	e.rdb = redisClient(t, addr)
	loadRows(t, e, 1000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)

	var stopped int64
	wl := during(t, e, 1500, func(wl *workload) {
		time.Sleep(time.Second)
		srv.stop()
		stopped = wl.done.Load()
		time.Sleep(20 * time.Second)
		startOwnRedis(t, addr)
		time.Sleep(2 * time.Second)
	})
	t.Logf("%d transactions during the outage, %d in all", wl.done.Load()-stopped, wl.done.Load())
	e.waitEqual(60 * time.Second)
	rows := e.compensationRows(t)
	if len(rows) > 5 {
		t.Fatalf("%d compensation rows after a Redis outage; the outage must not be copied into MySQL", len(rows))
	}
	t.Logf("%d compensation rows written during the outage", len(rows))
}

// Issue 4, acceptance 6: the state database (checkpoint and compensation table, here on
// its own address through a TCP proxy) unreachable for 10 s during a workload: nothing
// is lost, the checkpoint moves again afterwards, and the end state equals MySQL.
func TestStateDatabaseOutage(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	proxy := newProxy(t, "state", testenv.MySQLAddr())
	e.cfg.State.DSN = testenv.AdminUser() + ":" + testenv.AdminPassword() + "@tcp(" + proxy.Listen + ")/?timeout=2s&readTimeout=2s&writeTimeout=2s"
	loadRows(t, e, 500)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)

	during(t, e, 800, func(*workload) {
		time.Sleep(500 * time.Millisecond)
		proxy.Stop()
		time.Sleep(10 * time.Second)
		testenv.Must(t, proxy.Start(), "restart proxy")
		time.Sleep(time.Second)
	})
	end := e.currentPosition()
	e.waitEqual(60 * time.Second)
	store := e.checkpointStore()
	waitFor(t, "the checkpoint caught up after the outage", 30*time.Second, func() bool {
		p, _, err := store.Load(context.Background())
		return err == nil && !less(p, canal.Position{File: end.File, Pos: end.Pos})
	})
	select {
	case err := <-r.done:
		t.Fatalf("daemon exited during the state database outage: %v", err)
	default:
	}
}
