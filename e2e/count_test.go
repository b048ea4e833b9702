package e2e

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/snapshot"
	"github.com/invsync/invsync/source"
)

// A row count (the Bloom filter's sizing) cancelled while MySQL works on it ends on the
// server too, not only in the client, and reports the cancellation: a COUNT(*) of a big
// table left running after a shutdown or a lost leadership would scan it for nothing
// (MySQL notices a closed connection only when it sends the result). Here the "table" is
// a view over MariaDB's SEQUENCE engine whose count would take hours.
func TestACancelledRowCountEndsOnTheServer(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	ctx := context.Background()
	if _, err := e.db.Exec("SELECT 1 FROM seq_1_to_1"); err != nil {
		t.Skipf("needs MariaDB's SEQUENCE engine: %v", err)
	}
	_, err := e.db.Exec("CREATE VIEW " + testenv.Quote(e.schema) + ".big AS SELECT seq FROM seq_1_to_1000000000000 WHERE seq % 7 = 1")
	testenv.Must(t, err, "create the view")
	running := func() []int64 {
		rows, err := e.db.Query("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?",
			"SELECT COUNT(*) FROM "+testenv.Quote(e.schema)+"%")
		testenv.Must(t, err, "processlist")
		defer rows.Close()
		var ids []int64
		for rows.Next() {
			var id int64
			testenv.Must(t, rows.Scan(&id), "processlist")
			ids = append(ids, id)
		}
		return ids
	}
	t.Cleanup(func() { // a count the code under test left running
		for _, id := range running() {
			_, _ = e.db.Exec("KILL QUERY " + strconv.FormatInt(id, 10))
		}
	})
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	dial := e.conns().Source.Dial
	go func() {
		_, err := snapshot.CountRows(cctx, dial, &source.Table{Schema: e.schema, Name: "big"})
		done <- err
	}()
	waitFor(t, "the count to run", 10*time.Second, func() bool { return len(running()) == 1 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled count: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the count did not return once cancelled")
	}
	waitFor(t, "the server to end the cancelled count", 10*time.Second, func() bool { return len(running()) == 0 })
}
