package daemon

import (
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/invsync/invsync/bloom"
	"github.com/invsync/invsync/checkpoint"
	"github.com/invsync/invsync/client"
	"github.com/invsync/invsync/compensation"
	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/layout"
	"github.com/invsync/invsync/source"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Conns are what every command opens from a config: the source (its settings and a
// connection pool), the state database and Redis. Open makes them without connecting;
// Close closes them.
type Conns struct {
	Cfg    *config.Config
	Source source.Config
	// DB is the pool of the source; State the pool of the state schema (DB itself unless
	// state.dsn is set).
	DB, State *sql.DB
	Redis     redis.UniversalClient
}

// Open returns the connections of cfg (not yet connected).
func Open(cfg *config.Config) (*Conns, error) {
	src, err := sourceConfig(cfg.Source)
	if err != nil {
		return nil, err
	}
	db, err := src.OpenDB()
	if err != nil {
		return nil, err
	}
	state, err := openStateDB(cfg, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Conns{Cfg: cfg, Source: src, DB: db, State: state, Redis: newRedis(cfg.Redis)}, nil
}

// Close closes every connection.
func (c *Conns) Close() {
	c.Redis.Close()
	if c.State != c.DB {
		c.State.Close()
	}
	c.DB.Close()
}

// sourceConfig is how to reach the source that cfg configures.
func sourceConfig(cfg config.Source) (source.Config, error) {
	loc, err := config.ParseTimeZone(cfg.TimeZone)
	if err != nil {
		return source.Config{}, fmt.Errorf("source.time_zone: %w", err)
	}
	src := source.Config{Addr: cfg.Addr, User: cfg.User, Flavor: cfg.Flavor, ConnectTimeout: cfg.ConnectTimeout, Location: loc}
	if cfg.TLS.Enabled {
		src.TLS = func() (*tls.Config, error) { return cfg.TLS.Config(config.HostOf(cfg.Addr)) }
	}
	return src.WithPassword(cfg.Password), nil
}

// specs are the configured tables as package source names them.
func specs(tables []config.Table) []source.Spec {
	out := make([]source.Spec, len(tables))
	for i, t := range tables {
		out[i] = source.Spec{Schema: t.Schema, Table: t.Table, KeyPrefix: t.KeyPrefix, Columns: t.Columns, VersionColumn: t.VersionColumn}
	}
	return out
}

// Tables reads the definitions of the configured tables.
func (c *Conns) Tables(ctx context.Context) ([]*source.Table, error) {
	return source.LoadTables(ctx, c.DB, specs(c.Cfg.Tables))
}

// CheckSource checks that the source can be followed and returns the tables when it
// can (see source.Check).
func (c *Conns) CheckSource(ctx context.Context) ([]*source.Table, []source.Problem) {
	return source.Check(ctx, c.DB, c.Cfg.Source.Addr, specs(c.Cfg.Tables))
}

// CheckRedis pings Redis.
func (c *Conns) CheckRedis(ctx context.Context) error {
	if err := c.Redis.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s (%s) is not reachable: %w (fix: check redis.addrs, redis.password and that Redis runs)", strings.Join(c.Cfg.Redis.Addrs, ","), c.Cfg.Redis.Mode, err)
	}
	return nil
}

// Writer is the versioned writer of rows, tombstones and null markers.
func (c *Conns) Writer() *layout.Writer {
	return layout.NewWriterWithNullTTL(c.Redis, c.Cfg.Bloom.TombstoneTTL, c.Cfg.Bloom.NullTTL, c.Cfg.Redis.Mode == "cluster")
}

// Keeper is the keeper of the tables' Bloom filters; a rebuild scans the primary keys
// from the source. m may be nil.
func (c *Conns) Keeper(tables []*source.Table, log *zap.Logger, m *bloom.Metrics) *bloom.Keeper {
	return newKeeper(c.Cfg, c.Source, c.Redis, tables, log, m)
}

// Epoch is the epoch of the source's history that the checkpoint is in (0 without one):
// the epoch of the positions a command reads at.
func (c *Conns) Epoch(ctx context.Context) uint32 {
	if store, err := c.Checkpoint(ctx); err == nil {
		if p, ok, err := store.Load(ctx); err == nil && ok {
			return p.Epoch
		}
	}
	return 0
}

// openStateDB returns the pool for the state schema: the source's unless state.dsn is set.
func openStateDB(cfg *config.Config, source *sql.DB) (*sql.DB, error) {
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

// newRedis returns the Redis client for the configured mode.
func newRedis(cfg config.Redis) redis.UniversalClient {
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

// Checkpoint opens the checkpoint of the config's pipeline in the state schema.
func (c *Conns) Checkpoint(ctx context.Context) (*checkpoint.Store, error) {
	return checkpoint.Open(ctx, c.State, c.Cfg.State.Schema, pipelineName)
}

// Compensation opens the compensation table in the state schema.
func (c *Conns) Compensation(ctx context.Context) (*compensation.Store, error) {
	return compensation.Open(ctx, c.State, c.Cfg.State.Schema, compensation.NewSchedule(c.Cfg.Compensation), time.Now)
}

// ClientTables describes the configured tables for package client; with their
// definitions (Tables), fills go under each row's own key (client.Table.PK).
func (c *Conns) ClientTables(tables ...*source.Table) []client.Table {
	out := make([]client.Table, len(c.Cfg.Tables))
	for i, t := range c.Cfg.Tables {
		out[i] = client.Table{Name: t.TableName(), KeyPrefix: t.KeyPrefix, BloomKey: c.Cfg.BloomKey(t)}
		if r := t.Reservations; r != nil {
			out[i].Reservations = &client.Reservations{StockColumn: r.StockColumn, PerUserLimit: r.PerUserLimit, HoldTTL: r.HoldTTL, RecordTTL: r.RecordTTL}
		}
	}
	for _, t := range tables {
		out[t.Index].PK = append([]string(nil), t.PK...)
	}
	return out
}
