#!/usr/bin/env bash
# services.sh: install (when missing) and run invsync's own MariaDB and Redis for the
# demo and the tests, on loopback ports of their own and with data directories of their
# own, so that a server already running on this machine is never touched.
#
#   scripts/services.sh start   install if needed, start both, create users; idempotent
#   scripts/services.sh stop    stop both
#   scripts/services.sh env     print the environment the tests read
#
# Ports and directories can be changed with INVSYNC_MYSQL_PORT, INVSYNC_REDIS_PORT and
# INVSYNC_RUN_DIR. MariaDB runs with the binlog on in ROW format, FULL row image, FULL row
# metadata and a small max_binlog_size, so that rotation happens throughout the tests.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
MYSQL_PORT=${INVSYNC_MYSQL_PORT:-23306}
REDIS_PORT=${INVSYNC_REDIS_PORT:-26379}
RUN_DIR=${INVSYNC_RUN_DIR:-$here/.run}
MYSQL_DIR=$RUN_DIR/mariadb
REDIS_DIR=$RUN_DIR/redis
TLS_DIR=$RUN_DIR/tls
SOCK=$MYSQL_DIR/mysqld.sock
# The admin account the tests and the demo use to create schemas and apply workloads.
ADMIN_USER=invsync_admin
ADMIN_PASSWORD=admin-secret
# The account invsync itself uses, with only the grants it needs (see README).
APP_USER=invsync
APP_PASSWORD=invsync-secret

log() { printf 'services: %s\n' "$*" >&2; }

need_install() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

mysqld_bin() { command -v mariadbd 2>/dev/null || echo /usr/sbin/mariadbd; }

mysql_admin() { mariadb --protocol=socket -S "$SOCK" -uroot "$@"; }

mysql_up() { mariadb --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -u"$ADMIN_USER" -p"$ADMIN_PASSWORD" -e 'SELECT 1' >/dev/null 2>&1; }

# ensure_certs writes a test CA and server/client certificates (for TLS tests) once.
ensure_certs() {
  [ -f "$TLS_DIR/ca.pem" ] && return
  log "writing test TLS certificates to $TLS_DIR"
  (cd "$here" && go run ./internal/gencerts "$TLS_DIR")
}

mysql_has_tls() { mariadb --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -u"$ADMIN_USER" -p"$ADMIN_PASSWORD" -N -B -e "SELECT @@have_ssl" 2>/dev/null | grep -q YES; }

start_mysql() {
  ensure_certs
  if mysql_up && ! mysql_has_tls; then
    log "MariaDB on 127.0.0.1:$MYSQL_PORT runs without TLS (started by an older script): restarting it"
    kill "$(cat "$MYSQL_DIR/mysqld.pid")" 2>/dev/null || true
    for _ in $(seq 1 60); do [ -f "$MYSQL_DIR/mysqld.pid" ] || break; sleep 0.5; done
  fi
  if mysql_up; then log "MariaDB already up on 127.0.0.1:$MYSQL_PORT"; return; fi
  mkdir -p "$MYSQL_DIR"
  local user_opt=()
  [ "$(id -u)" = 0 ] && user_opt=(--user=root)
  if [ ! -d "$MYSQL_DIR/data/mysql" ]; then
    log "initialising MariaDB data directory $MYSQL_DIR/data"
    mariadb-install-db --no-defaults "${user_opt[@]}" --datadir="$MYSQL_DIR/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$MYSQL_DIR/install.log" 2>&1 \
      || { cat "$MYSQL_DIR/install.log" >&2; exit 1; }
  fi
  log "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
  "$(mysqld_bin)" --no-defaults "${user_opt[@]}" \
    --datadir="$MYSQL_DIR/data" --socket="$SOCK" --pid-file="$MYSQL_DIR/mysqld.pid" \
    --bind-address=127.0.0.1 --port="$MYSQL_PORT" \
    --log-error="$MYSQL_DIR/error.log" \
    --server-id=1 --log-bin="$MYSQL_DIR/data/binlog" --binlog-format=ROW \
    --binlog-row-image=FULL --binlog-row-metadata=FULL --max-binlog-size=1048576 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 \
    --max-connections=500 --skip-name-resolve \
    --ssl-ca="$TLS_DIR/ca.pem" --ssl-cert="$TLS_DIR/server.pem" --ssl-key="$TLS_DIR/server-key.pem" \
    >/dev/null 2>&1 &
  for _ in $(seq 1 120); do
    if mysql_admin -e 'SELECT 1' >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  mysql_admin -e 'SELECT 1' >/dev/null 2>&1 || { log "MariaDB did not start; see $MYSQL_DIR/error.log"; tail -20 "$MYSQL_DIR/error.log" >&2; exit 1; }
  mysql_admin <<SQL
CREATE USER IF NOT EXISTS '$ADMIN_USER'@'127.0.0.1' IDENTIFIED BY '$ADMIN_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO '$ADMIN_USER'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS '$APP_USER'@'127.0.0.1' IDENTIFIED BY '$APP_PASSWORD';
GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR, SLAVE MONITOR ON *.* TO '$APP_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`invsync%\`.* TO '$APP_USER'@'127.0.0.1';
CREATE USER IF NOT EXISTS '${APP_USER}_tls'@'127.0.0.1' IDENTIFIED BY '$APP_PASSWORD' REQUIRE SSL;
GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR, SLAVE MONITOR ON *.* TO '${APP_USER}_tls'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`invsync%\`.* TO '${APP_USER}_tls'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
  log "MariaDB up on 127.0.0.1:$MYSQL_PORT"
}

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }

start_redis() {
  if redis_up; then log "Redis already up on 127.0.0.1:$REDIS_PORT"; return; fi
  mkdir -p "$REDIS_DIR"
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --databases 64
  for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
  redis_up || { log "Redis did not start; see $REDIS_DIR/redis.log"; exit 1; }
}

stop_all() {
  if [ -f "$MYSQL_DIR/mysqld.pid" ]; then
    kill "$(cat "$MYSQL_DIR/mysqld.pid")" 2>/dev/null || true
    for _ in $(seq 1 60); do [ -f "$MYSQL_DIR/mysqld.pid" ] || break; sleep 0.5; done
  fi
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  log "stopped"
}

print_env() {
  cat <<ENV
export INVSYNC_TEST_MYSQL_ADDR=127.0.0.1:$MYSQL_PORT
export INVSYNC_TEST_MYSQL_ADMIN_USER=$ADMIN_USER
export INVSYNC_TEST_MYSQL_ADMIN_PASSWORD=$ADMIN_PASSWORD
export INVSYNC_TEST_MYSQL_USER=$APP_USER
export INVSYNC_TEST_MYSQL_PASSWORD=$APP_PASSWORD
export INVSYNC_TEST_REDIS_ADDR=127.0.0.1:$REDIS_PORT
export INVSYNC_TEST_REDIS_SERVER=$(command -v redis-server || echo redis-server)
export INVSYNC_TEST_TLS_DIR=$TLS_DIR
ENV
}

case "${1:-start}" in
  start) need_install; start_mysql; start_redis ;;
  stop) stop_all ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
