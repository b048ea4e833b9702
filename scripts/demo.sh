#!/usr/bin/env bash
# demo.sh: the main job, end to end on this machine. Starts the project's own MariaDB and
# Redis (installing them when missing), loads the sample inventory schema, runs invsync,
# applies a small flash-sale workload (inserts, stock deductions with version bumps,
# NULLs, deletes), and prints whether Redis equals MySQL row by row.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$here/scripts/services.sh" start
eval "$("$here/scripts/services.sh" env)"
SQL=(mariadb --protocol=tcp -h127.0.0.1 -P"${INVSYNC_TEST_MYSQL_ADDR##*:}" -u"$INVSYNC_TEST_MYSQL_ADMIN_USER" -p"$INVSYNC_TEST_MYSQL_ADMIN_PASSWORD" --default-character-set=utf8mb4)
RCLI=(redis-cli -h 127.0.0.1 -p "${INVSYNC_TEST_REDIS_ADDR##*:}")

echo "== building invsync"
go build -o "$here/.run/invsync" ./cmd/invsync

echo "== loading testdata/inventory.sql (fresh schema shop_demo, fresh state, empty demo keys)"
"${SQL[@]}" < testdata/inventory.sql
"${SQL[@]}" -e "DROP DATABASE IF EXISTS invsync_demo"
"${RCLI[@]}" --scan --pattern 'demo:inv:*' | xargs -r -n 500 "${RCLI[@]}" unlink >/dev/null
"${RCLI[@]}" unlink invsync:bloom:shop_demo.inventory invsync:bloom:shop_demo.inventory:meta >/dev/null

echo "== checking the config and the connections"
export INVSYNC_SOURCE_PASSWORD="$INVSYNC_TEST_MYSQL_PASSWORD"
"$here/.run/invsync" check-config -c testdata/demo.yaml

echo "== starting invsync run (log: .run/demo.log)"
"$here/.run/invsync" run -c testdata/demo.yaml > "$here/.run/demo.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:19108/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf http://127.0.0.1:19108/readyz >/dev/null || { echo "invsync did not become ready"; cat "$here/.run/demo.log"; exit 1; }
echo "invsync is ready"

echo "== workload: 1,000 SKUs inserted, then 300 transactions of stock deductions, NULLs and deletes"
{
  echo "INSERT INTO shop_demo.inventory (sku, name, stock, price) VALUES"
  for i in $(seq 1 1000); do
    sep=","; [ "$i" = 1000 ] && sep=";"
    echo "($i, 'item $i 📦', $((RANDOM % 500 + 100)), $((RANDOM % 100)).$((RANDOM % 90 + 10)))$sep"
  done
  for i in $(seq 1 300); do
    a=$((RANDOM % 1000 + 1)); b=$((RANDOM % 1000 + 1)); c=$((RANDOM % 1000 + 1))
    echo "BEGIN;"
    echo "UPDATE shop_demo.inventory SET stock = stock - 1, version = version + 1 WHERE sku = $a AND stock > 0;"
    echo "UPDATE shop_demo.inventory SET stock = stock - 2, version = version + 1 WHERE sku = $b AND stock > 1;"
    [ $((i % 10)) = 0 ] && echo "UPDATE shop_demo.inventory SET price = NULL, version = version + 1 WHERE sku = $c;"
    [ $((i % 25)) = 0 ] && echo "DELETE FROM shop_demo.inventory WHERE sku = $c;"
    echo "COMMIT;"
  done
} | "${SQL[@]}"

echo "== waiting for invsync to catch up, then comparing every row"
compare() {
  "${SQL[@]}" -N -B -e "SELECT sku, name, stock, IFNULL(price,'<null>'), version FROM shop_demo.inventory ORDER BY sku" > "$here/.run/demo.mysql"
  cut -f1 "$here/.run/demo.mysql" | sed 's/.*/HMGET demo:inv:{&} sku name stock price _v/' | "${RCLI[@]}" \
    | paste - - - - - | sed 's/\t\t/\t<null>\t/g; s/\t$/\t<null>/' > "$here/.run/demo.redis"
  # Deleted SKUs must be tombstones.
  deleted=$(comm -13 <(cut -f1 "$here/.run/demo.mysql" | sort) <(seq 1 1000 | sort) | sed 's/.*/HGET demo:inv:{&} _deleted/' | "${RCLI[@]}" | grep -vc '^1$' || true)
  diff -q "$here/.run/demo.mysql" "$here/.run/demo.redis" >/dev/null && [ "$deleted" = 0 ]
}
ok=0
for _ in $(seq 1 50); do
  if compare; then ok=1; break; fi
  sleep 0.2
done
rows=$(wc -l < "$here/.run/demo.mysql")
curl -s http://127.0.0.1:19108/metrics | grep -E '^invsync_(rows_applied_total|rows_skipped_total|replication_lag_seconds|checkpoint_writes_total)' || true
if [ "$ok" = 1 ]; then
  echo "OK: Redis equals MySQL: $rows rows identical (sku, name, stock, price, _v), $((1000 - rows)) deleted SKUs are tombstones"
else
  echo "MISMATCH: Redis differs from MySQL; see .run/demo.mysql and .run/demo.redis"
  diff "$here/.run/demo.mysql" "$here/.run/demo.redis" | head -20
fi
echo "== the read path (invsync get: Redis, the Bloom filter, the null cache, then MySQL)"
gone=$(comm -13 <(cut -f1 "$here/.run/demo.mysql" | sort) <(seq 1 1000 | sort) | head -1)
"$here/.run/invsync" get -c testdata/demo.yaml shop_demo.inventory 42 ${gone:+$gone} 5000000 || true
curl -s http://127.0.0.1:19108/metrics | grep -E '^invsync_bloom_(items|bits|estimated_false_positive_rate)' || true
echo "== stopping invsync (SIGTERM: drain, final checkpoint, exit 0)"
kill -TERM $pid
wait $pid && echo "invsync exited 0"
trap - EXIT
[ "$ok" = 1 ]
