package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/daemon"
	"github.com/invsync/invsync/internal/testenv"
)

// Issue 7, acceptance 2: two instances with the same config; the standby does nothing
// while the leader lives; kill -9 of the leader during a workload: the standby leads
// within 10 s and the end state equals MySQL.
func TestStandbyTakesOverAfterKill9(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 5000)
	addrA, addrB := freeAddr(t), freeAddr(t)
	a := startProc(t, e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addrA }), addrA)
	b := spawnProc(t, e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addrB }), addrB)
	waitHTTP(t, "http://"+addrB+"/healthz", 200, 30*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wl := &workload{db: e.db, table: "inventory", skus: 5000, writers: 4, txns: 1_000_000, maxRows: 10}
	wdone := make(chan error, 1)
	go func() { wdone <- wl.run(ctx) }()
	time.Sleep(2 * time.Second)
	if code, _ := httpGet("http://" + addrB + "/readyz"); code != 503 {
		t.Fatalf("the standby's /readyz = %d while the leader lives, want 503", code)
	}
	if m, _ := httpBody("http://" + addrB + "/metrics"); metricSum(m, "invsync_rows_applied_total") != 0 {
		t.Fatal("the standby wrote rows while the leader lives")
	}
	if m, _ := httpBody("http://" + addrA + "/metrics"); metricSum(m, "invsync_rows_applied_total") == 0 {
		t.Fatal("the leader wrote nothing during the workload")
	}
	a.kill(t)
	killed := time.Now()
	waitHTTP(t, "http://"+addrB+"/readyz", 200, 10*time.Second)
	took := time.Since(killed)
	// README: about 1 s after a kill -9 (the server drops the dead connection's lock at
	// once); a loaded machine gets a margin.
	if took > 5*time.Second {
		t.Errorf("the standby led %s after the leader's kill -9; README says about 1 s", took)
	}
	time.Sleep(time.Second)
	cancel()
	if err := <-wdone; err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	e.waitEqual(60 * time.Second)
	m, _ := httpBody("http://" + addrB + "/metrics")
	t.Logf("standby led %s after the leader's kill -9; it wrote %.0f rows; %d transactions in the workload",
		took.Round(time.Millisecond), metricSum(m, "invsync_rows_applied_total"), wl.done.Load())
	if metricSum(m, "invsync_rows_applied_total") == 0 {
		t.Fatal("the new leader wrote nothing")
	}
	// It resumed from the checkpoint: no load of any table.
	if n := metricSum(m, "invsync_resnapshots_total"); n != 0 {
		t.Fatalf("the new leader reloaded tables (%v times); it should stream from the checkpoint", n)
	}
	b.terminate(t)
	logB, _ := os.ReadFile(b.log)
	if !strings.Contains(string(logB), "resuming from the checkpoint") || strings.Contains(string(logB), "snapshot started") {
		t.Fatalf("the new leader did not resume from the checkpoint:\n%s", logB)
	}
}

