#!/usr/bin/env bash
# Builds the Kubernetes server binaries the tests, the demo and the benches
# run (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy) and
# the etcd they need, from Go modules, once, into
#   $CLUSTER_RELAY_CACHE/kubernetes-<version>-r<N>/
# and prints that directory on its last line.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod points the staging
# modules (k8s.io/api, k8s.io/client-go, ...) at ./staging and requires them at
# v0.0.0. So this writes a small wrapper module that requires
# k8s.io/kubernetes at the version and replaces every staging module with its
# published v0.<minor>.<patch>, the way projects embedding Kubernetes do.
# etcd comes from the same module graph (Kubernetes requires etcd's server
# module), through a three-line main calling etcdmain.Main.
#
# Build flags follow upstream's release builds: CGO_ENABLED=0, tags
# selinux,notest,grpcnotrace, version stamped by -ldflags -X.
set -euo pipefail

VERSION=${1:-${KUBE_VERSION:-1.37.2}}
CACHE=${CLUSTER_RELAY_CACHE:-/var/cache/cluster-relay}
# Bump when the build recipe changes, so caches built the old way are not used.
REV=r1
OUT="$CACHE/kubernetes-$VERSION-$REV"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd)

log() { printf 'build-kubernetes: %s\n' "$*" >&2; }

complete() {
  for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done
}
if complete; then
  echo "$OUT"
  exit 0
fi

export PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { log "Go is needed (/usr/local/go)"; exit 1; }

minor=${VERSION#*.}
minor=${minor%%.*}
staging_version="v0.${VERSION#*.}"
mod_url="k8s.io/kubernetes@v$VERSION"
work="$CACHE/build-kubernetes-$VERSION"
mkdir -p "$work/etcd"
cd "$work"

log "kubernetes v$VERSION: wrapper module in $work"
# The go and godebug lines are Kubernetes' own, so the binaries behave as
# upstream's do.
gomod=$(go mod download -json "$mod_url" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
go_line=$(grep -m1 '^go ' "$gomod")
godebug_line=$(grep -m1 '^godebug ' "$gomod" || true)
{
  echo "module cluster-relay.local/kubernetes-build"
  echo
  echo "$go_line"
  [ -n "$godebug_line" ] && echo "$godebug_line"
  echo
  echo "require k8s.io/kubernetes v$VERSION"
  echo
  grep -E '=> \./staging/' "$gomod" | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
} >go.mod
cat >etcd/main.go <<'EOF'
// Command etcd is etcd's own server, from the module Kubernetes requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
for p in "${pkgs[@]}"; do
  grep -q "^tool $p\$" go.mod || echo "tool $p" >>go.mod
done
log "resolving modules (go mod tidy)"
go mod tidy >tidy.log 2>&1 || { tail -30 tidy.log >&2; exit 1; }

stamp="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=v$VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
# Binaries already built (by a run that built fewer) are kept.
if [ -d "$OUT" ] && [ ! -d "$OUT.tmp" ]; then mv "$OUT" "$OUT.tmp"; fi
mkdir -p "$OUT.tmp"
for p in "${pkgs[@]}" ./etcd; do
  name=$(basename "$p")
  [ -x "$OUT.tmp/$name" ] && continue
  log "go build $name"
  CGO_ENABLED=0 go build -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags "$stamp" -o "$OUT.tmp/$name.part" "$p" >"build-$name.log" 2>&1 ||
    { tail -30 "build-$name.log" >&2; exit 1; }
  mv "$OUT.tmp/$name.part" "$OUT.tmp/$name"
done
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
rm -rf "$work"
log "built into $OUT"
echo "$OUT"
