# cluster-relay: everything a fresh machine needs goes through these targets.
#   make demo   the hosted topology from the Helm chart on two local clusters with real nodes
#   make test   formatting, lints (Rust, Go, shell) and every test (unit,
#               loopback, real control planes, clusters with real nodes, real
#               GitHub clients)
#   make bench  side-by-side benchmarks against peers (socat, haproxy, nginx)
#   make image  the agent's OCI image, built without a daemon; prints the archive
#   make addon-manager  the hub's add-on manager (Go, addon-manager/), static
#   make go-check  gofmt, go vet and go test of every Go module (in make test)
#   make ocm    OCM's hub controllers and klusterlet agent (hack/build-ocm.sh)
#   make e2e    the add-on deployed by OCM in hosted mode (tests/e2e_ocm.rs;
#               make test runs it too)
#   make test-oldest  the suites that talk to Kubernetes, against 1.20.2
#   make deny   cargo deny check bans licenses sources (deny.toml; in make test)
#   make fuzz   every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 180) each
#   make fuzz-smoke  every fuzz target for 15 s, under 2 minutes in all (in make test)
# hack/install-deps.sh installs system packages and builds kube-apiserver
# 1.20.2 (the oldest supported); hack/build-kubernetes.sh builds the current
# release; hack/build-ocm.sh builds Open Cluster Management (the e2e's hub
# controllers and klusterlet agents). They cache
# outside the checkout (CLUSTER_RELAY_CACHE, default /var/cache/cluster-relay),
# keyed by version.

CARGO ?= cargo
CACHE := $(or $(CLUSTER_RELAY_CACHE),/var/cache/cluster-relay)
# The current release: the newest whose go.mod the machine's Go 1.26 builds.
export KUBE_VERSION ?= 1.37.2
export KUBE_BIN ?= $(CACHE)/kubernetes-$(KUBE_VERSION)-r1
OLDEST_APISERVER := $(CACHE)/kube-apiserver-1.20.2-r1
# Installed by hack/install-deps.sh with cargo install, cached by version.
export CARGO_DENY_VERSION ?= 0.20.2
CARGO_DENY := $(CACHE)/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny
# The newest OCM release whose module the Go proxy serves (hack/build-ocm.sh).
export OCM_VERSION ?= 1.2.1
export OCM_DIR ?= $(CACHE)/ocm-$(OCM_VERSION)-r2
GO := PATH=/usr/local/go/bin:$$PATH GOTOOLCHAIN=local GONOSUMDB=open-cluster-management.io \
	GOFLAGS=-buildvcs=false go
GOFMT := $(or $(wildcard /usr/local/go/bin/gofmt),gofmt)
# What talks to a kube-apiserver, run again against the oldest supported one.
OLDEST_SUITES := apiserver_relay apiserver_relay_tcp provisioner service_relay \
	service_relay_exit read_cache chart

.PHONY: all deps deps-bench build release fmt-check lint deny go-check sh-check unit test \
	test-oldest fuzz fuzz-smoke images image order-file addon-manager ocm e2e demo bench clean

all: build

deps:
	bash hack/install-deps.sh --helm
	bash hack/build-kubernetes.sh $(KUBE_VERSION)
	bash hack/build-ocm.sh $(OCM_VERSION)

deps-bench:
	bash hack/install-deps.sh --bench
	bash hack/build-kubernetes.sh $(KUBE_VERSION)

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

fmt-check:
	$(CARGO) fmt --all --check

lint: go-check sh-check
	bash hack/check-layers.sh
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

# Bans (duplicate versions, wildcards), licenses and sources of every
# dependency, by deny.toml. Not advisories: the advisory database cannot be
# fetched from this machine (README, Tests).
deny: deps
	$(CARGO_DENY) --locked check bans licenses sources

# Every Go module of the repository (each directory with a go.mod: the
# add-on manager, the e2e's echo image, the go-github client) is
# gofmt-clean and go vet-clean, and its tests pass (the add-on manager's
# render the chart through the add-on framework itself).
go-check:
	bash hack/sync-chart.sh
	@for mod in $$(git ls-files '*go.mod'); do \
		dir=$$(dirname $$mod); \
		unformatted=$$(cd $$dir && $(GOFMT) -l .); \
		if [ -n "$$unformatted" ]; then echo "gofmt: $$dir: $$unformatted"; exit 1; fi; \
		(cd $$dir && $(GO) vet ./... && $(GO) test ./...) || exit 1; \
		echo "go-check: $$dir clean"; \
	done

sh-check:
	shellcheck hack/*.sh hack/lib/*.sh e2e/kind/run.sh

unit:
	$(CARGO) test --locked --lib

# Test binaries run one after another; the tests inside one binary share its
# control planes (tests/support), so use cargo test rather than nextest.
# Not --all-targets: that would run the benchmarks (harness = false) as tests.
test: deps fmt-check lint deny images fuzz-smoke
	$(CARGO) test --locked --lib --bins --tests
	$(MAKE) test-oldest

# The exit relay's own HTTP/1.1 path under cargo-fuzz (fuzz/, its own
# crate and workspace; nightly, or RUSTC_BOOTSTRAP=1 where there is none).
fuzz:
	bash hack/fuzz.sh $(or $(FUZZ_SECONDS),180)

fuzz-smoke:
	bash hack/fuzz.sh --smoke

# Debian's etcd 3.4 beside kube-apiserver 1.20.2, as in its time.
test-oldest: deps
	KUBE_APISERVER=$(OLDEST_APISERVER) ETCD=etcd \
		$(CARGO) test --locked $(addprefix --test ,$(OLDEST_SUITES))

# The images the e2e's nodes run: the pause sandbox, the echo Service, the
# hub's add-on manager and the agent (the last line printed is the agent's
# archive).
images: deps
	bash hack/build-image.sh pause
	bash hack/build-image.sh echo
	bash hack/build-image.sh addon-manager
	bash hack/build-image.sh agent

addon-manager:
	bash hack/build-addon-manager.sh

ocm:
	bash hack/build-ocm.sh $(OCM_VERSION)

# The add-on deployed by OCM's own controllers in hosted mode
# (tests/e2e_ocm.rs); make test runs it with every other test binary.
e2e: deps images
	$(CARGO) test --locked --test e2e_ocm -- --nocapture

image: deps
	bash hack/build-image.sh agent

# hack/agent.order, the layout of the image's binary (README, "Footprint"):
# the roles' functions from start to idle, measured under callgrind.
order-file: deps
	bash hack/build-image.sh agent >/dev/null
	bash hack/profile-startup.sh $(or $(CARGO_TARGET_DIR),target)/x86_64-unknown-linux-musl/release/agent

demo: deps images
	bash hack/demo.sh

bench: deps-bench
	$(CARGO) bench --locked --bench apiserver_relay
	$(CARGO) bench --locked --bench service_relay
	$(CARGO) bench --locked --bench read_cache
	$(CARGO) bench --locked --bench webhook_fanout
	$(CARGO) bench --locked --bench delivery_forwarder
	$(CARGO) bench --locked --bench read_cache_kubernetes

clean:
	$(CARGO) clean
