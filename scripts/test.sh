#!/usr/bin/env bash
# test.sh: the whole test suite. Installs and starts the project's own MariaDB and Redis
# (scripts/services.sh), then runs every test with the race detector. Exits non-zero
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
echo "== go test -race ./..."
go test -race -count=1 -timeout 20m "$@" ./...
