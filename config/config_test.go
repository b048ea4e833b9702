package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const minimal = `
source: { addr: 127.0.0.1:3306, user: invsync, password: s3cret }
tables:
  - { schema: shop, table: inventory }
`

func TestDefaultsApply(t *testing.T) {
	c, err := Parse([]byte(minimal), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Sink.Workers != 8 || c.Sink.BatchSize != 512 || c.Sink.FlushInterval != 2*time.Millisecond ||
		c.Checkpoint.Interval != time.Second || c.Bloom.TombstoneTTL != 24*time.Hour || c.HTTP.Listen != "127.0.0.1:9108" ||
		c.Tables[0].KeyPrefix != "inv:" || c.Redis.Mode != "standalone" || c.State.Schema != "invsync" {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	t.Setenv("INVSYNC_SOURCE_PASSWORD", "from-env")
	t.Setenv("INVSYNC_SINK_WORKERS", "3")
	t.Setenv("INVSYNC_REDIS_PASSWORD", "redis-env")
	c, err := Parse([]byte(minimal), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Source.Password != "from-env" || c.Sink.Workers != 3 || c.Redis.Password != "redis-env" {
		t.Fatalf("env not applied: %+v %+v", c.Source, c.Sink)
	}
	r := c.Redacted()
	if r.Source.Password == "from-env" || r.Redis.Password == "redis-env" {
		t.Fatal("Redacted kept a secret")
	}
}

func TestMalformedYAML(t *testing.T) {
	_, err := Parse([]byte("source: { addr: [1, 2\ntables: x"), "bad.yaml")
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not valid YAML") || !strings.Contains(err.Error(), "bad.yaml") {
		t.Fatalf("got %v", err)
	}
}

func TestUnknownKey(t *testing.T) {
	_, err := Parse([]byte(minimal+"sink: { wrokers: 4 }\n"), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "wrokers") {
		t.Fatalf("unknown key not named: %v", err)
	}
}

func TestValidateListsEveryProblem(t *testing.T) {
	y := `
source: { addr: nohost, user: "", password: hunter2, flavor: postgres, server_id: 0, time_zone: Mars/Base }
redis: { mode: ring, addrs: [] }
sink: { workers: 0, batch_size: 0 }
bloom: { false_positive_rate: 2 }
log: { level: loud }
state: { dsn: "inv:hunter3@tcp(db:3306" }
tables:
  - { schema: shop, table: a, key_prefix: "x:" }
  - { schema: shop, table: b, key_prefix: "x:" }
`
	_, err := Parse([]byte(y), "t.yaml")
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	msg := err.Error()
	for _, want := range []string{"source.addr", "source.user", "source.flavor", "source.server_id", "source.time_zone",
		"redis.addrs", "redis.mode", "sink.workers", "sink.batch_size", "bloom.false_positive_rate", "log.level", "key_prefix \"x:\" is also used", "state.dsn"} {
		if !strings.Contains(msg, want) {
			t.Errorf("problem %q not listed in:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "hunter2") || strings.Contains(msg, "hunter3") {
		t.Error("the password appears in the error")
	}
}

func TestNoTables(t *testing.T) {
	_, err := Parse([]byte("source: { addr: 127.0.0.1:3306 }\n"), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "tables is empty") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("source: {addr: 1}\n"))
	f.Add([]byte("tables: [{schema: a, table: b, columns: [x, _y]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml")
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config that Validate refuses: %v", verr)
			}
		}
	})
}

func TestReservations(t *testing.T) {
	good := `
source: { addr: 127.0.0.1:3306, user: invsync }
tables:
  - schema: shop
    table: inventory
    reservations:
      stock_column: stock
      per_user_limit: 2
      settlement: { table: orders, order_column: order_id, quantity_column: qty }
`
	c, err := Parse([]byte(good), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Tables[0].Reservations
	if r == nil || r.HoldTTL != DefaultHoldTTL || r.RecordTTL != DefaultRecordTTL || r.Settlement.Schema != "shop" || r.PerUserLimit != 2 {
		t.Fatalf("reservations: %+v", r)
	}
	if c.Tables[0].Reservations.Settlement.Table != "orders" {
		t.Fatal("settlement table")
	}
	bad := `
source: { addr: 127.0.0.1:3306, user: invsync }
tables:
  - schema: shop
    table: inventory
    columns: [sku, name]
    reservations:
      stock_column: stock
      per_user_limit: -1
      hold_ttl: 10ms
      settlement: { table: inventory }
`
	_, err = Parse([]byte(bad), "t.yaml")
	for _, want := range []string{"not among the mirrored columns", "per_user_limit", "hold_ttl", "needs table, order_column and quantity_column", "is mirrored as tables[0]"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}

// bloom.expected_items unset sizes each filter from its table's rows (0); set, it is
// kept; set to 0 (in the file or the environment), it is refused with the fix.
func TestBloomExpectedItems(t *testing.T) {
	c, err := Parse([]byte(minimal), "t.yaml")
	if err != nil || c.Bloom.ExpectedItems != 0 {
		t.Fatalf("unset: got %v, %v; want 0 (sized from the rows)", c, err)
	}
	c, err = Parse([]byte(minimal+"bloom: { expected_items: 5000 }\n"), "t.yaml")
	if err != nil || c.Bloom.ExpectedItems != 5000 {
		t.Fatalf("set: got %v, %v", c, err)
	}
	_, err = Parse([]byte(minimal+"bloom: { expected_items: 0 }\n"), "t.yaml")
	if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "bloom.expected_items must be positive") || !strings.Contains(err.Error(), "fix:") {
		t.Fatalf("0 in the file: got %v", err)
	}
	t.Setenv("INVSYNC_BLOOM_EXPECTED_ITEMS", "0")
	if _, err = Parse([]byte(minimal), "t.yaml"); err == nil || !strings.Contains(err.Error(), "bloom.expected_items must be positive") {
		t.Fatalf("0 in the environment: got %v", err)
	}
}
