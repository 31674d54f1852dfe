#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need on a fresh Debian
# bookworm machine, as root, idempotently:
#   - etcd (Debian's etcd-server, for 1.20.2), iproute2, openssl, kubectl check
#   - the nodes' runtime and the image tools: containerd, runc, the CNI
#     plugins, iptables and conntrack (kube-proxy, inside the node's network
#     namespace), buildah, musl-tools and Rust's musl target (the static agent)
#   - kube-apiserver 1.20.2 (the oldest supported) built from Debian's source
#     package, cached outside the checkout under $CLUSTER_RELAY_CACHE (default
#     /var/cache/cluster-relay); the current release is hack/build-kubernetes.sh's
#   - benchmark peers (socat, haproxy, nginx-light, iperf3, wrk) with --bench
#   - the Helm SDK for Python with --helm
#   - cargo-deny (make deny), built with cargo install into the cache
#   - PyGithub for the read-cache ETag profile tests
#   - the GitHub client libraries tests/read_cache_clients.rs runs: Octokit
#     (npm ci in tests/clients/octokit) and go-github (its Go module's
#     dependencies downloaded and built once, into Go's own caches)
# Prints the path of the cached kube-apiserver on its last line.
set -euo pipefail

CACHE=${CLUSTER_RELAY_CACHE:-/var/cache/cluster-relay}
K8S_VERSION=1.20.2
# -r1: built with reflect2 1.0.2 (see below); bump when the build changes.
APISERVER="$CACHE/kube-apiserver-$K8S_VERSION-r1"
want_bench=0
want_helm=0
for a in "$@"; do
  case "$a" in
    --bench) want_bench=1 ;;
    --helm) want_helm=1 ;;
    *) echo "install-deps: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { printf 'install-deps: %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  local missing=() status
  for pkg in "$@"; do
    # Captured first: with pipefail, `producer | grep -q` fails when grep
    # exits before the producer has written everything.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install etcd-server iproute2 openssl procps curl ca-certificates python3 \
  containerd runc containernetworking-plugins iptables conntrack buildah musl-tools shellcheck
# Debian's containerd enables a service on install where systemd runs; the
# test nodes run their own, each with its own root and socket.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl stop containerd || true
  systemctl disable containerd >/dev/null 2>&1 || true
fi
if command -v rustup >/dev/null 2>&1; then
  targets=$(rustup target list --installed)
  if ! grep -qx x86_64-unknown-linux-musl <<<"$targets"; then
    log "rustup target add x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl >&2
  fi
fi

# --- cargo-deny (make deny, in make test) --------------------------------------
# From crates.io with its own lockfile, into the cache keyed by version (the
# Makefile runs it from there); a few minutes, once.
CARGO_DENY_VERSION=${CARGO_DENY_VERSION:-0.20.2}
cargo_deny_root="$CACHE/cargo-deny-$CARGO_DENY_VERSION"
if [ ! -x "$cargo_deny_root/bin/cargo-deny" ]; then
  log "cargo install cargo-deny $CARGO_DENY_VERSION"
  rm -rf "$cargo_deny_root.tmp"
  cargo install --locked --quiet --version "$CARGO_DENY_VERSION" \
    --root "$cargo_deny_root.tmp" cargo-deny
  rm -rf "$cargo_deny_root"
  mv "$cargo_deny_root.tmp" "$cargo_deny_root"
fi
# --- end cargo-deny -------------------------------------------------------------
# Debian starts etcd as a service on install; the tests run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
  systemctl disable etcd >/dev/null 2>&1 || true
fi

if ! command -v kubectl >/dev/null 2>&1; then
  log "kubectl is not on PATH; it ships with the machine image (cloud SDK)"
  exit 1
fi

if [ "$want_bench" = 1 ]; then
  apt_install socat haproxy nginx-light iperf3 wrk
  # The packages enable system services; the benchmarks start their own.
  for svc in haproxy nginx iperf3; do
    if command -v systemctl >/dev/null 2>&1; then
      systemctl stop "$svc" >/dev/null 2>&1 || true
      systemctl disable "$svc" >/dev/null 2>&1 || true
    fi
  done
fi

