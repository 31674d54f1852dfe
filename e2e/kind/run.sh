#!/usr/bin/env bash
# The hosted topology on real clusters, for users with a container engine.
# NOT RUN on the project's machines (no container engine there); CI runs the
# local-process e2e instead (tests/e2e_local.rs). Needs docker, kind,
# clusteradm, helm and kubectl.
#
#   e2e/kind/run.sh up       kind clusters hub, hosting and managed; Open Cluster
#                            Management on hub; hosting joined normally, managed
#                            joined in hosted mode (its klusterlet on hosting)
#   e2e/kind/run.sh install  build and load the image, install the chart
#   e2e/kind/run.sh check    the e2e's checks: kubectl through the apiserver
#                            relay, a managed Service through the service relay
#   e2e/kind/run.sh down     uninstall (runs the cleanup hook), delete the clusters
#   e2e/kind/run.sh all      up, install, check, down
#
# There is no hub-side add-on manager in this repository yet, so `install`
# installs the chart with plain Helm: the hosting half into the hosted
# klusterlet's namespace (klusterlet-c1, which holds external-managed-kubeconfig)
# and the managed half on the managed cluster, exactly the manifests the
# add-on framework would place there.
set -euo pipefail

PORT=
FWD_PID=
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-/tmp/cluster-relay-kind}
CLUSTER=c1
IMAGE=cluster-relay/agent:e2e
HOSTING_NS=klusterlet-$CLUSTER
MANAGED_NS=cluster-relay

log() { printf '\n== %s\n' "$*"; }
ctx() { printf 'kind-%s' "$1"; }
k() { local c=$1; shift; kubectl --context "$(ctx "$c")" "$@"; }

up() {
  mkdir -p "$WORK"
  for c in hub hosting managed; do
    kind get clusters | grep -qx "$c" || kind create cluster --name "$c"
  done
  log "Open Cluster Management on hub"
  clusteradm init --wait --context "$(ctx hub)"
  local token server
  # It prints the join command; the token follows --hub-token.
  token=$(clusteradm get token --context "$(ctx hub)" | grep -o -- '--hub-token [^ ]*' | cut -d' ' -f2)
  kind get kubeconfig --internal --name hub >"$WORK/hub.kubeconfig"
  server=$(kubectl --kubeconfig "$WORK/hub.kubeconfig" config view -o jsonpath='{.clusters[0].cluster.server}')
  log "hosting joins; managed joins in hosted mode, its klusterlet on hosting"
  clusteradm join --context "$(ctx hosting)" --hub-token "$token" --hub-apiserver "$server" \
    --cluster-name hosting --wait
  kind get kubeconfig --internal --name managed >"$WORK/managed.kubeconfig"
  clusteradm join --context "$(ctx hosting)" --hub-token "$token" --hub-apiserver "$server" \
    --cluster-name "$CLUSTER" --mode hosted --managed-cluster-kubeconfig "$WORK/managed.kubeconfig" --wait
  clusteradm accept --context "$(ctx hub)" --clusters "hosting,$CLUSTER" --wait
  k hosting -n "$HOSTING_NS" get secret external-managed-kubeconfig >/dev/null
}

install() {
  log "image $IMAGE"
  docker build -t "$IMAGE" "$ROOT"
  kind load docker-image "$IMAGE" --name hosting
  kind load docker-image "$IMAGE" --name managed
  local common=(--set clusterName="$CLUSTER" --set addonInstallNamespace="$MANAGED_NS"
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE#*:}" --set image.pullPolicy=Never
    --set provisioner.tokenExpiration=10m --set provisioner.refreshBefore=9m50s)
  log "managed half on managed, hosting half on hosting"
  helm --kube-context "$(ctx managed)" upgrade --install cluster-relay "$ROOT/charts/cluster-relay" \
    -n "$MANAGED_NS" --create-namespace --set manifests=managed --set createManagedNamespace=false "${common[@]}" --wait
  helm --kube-context "$(ctx hosting)" upgrade --install cluster-relay "$ROOT/charts/cluster-relay" \
    -n "$HOSTING_NS" --set manifests=hosting "${common[@]}" --wait
}

# Forwards a local port to a hosting Service: sets PORT and FWD_PID.
forward() {
  local svc=$1 port=$2 deadline=$((SECONDS + 30))
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  k hosting -n "$HOSTING_NS" port-forward "svc/$svc" "$PORT:$port" >/dev/null &
  FWD_PID=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "port-forward to $svc failed" >&2; exit 1; }
    sleep 0.2
  done
}

check() {
  log "1. kubectl against managed through the apiserver relay (Service $CLUSTER)"
  forward "$CLUSTER" 443
  kubectl --kubeconfig "$WORK/managed.kubeconfig" --server "https://127.0.0.1:$PORT" \
    --tls-server-name kubernetes.default.svc get namespace "$MANAGED_NS"
  kill "$FWD_PID"
  log "2. a managed Service through the service relay"
  k managed create namespace apps --dry-run=client -o yaml | k managed apply -f -
  k managed -n apps create deployment echo --image=registry.k8s.io/e2e-test-images/agnhost:2.45 \
    --dry-run=client -o yaml -- /agnhost netexec --http-port=8080 | k managed apply -f -
  k managed -n apps expose deployment echo --port 8080 --dry-run=client -o yaml | k managed apply -f -
  k managed -n apps rollout status deployment/echo --timeout=120s
  forward cluster-relay-service-relay-entry 7444
  curl -fsS -H 'Authorization: Bearer the-users-own-token' \
    "http://127.0.0.1:$PORT/api/v1/namespaces/apps/services/http:echo:8080/proxy/hostname"
  echo
  kill "$FWD_PID"
  log "3. the managed kubeconfig rotates"
  k hosting -n "$HOSTING_NS" get secret cluster-relay-managed-kubeconfig \
    -o jsonpath='{.metadata.annotations.cluster-relay\.io/token-expiration}{"\n"}'
}

down() {
  log "uninstall: the pre-delete hook (cleanup Job) runs first"
  helm --kube-context "$(ctx hosting)" uninstall cluster-relay -n "$HOSTING_NS" --wait || true
  helm --kube-context "$(ctx managed)" uninstall cluster-relay -n "$MANAGED_NS" --wait || true
  if k managed get serviceaccount cluster-relay -n "$MANAGED_NS" >/dev/null 2>&1; then
    echo "the relay identity is left on managed" >&2
    exit 1
  fi
  for c in hub hosting managed; do kind delete cluster --name "$c"; done
  rm -rf "$WORK"
}

case "${1:-}" in
  up | install | check | down) "$1" ;;
  all) up && install && check && down ;;
  *) grep '^#   e2e/kind' "$0" | cut -c3- >&2; exit 2 ;;
esac
