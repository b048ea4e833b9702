#!/usr/bin/env bash
# bench.sh: the W1 catch-up benchmark (issue 2): invsync against go-mysql's bare
# replication read of the same binlog range, in one run, with invsync's peak RSS.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$here/scripts/services.sh" start
eval "$("$here/scripts/services.sh" env)"
go test -run '^$' -bench 'BenchmarkW1CatchUp' -benchtime 1x -timeout 30m -v ./e2e "$@"