if [ "$want_helm" = 1 ]; then
  # The distribution is helm-python-sdk, the module helm_python. Installed for
  # the python3 on PATH, which is what hack/chart.py runs with; Debian's own
  # python3 needs python3-pip and refuses system-wide pip installs unless told.
  python3 -c 'import helm_python' 2>/dev/null || {
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "pip install helm-python-sdk"
    python3 -m pip install -q helm-python-sdk ||
      python3 -m pip install -q --break-system-packages helm-python-sdk
  }
fi

# --- PyGithub (read-cache ETag profile tests) --------------------------------
# tests/read_cache_etag.rs drives PyGithub, a real GitHub client from PyPI,
# through the cache; it runs the python3 first on PATH, so install for that.
if ! python3 -c 'import github' 2>/dev/null; then
  log "pip install PyGithub"
  python3 -m pip install -q PyGithub 2>/dev/null ||
    python3 -m pip install -q --break-system-packages PyGithub
fi
# --- end PyGithub --------------------------------------------------------------

# --- GitHub client libraries (tests/read_cache_clients.rs) -------------------
# Octokit from npm, pinned by tests/clients/octokit/package-lock.json, into
# that directory's node_modules (git-ignored), again whenever the lock
# changes. go-github is a Go module of its own (tests/clients/go-github):
# its dependencies go to Go's module cache and a build warms the build cache,
# so the test's own `go build` is quick. Node 20 and Go come with the machine
# image (Go at /usr/local/go).
clients="$(cd "$(dirname "$0")/.." && pwd)/tests/clients"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "node and npm are not on PATH; they ship with the machine image (Node 20)"
  exit 1
fi
octokit="$clients/octokit"
# The copy of the lock npm ci installed from tells whether it changed since.
installed="$octokit/node_modules/.cluster-relay-installed-lock.json"
if ! cmp -s "$octokit/package-lock.json" "$installed"; then
  log "npm ci in tests/clients/octokit"
  (cd "$octokit" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$octokit/package-lock.json" "$installed"
fi
go_bin=$(command -v go || echo /usr/local/go/bin/go)
if [ ! -x "$go_bin" ]; then
  log "go is not on PATH nor at /usr/local/go/bin/go; it ships with the machine image"
  exit 1
fi
(
  cd "$clients/go-github"
  GOFLAGS=-buildvcs=false "$go_bin" mod download
  GOFLAGS=-buildvcs=false "$go_bin" build -mod=readonly -o /dev/null .
)
# --- end GitHub client libraries -----------------------------------------------

if [ ! -x "$APISERVER" ]; then
  log "building kube-apiserver $K8S_VERSION from Debian's source package (a few minutes, once)"
  src_list=/etc/apt/sources.list.d/cluster-relay-src.sources
  if [ ! -f "$src_list" ]; then
    cat >"$src_list" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
  fi
  if [ $apt_updated -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  apt_install golang-go rsync dpkg-dev golang-github-modern-go-reflect2-dev
  build="$CACHE/build"
  mkdir -p "$build"
  (
    cd "$build"
    # Debian names it kubernetes_1.20.5+really1.20.2.orig.tar.gz; it unpacks
    # to kubernetes-1.20.2/.
    ls kubernetes_*.orig.tar.gz >/dev/null 2>&1 || apt-get source --download-only kubernetes >/dev/null 2>&1
    [ -d "kubernetes-$K8S_VERSION" ] || tar xzf kubernetes_*.orig.tar.gz
    cd "kubernetes-$K8S_VERSION"
    # The vendored reflect2 1.0.1 links reflect.mapiterinit with its pre-Go
    # 1.18 signature; built with Debian's Go 1.19 the apiserver then crashes
    # (SIGSEGV in json-iterator) when it encodes maps, e.g. on creating a
    # custom resource. reflect2 1.0.2 fixed that; Debian ships its source.
    reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    rm -f vendor/github.com/modern-go/reflect2/*.go
    cp "$reflect2"/*.go vendor/github.com/modern-go/reflect2/
    rm -f vendor/github.com/modern-go/reflect2/*_test.go
    make WHAT=cmd/kube-apiserver KUBE_BUILD_PLATFORMS=linux/amd64 >"$build/make.log" 2>&1 || {
      tail -30 "$build/make.log" >&2
      exit 1
    }
    install -m 0755 _output/bin/kube-apiserver "$APISERVER.tmp"
    mv "$APISERVER.tmp" "$APISERVER"
  )
  rm -rf "$build"
fi
echo "$APISERVER"
