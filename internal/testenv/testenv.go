// Package testenv gives integration tests the MariaDB and Redis that
// scripts/services.sh starts, and isolates each test in a schema and a key prefix of
// its own. The services are required: a test fails, naming the fix, when they are not
// reachable.
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// MySQLAddr is the address of the test MariaDB.
func MySQLAddr() string { return env("INVSYNC_TEST_MYSQL_ADDR", "127.0.0.1:23306") }

// AppUser and AppPassword are the account invsync runs as (grants as in the README).
func AppUser() string     { return env("INVSYNC_TEST_MYSQL_USER", "invsync") }
func AppPassword() string { return env("INVSYNC_TEST_MYSQL_PASSWORD", "invsync-secret") }

// AdminUser and AdminPassword are the account tests use for DDL and workloads.
func AdminUser() string     { return env("INVSYNC_TEST_MYSQL_ADMIN_USER", "invsync_admin") }
func AdminPassword() string { return env("INVSYNC_TEST_MYSQL_ADMIN_PASSWORD", "admin-secret") }

// RedisAddr is the address of the test Redis.
func RedisAddr() string { return env("INVSYNC_TEST_REDIS_ADDR", "127.0.0.1:26379") }

const fix = "start the test services with scripts/services.sh start (or run scripts/test.sh)"

// Name returns a short random identifier for schemas and prefixes.
func Name(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// AdminDSN returns a DSN for the admin account on the given schema ("" for none).
func AdminDSN(schema string) string {
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr, c.DBName = AdminUser(), AdminPassword(), "tcp", MySQLAddr(), schema
	c.MultiStatements = true
	c.Params = map[string]string{"time_zone": "'+00:00'"}
	return c.FormatDSN()
}

// DB opens the admin connection; it is closed when the test ends.
func DB(t testing.TB, schema string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", AdminDSN(schema))
	if err != nil {
		t.Fatalf("open MariaDB: %v", err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("test MariaDB at %s not reachable: %v (fix: %s)", MySQLAddr(), err, fix)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Schema creates a fresh database, dropped when the test ends (unless it failed and
// INVSYNC_TEST_KEEP is set), and returns its name and an admin connection to it.
func Schema(t testing.TB) (string, *sql.DB) {
	t.Helper()
	root := DB(t, "")
	name := Name("t_")
	if _, err := root.Exec("CREATE DATABASE " + name + " CHARACTER SET utf8mb4"); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("INVSYNC_TEST_KEEP") != "" {
			t.Logf("keeping schema %s", name)
			return
		}
		_, _ = root.Exec("DROP DATABASE IF EXISTS " + name)
	})
	return name, DB(t, name)
}

// StateSchema returns a fresh name for invsync's state schema ("invsync" prefix, which
// the app account may create), dropped when the test ends.
func StateSchema(t testing.TB) string {
	t.Helper()
	root := DB(t, "")
	name := Name("invsync_t")
	t.Cleanup(func() { _, _ = root.Exec("DROP DATABASE IF EXISTS " + name) })
	return name
}

// Redis returns a client of the test Redis, closed when the test ends.
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: RedisAddr(), PoolSize: 32})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("test Redis at %s not reachable: %v (fix: %s)", RedisAddr(), err, fix)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Prefix returns a key prefix unique to this test; its keys are deleted when it ends.
func Prefix(t testing.TB, rdb redis.UniversalClient) string {
	t.Helper()
	p := Name("t") + ":"
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := ScanKeys(ctx, rdb, p)
		for _, k := range keys {
			rdb.Unlink(ctx, k) // one by one: the keys may live on different cluster nodes
		}
	})
	return p
}

var serverIDs atomic.Uint32

// ServerID returns a replica server id unlikely to clash with another test process.
func ServerID() uint32 {
	base := uint32(os.Getpid()%20000)*100 + 100000
	return base + serverIDs.Add(1)
}

// ScanKeys returns every key under prefix (on every master of a cluster).
func ScanKeys(ctx context.Context, rdb redis.UniversalClient, prefix string) ([]string, error) {
	var mu sync.Mutex
	var keys []string
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err := cc.ForEachMaster(ctx, scan)
		return keys, err
	}
	return keys, scan(ctx, rdb.(*redis.Client))
}

// Quote returns s as a backquoted identifier.
func Quote(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// Must fails the test on err.
func Must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}

// RedisCPUSeconds is the CPU time the Redis server has used so far (INFO cpu), for
// benchmarks that report Redis's share of the work.
func RedisCPUSeconds(tb testing.TB, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	Must(tb, err, "INFO cpu")
	total := 0.0
	for _, line := range strings.Split(info, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total
}
