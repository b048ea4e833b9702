package config

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/robfig/cron/v3"
)

// Validate checks the whole configuration and returns every problem at once.
func (c *Config) Validate() error {
	var p []string
	add := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	c.validateSource(add)
	c.validateRedis(add)
	c.validateTables(add)
	c.validateTuning(add)
	c.validateEndpoints(add)
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d problem(s):\n  - %s", ErrInvalid, len(p), strings.Join(p, "\n  - "))
}

// validateSource checks source.* and state.schema.
func (c *Config) validateSource(add func(format string, args ...any)) {
	if _, _, err := net.SplitHostPort(c.Source.Addr); err != nil {
		add("source.addr %q is not host:port (fix: e.g. 127.0.0.1:3306)", c.Source.Addr)
	}
	if c.Source.User == "" {
		add("source.user is empty (fix: set the replication user)")
	}
	if c.Source.Flavor != "mysql" && c.Source.Flavor != "mariadb" {
		add("source.flavor %q is not mysql or mariadb", c.Source.Flavor)
	}
	if c.Source.ServerID == 0 {
		add("source.server_id is 0 (fix: a number unique among the primary's replicas, e.g. 1001)")
	}
	if _, err := ParseTimeZone(c.Source.TimeZone); err != nil {
		add("source.time_zone %q: %v (fix: an IANA zone such as UTC or Asia/Shanghai, or +hh:mm)", c.Source.TimeZone, err)
	}
	if c.Source.HeartbeatPeriod <= 0 {
		add("source.heartbeat_period must be positive (fix: e.g. 1s)")
	}
	if c.Source.ReadTimeout <= c.Source.HeartbeatPeriod {
		add("source.read_timeout (%s) must exceed source.heartbeat_period (%s)", c.Source.ReadTimeout, c.Source.HeartbeatPeriod)
	}
	if c.Source.OnPositionLost != "resnapshot" && c.Source.OnPositionLost != "fail" {
		add("source.on_position_lost %q is not resnapshot or fail", c.Source.OnPositionLost)
	}
	if c.Source.ConnectTimeout <= 0 {
		add("source.connect_timeout must be positive (fix: e.g. 5s)")
	}
	if !identRe.MatchString(c.State.Schema) {
		add("state.schema %q is not a plain identifier (fix: letters, digits and _ only)", c.State.Schema)
	}
	if c.State.DSN != "" {
		if _, err := mysql.ParseDSN(c.State.DSN); err != nil {
			add("state.dsn %s: %v (fix: a go-sql-driver DSN, e.g. user:password@tcp(host:3306)/)", RedactDSN(c.State.DSN), err)
		}
	}
}

// validateRedis checks redis.* (but its TLS, see validateEndpoints).
func (c *Config) validateRedis(add func(format string, args ...any)) {
	if len(c.Redis.Addrs) == 0 {
		add("redis.addrs is empty (fix: list at least one host:port)")
	}
	for _, a := range c.Redis.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			add("redis.addrs entry %q is not host:port", a)
		}
	}
	switch c.Redis.Mode {
	case "standalone", "cluster":
	case "sentinel":
		if c.Redis.MasterName == "" {
			add("redis.master_name is required with redis.mode sentinel")
		}
	default:
		add("redis.mode %q is not standalone, cluster or sentinel", c.Redis.Mode)
	}
	if c.Redis.DB < 0 || (c.Redis.Mode == "cluster" && c.Redis.DB != 0) {
		add("redis.db %d is not valid for mode %s (fix: 0 for cluster, 0-15 usually)", c.Redis.DB, c.Redis.Mode)
	}
	if c.Redis.DialTimeout <= 0 || c.Redis.WriteTimeout <= 0 {
		add("redis.dial_timeout and redis.write_timeout must be positive")
	}
}

// validateTables checks tables: names, key prefixes, columns.
func (c *Config) validateTables(add func(format string, args ...any)) {
	if len(c.Tables) == 0 {
		add("tables is empty (fix: list at least one table with schema and table)")
	}
	prefixes := map[string]int{}
	names, settlements := map[string]int{}, map[string]int{}
	for i, t := range c.Tables {
		if t.Schema == "" || t.Table == "" {
			add("tables[%d] needs both schema and table", i)
		}
		name := t.Schema + "." + t.Table
		if j, ok := names[name]; ok {
			add("tables[%d] %s is already configured as tables[%d]", i, name, j)
		}
		names[name] = i
		if len(t.KeyPrefix) > 255 {
			add("tables[%d].key_prefix is %d bytes long; at most 255 (fix: a shorter prefix)", i, len(t.KeyPrefix))
		}
		if strings.ContainsAny(t.KeyPrefix, "{}") {
			add("tables[%d].key_prefix %q must not contain braces (they are the hash tag)", i, t.KeyPrefix)
		}
		if j, ok := prefixes[t.KeyPrefix]; ok {
			add("tables[%d].key_prefix %q is also used by tables[%d] (fix: give each table its own key_prefix)", i, t.KeyPrefix, j)
		}
		prefixes[t.KeyPrefix] = i
		for _, col := range t.Columns {
			if col == "" || strings.HasPrefix(col, "_") {
				add("tables[%d].columns entry %q is empty or starts with _ (reserved for _v, _s, _deleted, _null)", i, col)
			}
		}
		if t.Reservations != nil {
			validateReservations(i, t, names, settlements, add)
		}
	}
}

