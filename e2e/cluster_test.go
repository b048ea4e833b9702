package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// clusterNode is one redis-server of a test's cluster.
type clusterNode struct {
	addr   string
	server string
	args   []string
	cmd    *exec.Cmd
}

func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	n.cmd = exec.Command(n.server, n.args...)
	testenv.Must(t, n.cmd.Start(), "start redis-server %s", n.addr)
	cmd := n.cmd
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}

func (n *clusterNode) kill() {
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
}

// startCluster starts a Redis Cluster of three masters (redis-server processes on free
// loopback ports, data in a temporary directory), stopped when the test ends.
func startCluster(t *testing.T) []string {
	t.Helper()
	var addrs []string
	for _, n := range startClusterNodes(t) {
		addrs = append(addrs, n.addr)
	}
	return addrs
}

// startClusterNodes is startCluster, returning the nodes (to restart one).
func startClusterNodes(t *testing.T) []*clusterNode {
	t.Helper()
	server := os.Getenv("INVSYNC_TEST_REDIS_SERVER")
	if server == "" {
		server = "redis-server"
	}
	cli := filepath.Join(filepath.Dir(server), "redis-cli")
	if _, err := os.Stat(cli); err != nil {
		cli = "redis-cli"
	}
	var addrs []string
	var nodes []*clusterNode
	for i := 0; i < 3; i++ {
		addr := freeAddr(t)
		port := addr[strings.LastIndexByte(addr, ':')+1:]
		dir := t.TempDir()
		n := &clusterNode{addr: addr, server: server, args: []string{"--bind", "127.0.0.1", "--port", port, "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--dir", dir, "--save", "", "--appendonly", "no"}}
		n.start(t)
		nodes = append(nodes, n)
		addrs = append(addrs, addr)
	}
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		deadline := time.Now().Add(10 * time.Second)
		for c.Ping(context.Background()).Err() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("redis-server %s did not start", a)
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.Close()
	}
	out, err := exec.Command(cli, append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(c.ClusterInfo(context.Background()).Val(), "cluster_state:ok") {
			if time.Now().After(deadline) {
				t.Fatalf("cluster not ok on %s", a)
			}
			time.Sleep(50 * time.Millisecond)
		}
		c.Close()
	}
	return nodes
}

// newClusterEnv is newEnv with Redis in cluster mode on a cluster of its own.
func newClusterEnv(t *testing.T, tables ...tableSpec) *env {
	return newClusterEnvOn(t, startCluster(t), tables...)
}

func newClusterEnvOn(t *testing.T, addrs []string, tables ...tableSpec) *env {
	e := newEnv(t, tables...)
	e.cfg.Redis.Mode = "cluster"
	e.cfg.Redis.Addrs = addrs
	e.cfg.Redis.DB = 0
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { rdb.Close() })
	e.rdb = rdb
	return e
}

