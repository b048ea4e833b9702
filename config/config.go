// Package config loads invsync's YAML configuration, applies INVSYNC_* environment
// overrides and validates the whole of it before anything uses it.
//
// Every field has a documented default (see Default). Validate returns every problem it
// finds at once, each naming the key and the fix. Secrets are never part of an error or
// of String().
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

// Config is the whole configuration of one invsync instance.
type Config struct {
	// Source is the MySQL or MariaDB primary whose binlog is followed.
	Source Source `mapstructure:"source"`
	// State is where the checkpoint and the compensation table live.
	State State `mapstructure:"state"`
	// Redis is the target.
	Redis Redis `mapstructure:"redis"`
	// Tables lists the mirrored tables. At least one is required.
	Tables []Table `mapstructure:"tables"`
	// Sink tunes the Redis writers.
	Sink Sink `mapstructure:"sink"`
	// Checkpoint tunes how often the position is saved.
	Checkpoint Checkpoint `mapstructure:"checkpoint"`
	// Compensation tunes the retry of failed writes.
	Compensation Compensation `mapstructure:"compensation" live:"true"`
	// Bloom sizes the Bloom filter and the TTLs of null markers and tombstones.
	Bloom Bloom `mapstructure:"bloom"`
	// Snapshot tunes the full load of the tables.
	Snapshot Snapshot `mapstructure:"snapshot"`
	// Reconcile tunes the reconciliation job.
	Reconcile Reconcile `mapstructure:"reconcile" live:"true"`
	// HTTP is the metrics and health endpoint.
	HTTP HTTP `mapstructure:"http"`
	// Log configures logging.
	Log Log `mapstructure:"log"`
}

// Source is the MySQL/MariaDB primary.
type Source struct {
	// Addr is host:port of the primary. Default 127.0.0.1:3306.
	Addr string `mapstructure:"addr"`
	// User is the replication user. Default "invsync". Grants: see README.
	User string `mapstructure:"user"`
	// Password of User. Default empty. Prefer INVSYNC_SOURCE_PASSWORD or PasswordFile.
	// Never logged.
	Password string `mapstructure:"password" secret:"true"`
	// PasswordFile is a file whose content (trailing newline removed) is the password,
	// when Password is empty (for example a mounted secret). Default empty.
	PasswordFile string `mapstructure:"password_file"`
	// TLS encrypts the connections to the source (the binlog stream and the queries).
	TLS TLS `mapstructure:"tls"`
	// Flavor is "mysql" or "mariadb". Default "mysql".
	Flavor string `mapstructure:"flavor"`
	// ServerID is the replica server id invsync registers with; unique among the
	// primary's replicas. Default 1001.
	ServerID uint32 `mapstructure:"server_id"`
	// TimeZone is the zone in which TIMESTAMP columns are written to Redis, the same text a
	// SELECT returns in a session with this time_zone. An IANA name or "+hh:mm".
	// Default "UTC".
	TimeZone string `mapstructure:"time_zone"`
	// HeartbeatPeriod asks the primary for a heartbeat when idle, so that lag stays right
	// and a dead connection is noticed. Default 1s.
	HeartbeatPeriod time.Duration `mapstructure:"heartbeat_period"`
	// ReadTimeout ends a binlog connection that sent nothing (not even a heartbeat) for
	// this long; invsync then reconnects. Must exceed HeartbeatPeriod. Default 10s.
	ReadTimeout time.Duration `mapstructure:"read_timeout"`
	// ConnectTimeout bounds each connection attempt. Default 5s.
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
	// OnPositionLost says what to do when the checkpoint's binlog position is no longer on
	// the server (purged): "resnapshot" loads every table again and streams from the
	// new position; "fail" exits with an error naming the position and the fix.
	// Default resnapshot.
	OnPositionLost string `mapstructure:"on_position_lost"`
}

// State is where invsync keeps its own tables.
type State struct {
	// Schema holds the checkpoint table; created on start when missing. Default "invsync".
	Schema string `mapstructure:"schema"`
	// DSN, when set, puts the state schema on another server, as
	// user:password@tcp(host:port)/ (go-sql-driver syntax). Default empty: the source.
	DSN string `mapstructure:"dsn" secret:"true"`
}

