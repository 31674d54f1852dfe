# cluster-relay: everything a fresh machine needs goes through these targets.
#   make demo   the hosted topology from the Helm chart on real local control planes
#   make test   formatting, lints and every test (unit, loopback, real control planes)
#   make bench  side-by-side benchmarks against peers (socat, haproxy, nginx)
# hack/install-deps.sh installs system packages and builds kube-apiserver once,
# cached outside the checkout (CLUSTER_RELAY_CACHE, default /var/cache/cluster-relay).

CARGO ?= cargo
export KUBE_APISERVER ?= $(or $(CLUSTER_RELAY_CACHE),/var/cache/cluster-relay)/kube-apiserver-1.20.2-r1

.PHONY: all deps deps-bench build release fmt-check lint unit test demo bench clean

all: build

deps:
	bash hack/install-deps.sh --helm

deps-bench:
	bash hack/install-deps.sh --bench

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

fmt-check:
	$(CARGO) fmt --check

lint:
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --lib

# Test binaries run one after another; the tests inside one binary share its
# control planes (tests/support), so use cargo test rather than nextest.
# Not --all-targets: that would run the benchmarks (harness = false) as tests.
test: deps fmt-check lint
	$(CARGO) test --locked --lib --bins --tests

demo: deps
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
