package e2e

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/client"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
)

// Issue 13, part 4: the read path under failure. A loader that panics is an error for
// the callers of that key, not a crashed application; a fill that Redis refuses (a
// replica after a failover) still returns the row the loader found; and loader calls
// are bounded however many callers give up early.
func TestClientUnderLoaderPanicsFillFailuresAndOverload(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	loadRows(t, e, 20)
	ctx := context.Background()

	t.Run("loader panic", func(t *testing.T) {
		l := &testLoader{db: e.db, version: "version", before: func(pk []string) {
			if pk[0] == "3" {
				panic("loader bug")
			}
		}}
		c := e.client(t, l, nil)
		if _, err := c.Get(ctx, "inventory", "3"); err == nil || !strings.Contains(err.Error(), "panic") {
			t.Fatalf("Get of the key whose loader panics: err %v", err)
		}
		if r, err := c.Get(ctx, "inventory", "4"); err != nil || !r.Found {
			t.Fatalf("Get after a panic: %+v %v", r, err)
		}
	})

	t.Run("fill refused", func(t *testing.T) {
		addr := freeAddr(t)
		startOwnRedis(t, addr)
		rdb := redisClient(t, addr)
		// A Redis that refuses writes and serves reads, as a replica does.
		testenv.Must(t, rdb.ConfigSet(ctx, "min-replicas-to-write", "1").Err(), "refuse writes")
		l := &testLoader{db: e.db, version: "version"}
		reg := prometheus.NewRegistry()
		c, err := client.New(rdb, e.conns().ClientTables(), l.load, client.Options{Registerer: reg})
		testenv.Must(t, err, "client")
		r, err := c.Get(ctx, "inventory", "5")
		if err != nil || !r.Found || r.Row.Fields["name"] != "sku-5" {
			t.Fatalf("Get with the fill refused: %+v %v", r, err)
		}
		r, err = c.Get(ctx, "inventory", "999999")
		if err != nil || r.Found {
			t.Fatalf("Get of a missing row with the null marker refused: %+v %v", r, err)
		}
		if n := counterSum(t, reg, "invsync_client_fill_errors_total"); n != 2 {
			t.Fatalf("fill errors counted: %v, want 2", n)
		}
	})

	t.Run("overload", func(t *testing.T) {
		var running, peak atomic.Int64
		l := &testLoader{db: e.db, version: "version", before: func([]string) {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(500 * time.Millisecond)
		}, after: func([]string) { running.Add(-1) }}
		reg := prometheus.NewRegistry()
		c, err := client.New(e.rdb, e.conns().ClientTables(), l.load, client.Options{Registerer: reg})
		testenv.Must(t, err, "client")
		// 100 callers with 50 ms timeouts over 5,000 distinct missing keys (a bot
		// enumerating SKUs while the Bloom filter is incomplete).
		var wg sync.WaitGroup
		var overloaded atomic.Int64
		for w := 0; w < 100; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
					_, err := c.Get(cctx, "inventory", strconv.Itoa(1_000_000+w*50+i))
					cancel()
					if err != nil && strings.Contains(err.Error(), "overloaded") {
						overloaded.Add(1)
					}
				}
			}(w)
		}
		wg.Wait()
		waitFor(t, "the loads in flight ended", 10*time.Second, func() bool { return running.Load() == 0 })
		t.Logf("peak concurrent loader calls %d, overloaded answers %d, loader calls %d", peak.Load(), overloaded.Load(), l.calls.Load())
		if peak.Load() > client.DefaultMaxLoads {
			t.Fatalf("peak concurrent loader calls %d, over the limit %d", peak.Load(), client.DefaultMaxLoads)
		}
		if overloaded.Load() == 0 || counterSum(t, reg, "invsync_client_overloaded_total") == 0 {
			t.Fatal("no caller was told the client is overloaded")
		}
	})
}
