#!/usr/bin/env bash
# Builds an OCI image archive without a daemon (buildah, vfs storage under the
# cache) and prints the archive's path on its last line.
#
#   build-image.sh agent   the agent: `cargo build --release` for
#                          x86_64-unknown-linux-musl (static), then ./Dockerfile
#                          with the binary as the only thing in the context.
#                          Archive: $CACHE/images/agent-<binary sha256>.tar,
#                          image localhost/cluster-relay/agent:dev (AGENT_IMAGE).
#   build-image.sh echo    the e2e's echo Service (tests/images/echo, Go, static),
#                          image localhost/cluster-relay/echo:dev (ECHO_IMAGE).
#   build-image.sh addon-manager  the hub's add-on manager (addon-manager/, Go,
#                          static, the chart embedded), then
#                          addon-manager/Dockerfile. Image
#                          localhost/cluster-relay/addon-manager:dev
#                          (ADDON_MANAGER_IMAGE).
#   build-image.sh pause   the pod sandbox image: Kubernetes' own pause.c from
#                          the k8s.io/kubernetes module, gcc -static, then
#                          hack/images/pause.Dockerfile. Image
#                          localhost/cluster-relay/pause:<kubernetes version>.
#
# The Dockerfiles are the recipes: this script only builds the binary they
# copy and runs `buildah bud` on them, so the image a user builds with docker
# from the same Dockerfile is this one. Nothing is pulled (FROM scratch).
set -euo pipefail

cd "$(dirname "$0")/.."
# Called from a test, this script inherits what cargo test sets for the
# test process (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts
# watch some of them (ring's: rerun-if-env-changed), so cargo would rebuild
# the release binary from ring up each time the caller changes between a
# shell (make images) and a test. Nothing here needs them.
unset "${!CARGO_PKG_@}" CARGO_MANIFEST_DIR CARGO_MANIFEST_PATH CARGO_MANIFEST_LINKS \
  CARGO_CRATE_NAME CARGO_PRIMARY_PACKAGE CARGO_TARGET_TMPDIR OUT_DIR
CACHE=${CLUSTER_RELAY_CACHE:-/var/cache/cluster-relay}
KUBE_VERSION=${KUBE_VERSION:-1.37.2}
AGENT_IMAGE=${AGENT_IMAGE:-localhost/cluster-relay/agent:dev}
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/cluster-relay/pause:$KUBE_VERSION}
ECHO_IMAGE=${ECHO_IMAGE:-localhost/cluster-relay/echo:dev}
ADDON_MANAGER_IMAGE=${ADDON_MANAGER_IMAGE:-localhost/cluster-relay/addon-manager:dev}
TARGET=x86_64-unknown-linux-musl

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Builds context dir $2 with Dockerfile $1 as image $3 into archive $4.
bud() {
  command -v buildah >/dev/null || die "buildah is missing: bash hack/install-deps.sh"
  local dockerfile=$1 context=$2 image=$3 archive=$4
  local store="$CACHE/buildah"
  local buildah=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
  mkdir -p "$(dirname "$archive")"
  log "buildah bud -f $dockerfile -t $image"
  "${buildah[@]}" bud --quiet --isolation chroot --layers=false \
    -f "$dockerfile" -t "$image" "$context" >/dev/null
  rm -f "$archive.part"
  # The archive's ref is the image's full name: containerd's import then
  # names the image exactly that and nothing else.
  "${buildah[@]}" push --quiet "$image" "oci-archive:$archive.part:$image"
  "${buildah[@]}" rmi --force "$image" >/dev/null 2>&1 || true
  mv "$archive.part" "$archive"
}

# Image $3 of the static binary $2 (copied in as $1) built with Dockerfile
# $4, archived as $CACHE/images/$1-<binary sha256>.tar; prints the path.
binary_image() {
  local name=$1 bin=$2 image=$3 dockerfile=$4
  file_is_static "$bin"
  local digest
  digest=$(sha256sum "$bin" | cut -c1-16)
  local archive="$CACHE/images/$name-$digest.tar"
  if [ ! -f "$archive" ]; then
    local context
    context=$(mktemp -d)
    cp "$bin" "$context/$name"
    bud "$dockerfile" "$context" "$image" "$archive"
    rm -rf "$context"
    # Older archives of the same image are of no use once a new one is built.
    find "$CACHE/images" -name "$name-*.tar" ! -name "$name-$digest.tar" -delete
  fi
  echo "$archive"
}