// A leader whose lock is taken away (its connection killed) stops leading, and its
// checkpoint writes are refused meanwhile.
func TestLeaderThatLosesItsLockStandsBy(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	r := e.start(nil)
	waitReady(t, r)
	admin := testenv.DB(t, "")
	var id int64
	testenv.Must(t, admin.QueryRow("SELECT IS_USED_LOCK(?)", "invsync:"+e.cfg.State.Schema).Scan(&id), "lock holder")
	// The lock is taken away and kept for a while: writes go on meanwhile, which the
	// instance still streams until it notices; its checkpoint writes are refused.
	lockConn, err := admin.Conn(context.Background())
	testenv.Must(t, err, "conn")
	_, err = admin.Exec("KILL ?", id)
	testenv.Must(t, err, "kill the lock connection")
	var got int64
	testenv.Must(t, lockConn.QueryRowContext(context.Background(), "SELECT GET_LOCK(?, 10)", "invsync:"+e.cfg.State.Schema).Scan(&got), "take the lock")
	if got != 1 {
		t.Fatal("the test could not take the lock")
	}
	store := e.checkpointStore()
	held, _, err := store.Load(context.Background())
	testenv.Must(t, err, "checkpoint")
	for i := 0; i < 30; i++ {
		_, err := e.db.Exec("INSERT INTO inventory VALUES (?, 5, 1.00, 'while the lock was away', 1)", 100+i)
		testenv.Must(t, err, "insert")
		time.Sleep(100 * time.Millisecond)
	}
	if now, _, err := store.Load(context.Background()); err != nil || now != held {
		t.Fatalf("the checkpoint moved from %s to %s (%v) while another session held the lock", held, now, err)
	}
	_, err = lockConn.ExecContext(context.Background(), "DO RELEASE_LOCK(?)", "invsync:"+e.cfg.State.Schema)
	testenv.Must(t, err, "give the lock back")
	testenv.Must(t, lockConn.Close(), "close")
	// It notices, stands by, and (the lock being free) leads again.
	deadline := time.Now().Add(20 * time.Second)
	var again int64
	for time.Now().Before(deadline) {
		_ = admin.QueryRow("SELECT IFNULL(IS_USED_LOCK(?), 0)", "invsync:"+e.cfg.State.Schema).Scan(&again)
		if again != 0 && again != id {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if again == 0 || again == id {
		t.Fatal("the instance did not take the lock again")
	}
	waitReady(t, r)
	_, err = e.db.Exec("INSERT INTO inventory VALUES (1, 5, 1.00, 'a', 1)")
	testenv.Must(t, err, "insert")
	e.waitEqual(30 * time.Second)
}

func waitHTTP(t *testing.T, url string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		code, _ := httpGet(url)
		if code == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer %d within %s (last %d)", url, want, timeout, code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Issue 13, part 1: a leader that stops without its connections being closed (its host
// lost power or froze, a partition that drops packets) keeps its named lock on the server
// for as long as TCP keepalive takes: hours. Here the leader process is frozen (SIGSTOP):
// its sockets stay open and silent. The standby takes the lock over once the leader's
// lock session has been idle for the lease (daemon.LeaseTimeout); the old leader, woken
// up, finds its lock gone and stands by; the end state equals MySQL.
func TestStandbyLeadsWhenTheLeaderFreezes(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 500)
	addrA, addrB := freeAddr(t), freeAddr(t)
	a := startProc(t, e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addrA }), addrA)
	e.waitEqual(30 * time.Second)
	b := spawnProc(t, e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addrB }), addrB)
	waitHTTP(t, "http://"+addrB+"/healthz", 200, 30*time.Second)
	time.Sleep(time.Second)
	if code, _ := httpGet("http://" + addrB + "/readyz"); code != 503 {
		t.Fatalf("the standby's /readyz = %d while the leader lives, want 503", code)
	}
	testenv.Must(t, a.cmd.Process.Signal(syscall.SIGSTOP), "SIGSTOP")
	frozen := time.Now()
	defer func() { _ = a.cmd.Process.Signal(syscall.SIGCONT) }()
	// Changes the frozen leader's binlog connection receives but cannot write yet.
	for i := 0; i < 5; i++ {
		execAll(t, e.db, "UPDATE inventory SET stock = stock + 7, version = version + 1")
	}
	waitHTTP(t, "http://"+addrB+"/readyz", 200, 60*time.Second)
	took := time.Since(frozen)
	t.Logf("the standby leads %s after the leader froze (lease %s)", took.Round(time.Millisecond), daemon.LeaseTimeout)
	e.waitEqual(30 * time.Second)
	// The old leader wakes up with changes it read before it froze still to write: its
	// lease expired, so it writes no row (its lock is gone; it stands by).
	mon := monitorRedis(t)
	testenv.Must(t, a.cmd.Process.Signal(syscall.SIGCONT), "SIGCONT")
	waitHTTP(t, "http://"+addrA+"/readyz", 503, 15*time.Second)
	time.Sleep(2 * time.Second)
	if writes := mon.writesBy(t, fmt.Sprintf("invsync-%d", a.cmd.Process.Pid)); len(writes) > 0 {
		t.Fatalf("the old leader wrote %d times after it woke up past its lease, e.g. %s", len(writes), writes[0])
	}
	execAll(t, e.db, "UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku >= 450")
	e.waitEqual(30 * time.Second)
	if code, _ := httpGet("http://" + addrA + "/readyz"); code != 503 {
		t.Fatalf("the old leader's /readyz = %d after it woke up, want 503 (standing by)", code)
	}
	b.terminate(t)
	a.terminate(t)
}

