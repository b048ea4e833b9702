package source

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// ErrPositionLost is wrapped when the server no longer has the binlog at a position.
var ErrPositionLost = errors.New("binlog position no longer on the server")

// PositionWithoutPreparedXA records the position a snapshot streams from once no XA
// transaction is prepared: a prepared transaction's rows are invisible to the snapshot,
// and its prepare group, before the position, would not be read, so its XA COMMIT would
// bring nothing. One that commits after the position was recorded but before the check
// is seen by the snapshot's reads, which come after the check.
func PositionWithoutPreparedXA(ctx context.Context, db *sql.DB, position func(context.Context) (Position, error), log *zap.Logger) (Position, error) {
	var lastLog time.Time
	for {
		p, err := position(ctx)
		if err != nil {
			return p, err
		}
		n, err := preparedXA(ctx, db)
		if err != nil {
			log.Warn("cannot list prepared XA transactions (XA RECOVER); a transaction prepared before the snapshot and committed after it would be missed (fix: grant the invsync user what XA RECOVER needs, e.g. XA_RECOVER_ADMIN on MySQL 8)", zap.Error(err))
			return p, nil
		}
		if n == 0 {
			return p, nil
		}
		if time.Since(lastLog) > 10*time.Second {
			log.Warn("waiting for prepared XA transactions to commit or roll back before the snapshot records its position (XA RECOVER lists them)", zap.Int("prepared", n))
			lastLog = time.Now()
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return p, ctx.Err()
		}
	}
}

// preparedXA counts the XA transactions prepared on the source.
func preparedXA(ctx context.Context, db *sql.DB) (int, error) {
	rows, err := db.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	return n, rows.Err()
}

// Identity names the server the source address reaches: MySQL's server_uuid, or
// MariaDB's server_id and GTID domain (MariaDB has no server_uuid).
func Identity(ctx context.Context, db *sql.DB, flavor string) (string, error) {
	if flavor == "mariadb" {
		var id, domain string
		if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.server_id, @@GLOBAL.gtid_domain_id").Scan(&id, &domain); err != nil {
			return "", fmt.Errorf("read the source's server_id: %w", err)
		}
		return "mariadb server_id=" + id + " gtid_domain_id=" + domain, nil
	}
	var uuid, id string
	if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.server_uuid, @@GLOBAL.server_id").Scan(&uuid, &id); err != nil {
		return "", fmt.Errorf("read the source's server_uuid: %w", err)
	}
	return "mysql server_uuid=" + uuid + " server_id=" + id, nil
}

// PositionAvailable returns an error wrapping ErrPositionLost when the server no
// longer has the binlog file of pos (purged). A server may not report that itself: a
// MariaDB asked for a purged GTID position can wait without an error.
func PositionAvailable(ctx context.Context, db *sql.DB, pos Position) error {
	if pos.File == "" {
		return nil
	}
	rows, err := db.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return fmt.Errorf("list the binlogs: %w", err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		if string(vals[0]) == pos.File {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: %w: %s is not among the server's binlogs", ErrPermanent, ErrPositionLost, pos.File)
}

// OldestBinlog names the oldest binlog file the server still has, for messages.
func OldestBinlog(ctx context.Context, db *sql.DB) string {
	rows, err := db.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		return "none"
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return "unknown"
	}
	return string(vals[0])
}