// Redis is the target Redis.
type Redis struct {
	// Addrs lists host:port of the server (standalone), the seed nodes (cluster) or the
	// sentinels (sentinel). Default [127.0.0.1:6379].
	Addrs []string `mapstructure:"addrs"`
	// Mode is standalone, cluster or sentinel. Default standalone.
	Mode string `mapstructure:"mode"`
	// MasterName is the sentinel master name (mode sentinel only). Default empty.
	MasterName string `mapstructure:"master_name"`
	// Password for Redis AUTH. Default empty. Prefer INVSYNC_REDIS_PASSWORD or
	// PasswordFile. Never logged.
	Password string `mapstructure:"password" secret:"true"`
	// PasswordFile is a file whose content (trailing newline removed) is the password,
	// when Password is empty. Default empty.
	PasswordFile string `mapstructure:"password_file"`
	// TLS encrypts the connections to Redis.
	TLS TLS `mapstructure:"tls"`
	// DB is the database number (standalone and sentinel). Default 0.
	DB int `mapstructure:"db"`
	// DialTimeout bounds each connection attempt. Default 2s.
	DialTimeout time.Duration `mapstructure:"dial_timeout"`
	// WriteTimeout bounds each pipeline round trip. Default 5s.
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
}

// TLS configures an encrypted connection to a server.
type TLS struct {
	// Enabled turns TLS on. Default false.
	Enabled bool `mapstructure:"enabled"`
	// CAFile is a PEM file of the certificate authorities that sign the server's
	// certificate. Default empty: the system's.
	CAFile string `mapstructure:"ca_file"`
	// CertFile is the client certificate (PEM), for servers that require one. Default
	// empty.
	CertFile string `mapstructure:"cert_file"`
	// KeyFile is the client certificate's private key (PEM). Default empty.
	KeyFile string `mapstructure:"key_file"`
	// ServerName is the name checked against the server's certificate. Default empty:
	// the host of the address.
	ServerName string `mapstructure:"server_name"`
	// InsecureSkipVerify accepts any server certificate. UNSAFE: anyone between invsync
	// and the server can then read and change everything; for tests only. Default false.
	InsecureSkipVerify bool `mapstructure:"insecure_skip_verify"`
}

