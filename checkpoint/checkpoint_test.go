package checkpoint_test

import (
	"context"
	"errors"
	"testing"

	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/invsync/invsync/source"
)

// A fenced store writes the checkpoint only while its lock is held by the given
// connection: an instance that lost the leader lock cannot move it.
func TestFencedSaveNeedsTheLock(t *testing.T) {
	ctx := context.Background()
	schema := testenv.StateSchema(t)
	db := testenv.DB(t, "")
	st, err := checkpoint.Open(ctx, db, schema, "default")
	testenv.Must(t, err, "open")
	lock := "invsync:" + schema
	conn, err := db.Conn(ctx)
	testenv.Must(t, err, "conn")
	defer conn.Close()
	var id int64
	testenv.Must(t, conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id), "id")

	st.Fence(lock, id)
	if err := st.Save(ctx, source.Position{File: "binlog.000001", Pos: 4}); !errors.Is(err, checkpoint.ErrNotLeader) {
		t.Fatalf("save without the lock: %v, want ErrNotLeader", err)
	}
	var got int
	testenv.Must(t, conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", lock).Scan(&got), "lock")
	testenv.Must(t, st.Save(ctx, source.Position{File: "binlog.000001", Pos: 8}), "save with the lock")
	pos, ok, err := st.Load(ctx)
	if err != nil || !ok || pos.Pos != 8 {
		t.Fatalf("load: %v %v %v", pos, ok, err)
	}
	st.Fence(lock, id+1_000_000) // another connection's id: refused again
	if err := st.Save(ctx, source.Position{File: "binlog.000001", Pos: 12}); !errors.Is(err, checkpoint.ErrNotLeader) {
		t.Fatalf("save fenced by another connection: %v", err)
	}
	if pos, _, _ := st.Load(ctx); pos.Pos != 8 {
		t.Fatalf("a refused save moved the checkpoint to %d", pos.Pos)
	}
}