// Issue 7, acceptance 3: the core mirror's random workload against a 3-master cluster,
// then the read path, a reconciliation with repair, and a Bloom rebuild on it.
func TestRandomWorkloadOnRedisCluster(t *testing.T) {
	e := newClusterEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 2000)
	r := e.start(nil)
	waitReady(t, r)
	wl, _ := watchedWorkload(t, e)
	// The keys are spread over the three masters.
	cc := e.rdb.(*redis.ClusterClient)
	var perNode []string
	var mu sync.Mutex
	_ = cc.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
		keys, _ := testenv.ScanKeys(ctx, c, e.cfg.Tables[0].KeyPrefix)
		mu.Lock()
		defer mu.Unlock()
		perNode = append(perNode, fmt.Sprint(len(keys)))
		return nil
	})
	t.Logf("workload: %d transactions; keys per master: %s", wl.done.Load(), strings.Join(perNode, ", "))
	for _, n := range perNode {
		if n == "0" {
			t.Fatal("a master holds no keys")
		}
	}
	// Drift repaired by reconcile, and the Bloom filter rebuilt, on the cluster.
	var sku int
	testenv.Must(t, e.db.QueryRow("SELECT MIN(sku) FROM inventory").Scan(&sku), "a row")
	k := fmt.Sprintf("%s{%d}", e.cfg.Tables[0].KeyPrefix, sku)
	testenv.Must(t, e.rdb.Del(context.Background(), k).Err(), "del")
	cfgPath := e.writeConfig(nil)
	cfgPath = rewriteRedis(t, cfgPath, e.cfg.Redis.Addrs)
	code, out := runCLI(t, 2*time.Minute, []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}, "reconcile", "-c", cfgPath, "--repair")
	t.Logf("reconcile on the cluster (exit %d):\n%s", code, out)
	if code != 0 || !strings.Contains(out, "drift repaired: 1 differences") {
		t.Fatalf("reconcile --repair: exit %d", code)
	}
	e.waitEqual(30 * time.Second)
	// Keys deleted by the workload are still in the filter (bits are never cleared); a
	// rebuild swaps in a new one built from the rows there are: they are gone from it.
	// (reconcile above asked the leader for a rebuild already: delete rows after it.)
	var deleted []string
	rows, err := e.db.Query("SELECT sku FROM inventory ORDER BY sku LIMIT 200")
	testenv.Must(t, err, "skus")
	for rows.Next() {
		var sku string
		testenv.Must(t, rows.Scan(&sku), "scan")
		deleted = append(deleted, sku)
	}
	testenv.Must(t, rows.Err(), "rows")
	execAll(t, e.db, "DELETE FROM inventory WHERE sku <= "+deleted[len(deleted)-1])
	e.waitEqual(30 * time.Second)
	reader := bloom.NewReader(e.rdb, e.cfg.BloomKey(e.cfg.Tables[0]))
	present := func() int {
		n := 0
		for _, sku := range deleted {
			if ok, err := reader.MayContain(context.Background(), sku); err == nil && ok {
				n++
			}
		}
		return n
	}
	before := present()
	rebuilds := counterSum(t, r.d.Registry(), "invsync_bloom_rebuilds_total")
	resp, err := httpPost("http://" + r.d.Addr() + "/bloom/rebuild")
	testenv.Must(t, err, "bloom rebuild")
	if resp != 200 {
		t.Fatalf("bloom rebuild: %d", resp)
	}
	after := present()
	t.Logf("%d keys deleted after the last rebuild: %d in the filter before the rebuild, %d after", len(deleted), before, after)
	if got := counterSum(t, r.d.Registry(), "invsync_bloom_rebuilds_total"); got != rebuilds+1 {
		t.Fatalf("invsync_bloom_rebuilds_total %v -> %v: the rebuild swapped in no filter", rebuilds, got)
	}
	if len(deleted) < 20 || before < len(deleted)*9/10 || after > len(deleted)/10 {
		t.Fatalf("deleted keys in the filter: %d of %d before the rebuild, %d after; want all before and (nearly) none after", before, len(deleted), after)
	}
	e.waitEqual(30 * time.Second)
}

// rewriteRedis points a written config at a cluster.
func rewriteRedis(t *testing.T, path string, addrs []string) string {
	b, err := os.ReadFile(path)
	testenv.Must(t, err, "read config")
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "redis:") {
			lines[i] = fmt.Sprintf("redis: { mode: cluster, addrs: [%s] }", strings.Join(addrs, ", "))
		}
	}
	testenv.Must(t, os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o600), "write config")
	return path
}

// Redis behind Sentinel: a master and one sentinel of the test's own; invsync finds the
// master through the sentinel (redis.mode: sentinel) and mirrors.
func TestRedisSentinel(t *testing.T) {
	server := redisServer()
	master := startOwnRedis(t, freeAddr(t))
	sAddr := freeAddr(t)
	_, sPort, _ := strings.Cut(sAddr, ":")
	_, mPort, _ := strings.Cut(master.addr, ":")
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	testenv.Must(t, os.WriteFile(conf, []byte(fmt.Sprintf("port %s\nbind 127.0.0.1\nsentinel monitor invsyncmaster 127.0.0.1 %s 1\n", sPort, mPort)), 0o600), "write sentinel.conf")
	cmd := exec.Command(server, conf, "--sentinel")
	cmd.Dir = dir
	testenv.Must(t, cmd.Start(), "start sentinel")
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := redis.NewSentinelClient(&redis.Options{Addr: sAddr})
	t.Cleanup(func() { sc.Close() })
	waitFor(t, "the sentinel knows the master", 10*time.Second, func() bool {
		a, err := sc.GetMasterAddrByName(context.Background(), "invsyncmaster").Result()
		return err == nil && len(a) == 2
	})

	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	e.cfg.Redis.Mode = "sentinel"
	e.cfg.Redis.Addrs = []string{sAddr}
	e.cfg.Redis.MasterName = "invsyncmaster"
	e.cfg.Redis.DB = 0
	e.rdb = redisClient(t, master.addr)
	loadRows(t, e, 300)
	r := e.start(nil)
	waitReady(t, r)
	_, err := e.db.Exec("UPDATE inventory SET stock = 1, version = version + 1 WHERE sku < 50")
	testenv.Must(t, err, "update")
	e.waitEqual(30 * time.Second)
}
