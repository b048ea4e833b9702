package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// runCLI runs the binary and returns its exit code and combined output.
func runCLI(t testing.TB, timeout time.Duration, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("invsync %v did not exit within %s; output:\n%s", args, timeout, out.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String()
}

func writeFile(t *testing.T, text string) string {
	p := filepath.Join(t.TempDir(), "c.yaml")
	testenv.Must(t, os.WriteFile(p, []byte(text), 0o600), "write")
	return p
}

// Acceptance 5: bad input gets a clear error naming the cause and the fix.
func TestBadConfigFiles(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"malformed", "source: { addr: [\n", "not valid YAML"},
		{"unknown key", "source: { adr: 1.2.3.4:3306 }\ntables: [{schema: a, table: b}]\n", "adr"},
		{"no tables", "source: { addr: 127.0.0.1:3306 }\n", "tables is empty"},
	}
	for _, c := range cases {
		code, out := runCLI(t, 10*time.Second, nil, "check-config", "-c", writeFile(t, c.yaml))
		if code != 2 || !strings.Contains(out, c.want) || !strings.Contains(out, "fix") {
			t.Errorf("%s: exit %d, output %q; want exit 2 naming %q and a fix", c.name, code, out, c.want)
		}
	}
	code, out := runCLI(t, 10*time.Second, nil, "run", "-c", filepath.Join(t.TempDir(), "missing.yaml"))
	if code != 2 || !strings.Contains(out, "missing.yaml") {
		t.Errorf("missing file: exit %d %q", code, out)
	}
}

func TestMissingTableAndNoPrimaryKey(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	_, err := e.db.Exec("CREATE TABLE nopk (sku INT, stock INT)")
	testenv.Must(t, err, "create nopk")
	cfgPath := e.writeConfig(func(c *config.Config) {
		c.Tables = append(c.Tables,
			config.Table{Schema: e.schema, Table: "nosuch", KeyPrefix: "a:"},
			config.Table{Schema: e.schema, Table: "nopk", KeyPrefix: "b:"})
	})
	pw := []string{"INVSYNC_SOURCE_PASSWORD=" + testenv.AppPassword()}
	code, out := runCLI(t, 30*time.Second, pw, "check-config", "-c", cfgPath)
	if code != 1 || !strings.Contains(out, "nosuch does not exist") || !strings.Contains(out, "nopk has no primary key") || !strings.Contains(out, "ADD PRIMARY KEY") {
		t.Errorf("check-config: exit %d, output:\n%s", code, out)
	}
	// run refuses to start, at once, with the same reasons (no retry loop).
	code, out = runCLI(t, 30*time.Second, pw, "run", "-c", cfgPath)
	if code != 1 || !strings.Contains(out, "nosuch does not exist") || !strings.Contains(out, "nopk has no primary key") {
		t.Errorf("run: exit %d, output:\n%s", code, out)
	}
	// The good config passes every check.
	good := e.writeConfig(nil)
	code, out = runCLI(t, 30*time.Second, pw, "check-config", "-c", good)
	if code != 0 || !strings.Contains(out, "redis: OK") {
		t.Errorf("check-config on a good config: exit %d\n%s", code, out)
	}
}

func TestWrongPasswordIsNamedButNeverPrinted(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL})
	cfgPath := e.writeConfig(nil)
	const secret = "Wr0ng-P4ssw0rd-xyzzy"
	env := []string{"INVSYNC_SOURCE_PASSWORD=" + secret}
	for _, cmd := range []string{"check-config", "run"} {
		code, out := runCLI(t, 30*time.Second, env, cmd, "-c", cfgPath)
		if code != 1 || !strings.Contains(out, "refused the login") || !strings.Contains(out, "source.password") {
			t.Errorf("%s: exit %d, output:\n%s", cmd, code, out)
		}
		if strings.Contains(out, secret) {
			t.Errorf("%s printed the password:\n%s", cmd, out)
		}
	}
}

// Redis down at start: the daemon waits with backoff, /readyz is false, it does not
// exit; once Redis answers, it becomes ready and syncs.
func TestRedisDownAtStart(t *testing.T) {
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	redisAddr := freeAddr(t)
	e.cfg.Redis.Addrs = []string{redisAddr}
	var retries atomic.Int64
	core := zapcore.RegisterHooks(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&bytes.Buffer{}), zap.DebugLevel), func(en zapcore.Entry) error {
		if strings.Contains(en.Message, "cannot reach Redis") {
			retries.Add(1)
		}
		return nil
	})
	r := e.start(zap.New(core))
	time.Sleep(4 * time.Second)
	select {
	case err := <-r.done:
		t.Fatalf("daemon exited while Redis was down: %v", err)
	default:
	}
	code, err := httpGet("http://" + r.d.Addr() + "/readyz")
	if err != nil || code != 503 {
		t.Fatalf("/readyz = %d, %v; want 503 while Redis is down", code, err)
	}
	if code, _ := httpGet("http://" + r.d.Addr() + "/healthz"); code != 200 {
		t.Fatalf("/healthz = %d while waiting", code)
	}
	if n := retries.Load(); n < 2 || n > 5 {
		t.Fatalf("%d Redis retries in 4s; want a few, with backoff", n)
	}
	// Start Redis on that port.
	_, port, _ := strings.Cut(redisAddr, ":")
	dir := t.TempDir()
	srv := exec.Command(redisServer(), "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	testenv.Must(t, srv.Start(), "start redis-server")
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	waitReady(t, r)
	_, err = e.db.Exec("INSERT INTO inventory VALUES (1, 5, 1.00, 'x', 1)")
	testenv.Must(t, err, "insert")
	e.rdb = redisClient(t, redisAddr)
	e.waitEqual(30 * time.Second)
}

func redisServer() string {
	if p := os.Getenv("INVSYNC_TEST_REDIS_SERVER"); p != "" {
		return p
	}
	return "redis-server"
}