// Issue 13, part 2: POST /bloom/rebuild sent to an instance that led before and stands by
// now is refused: its filters are no longer the ones Redis holds (before, it swapped its
// own in under the real leader).
func TestBloomRebuildOnAFormerLeaderIsRefused(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 100)
	r := e.start(nil)
	waitReady(t, r)
	base := "http://" + r.d.Addr()
	// Take the lock away from it and keep it: it stands by.
	admin := testenv.DB(t, "")
	lockConn, err := admin.Conn(context.Background())
	testenv.Must(t, err, "conn")
	defer lockConn.Close()
	var id int64
	testenv.Must(t, admin.QueryRow("SELECT IS_USED_LOCK(?)", daemon.LockName(e.cfg)).Scan(&id), "holder")
	_, err = admin.Exec("KILL ?", id)
	testenv.Must(t, err, "kill the lock session")
	var got int64
	testenv.Must(t, lockConn.QueryRowContext(context.Background(), "SELECT GET_LOCK(?, 10)", daemon.LockName(e.cfg)).Scan(&got), "take the lock")
	if got != 1 {
		t.Fatal("the test could not take the lock")
	}
	waitHTTP(t, base+"/readyz", 503, 15*time.Second)
	resp, err := http.Post(base+"/bloom/rebuild", "", nil)
	testenv.Must(t, err, "POST /bloom/rebuild")
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatal("an instance that stands by rebuilt and swapped in the Bloom filters")
	}
}

// A lock holder that is alive but busy for longer than the lease (`invsync snapshot` or
// `invsync reconcile`, which hold the leader lock while they run) keeps its lock: its
// session is used every second whatever it does, so a standby never takes it over.
func TestBusyLockHolderKeepsTheLock(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	lock := holdLeaderLock(t, e)
	r := e.start(nil)
	waitFor(t, "the daemon's HTTP endpoint", 10*time.Second, func() bool { return r.d.Addr() != "" })
	time.Sleep(daemon.LeaseTimeout + 2*time.Second)
	if code, _ := httpGet("http://" + r.d.Addr() + "/readyz"); code != 503 {
		t.Fatalf("the daemon leads (/readyz %d) while a live holder has the lock", code)
	}
	if err := lock.Held(context.Background()); err != nil {
		t.Fatalf("the busy holder lost its lock: %v", err)
	}
}

// The lock's session is used by its keep-alive and by the leader's checks at once; the
// uses are serialised (concurrent statements on one session broke it in CI: "invalid
// connection", and the leader lost its lock in the middle of a DDL reload).
func TestLockSessionUsedConcurrently(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	lock := holdLeaderLock(t, e)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); {
				if err := lock.Held(context.Background()); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("the lock's session broke under concurrent use: %v", err)
	}
}

// holdLeaderLock takes the env's leader lock as the daemon's MySQL user (a standby sees
// its own user's sessions) until the test ends.
func holdLeaderLock(t *testing.T, e *env) *daemon.Lock {
	t.Helper()
	stateDB := e.conns().State
	lock, held, err := daemon.TryLock(context.Background(), stateDB, daemon.LockName(e.cfg))
	testenv.Must(t, err, "lock")
	if !held {
		t.Fatal("the lock is taken")
	}
	t.Cleanup(lock.Release)
	return lock
}

