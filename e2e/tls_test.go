package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/invsync/invsync/config"
	"github.com/invsync/invsync/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// tlsDir is where scripts/services.sh wrote the test certificates.
func tlsDir(t *testing.T) string {
	d := os.Getenv("INVSYNC_TEST_TLS_DIR")
	if d == "" {
		d = "../.run/tls"
	}
	if _, err := os.Stat(filepath.Join(d, "ca.pem")); err != nil {
		t.Fatalf("no test certificates in %s (fix: scripts/services.sh start)", d)
	}
	return d
}

// TLS to MariaDB (a user that requires it) and to Redis (a redis-server that only speaks
// TLS and requires a password), with both passwords read from files: the mirror works.
func TestTLSAndPasswordFiles(t *testing.T) {
	dir := tlsDir(t)
	e := newEnv(t, tableSpec{name: "inventory", ddl: inventoryDDL, version: "version"})
	addr := freeAddr(t)
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(redisServer(), "--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--tls-cert-file", filepath.Join(dir, "server.pem"), "--tls-key-file", filepath.Join(dir, "server-key.pem"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"), "--tls-auth-clients", "optional", "--requirepass", "redis-secret")
	testenv.Must(t, cmd.Start(), "start redis-server with TLS")
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	secrets := t.TempDir()
	srcPW, redisPW := filepath.Join(secrets, "source"), filepath.Join(secrets, "redis")
	testenv.Must(t, os.WriteFile(srcPW, []byte(testenv.AppPassword()+"\n"), 0o600), "write")
	testenv.Must(t, os.WriteFile(redisPW, []byte("redis-secret\n"), 0o600), "write")
	e.cfg.Source.User = testenv.AppUser() + "_tls" // REQUIRE SSL
	e.cfg.Source.Password, e.cfg.Source.PasswordFile = "", srcPW
	e.cfg.Source.TLS = config.TLS{Enabled: true, CAFile: filepath.Join(dir, "ca.pem")}
	e.cfg.Redis.Addrs = []string{addr}
	e.cfg.Redis.DB = 0
	e.cfg.Redis.PasswordFile = redisPW
	e.cfg.Redis.TLS = config.TLS{Enabled: true, CAFile: filepath.Join(dir, "ca.pem")}
	// Load the config as the binary would: the password files are read there.
	path := filepath.Join(t.TempDir(), "invsync.yaml")
	yaml := renderConfig(e.cfg)
	yaml = strings.Replace(yaml, "source: {", "source: { password_file: \""+srcPW+"\", tls: { enabled: true, ca_file: \""+filepath.Join(dir, "ca.pem")+"\" },", 1)
	yaml = strings.Replace(yaml, "redis: {", "redis: { password_file: \""+redisPW+"\", tls: { enabled: true, ca_file: \""+filepath.Join(dir, "ca.pem")+"\" },", 1)
	testenv.Must(t, os.WriteFile(path, []byte(yaml), 0o600), "write config")
	os.Unsetenv("INVSYNC_SOURCE_PASSWORD")
	cfg, err := config.Load(path)
	testenv.Must(t, err, "load")
	if cfg.Source.Password != testenv.AppPassword() || cfg.Redis.Password != "redis-secret" {
		t.Fatal("the password files were not read")
	}
	tc, err := cfg.Redis.TLS.Config("127.0.0.1")
	testenv.Must(t, err, "tls")
	rdb := redis.NewClient(&redis.Options{Addr: addr, Password: "redis-secret", TLSConfig: tc})
	t.Cleanup(func() { rdb.Close() })
	waitFor(t, "redis-server answers over TLS", 10*time.Second, func() bool { return rdb.Ping(context.Background()).Err() == nil })
	e.rdb = rdb
	e.cfg = cfg

	// The binary's check-config passes; without TLS the source refuses the user.
	if code, out := runCLI(t, 30*time.Second, nil, "check-config", "-c", path); code != 0 {
		t.Fatalf("check-config over TLS: exit %d\n%s", code, out)
	}
	noTLS := strings.Replace(yaml, "tls: { enabled: true", "tls: { enabled: false", 1)
	p2 := filepath.Join(t.TempDir(), "notls.yaml")
	testenv.Must(t, os.WriteFile(p2, []byte(noTLS), 0o600), "write")
	if code, out := runCLI(t, 30*time.Second, nil, "check-config", "-c", p2); code == 0 || strings.Contains(out, testenv.AppPassword()) {
		t.Fatalf("check-config without TLS for a user that requires it: exit %d\n%s", code, out)
	}

	loadRows(t, e, 500)
	r := e.start(nil)
	waitReady(t, r)
	_, err = e.db.Exec("UPDATE inventory SET stock = stock + 1, version = version + 1 WHERE sku < 100")
	testenv.Must(t, err, "update")
	e.waitEqual(30 * time.Second)
	var cipher string
	admin := testenv.DB(t, "")
	testenv.Must(t, admin.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?", testenv.AppUser()+"_tls").Scan(&cipher), "processlist")
	if cipher == "0" {
		t.Fatal("no connection of the TLS user")
	}
}
