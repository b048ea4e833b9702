package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// Issue 3, acceptance 4: Redis loses its data (here FLUSHDB of the database invsync
// writes, standing for FLUSHALL or a restart without persistence) during a workload:
// Redis equals MySQL again within 30 s, without restarting the daemon.
func TestRedisDataLossHealsWhileStreaming(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	// A database of its own, so that flushing it touches no other test.
	const db = 7
	e.cfg.Redis.DB = db
	e.rdb = redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(), DB: db})
	t.Cleanup(func() { e.rdb.FlushDB(context.Background()); e.rdb.Close() })
	loadRows(t, e, 3000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)

	var flushed time.Time
	wl := during(t, e, 3000, func(*workload) {
		time.Sleep(500 * time.Millisecond)
		testenv.Must(t, e.rdb.FlushDB(context.Background()).Err(), "FLUSHDB")
		flushed = time.Now()
		time.Sleep(2 * time.Second)
	})
	e.waitEqual(30*time.Second - time.Since(flushed))
	t.Logf("equal again %s after the flush (workload ran %d transactions)", time.Since(flushed).Round(time.Millisecond), wl.done.Load())
	if got := counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got < 1 {
		t.Fatalf("resnapshots counter %v after a data loss", got)
	}
}
