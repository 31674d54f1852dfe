#!/usr/bin/env bash
# Builds the Open Cluster Management binaries the OCM e2e runs as processes,
# from the Go module open-cluster-management.io/ocm, once, into
#   $CLUSTER_RELAY_CACHE/ocm-<version>-r<N>/
# together with the CRDs the hub and the klusterlet need (copied from the
# same module), and prints that directory on its last line.
#
#   registration          `registration controller`  (hub: clusters, CSRs, leases)
#   work                  `work manager`             (hub: ManifestWork status)
#   addon                 `addon manager`            (hub: add-on install/config)
#   registration-operator `registration-operator agent` (the all-in-one
#                         klusterlet agent: registration + work agents)
#   klusterlet            the same command with --work-resync-interval
#                         (hack/ocm/klusterlet/main.go: the work agent's
#                         resync period is a package variable in OCM, no flag)
#
# `go install pkg@version` would need the proxy's version list, which it does
# not serve for these modules; so, like build-kubernetes.sh, this writes a
# small wrapper module that requires ocm at the version (ocm has no replace
# directives, so its own requirements hold) and builds its commands.
# v1.2.1 is the newest release whose module the proxy serves (v1.3.x has only
# its .info there); its go.mod says go 1.25 and requires addon-framework
# v1.2.0 and api v1.2.0, the versions addon-manager/ builds with, so the hub
# speaks one API version throughout.
set -euo pipefail

VERSION=${1:-${OCM_VERSION:-1.2.1}}
CACHE=${CLUSTER_RELAY_CACHE:-/var/cache/cluster-relay}
# Bump when the build recipe changes, so caches built the old way are not used.
REV=r2
HACK=$(cd "$(dirname "$0")" && pwd)
OUT="$CACHE/ocm-$VERSION-$REV"
BINARIES=(registration work addon registration-operator klusterlet)

log() { printf 'build-ocm: %s\n' "$*" >&2; }

complete() {
  for b in "${BINARIES[@]}"; do [ -x "$OUT/bin/$b" ] || return 1; done
  [ -f "$OUT/crds/.complete" ]
}
if complete; then
  echo "$OUT"
  exit 0
fi

export PATH=/usr/local/go/bin:$PATH GOTOOLCHAIN=local
# The checksum database has no entries for the open-cluster-management.io
# modules the proxy serves; their hashes are still pinned in go.sum.
export GONOSUMDB=${GONOSUMDB:-open-cluster-management.io}
command -v go >/dev/null || { log "Go is needed (/usr/local/go)"; exit 1; }

mod="open-cluster-management.io/ocm@v$VERSION"
dir=$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
[ -d "$dir" ] || { log "could not download $mod"; exit 1; }

# Binaries already built (by an earlier run) are kept.
if [ -d "$OUT" ] && [ ! -d "$OUT.tmp" ]; then mv "$OUT" "$OUT.tmp"; fi
mkdir -p "$OUT.tmp/bin"
rm -rf "$OUT.tmp/crds"
mkdir -p "$OUT.tmp/crds/hub" "$OUT.tmp/crds/klusterlet"
# The hub's CRDs (clusters, works, add-ons) and the klusterlet's on the
# managed side (AppliedManifestWorks, ClusterClaims). ocm's add-on CRDs are
# templates (a conversion webhook for v1beta1, which only that webhook
# uses in this release); the api module's v1alpha1 ones are plain, so
# those are taken, and no webhook is needed.
api_version=$(sed -n 's/^\topen-cluster-management.io\/api \(v[^ ]*\).*/\1/p' "$dir/go.mod")
api=$(go mod download -json "open-cluster-management.io/api@$api_version" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
[ -d "$api" ] || { log "could not download open-cluster-management.io/api@$api_version"; exit 1; }
for f in "$dir"/manifests/cluster-manager/hub/crds/*.yaml; do
  case "$(basename "$f")" in *_addon.open-cluster-management.io_*) continue ;; esac
  cp "$f" "$OUT.tmp/crds/hub/"
done
cp "$api"/addon/v1alpha1/*.crd.yaml "$OUT.tmp/crds/hub/"
cp "$dir"/manifests/klusterlet/managed/*.crd.yaml "$OUT.tmp/crds/klusterlet/"
chmod -R u+w "$OUT.tmp/crds"
if grep -l '{{' "$OUT.tmp"/crds/*/*.yaml >&2; then log "templated CRDs above"; exit 1; fi
touch "$OUT.tmp/crds/.complete"

work="$CACHE/build-ocm-$VERSION"
mkdir -p "$work/cmd/klusterlet"
cp "$HACK/ocm/klusterlet/main.go" "$work/cmd/klusterlet/"
cd "$work"
{
  echo "module cluster-relay.local/ocm-build"
  echo
  grep -m1 '^go ' "$dir/go.mod"
  echo
  echo "require open-cluster-management.io/ocm v$VERSION"
  for b in "${BINARIES[@]}"; do
    [ "$b" = klusterlet ] || echo "tool open-cluster-management.io/ocm/cmd/$b"
  done
} >go.mod
log "resolving modules (go mod tidy)"
go mod tidy >tidy.log 2>&1 || { tail -30 tidy.log >&2; exit 1; }
for b in "${BINARIES[@]}"; do
  [ -x "$OUT.tmp/bin/$b" ] && continue
  log "go build $b (ocm v$VERSION)"
  start=$(date +%s)
  pkg="open-cluster-management.io/ocm/cmd/$b"
  [ "$b" = klusterlet ] && pkg=./cmd/klusterlet
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT.tmp/bin/$b.part" \
    "$pkg" >"build-$b.log" 2>&1 ||
    { tail -30 "build-$b.log" >&2; exit 1; }
  mv "$OUT.tmp/bin/$b.part" "$OUT.tmp/bin/$b"
  log "$b built in $(($(date +%s) - start))s"
done
cd /
rm -rf "$work"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
log "built into $OUT"
echo "$OUT"