// Config returns the crypto/tls configuration (nil when TLS is off); host is the
// server's host, the default ServerName.
func (t TLS) Config(host string) (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // documented as unsafe
	if c.ServerName == "" {
		c.ServerName = host
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load cert_file and key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// HostOf is the host part of a host:port address.
func HostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// Table is one mirrored table.
type Table struct {
	// Schema (database) of the table. Required.
	Schema string `mapstructure:"schema"`
	// Table name. Required.
	Table string `mapstructure:"table"`
	// KeyPrefix of the row keys, <prefix>{<pk>}. Default "inv:". Unique per table.
	KeyPrefix string `mapstructure:"key_prefix"`
	// Columns to mirror; empty means all. The primary key is always mirrored.
	Columns []string `mapstructure:"columns"`
	// VersionColumn is an integer column that every UPDATE increases; its value becomes
	// _v. Default empty: _v is derived from the binlog position.
	VersionColumn string `mapstructure:"version_column"`
	// Reservations, when set, turns on flash-sale reservations for this table: buyers
	// hold units in Redis (package client's Reserve) before MySQL knows the order, and
	// the settlement of an order in MySQL ends its hold in the same Redis call as the
	// row's new stock. See README, "Reservations".
	Reservations *Reservations `mapstructure:"reservations"`
}

// Reservations configures the holds of a table's rows.
type Reservations struct {
	// StockColumn is the column of MySQL's committed stock (an integer column, mirrored).
	// Required.
	StockColumn string `mapstructure:"stock_column"`
	// PerUserLimit caps the units one user may hold or buy of one row; 0 is no limit.
	PerUserLimit int64 `mapstructure:"per_user_limit"`
	// HoldTTL is how long a hold lasts unless released or settled; the daemon expires
	// holds past it. Default 15m.
	HoldTTL time.Duration `mapstructure:"hold_ttl"`
	// RecordTTL is how long a row's order records are kept after their last change, so
	// that an order id reserving, releasing or settling again changes nothing. Default
	// 168h.
	RecordTTL time.Duration `mapstructure:"record_ttl"`
	// Settlement is the table the application inserts a row into, in the transaction that
	// takes the order's stock in MySQL. Required.
	Settlement Settlement `mapstructure:"settlement"`
}

// Settlement names the settlement table and its columns.
type Settlement struct {
	// Schema of the settlement table. Default: the table's schema.
	Schema string `mapstructure:"schema"`
	// Table is the settlement table (an order table or a ledger). Required.
	Table string `mapstructure:"table"`
	// OrderColumn holds the order id (the one given to Reserve). Required.
	OrderColumn string `mapstructure:"order_column"`
	// KeyColumns hold the stock row's primary key, in key order. Default: the columns
	// named like the stock table's primary key.
	KeyColumns []string `mapstructure:"key_columns"`
	// QuantityColumn holds the units settled. Required.
	QuantityColumn string `mapstructure:"quantity_column"`
	// UserColumn holds the buyer's id (the one given to Reserve); optional.
	UserColumn string `mapstructure:"user_column"`
}

// Default hold and record lifetimes of reservations.
const (
	DefaultHoldTTL   = 15 * time.Minute
	DefaultRecordTTL = 7 * 24 * time.Hour
)

// Sink tunes the Redis writers.
type Sink struct {
	// Workers is the number of writers; a key always goes to the same one. Default 8.
	Workers int `mapstructure:"workers"`
	// BatchSize is the most rows one writer sends in one pipeline. Default 512.
	BatchSize int `mapstructure:"batch_size" live:"true"`
	// FlushInterval is how long a writer under load (its last batch was at least half
	// of batch_size) waits for more rows to fill a batch once its queue ran dry; a writer
	// that keeps up writes each row at once. Default 2ms.
	FlushInterval time.Duration `mapstructure:"flush_interval" live:"true"`
	// QueueSize is the capacity of each writer's queue, in distinct keys: a change of a
	// key that is already waiting replaces it (coalescing), so when Redis falls behind,
	// repeated changes of one key cost one write. Beyond it, reading of the binlog waits.
	// Default 16384 (about 60 MB of pending rows with 8 workers at worst).
	QueueSize int `mapstructure:"queue_size"`
}

// Checkpoint tunes saving of the position.
type Checkpoint struct {
	// Interval between checkpoint writes (and one more on clean shutdown). Default 1s.
	Interval time.Duration `mapstructure:"interval"`
}

// Compensation tunes the retry of writes that failed for a single key.
type Compensation struct {
	// PollInterval between scans for due retries. Default 1s.
	PollInterval time.Duration `mapstructure:"poll_interval"`
	// InitialBackoff before the first retry. Default 500ms.
	InitialBackoff time.Duration `mapstructure:"initial_backoff"`
	// MaxBackoff caps the exponential backoff. Default 5m.
	MaxBackoff time.Duration `mapstructure:"max_backoff"`
	// MaxAttempts before a row is marked dead. Default 20.
	MaxAttempts int `mapstructure:"max_attempts"`
}

// Bloom sizes the Bloom filter and the TTLs of markers.
type Bloom struct {
	// ExpectedItems sizes each table's filter. Unset (the default), each build of the
	// filter (snapshot, reconciliation, rebuild) sizes it for twice the rows the table
	// holds, at least 100000 items, and a filter that outgrows its size is rebuilt
	// larger; set, every filter is sized for this many items.
	ExpectedItems uint `mapstructure:"expected_items"`
	// FalsePositiveRate sizes the filter, between 0 and 1 exclusive. Default 0.001.
	FalsePositiveRate float64 `mapstructure:"false_positive_rate"`
	// NullTTL is the lifetime of a "does not exist" marker. Default 60s.
	NullTTL time.Duration `mapstructure:"null_ttl" live:"true"`
	// TombstoneTTL is the lifetime of a deleted row's tombstone. Default 24h.
	TombstoneTTL time.Duration `mapstructure:"tombstone_ttl" live:"true"`
	// KeyPrefix of the Redis bitmaps: a table's filter is at <key_prefix><schema>.<table>,
	// its parameters at <that key>:meta. Default "invsync:bloom:".
	KeyPrefix string `mapstructure:"key_prefix"`
}

// BloomKey is the Redis key of table t's Bloom bitmap.
func (c *Config) BloomKey(t Table) string { return c.Bloom.KeyPrefix + t.TableName() }

// Snapshot tunes the full load that `invsync snapshot` runs, and `run` when it finds no
// checkpoint.
type Snapshot struct {
	// ChunkSize is the number of rows per keyset page (one SELECT each). Default 1000.
	ChunkSize int `mapstructure:"chunk_size"`
	// RowsPerSecond caps the read rate to spare the primary; 0 means no cap. Default 0.
	RowsPerSecond int `mapstructure:"rows_per_second"`
	// ProgressInterval is how often progress is logged (rows done, rows/s, ETA).
	// Default 10s.
	ProgressInterval time.Duration `mapstructure:"progress_interval"`
}

// Reconcile tunes the reconciliation job.
type Reconcile struct {
	// Schedule is a cron expression for the job inside the daemon; empty disables it.
	// Default empty.
	Schedule string `mapstructure:"schedule"`
	// ChunkSize is the number of rows per keyset page. Default 1000.
	ChunkSize int `mapstructure:"chunk_size"`
	// Repair makes the scheduled job repair what it finds (the command repairs only with
	// --repair). Default true.
	Repair bool `mapstructure:"repair"`
	// RecheckFor is how long a difference is re-checked before it is reported, so that a
	// change the daemon has not applied yet is not reported. Default 5s.
	RecheckFor time.Duration `mapstructure:"recheck_for"`
}

// CronWithSeconds reports whether a cron expression has a seconds field (six fields).
func CronWithSeconds(expr string) bool { return len(strings.Fields(expr)) == 6 }

// HTTP is the metrics and health endpoint.
type HTTP struct {
	// Listen is host:port for /metrics, /healthz and /readyz; empty disables it.
	// Default 127.0.0.1:9108.
	Listen string `mapstructure:"listen"`
	// Advertise is host:port at which other hosts reach this instance's HTTP endpoint,
	// recorded in the state schema while it leads (so that `invsync reconcile` run
	// anywhere asks the leader for the Bloom rebuild). Default: the address listened on,
	// with an unspecified host (0.0.0.0, ::, empty) replaced by the machine's hostname.
	Advertise string `mapstructure:"advertise"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `mapstructure:"level" live:"true"`
	// Format is json or console. Default json.
	Format string `mapstructure:"format"`
}

// Default returns the configuration with every default filled in and no tables.
func Default() Config {
	return Config{
		Source: Source{Addr: "127.0.0.1:3306", User: "invsync", Flavor: "mysql", ServerID: 1001,
			TimeZone: "UTC", HeartbeatPeriod: time.Second, ReadTimeout: 10 * time.Second, ConnectTimeout: 5 * time.Second,
			OnPositionLost: "resnapshot"},
		State:        State{Schema: "invsync"},
		Redis:        Redis{Addrs: []string{"127.0.0.1:6379"}, Mode: "standalone", DialTimeout: 2 * time.Second, WriteTimeout: 5 * time.Second},
		Sink:         Sink{Workers: 8, BatchSize: 512, FlushInterval: 2 * time.Millisecond, QueueSize: 16384},
		Checkpoint:   Checkpoint{Interval: time.Second},
		Compensation: Compensation{PollInterval: time.Second, InitialBackoff: 500 * time.Millisecond, MaxBackoff: 5 * time.Minute, MaxAttempts: 20},
		Bloom:        Bloom{FalsePositiveRate: 0.001, NullTTL: 60 * time.Second, TombstoneTTL: 24 * time.Hour, KeyPrefix: "invsync:bloom:"},
		Snapshot:     Snapshot{ChunkSize: 1000, ProgressInterval: 10 * time.Second},
		Reconcile:    Reconcile{ChunkSize: 1000, Repair: true, RecheckFor: 5 * time.Second},
		HTTP:         HTTP{Listen: "127.0.0.1:9108"},
		Log:          Log{Level: "info", Format: "json"},
	}
}

// DefaultKeyPrefix is the key prefix of a table that sets none.
const DefaultKeyPrefix = "inv:"

// ErrInvalid is wrapped by every error that Load and Validate return for a bad config.
var ErrInvalid = errors.New("invalid configuration")

// Load reads the YAML file at path, applies INVSYNC_* environment overrides and
// validates the result. The returned error lists every problem found.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v (fix: pass an existing file with -c)", ErrInvalid, path, err)
	}
	return Parse(data, path)
}

// Parse decodes YAML text (name is used in messages), applies environment overrides
// and validates the result.
func Parse(data []byte, name string) (*Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	v.SetEnvPrefix("INVSYNC")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	setDefaults(v, "", Default())
	if err := v.ReadConfig(strings.NewReader(string(data))); err != nil {
		return nil, fmt.Errorf("%w: %s is not valid YAML: %v (fix: correct the syntax at the line named)", ErrInvalid, name, err)
	}
	cfg := Default()
	decodeHook := viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		mapstructure.StringToTimeDurationHookFunc(),
		mapstructure.StringToSliceHookFunc(","),
	))
	if err := v.UnmarshalExact(&cfg, decodeHook); err != nil {
		return nil, fmt.Errorf("%w: %s: %v (fix: remove or correct the keys named; every key is listed in the README)", ErrInvalid, name, err)
	}
	for i := range cfg.Tables {
		t := &cfg.Tables[i]
		if t.KeyPrefix == "" {
			t.KeyPrefix = DefaultKeyPrefix
		}
		if r := t.Reservations; r != nil {
			if r.HoldTTL == 0 {
				r.HoldTTL = DefaultHoldTTL
			}
			if r.RecordTTL == 0 {
				r.RecordTTL = DefaultRecordTTL
			}
			if r.Settlement.Schema == "" {
				r.Settlement.Schema = t.Schema
			}
		}
	}
	var problems []string
	if cfg.Bloom.ExpectedItems == 0 && (v.InConfig("bloom.expected_items") || os.Getenv("INVSYNC_BLOOM_EXPECTED_ITEMS") != "") {
		problems = append(problems, "bloom.expected_items must be positive (fix: remove it to size each filter from its table's rows, or set the items to size for)")
	}
	for _, p := range []struct {
		key      string
		password *string
		file     string
	}{{"source", &cfg.Source.Password, cfg.Source.PasswordFile}, {"redis", &cfg.Redis.Password, cfg.Redis.PasswordFile}} {
		if p.file == "" {
			continue
		}
		if *p.password != "" {
			problems = append(problems, fmt.Sprintf("%s.password and %s.password_file are both set (fix: keep one)", p.key, p.key))
			continue
		}
		b, err := os.ReadFile(p.file)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s.password_file: %v (fix: a readable file holding the password)", p.key, err))
			continue
		}
		*p.password = strings.TrimRight(string(b), "\r\n")
	}
	if err := cfg.Validate(); err != nil {
		if len(problems) > 0 {
			return nil, fmt.Errorf("%w; %s", err, strings.Join(problems, "; "))
		}
		return nil, err
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, strings.Join(problems, "; "))
	}
	return &cfg, nil
}

// setDefaults registers every leaf of the default config with viper, so that each key
// is known to AutomaticEnv and can be overridden by INVSYNC_<PATH>.
func setDefaults(v *viper.Viper, prefix string, def Config) {
	m := map[string]any{}
	if err := mapstructure.Decode(def, &m); err != nil {
		return
	}
	var walk func(p string, val any)
	walk = func(p string, val any) {
		if sub, ok := val.(map[string]any); ok {
			for k, x := range sub {
				walk(joinKey(p, k), x)
			}
			return
		}
		if p == "tables" {
			return
		}
		v.SetDefault(p, val)
	}
	walk(prefix, m)
}

func joinKey(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

var identRe = regexp.MustCompile(`^[A-Za-z0-9_$]+$`)

var offsetRe = regexp.MustCompile(`^([+-])(\d{1,2}):(\d{2})$`)

// ParseTimeZone accepts an IANA zone name or a fixed offset "+hh:mm".
func ParseTimeZone(s string) (*time.Location, error) {
	if m := offsetRe.FindStringSubmatch(s); m != nil {
		var h, mi int
		fmt.Sscanf(m[2]+" "+m[3], "%d %d", &h, &mi)
		off := h*3600 + mi*60
		if m[1] == "-" {
			off = -off
		}
		return time.FixedZone(s, off), nil
	}
	return time.LoadLocation(s)
}

// Redacted returns a copy with every secret replaced, safe to log or print.
func (c Config) Redacted() Config {
	if c.Source.Password != "" {
		c.Source.Password = "******"
	}
	if c.Redis.Password != "" {
		c.Redis.Password = "******"
	}
	if c.State.DSN != "" {
		c.State.DSN = RedactDSN(c.State.DSN)
	}
	c.Redis.Addrs = append([]string(nil), c.Redis.Addrs...)
	c.Tables = append([]Table(nil), c.Tables...)
	return c
}

// RedactDSN hides the password of a user:password@... DSN.
func RedactDSN(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	if at < 0 {
		return dsn
	}
	cred := dsn[:at]
	if colon := strings.Index(cred, ":"); colon >= 0 {
		return cred[:colon] + ":******" + dsn[at:]
	}
	return dsn
}

// TableName is schema.table of a configured table.
func (t Table) TableName() string { return t.Schema + "." + t.Table }
