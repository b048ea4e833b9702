package source

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// Problem is one failed or doubtful check of check-config.
type Problem struct {
	Check   string
	Warning bool
	Err     error
}

// Check verifies that the source at addr (reached through db) is reachable and can be
// followed: binlog on, ROW format, FULL row image, and the tables mirrorable. The tables
// are returned when every check passed.
func Check(ctx context.Context, db *sql.DB, addr string, specs []Spec) ([]*Table, []Problem) {
	var ps []Problem
	if err := db.PingContext(ctx); err != nil {
		return nil, []Problem{{Check: "source reachable", Err: describeSQLError(err, addr)}}
	}
	var logBin, format, image string
	err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image").Scan(&logBin, &format, &image)
	if err != nil {
		ps = append(ps, Problem{Check: "binlog settings", Err: fmt.Errorf("read binlog settings: %w", err)})
	} else {
		ps = append(ps, checkBinlogSettings(addr, logBin, format, image)...)
	}
	var meta string
	if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.binlog_row_metadata").Scan(&meta); err != nil || !strings.EqualFold(meta, "FULL") {
		if meta == "" {
			meta = "unsupported"
		}
		ps = append(ps, Problem{Check: "binlog_row_metadata", Warning: true, Err: fmt.Errorf("binlog_row_metadata is %s: rows are decoded with the current table definition, which is wrong for rows written before an ALTER TABLE (fix: SET GLOBAL binlog_row_metadata = 'FULL', MySQL 8.0.1+ / MariaDB 10.5+)", meta)})
	}
	// MySQL 8.0.20+ can compress each transaction into one event whose inner events have
	// no positions of their own; invsync orders rows by position.
	var compress string
	if db.QueryRowContext(ctx, "SELECT @@GLOBAL.binlog_transaction_compression").Scan(&compress) == nil && (compress == "1" || strings.EqualFold(compress, "ON")) {
		ps = append(ps, Problem{Check: "binlog_transaction_compression", Err: fmt.Errorf("%w: binlog_transaction_compression is ON on %s: invsync cannot order the rows inside a compressed transaction (fix: SET PERSIST binlog_transaction_compression = OFF)", ErrPermanent, addr)})
	}
	tables, err := LoadTables(ctx, db, specs)
	if err != nil {
		if errors.Is(err, ErrTable) {
			err = fmt.Errorf("%w: %w", ErrPermanent, err)
		}
		ps = append(ps, Problem{Check: "tables", Err: err})
	}
	for _, p := range ps {
		if !p.Warning {
			return nil, ps
		}
	}
	return tables, ps
}

// checkBinlogSettings checks the server variables invsync depends on.
func checkBinlogSettings(addr, logBin, format, image string) []Problem {
	var ps []Problem
	if logBin != "1" && !strings.EqualFold(logBin, "ON") {
		ps = append(ps, Problem{Check: "binlog on", Err: fmt.Errorf("%w: the binary log is off on %s (fix: start the server with log_bin, e.g. --log-bin=binlog --server-id=1)", ErrPermanent, addr)})
		return ps
	}
	if !strings.EqualFold(format, "ROW") {
		ps = append(ps, Problem{Check: "binlog_format", Err: fmt.Errorf("%w: binlog_format is %s, invsync needs ROW (fix: SET GLOBAL binlog_format = 'ROW' and binlog_format=ROW in the server config; sessions opened before keep the old format)", ErrPermanent, format)})
	}
	if !strings.EqualFold(image, "FULL") {
		ps = append(ps, Problem{Check: "binlog_row_image", Err: fmt.Errorf("%w: binlog_row_image is %s, invsync needs FULL (fix: SET GLOBAL binlog_row_image = 'FULL' and in the server config)", ErrPermanent, image)})
	}
	return ps
}

// describeSQLError names the fix for a connection error, without the password.
func describeSQLError(err error, addr string) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1045, 1044:
			return fmt.Errorf("%w: %s refused the login: %s (fix: check source.user and source.password / INVSYNC_SOURCE_PASSWORD)", ErrPermanent, addr, me.Message)
		}
		return fmt.Errorf("source %s: %w", addr, err)
	}
	var ne net.Error
	if errors.As(err, &ne) || strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("source %s is not reachable: %w (fix: check source.addr and that the server runs)", addr, err)
	}
	return fmt.Errorf("source %s: %w", addr, err)
}
