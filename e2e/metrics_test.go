package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/internal/testenv"
)

// The metrics the core mirror promises are served, and the replication lag stays right
// (near 0) while the source is idle, thanks to the server's heartbeat.
func TestMetricsAndIdleLag(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	r := e.start(nil)
	waitReady(t, r)
	_, err := e.db.Exec("INSERT INTO inventory VALUES (1, 5, 1.00, 'a', 1), (2, 6, NULL, 'b', 1)")
	testenv.Must(t, err, "insert")
	e.waitEqual(30 * time.Second) // else the delete may supersede the insert before it is written
	_, err = e.db.Exec("DELETE FROM inventory WHERE sku = 2")
	testenv.Must(t, err, "delete")
	e.waitEqual(30 * time.Second)

	// Idle for several heartbeat periods.
	time.Sleep(4 * time.Second)
	body, err := httpBody("http://" + r.d.Addr() + "/metrics")
	testenv.Must(t, err, "metrics")
	for _, name := range []string{
		`invsync_rows_applied_total{op="upsert",table="` + e.schema + `.inventory"} 2`,
		`invsync_rows_applied_total{op="delete",table="` + e.schema + `.inventory"} 1`,
		`invsync_rows_skipped_total{op="upsert"`,
		"invsync_apply_duration_seconds_bucket",
		"invsync_replication_lag_seconds",
		"invsync_queue_depth 0",
		`invsync_redis_errors_total`,
		"invsync_checkpoint_age_seconds",
		"invsync_ready 1",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	if lag := metricSum(body, "invsync_replication_lag_seconds"); lag > 1.5 {
		t.Errorf("replication lag %.2fs while idle and caught up; want about 0", lag)
	}
	if age := metricSum(body, "invsync_checkpoint_age_seconds"); age > 2 {
		t.Errorf("checkpoint age %.2fs while caught up; want below 2s", age)
	}
	if code, _ := httpGet("http://" + r.d.Addr() + "/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if strings.Contains(body, testenv.AppPassword()) {
		t.Error("/metrics contains the password")
	}
}
