package main

import "embed"

// chartFS holds charts/cluster-relay, copied in by `make addon-manager-chart`
// (go:embed cannot reach outside the module). all: keeps _helpers.tpl, which
// a plain pattern would drop for its leading underscore.
//
//go:embed all:chart/cluster-relay
var chartFS embed.FS

const chartDir = "chart/cluster-relay"
