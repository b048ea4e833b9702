package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
)

// Issue 11, part 4: a Redis that refuses every write because of its state (maxmemory
// reached: OOM; not enough replicas: NOREPLICAS) is an outage: the workers pause and
// retry, the reader waits, the checkpoint stays, /readyz says why, a metric counts it,
// and nothing is parked. Once Redis accepts writes again, Redis equals MySQL.
func TestRedisThatRefusesWritesIsAnOutage(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	addr := freeAddr(t)
	startOwnRedis(t, addr)
	e.cfg.Redis.Addrs = []string{addr}
	e.rdb = redisClient(t, addr)
	loadRows(t, e, 1000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)
	ctx := context.Background()
	admin := redisClient(t, addr)
	store := e.checkpointStore()
	base := "http://" + r.d.Addr()
	wl := &workload{db: e.db, table: "inventory", skus: 2000, writers: 4, txns: 4000, maxRows: 20}

	refuse := func(name string, on, off func()) {
		t.Helper()
		before := metricOf(t, base, `invsync_redis_errors_total{kind="refused"}`)
		var during int64
		alongside(t, e, wl, func() {
			time.Sleep(300 * time.Millisecond)
			on()
			start := time.Now()
			// Writes are refused: the daemon pauses, says so and counts it.
			waitFor(t, "/readyz says Redis refuses writes ("+name+")", 15*time.Second, func() bool {
				body, code := readyz(base)
				return code == 503 && strings.Contains(body, name)
			})
			time.Sleep(500 * time.Millisecond) // what was written before is checkpointed
			cp1, _, err := store.Load(ctx)
			testenv.Must(t, err, "checkpoint")
			n1 := e.committed(t)
			time.Sleep(3 * time.Second)
			cp2, _, err := store.Load(ctx)
			testenv.Must(t, err, "checkpoint")
			during = e.committed(t) - n1
			if cp1 != cp2 {
				t.Errorf("%s: the checkpoint moved while Redis refused every write: %s -> %s", name, cp1, cp2)
			}
			if metricOf(t, base, `invsync_redis_errors_total{kind="refused"}`) <= before {
				t.Errorf("%s: invsync_redis_errors_total{kind=\"refused\"} did not move", name)
			}
			if metricOf(t, base, "invsync_redis_paused") != 1 {
				t.Errorf("%s: invsync_redis_paused is not 1", name)
			}
			off()
			t.Logf("%s for %s", name, time.Since(start).Round(time.Millisecond))
		})
		if during == 0 {
			t.Fatalf("%s: no transaction committed in MySQL while Redis refused writes", name)
		}
		t.Logf("%s: %d transactions committed while Redis refused writes", name, during)
		if body, code := readyz(base); code != 200 {
			t.Fatalf("%s: /readyz %d %q after Redis accepts writes again", name, code, body)
		}
	}
	refuse("OOM", func() {
		used, err := admin.Info(ctx, "memory").Result()
		testenv.Must(t, err, "info")
		n := usedMemory(used)
		testenv.Must(t, admin.ConfigSet(ctx, "maxmemory", strconv.FormatInt(n/2, 10)).Err(), "maxmemory")
	}, func() {
		testenv.Must(t, admin.ConfigSet(ctx, "maxmemory", "0").Err(), "maxmemory 0")
	})
	refuse("NOREPLICAS", func() {
		testenv.Must(t, admin.ConfigSet(ctx, "min-replicas-to-write", "1").Err(), "min-replicas-to-write")
	}, func() {
		testenv.Must(t, admin.ConfigSet(ctx, "min-replicas-to-write", "0").Err(), "min-replicas-to-write 0")
	})
	if rows := e.compensationRows(t); len(rows) != 0 {
		t.Fatalf("%d compensation rows after Redis refused writes; an outage is never parked: %+v", len(rows), rows)
	}
	if got := metricOf(t, base, "invsync_compensation_parked_total"); got != 0 {
		t.Fatalf("invsync_compensation_parked_total = %v", got)
	}
}

func readyz(base string) (string, int) {
	body, err := httpBody(base + "/readyz")
	code, cerr := httpGet(base + "/readyz")
	if err != nil || cerr != nil {
		return "", 0
	}
	return body, code
}

// metricOf returns one series (name with its labels as Prometheus prints them) from
// /metrics, 0 when absent.
func metricOf(t *testing.T, base, series string) float64 {
	t.Helper()
	body, err := httpBody(base + "/metrics")
	testenv.Must(t, err, "metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func usedMemory(info string) int64 {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// committed counts the transactions MySQL committed so far (its binlog GTID sequence).
func (e *env) committed(t *testing.T) int64 {
	t.Helper()
	var pos string
	testenv.Must(t, e.db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&pos), "gtid_binlog_pos")
	var n int64
	for _, g := range strings.Split(pos, ",") {
		if parts := strings.Split(g, "-"); len(parts) == 3 {
			v, _ := strconv.ParseInt(parts[2], 10, 64)
			n += v
		}
	}
	return n
}
