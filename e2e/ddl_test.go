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
				if _, err := e.db.ExecContext(ctx, q, sku); err == nil {
					writes.Add(1)
				}
			}
		}(uint64(w + 1))
	}
	for _, q := range []string{
		"ALTER TABLE inventory ADD COLUMN note VARCHAR(20) NOT NULL DEFAULT 'n/a'",
		"ALTER TABLE other ADD COLUMN y INT",
		"ALTER TABLE inventory MODIFY COLUMN price DECIMAL(12,4)",
		"ALTER TABLE inventory RENAME COLUMN name TO title",
		"ALTER TABLE inventory DROP COLUMN note",
	} {
		time.Sleep(300 * time.Millisecond)
		if _, err := e.db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()
	t.Logf("%d writes ran across the DDLs", writes.Load())
	e.waitEqual(60 * time.Second)
	if got := counterSum(t, r.d.Registry(), "invsync_resnapshots_total"); got != 4 {
		t.Fatalf("reloads after DDL: %v, want 4 (one per DDL on the mirrored table, none for the other table)", got)
	}
}