// redisMonitor records every command the test Redis runs (MONITOR) from its start.
type redisMonitor struct {
	cmd *exec.Cmd
	out *bytes.Buffer
	mu  *sync.Mutex
}

func monitorRedis(t *testing.T) *redisMonitor {
	t.Helper()
	cli := filepath.Join(filepath.Dir(redisServer()), "redis-cli")
	if _, err := exec.LookPath(cli); err != nil {
		cli = "redis-cli"
	}
	host, port, _ := strings.Cut(testenv.RedisAddr(), ":")
	m := &redisMonitor{cmd: exec.Command(cli, "-h", host, "-p", port, "monitor"), out: &bytes.Buffer{}, mu: &sync.Mutex{}}
	m.cmd.Stdout = lockedWriter{m.mu, m.out}
	testenv.Must(t, m.cmd.Start(), "redis-cli monitor")
	t.Cleanup(func() { _ = m.cmd.Process.Kill(); _ = m.cmd.Wait() })
	waitFor(t, "MONITOR answers", 5*time.Second, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return strings.Contains(m.out.String(), "OK")
	})
	return m
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// writesBy returns the row writes (script calls, hash and key writes) recorded so far
// from the connections named name (CLIENT SETNAME).
func (m *redisMonitor) writesBy(t *testing.T, name string) []string {
	t.Helper()
	rdb := testenv.Redis(t)
	list, err := rdb.ClientList(context.Background()).Result()
	testenv.Must(t, err, "CLIENT LIST")
	addrs := map[string]bool{}
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name="+name+" ") {
			for _, f := range strings.Fields(line) {
				if a, ok := strings.CutPrefix(f, "addr="); ok {
					addrs[a] = true
				}
			}
		}
	}
	if len(addrs) == 0 {
		t.Fatalf("no Redis connection is named %s", name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var writes []string
	for _, line := range strings.Split(m.out.String(), "\n") {
		// 1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "..."
		i, j := strings.IndexByte(line, '['), strings.IndexByte(line, ']')
		if i < 0 || j < i {
			continue
		}
		f := strings.Fields(line[i+1 : j])
		if len(f) != 2 || !addrs[f[1]] {
			continue
		}
		args := strings.Fields(line[j+1:] + ` "" "" "" "" ""`)
		for k := range args {
			args[k] = strings.Trim(args[k], `"`)
		}
		switch strings.ToUpper(args[0]) {
		case "EVALSHA", "EVAL":
			// A row write (keys under a table's prefix), or an applied marker written
			// (a marker read passes no run_id).
			if !strings.HasPrefix(args[3], "invsync:applied:") || args[4] != "" {
				writes = append(writes, line)
			}
		case "HSET", "HDEL", "DEL", "UNLINK", "SET", "PEXPIRE", "EXPIRE", "BITFIELD", "SETBIT":
			writes = append(writes, line)
		}
	}
	return writes
}

// Issue 13, part 2: `invsync reconcile` run where no daemon listens (another host, or a
// config whose http.listen differs) asks the leader wherever it runs: the leader records
// its HTTP address in the state schema, and the Bloom rebuild is asked of it there.
func TestReconcileAsksTheLeaderWhereverItRuns(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 300)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	// The CLI's config names another address (as on another host): nothing listens there.
	cfgPath := e.writeConfig(func(c *config.Config) { c.HTTP.Listen = freeAddr(t) })
	code, out := runCLI(t, 2*time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "reconcile", "-c", cfgPath)
	if code != 0 || !strings.Contains(out, "rebuilt by the running invsync") || !strings.Contains(out, r.d.Addr()) {
		t.Fatalf("reconcile: exit %d, want 0 and the Bloom filters rebuilt by the leader at %s; output:\n%s", code, r.d.Addr(), out)
	}
	if got := counterSum(t, r.d.Registry(), "invsync_bloom_rebuilds_total"); got < 1 {
		t.Fatalf("the leader rebuilt no Bloom filter (invsync_bloom_rebuilds_total %v)", got)
	}
	// `invsync status` there names the leader and reads its metrics where it runs.
	code, out = runCLI(t, time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "status", "-c", cfgPath)
	if code != 0 || !strings.Contains(out, "http://"+r.d.Addr()) || !strings.Contains(out, "streaming") || strings.Contains(out, "not reachable") {
		t.Fatalf("status: exit %d, want the leader's address and its state; output:\n%s", code, out)
	}
}

