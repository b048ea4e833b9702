package daemon

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"

	"github.com/invsync/invsync/config"
)

// LockName is the MySQL named lock (GET_LOCK, on the state database) that the instance
// leading a config holds while it runs: the binlog stream, the writes and the scheduled
// reconciliation belong to it. A named lock lives as long as the connection that took it.
func LockName(cfg *config.Config) string {
	name := "invsync:" + cfg.State.Schema
	if len(name) > 64 {
		sum := sha256.Sum256([]byte(name))
		name = "invsync:" + hex.EncodeToString(sum[:16])
	}
	return name
}

// Lock is a held named lock.
type Lock struct {
	conn *sql.Conn
	name string
	id   int64 // the connection's id on the state database
}

// ID is the state database connection id that holds the lock.
func (l *Lock) ID() int64 { return l.id }

// Held checks that the lock's connection is alive and still holds it.
func (l *Lock) Held(ctx context.Context) error {
	var ok sql.NullInt64
	if err := l.conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", l.name).Scan(&ok); err != nil {
		return fmt.Errorf("the leader lock's connection: %w", err)
	}
	if ok.Int64 != 1 {
		return fmt.Errorf("the leader lock %s is no longer held by this instance", l.name)
	}
	return nil
}

// TryLock takes the named lock without waiting; held is false when another connection
// holds it.
func TryLock(ctx context.Context, db *sql.DB, name string) (l *Lock, held bool, err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("connect to the state database: %w", err)
	}
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", name).Scan(&got); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("take the lock %s: %w", name, err)
	}
	if got.Int64 != 1 {
		conn.Close()
		return nil, false, nil
	}
	l = &Lock{conn: conn, name: name}
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&l.id); err != nil {
		l.Release()
		return nil, false, err
	}
	return l, true, nil
}

// Release gives the lock up.
func (l *Lock) Release() {
	if l == nil {
		return
	}
	_, _ = l.conn.ExecContext(context.Background(), "DO RELEASE_LOCK(?)", l.name)
	l.conn.Close()
}
