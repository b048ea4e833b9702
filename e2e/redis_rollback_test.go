package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/layout"
	"github.com/redis/go-redis/v9"
)

// Issue 11, part 2: a Redis that comes back with only its older writes (restarted from
// an RDB taken earlier) keeps invsync's data-loss marker but lost writes invsync had
// acknowledged and checkpointed. invsync notices (another run_id, an older applied
// marker), streams again from what Redis holds, writes the Bloom bitmaps again, and Redis
// equals MySQL, with every row in the filter.

// persistentRedis is a redis-server of the test's own whose data directory outlives a
// restart.
type persistentRedis struct {
	addr, dir string
	cmd       *exec.Cmd
}

func (p *persistentRedis) start(t *testing.T) {
	t.Helper()
	_, port, _ := strings.Cut(p.addr, ":")
	p.cmd = exec.Command(redisServer(), "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", p.dir)
	testenv.Must(t, p.cmd.Start(), "start redis-server")
	c := redisClient(t, p.addr)
	waitFor(t, "redis-server answers", 10*time.Second, func() bool { return c.Ping(context.Background()).Err() == nil })
}

func (p *persistentRedis) kill() {
	if p.cmd != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// onPersistentRedis is streaming with rows rows, against a persistentRedis of its own.
func onPersistentRedis(t *testing.T, rows int) (*env, *persistentRedis, *running) {
	t.Helper()
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	srv := &persistentRedis{addr: freeAddr(t), dir: t.TempDir()}
	srv.start(t)
	t.Cleanup(srv.kill)
	e.cfg.Redis.Addrs = []string{srv.addr}
	e.rdb = redisClient(t, srv.addr)
	loadRows(t, e, rows)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	return e, srv, r
}

func TestRedisRestoredFromAnOlderSnapshotIsHealed(t *testing.T) {
	e, srv, r := onPersistentRedis(t, 1000)
	ctx := context.Background()
	base := "http://" + r.d.Addr()

	var checkWatch func()
	wl := during(t, e, 1500, func(*workload) {
		time.Sleep(500 * time.Millisecond)
		testenv.Must(t, e.rdb.Save(ctx).Err(), "SAVE")
		// After the RDB: an update of a row and a new row (the reproduction), and
		// the workload's changes; all acknowledged and checkpointed before the restart.
		execAll(t, e.db, "UPDATE inventory SET stock = 4321, version = version + 1 WHERE sku = 2999",
			"INSERT INTO inventory (sku, stock, price, name, version) VALUES (2999, 1, 1.00, 'after the save', 1) ON DUPLICATE KEY UPDATE stock = 4321, version = version + 1",
			"INSERT INTO inventory (sku, stock, price, name, version) VALUES (3001, 77, 1.00, 'after the save', 1)")
		e.waitApplied(t, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"3001"}), "1")
		time.Sleep(1500 * time.Millisecond)
		_ = e.rdb.ShutdownNoSave(ctx).Err()
		srv.kill()
		srv.start(t) // loads the older RDB: the data-loss marker is there
		if e.rdb.Exists(ctx, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"3001"})).Val() != 0 {
			t.Fatal("the restarted Redis holds the row written after its RDB: the test restored nothing")
		}
		// From here on, versions never go down (Redis itself went back before this).
		checkWatch = watching(t, e)
		time.Sleep(2 * time.Second)
	})
	t.Logf("%d transactions", wl.done.Load())
	e.waitEqual(60 * time.Second)
	checkWatch()
	if got := metricOf(t, base, "invsync_redis_rollbacks_total"); got < 1 {
		t.Fatalf("invsync_redis_rollbacks_total = %v after Redis came back older", got)
	}
}

// One master of a 3-master cluster restarted from an older RDB while the others keep
// their data: invsync notices that master went back and heals it.
func TestClusterMasterRestoredFromAnOlderRDBIsHealed(t *testing.T) {
	nodes := startClusterNodes(t)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.addr)
	}
	e := newClusterEnvOn(t, addrs, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 1000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	base := "http://" + r.d.Addr()
	victim := redisClient(t, nodes[0].addr)

	var checkWatch func()
	wl := during(t, e, 1500, func(*workload) {
		time.Sleep(500 * time.Millisecond)
		testenv.Must(t, victim.Save(ctx).Err(), "SAVE")
		time.Sleep(2 * time.Second) // changes acknowledged and checkpointed after the RDB
		_ = victim.ShutdownNoSave(ctx).Err()
		nodes[0].kill()
		nodes[0].start(t) // loads its older RDB; the other masters keep their data
		waitFor(t, "the cluster is ok again", 30*time.Second, func() bool {
			return strings.Contains(victim.ClusterInfo(ctx).Val(), "cluster_state:ok")
		})
		checkWatch = watching(t, e)
		time.Sleep(2 * time.Second)
	})
	t.Logf("%d transactions", wl.done.Load())
	e.waitEqual(60 * time.Second)
	checkWatch()
	if got := metricOf(t, base, "invsync_redis_rollbacks_total"); got < 1 {
		t.Fatalf("invsync_redis_rollbacks_total = %v after a master came back older", got)
	}
}

