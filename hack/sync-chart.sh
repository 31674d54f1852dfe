#!/usr/bin/env bash
# Copies charts/cluster-relay into addon-manager/chart/ for go:embed (which
# cannot reach outside the Go module). The copy is ignored by git; the chart
# has one source, charts/cluster-relay.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf addon-manager/chart.tmp
mkdir -p addon-manager/chart.tmp
cp -R charts/cluster-relay addon-manager/chart.tmp/
rm -rf addon-manager/chart
mv addon-manager/chart.tmp addon-manager/chart
