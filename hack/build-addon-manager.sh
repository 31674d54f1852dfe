#!/usr/bin/env bash
# Builds addon-manager/ (Go) into $1 (default addon-manager/bin/addon-manager),
# static, with charts/cluster-relay embedded. go:embed cannot reach outside
# the Go module, so the chart is copied into addon-manager/chart/ (ignored
# by git) first; `make addon-manager-chart` does only that step, for go vet
# and go test.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-addon-manager/bin/addon-manager}
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
bash hack/sync-chart.sh
export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local
# The checksum database has no entries for the open-cluster-management.io
# modules; their hashes are pinned in addon-manager/go.sum.
export GONOSUMDB=${GONOSUMDB:-open-cluster-management.io}
cd addon-manager
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" .
