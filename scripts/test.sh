#!/usr/bin/env bash
# test.sh: the whole test suite. Installs and starts the project's own MariaDB and Redis
# (scripts/services.sh), then gofmt, go vet, every package's tests with the race
# detector, and the e2e tests: those that exercise the daemon's concurrency in-process
# with the race detector, the others without it (under -race the whole e2e package takes
# 10-15 minutes on a 2-core machine; INVSYNC_TEST_RACE_ALL=1 runs it all with -race).
# Arguments are passed to go test (then every package runs with -race). Exits non-zero
# when any test fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$here/scripts/services.sh" start
eval "$("$here/scripts/services.sh" env)"
echo "== gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted"; exit 1; fi
go vet ./...
if [ $# -gt 0 ] || [ "${INVSYNC_TEST_RACE_ALL:-}" = 1 ]; then
  echo "== go test -race ./..."
  go test -race -count=1 -timeout 30m "$@" ./...
  exit 0
fi
# The e2e tests whose daemon runs in-process with concurrency worth the race detector.
race_e2e='^(TestReadPathRaces|TestConcurrentMissesLoadOnce|TestLeaderLoopFailureStandsByAndRecovers|TestSnapshotOnFirstStartWithWritersRunning|TestLiveReloadTakesEffect|TestSavepointsInsideTransactions|TestRedisDataLossHealsWhileStreaming|TestWrongTypeKeyIsParkedAndRetried|TestReservationCommands|TestAvailableDoesNotMoveAtSettlement)$'
echo "== go test -race (every package but e2e)"
go test -race -count=1 -timeout 20m $(go list ./... | grep -v /e2e)
echo "== go test -race ./e2e (the in-process concurrency tests)"
go test -race -count=1 -timeout 20m -run "$race_e2e" ./e2e
echo "== go test ./e2e (the others, without the race detector)"
go test -count=1 -timeout 30m -skip "$race_e2e" ./e2e
