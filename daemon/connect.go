package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/invsync/invsync/canal"
	"github.com/invsync/invsync/config"
	"github.com/redis/go-redis/v9"
)

// OpenSourceDB returns a connection pool to the source (not yet connected).
func OpenSourceDB(cfg config.Source) (*sql.DB, error) {
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr = cfg.User, cfg.Password, "tcp", cfg.Addr
	tc, err := cfg.TLS.Config(config.HostOf(cfg.Addr))
	if err != nil {
		return nil, fmt.Errorf("source.tls: %w", err)
	}
	c.TLS = tc
	c.Timeout = cfg.ConnectTimeout
	c.ReadTimeout = 30 * time.Second
	c.WriteTimeout = 30 * time.Second
	c.Params = map[string]string{"time_zone": "'" + config.TimeZoneOffset(cfg.TimeZone) + "'"}
	conn, err := mysql.NewConnector(c)
	if err != nil {
		return nil, fmt.Errorf("source connection settings: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(8)
	db.SetConnMaxLifetime(10 * time.Minute)
	return db, nil
}

// OpenStateDB returns the pool for the state schema: the source's unless state.dsn is set.
func OpenStateDB(cfg *config.Config, source *sql.DB) (*sql.DB, error) {
	if cfg.State.DSN == "" {
		return source, nil
	}
	c, err := mysql.ParseDSN(cfg.State.DSN)
	if err != nil {
		return nil, fmt.Errorf("state.dsn %s: %v", config.RedactDSN(cfg.State.DSN), err)
	}
	// Every call has a deadline: a state database cut off must not hang the leader
	// (its lock checks, its checkpoint) or a standby.
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 30 * time.Second
	}
	conn, err := mysql.NewConnector(c)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(conn), nil
}

// NewRedis returns the Redis client for the configured mode.
func NewRedis(cfg config.Redis) redis.UniversalClient {
	opts := &redis.UniversalOptions{
		Addrs:        cfg.Addrs,
		Password:     cfg.Password,
		DB:           cfg.DB,
		DialTimeout:  cfg.DialTimeout,
		ReadTimeout:  cfg.WriteTimeout,
		WriteTimeout: cfg.WriteTimeout,
		MaxRetries:   1,
		PoolSize:     64,
		// CLIENT LIST names each instance's connections.
		ClientName: fmt.Sprintf("invsync-%d", os.Getpid()),
	}
	if len(cfg.Addrs) > 0 {
		// Validate checked the files; an error here cannot happen after it.
		opts.TLSConfig, _ = cfg.TLS.Config(config.HostOf(cfg.Addrs[0]))
	}
	switch cfg.Mode {
	case "cluster":
		opts.IsClusterMode = true
	case "sentinel":
		opts.MasterName = cfg.MasterName
	}
	return redis.NewUniversalClient(opts)
}

// Problem is one failed or doubtful check of check-config.
type Problem struct {
	Check   string
	Warning bool
	Err     error
}

// ErrPermanent marks a startup problem that waiting cannot fix.
var ErrPermanent = canal.ErrPermanent

// CheckSource verifies that the source is reachable and can be followed: binlog on, ROW
// format, FULL row image, and the configured tables mirrorable. The tables are returned
// when every check passed.
func CheckSource(ctx context.Context, db *sql.DB, cfg *config.Config) ([]*canal.Table, []Problem) {
	var ps []Problem
	if err := db.PingContext(ctx); err != nil {
		return nil, []Problem{{Check: "source reachable", Err: describeSQLError(err, cfg.Source.Addr)}}
	}
	var logBin, format, image string
	err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format, @@GLOBAL.binlog_row_image").Scan(&logBin, &format, &image)
	if err != nil {
		ps = append(ps, Problem{Check: "binlog settings", Err: fmt.Errorf("read binlog settings: %w", err)})
	} else {
		ps = append(ps, checkBinlogSettings(cfg.Source.Addr, logBin, format, image)...)
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
		ps = append(ps, Problem{Check: "binlog_transaction_compression", Err: fmt.Errorf("%w: binlog_transaction_compression is ON on %s: invsync cannot order the rows inside a compressed transaction (fix: SET PERSIST binlog_transaction_compression = OFF)", ErrPermanent, cfg.Source.Addr)})
	}
	tables, err := canal.LoadTables(ctx, db, cfg.Tables)
	if err != nil {
		if errors.Is(err, canal.ErrTable) {
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

// CheckRedis pings Redis.
func CheckRedis(ctx context.Context, rdb redis.UniversalClient, cfg config.Redis) error {
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s (%s) is not reachable: %w (fix: check redis.addrs, redis.password and that Redis runs)", strings.Join(cfg.Addrs, ","), cfg.Mode, err)
	}
	return nil
}