// Issue 13, part 2: Redis goes back to an older RDB while invsync is stopped: rows and
// Bloom bits written after that RDB (new keys in the filter, a row inserted, one updated)
// are gone when invsync starts again. The start notices (another run_id, an older applied
// marker), streams again from what Redis holds and heals: every row equal, every key in
// the Bloom filter (no "not found (bloom)" for a row MySQL has), status says complete.
func TestRedisRestoredFromAnOlderSnapshotWhileStopped(t *testing.T) {
	e, srv, r := onPersistentRedis(t, 500)
	ctx := context.Background()
	testenv.Must(t, e.rdb.Save(ctx).Err(), "SAVE")
	// After the RDB: 50 new keys (new Bloom bits), an update; acknowledged, checkpointed.
	execAll(t, e.db,
		"INSERT INTO inventory (sku, stock, price, name, version) SELECT seq, 5, 1.00, 'after the save', 1 FROM seq_1000_to_1049",
		"UPDATE inventory SET stock = 4321, version = version + 1 WHERE sku = 7")
	e.waitEqual(30 * time.Second)
	time.Sleep(500 * time.Millisecond) // the checkpoint passes them
	r.stop(t)
	_ = e.rdb.ShutdownNoSave(ctx).Err()
	srv.kill()
	srv.start(t)
	if e.rdb.Exists(ctx, layout.Key(e.cfg.Tables[0].KeyPrefix, []string{"1000"})).Val() != 0 {
		t.Fatal("the restarted Redis holds a row written after its RDB: the test restored nothing")
	}
	r = e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second) // compareTable checks every row's key in the Bloom bitmap
	if got := counterSum(t, r.d.Registry(), "invsync_redis_rollbacks_total"); got < 1 {
		t.Fatalf("invsync_redis_rollbacks_total = %v after Redis came back older", got)
	}
}

// One master of a 3-master cluster loses everything (restarted without persistence,
// here FLUSHALL on that node) while the data-loss marker lives on another master, which
// keeps it. Only that master's applied marker tells: the next marker write must not put
// it back as if nothing happened (a review found the compare-and-set accepted an absent
// marker), the master's rows must come back, and the reload is counted once, with its
// reason.
func TestClusterMasterThatLostItsDataIsReloaded(t *testing.T) {
	nodes := startClusterNodes(t)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.addr)
	}
	e := newClusterEnvOn(t, addrs, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 3000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	marker := "invsync:marker:" + e.cfg.State.Schema
	var victim *redis.Client
	for _, n := range nodes {
		c := redisClient(t, n.addr)
		if c.Exists(ctx, marker).Val() != 1 { // another master's key answers MOVED
			victim = c
			break
		}
	}
	var lost int64
	// The workload changes the first 300 rows only: the others come back by a reload alone.
	wl := during(t, e, 300, func(*workload) {
		time.Sleep(500 * time.Millisecond)
		lost = victim.DBSize(ctx).Val()
		testenv.Must(t, victim.FlushAll(ctx).Err(), "FLUSHALL on one master")
		time.Sleep(3 * time.Second) // several checkpoints pass
	})
	t.Logf("%d transactions; the flushed master held %d keys", wl.done.Load(), lost)
	if lost < 500 {
		t.Fatalf("the flushed master held only %d keys: the test lost nothing", lost)
	}
	e.waitEqual(30 * time.Second)
	if got, all := seriesValue(t, r.d.Registry(), "invsync_resnapshots_total", "reason", "redis_data_loss"), counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got != 1 || all != 1 {
		t.Fatalf("invsync_resnapshots_total{reason=redis_data_loss} = %v (all reasons %v) after one master lost its data, want 1", got, all)
	}
}