// validateReservations checks tables[i].reservations.
func validateReservations(i int, t Table, names, settlements map[string]int, add func(format string, args ...any)) {
	r := t.Reservations
	if r.StockColumn == "" {
		add("tables[%d].reservations.stock_column is required (fix: the column of the committed stock, e.g. stock)", i)
	} else if len(t.Columns) > 0 && !slices.ContainsFunc(t.Columns, func(c string) bool { return strings.EqualFold(c, r.StockColumn) }) {
		add("tables[%d].reservations.stock_column %q is not among the mirrored columns (fix: add it to columns)", i, r.StockColumn)
	}
	if r.PerUserLimit < 0 {
		add("tables[%d].reservations.per_user_limit must not be negative (0: no limit)", i)
	}
	if r.HoldTTL < time.Second || r.RecordTTL < 2*r.HoldTTL {
		add("tables[%d].reservations: hold_ttl must be at least 1s and record_ttl at least twice hold_ttl", i)
	}
	st := r.Settlement
	if st.Table == "" || st.OrderColumn == "" || st.QuantityColumn == "" {
		add("tables[%d].reservations.settlement needs table, order_column and quantity_column (fix: the table the application inserts a row into when it confirms an order)", i)
	}
	if j, ok := names[st.Schema+"."+st.Table]; ok {
		add("tables[%d].reservations.settlement %s.%s is mirrored as tables[%d]; a settlement table is read, not mirrored", i, st.Schema, st.Table, j)
	}
	if j, ok := settlements[st.Schema+"."+st.Table]; ok {
		add("tables[%d].reservations.settlement %s.%s is also the settlement table of tables[%d] (fix: one settlement table per table with reservations)", i, st.Schema, st.Table, j)
	}
	settlements[st.Schema+"."+st.Table] = i
}

// validateTuning checks sink, checkpoint, compensation, bloom, snapshot and reconcile sizes.
func (c *Config) validateTuning(add func(format string, args ...any)) {
	if c.Sink.Workers < 1 || c.Sink.Workers > 1024 {
		add("sink.workers %d must be between 1 and 1024", c.Sink.Workers)
	}
	if c.Sink.BatchSize < 1 {
		add("sink.batch_size must be at least 1")
	}
	if c.Sink.FlushInterval < 0 {
		add("sink.flush_interval must not be negative")
	}
	if c.Sink.QueueSize < 1 {
		add("sink.queue_size must be at least 1")
	}
	if c.Checkpoint.Interval <= 0 {
		add("checkpoint.interval must be positive (fix: e.g. 1s)")
	}
	if c.Compensation.PollInterval <= 0 || c.Compensation.InitialBackoff <= 0 || c.Compensation.MaxBackoff < c.Compensation.InitialBackoff {
		add("compensation: poll_interval and initial_backoff must be positive and max_backoff at least initial_backoff")
	}
	if c.Compensation.MaxAttempts < 1 {
		add("compensation.max_attempts must be at least 1")
	}
	if !(c.Bloom.FalsePositiveRate > 0 && c.Bloom.FalsePositiveRate < 1) {
		add("bloom.false_positive_rate %v must be between 0 and 1 exclusive (fix: e.g. 0.001)", c.Bloom.FalsePositiveRate)
	}
	if c.Bloom.NullTTL < time.Millisecond || c.Bloom.TombstoneTTL < time.Millisecond {
		add("bloom.null_ttl and bloom.tombstone_ttl must be at least 1ms")
	}
	if c.Bloom.KeyPrefix == "" || strings.ContainsAny(c.Bloom.KeyPrefix, "{}") {
		add("bloom.key_prefix %q must be set and must not contain braces (fix: e.g. invsync:bloom:)", c.Bloom.KeyPrefix)
	}
	if c.Snapshot.ChunkSize < 1 || c.Snapshot.RowsPerSecond < 0 || c.Snapshot.ProgressInterval <= 0 {
		add("snapshot: chunk_size must be at least 1, rows_per_second at least 0, progress_interval positive")
	}
	if c.Reconcile.ChunkSize < 1 {
		add("reconcile.chunk_size must be at least 1")
	}
}

// validateEndpoints checks TLS, the reconcile schedule, http and log.
func (c *Config) validateEndpoints(add func(format string, args ...any)) {
	if _, err := c.Source.TLS.Config(HostOf(c.Source.Addr)); err != nil {
		add("source.tls: %v", err)
	}
	if len(c.Redis.Addrs) > 0 {
		if _, err := c.Redis.TLS.Config(HostOf(c.Redis.Addrs[0])); err != nil {
			add("redis.tls: %v", err)
		}
	}
	if c.Reconcile.RecheckFor < 0 {
		add("reconcile.recheck_for must not be negative")
	}
	if c.Reconcile.Schedule != "" {
		fields := cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor
		if CronWithSeconds(c.Reconcile.Schedule) {
			fields |= cron.Second
		}
		if _, err := cron.NewParser(fields).Parse(c.Reconcile.Schedule); err != nil {
			add("reconcile.schedule %q is not a cron expression: %v (fix: e.g. \"0 3 * * *\" for 03:00 every night; six fields add seconds)", c.Reconcile.Schedule, err)
		}
	}
	if c.HTTP.Advertise != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Advertise); err != nil {
			add("http.advertise %q is not host:port (fix: e.g. invsync-1.internal:9108, or empty for the hostname and the port listened on)", c.HTTP.Advertise)
		}
	}
	if c.HTTP.Listen != "" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			add("http.listen %q is not host:port (fix: e.g. 127.0.0.1:9108, or empty to disable)", c.HTTP.Listen)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level %q is not debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "console" {
		add("log.format %q is not json or console", c.Log.Format)
	}
}
