#!/usr/bin/env bash
# bench.sh: invsync's benchmarks against the project's own MariaDB and Redis:
#   BenchmarkW1CatchUp        catch-up of 1.1M row events against go-mysql's bare read, peak RSS
#   BenchmarkW2DistinctKeys   catch-up and snapshot of 1,000,000 new keys against the Redis
#                             floor (pipelined HSETs by one client), CPU per row
#   BenchmarkW3LiveLag        commit-to-visible lag of paced single-row UPDATEs at 2,000,
#                             10,000 and 50,000 rows/s (or what MariaDB sustains): p50/p99/max
#   BenchmarkSnapshot1M       `invsync snapshot` of 1,000,000 rows: rows/s
#   BenchmarkBigTransaction   one 500,000-row transaction streamed: peak RSS
#   BenchmarkReconcile1M      `invsync reconcile` of 1,000,000 rows: rows/s
#   BenchmarkReservations     client.Reserve while the daemon settles: reservations/s with
#                             2,000 buyers, p50/p99 at 8,900/s (from each call's start and
#                             from its schedule), a trivial EVALSHA per call's rate
# Run one with: scripts/bench.sh -bench W1   (the pattern is go test's -bench)
# It ends with a summary: each result line, with its floor, ratio and target; the whole
# output is kept in .run/bench.log.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$here/scripts/services.sh" start
eval "$("$here/scripts/services.sh" env)"
export INVSYNC_W3_CSV="$here/.run/w3-latency.csv"
stamp=$(mktemp)
log="$here/.run/bench.log"
set +e
go test -run '^$' -bench . -benchtime 1x -timeout 60m -v ./e2e "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The summary: each benchmark's result line (medians, floors and ratios, peak RSS,
# latencies per rate).
echo
echo "== summary ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m); full log: $log)"
grep -E '(W1|W2) \(median|W3 at [0-9]+ rows/s|one transaction of|snapshot of 1,000,000|reconcile of 1,000,000|closed loop, |open loop at ' "$log" |
  sed -E 's/^ *[a-z_0-9]+\.go:[0-9]+: /  /' || true
if [ "$status" -ne 0 ]; then
  echo "bench: go test failed (exit $status)" >&2
  rm -f "$stamp"
  exit "$status"
fi
if [ "$INVSYNC_W3_CSV" -nt "$stamp" ]; then
  # W3 ran: its latency histogram, one panel per rate.
  go run -tags w3hist ./internal/tools/w3hist -in "$INVSYNC_W3_CSV" -out "$here/.run/w3-latency.png" \
    -title "$(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)"
  echo "W3 latency histogram: $here/.run/w3-latency.png"
fi
rm -f "$stamp"
