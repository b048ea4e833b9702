package e2e

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
)

// Issue 3, acceptance 3: ADD, MODIFY, RENAME and DROP COLUMN on a mirrored table while it
// streams, with writers running: afterwards Redis equals MySQL (new defaults, new names,
// new text of a changed type, no dropped fields). A DDL on another table reloads nothing.
func TestDDLWhileStreaming(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	_, err := e.db.Exec("CREATE TABLE other (id INT PRIMARY KEY, x INT)")
	testenv.Must(t, err, "create other")
	loadRows(t, e, 2000)
	r := e.start(nil)
	waitReady(t, r)
	e.waitEqual(30 * time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writes atomic.Int64
	var quiet sync.RWMutex // held by the test while it compares: the writers wait
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			for ctx.Err() == nil {
				sku := rng.IntN(2500)
				var q string
				switch rng.IntN(4) {
				case 0:
					q = "INSERT INTO inventory (sku, stock, version) VALUES (?, 7, 1) ON DUPLICATE KEY UPDATE stock = stock + 1, version = version + 1"
				case 1:
					q = "DELETE FROM inventory WHERE sku = ?"
				default:
					q = "UPDATE inventory SET stock = stock - 1, version = version + 1 WHERE sku = ?"
				}
				quiet.RLock()
				if _, err := e.db.ExecContext(ctx, q, sku); err == nil {
					writes.Add(1)
				}
				quiet.RUnlock()
			}
		}(uint64(w + 1))
	}
	reloads := 0.0
	for _, c := range []struct {
		q        string
		mirrored bool
	}{
		{"ALTER TABLE inventory ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n/a'", true},
		{"ALTER TABLE other ADD COLUMN y INT", false},
		{"ALTER TABLE inventory MODIFY COLUMN price DECIMAL(12,4)", true},
		{"ALTER TABLE inventory RENAME COLUMN name TO title", true},
		{"ALTER TABLE inventory DROP COLUMN note", true},
	} {
		time.Sleep(300 * time.Millisecond)
		before := writes.Load()
		if _, err := e.db.Exec(c.q); err != nil {
			t.Fatalf("%s: %v", c.q, err)
		}
		time.Sleep(300 * time.Millisecond)
		// Compared after each DDL (the new default, the new type's text, the new name),
		// with the writers held meanwhile.
		quiet.Lock()
		if writes.Load() == before {
			t.Errorf("no write ran across %q", c.q)
		}
		e.waitEqual(60 * time.Second)
		if c.mirrored {
			reloads++
		}
		if got, all := seriesValue(t, r.d.Registry(), "invsync_resnapshots_total", "reason", "ddl"), counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got != reloads || all != reloads {
			t.Fatalf("after %q: invsync_resnapshots_total{reason=ddl} = %v (all reasons %v), want %v (one per DDL on the mirrored table, none for the other table)", c.q, got, all, reloads)
		}
		quiet.Unlock()
	}
	cancel()
	wg.Wait()
	t.Logf("%d writes ran across the DDLs", writes.Load())
	e.waitEqual(60 * time.Second)
}