// Issue 13, part 1, as the issue reproduced it: leader A reaches MySQL and Redis through
// proxies that black-hole its traffic (packets dropped both ways, no connection closed on
// either side) while writers run. The standby leads within the documented bound (the
// 15 s lease and a second), the old leader writes nothing once the network heals (it
// stands by), and the end state equals MySQL.
func TestStandbyLeadsWhenTheLeaderIsBlackHoled(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 500)
	mysqlProxy := newProxy(t, "mysql-a", testenv.MySQLAddr())
	redisProxy := newProxy(t, "redis-a", testenv.RedisAddr())
	addrA, addrB := freeAddr(t), freeAddr(t)
	a := startProc(t, e.writeConfig(func(c *config.Config) {
		c.HTTP.Listen = addrA
		c.Source.Addr = mysqlProxy.Listen
		c.Redis.Addrs = []string{redisProxy.Listen}
	}), addrA)
	e.waitEqual(30 * time.Second)
	b := spawnProc(t, e.writeConfig(func(c *config.Config) { c.HTTP.Listen = addrB }), addrB)
	waitHTTP(t, "http://"+addrB+"/healthz", 200, 30*time.Second)
	wl := startTolerantWriters(e, 500)
	time.Sleep(time.Second)
	healMySQL, healRedis := blackHole(t, mysqlProxy), blackHole(t, redisProxy)
	cut, before := time.Now(), wl.writes.Load()
	waitHTTP(t, "http://"+addrB+"/readyz", 200, 60*time.Second)
	took := time.Since(cut)
	if wl.writes.Load() == before {
		t.Fatal("no write was committed while the leader was cut off")
	}
	t.Logf("the standby leads %s after the leader was black-holed (lease %s)", took.Round(time.Millisecond), daemon.LeaseTimeout)
	if took > daemon.LeaseTimeout+5*time.Second {
		t.Errorf("failover took %s, past the documented bound (lease %s + a few seconds)", took, daemon.LeaseTimeout)
	}
	time.Sleep(2 * time.Second)
	t.Logf("%d writes committed", wl.stop())
	// The network heals: the old leader finds its lock gone and writes nothing.
	mon := monitorRedis(t)
	healMySQL()
	healRedis()
	waitHTTP(t, "http://"+addrA+"/readyz", 503, 30*time.Second)
	t.Logf("%s: healed; the old leader stands by", time.Since(cut).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	e.waitEqual(30 * time.Second)
	t.Logf("%s: equal", time.Since(cut).Round(time.Millisecond))
	wl.versionsNeverWentDown(t)
	if writes := mon.writesBy(t, fmt.Sprintf("invsync-%d", a.cmd.Process.Pid)); len(writes) > 0 {
		t.Fatalf("the old leader wrote %d times after the network healed, e.g. %s", len(writes), writes[0])
	}
	if code, _ := httpGet("http://" + addrA + "/readyz"); code != 503 {
		t.Fatalf("the old leader's /readyz = %d after the network healed, want 503 (standing by)", code)
	}
	b.terminate(t)
	t.Logf("%s: the new leader stopped", time.Since(cut).Round(time.Millisecond))
	a.terminate(t)
	t.Logf("%s: the old leader stopped", time.Since(cut).Round(time.Millisecond))
	// It had stopped leading on its own while cut off, within the lease: it logged so.
	if b, err := os.ReadFile(a.log); err != nil || !strings.Contains(string(b), "lost the leader lock: stopped leading") {
		t.Errorf("the old leader's log does not say it stopped leading (%v):\n%s", err, b)
	}
}
