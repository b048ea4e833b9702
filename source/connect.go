package source

import (
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-sql-driver/mysql"
)

// Config is how to reach the source: what every connection to it needs. Its password
// is set with WithPassword and never printed: not by String, nor by fmt or JSON of a
// struct that holds a Config (it is kept behind an unexported pointer).
type Config struct {
	Addr, User string
	password   *string
	// Flavor is "mysql" or "mariadb".
	Flavor string
	// TLS, when set, returns the TLS configuration of each new connection (read again
	// for each, so that certificate files replaced on disk take effect).
	TLS            func() (*tls.Config, error) `json:"-"`
	ConnectTimeout time.Duration
	// Location is the zone TIMESTAMP values are read in (the session's time_zone, at its
	// offset when the session starts); nil is UTC.
	Location *time.Location
}

// WithPassword returns c with the password of its user.
func (c Config) WithPassword(p string) Config {
	c.password = &p
	return c
}

// pass is the password ("" when none).
func (c Config) pass() string {
	if c.password == nil {
		return ""
	}
	return *c.password
}

// tlsConfig is the TLS configuration of a new connection (nil: not encrypted).
func (c Config) tlsConfig() (*tls.Config, error) {
	if c.TLS == nil {
		return nil, nil
	}
	tc, err := c.TLS()
	if err != nil {
		return nil, fmt.Errorf("%w: source.tls: %w", ErrPermanent, err)
	}
	return tc, nil
}

// String names the source without its password (also for %v and %+v).
func (c Config) String() string { return c.User + "@" + c.Addr + " (" + c.Flavor + ")" }

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }

// Dial opens a text-protocol session to the source (snapshot, reconciliation, row
// fetches) prepared to read values as the binlog renders them (PrepareSession).
func (c Config) Dial(ctx context.Context) (*client.Conn, error) {
	tc, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	var opts []client.Option
	if tc != nil {
		opts = append(opts, func(conn *client.Conn) error { conn.SetTLSConfig(tc); return nil })
	}
	conn, err := client.ConnectWithContext(ctx, c.Addr, c.User, c.pass(), "", c.ConnectTimeout, opts...)
	if err != nil {
		return nil, err
	}
	if err := PrepareSession(conn, c.Location); err != nil {
		conn.Close()
		return nil, fmt.Errorf("prepare the session: %w", err)
	}
	return conn, nil
}

// PrepareSession sets a session up to read values as the binlog renders them: TIMESTAMP
// in the configured zone, backslashes as ordinary characters in literals, and text as
// UTF-8.
func PrepareSession(conn *client.Conn, loc *time.Location) error {
	_, err := conn.Execute("SET SESSION time_zone = '" + ZoneOffset(loc) + "', SESSION sql_mode = 'NO_BACKSLASH_ESCAPES', NAMES utf8mb4")
	return err
}

// OpenDB returns a connection pool to the source (not yet connected); its sessions read
// TIMESTAMP values in the configured zone.
func (c Config) OpenDB() (*sql.DB, error) {
	tc, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	mc := mysql.NewConfig()
	mc.User, mc.Passwd, mc.Net, mc.Addr = c.User, c.pass(), "tcp", c.Addr
	mc.TLS = tc
	mc.Timeout = c.ConnectTimeout
	mc.ReadTimeout = 30 * time.Second
	mc.WriteTimeout = 30 * time.Second
	mc.Params = map[string]string{"time_zone": "'" + ZoneOffset(c.Location) + "'"}
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, fmt.Errorf("source connection settings: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(8)
	db.SetConnMaxLifetime(10 * time.Minute)
	return db, nil
}

// ZoneOffset returns the session time_zone value ("+hh:mm") of loc at its current
// offset (named zones need the server's zone tables, offsets do not); nil is UTC.
func ZoneOffset(loc *time.Location) string {
	if loc == nil {
		return "+00:00"
	}
	_, off := time.Now().In(loc).Zone()
	sign := "+"
	if off < 0 {
		sign, off = "-", -off
	}
	return fmt.Sprintf("%s%02d:%02d", sign, off/3600, (off%3600)/60)
}