agent() {
  local targets
  targets=$(rustup target list --installed 2>/dev/null)
  grep -qx "$TARGET" <<<"$targets" || rustup target add "$TARGET" >&2
  log "cargo build --release --target $TARGET (static)"
  local dir bin
  dir=$(realpath -m "${CARGO_TARGET_DIR:-target}/$TARGET")
  bin=$dir/release/agent
  mkdir -p "$dir"
  # The linker's --symbol-ordering-file: this build's symbols for the names in
  # hack/agent.order, in a file named by its hash, so that a new order is a
  # new argument and cargo links again (only the binary: the argument is the
  # bin crate's alone, unlike RUSTFLAGS or a build script).
  local orders=("$dir"/agent-*.link-order)
  local order=${orders[0]}
  if [ ! -f "$order" ]; then
    order=$dir/agent-none.link-order
    : >"$order"
  fi
  # musl's libc is linked in: the binary needs nothing from the image, which
  # has nothing. .cargo/config.toml links it with rust-lld, non-PIE.
  cargo_musl() {
    CC_x86_64_unknown_linux_musl=musl-gcc cargo rustc --locked --release --target "$TARGET" --bin agent -- \
      -C "link-arg=--symbol-ordering-file=$1" -C link-arg=--no-warn-symbol-ordering >&2
  }
  cargo_musl "$order"
  # When the symbols for those names changed (new code, compiler or flags),
  # link again with the new ones.
  local found next
  found=$(python3 hack/lib/order_symbols.py link "$bin" hack/agent.order "$dir/next.link-order")
  log "$found functions of hack/agent.order are in this build (make order-file renews the file)"
  next=$dir/agent-$(sha256sum "$dir/next.link-order" | cut -c1-16).link-order
  mv "$dir/next.link-order" "$next"
  if [ "$next" != "$order" ]; then
    rm -f "$order"
    log "linking again in that order"
    cargo_musl "$next"
  fi
  binary_image agent "$bin" "$AGENT_IMAGE" Dockerfile
}

echo_image() {
  local out
  out=$(mktemp -d)
  log "go build tests/images/echo (static)"
  (cd tests/images/echo && CGO_ENABLED=0 PATH=/usr/local/go/bin:$PATH go build -trimpath -o "$out/echo" .)
  binary_image echo "$out/echo" "$ECHO_IMAGE" tests/images/echo/Dockerfile
  rm -rf "$out"
}

addon_manager() {
  local out
  out=$(mktemp -d)
  log "go build addon-manager (static, chart embedded)"
  bash hack/build-addon-manager.sh "$out/addon-manager" >&2
  binary_image addon-manager "$out/addon-manager" "$ADDON_MANAGER_IMAGE" addon-manager/Dockerfile
  rm -rf "$out"
}

pause() {
  local archive="$CACHE/images/pause-$KUBE_VERSION.tar"
  if [ ! -f "$archive" ]; then
    local src
    src=$(PATH=/usr/local/go/bin:$PATH GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" |
      sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
    [ -f "$src/build/pause/linux/pause.c" ] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@v$KUBE_VERSION"
    local context
    context=$(mktemp -d)
    gcc -Os -Wall -Werror -static -DVERSION="v$KUBE_VERSION-cluster-relay" \
      -o "$context/pause" "$src/build/pause/linux/pause.c"
    strip "$context/pause"
    file_is_static "$context/pause"
    bud hack/images/pause.Dockerfile "$context" "$PAUSE_IMAGE" "$archive"
    rm -rf "$context"
  fi
  echo "$archive"
}

file_is_static() {
  # A dynamic ELF names its interpreter; FROM scratch has none to offer.
  local headers
  headers=$(readelf -l "$1" 2>/dev/null)
  if grep -q 'Requesting program interpreter' <<<"$headers"; then
    die "$1 is dynamically linked"
  fi
}

case "${1:-}" in
  agent) agent ;;
  echo) echo_image ;;
  pause) pause ;;
  addon-manager) addon_manager ;;
  *) grep '^#   build-image.sh' "$0" | cut -c3- >&2; exit 2 ;;
esac
