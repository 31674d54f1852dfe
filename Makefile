# cluster-relay: everything a fresh machine needs goes through these targets.
#   make demo   the hosted topology from the Helm chart on real local control planes
#   make test   formatting, lints (Rust and the Go test clients) and every test
#               (unit, loopback, real control planes, real GitHub clients)
#   make bench  side-by-side benchmarks against peers (socat, haproxy, nginx)
# hack/install-deps.sh installs system packages and builds kube-apiserver once,
# cached outside the checkout (CLUSTER_RELAY_CACHE, default /var/cache/cluster-relay).

CARGO ?= cargo
export KUBE_APISERVER ?= $(or $(CLUSTER_RELAY_CACHE),/var/cache/cluster-relay)/kube-apiserver-1.20.2-r1
# Go comes with the machine image at /usr/local/go, not always on PATH.
GO ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
GOFMT ?= $(dir $(GO))gofmt
# Go modules in this repository that go-check keeps gofmt- and vet-clean;
# add a new module's directory here.
GO_MODULES := tests/clients/go-github

.PHONY: all deps deps-bench build release fmt-check lint go-check unit test demo bench clean

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

go-check:
	@set -e; for m in $(GO_MODULES); do \
	  unformatted=$$(cd $$m && $(GOFMT) -l .); \
	  if [ -n "$$unformatted" ]; then echo "gofmt -l $$m: $$unformatted" >&2; exit 1; fi; \
	  (cd $$m && GOFLAGS=-buildvcs=false $(GO) vet ./...); \
	  echo "go-check $$m: gofmt and go vet clean"; \
	done

unit:
	$(CARGO) test --locked --lib

# Test binaries run one after another; the tests inside one binary share its
# control planes (tests/support), so use cargo test rather than nextest.
# Not --all-targets: that would run the benchmarks (harness = false) as tests.
test: deps fmt-check lint go-check
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
