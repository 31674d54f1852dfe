#!/usr/bin/env bash
# The hosted topology on real clusters, for users with a container engine.
# NOT RUN on the project's machines (no container engine there); CI runs
# tests/e2e_ocm.rs (make e2e) instead: the same steps against OCM's
# controllers and klusterlets run as processes and clusters with a real
# node. Needs docker, kind, clusteradm, go and kubectl.
#
#   e2e/kind/run.sh up       kind clusters hub, hosting and managed; Open Cluster
#                            Management on hub; hosting joined normally, managed
#                            joined in hosted mode (its klusterlet on hosting)
#   e2e/kind/run.sh install  build and load the images; on the hub, the add-on
#                            manager (addon-manager/deploy/); enable the
#                            add-on for c1, hosted by hosting
#   e2e/kind/run.sh check    the e2e's checks: kubectl through the apiserver
#                            relay, a managed Service through the service relay
#   e2e/kind/run.sh down     delete the ManagedClusterAddOn (runs the pre-delete
#                            Job), check nothing is left, delete the clusters
#   e2e/kind/run.sh all      up, install, check, down
#
# `install` runs the README's commands ("Helm chart", "With Open Cluster
# Management"), as tests/e2e_ocm.rs does against OCM's controllers run as
# processes: the framework places the hosting half in klusterlet-c1 (which
# holds external-managed-kubeconfig) and the managed half in
# open-cluster-management-agent-addon.
set -euo pipefail

PORT=
FWD_PID=
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-/tmp/cluster-relay-kind}
CLUSTER=c1
IMAGE=cluster-relay/agent:e2e
MANAGER_IMAGE=cluster-relay/addon-manager:e2e
HOSTING_NS=klusterlet-$CLUSTER
MANAGED_NS=open-cluster-management-agent-addon

log() { printf '\n== %s\n' "$*"; }
ctx() { printf 'kind-%s' "$1"; }
k() { local c=$1; shift; kubectl --context "$(ctx "$c")" "$@"; }

up() {
  mkdir -p "$WORK"
  local clusters
  # Listed first: with pipefail, `kind get clusters | grep -q` fails when
  # grep exits before kind has written everything.
  clusters=$(kind get clusters)
  for c in hub hosting managed; do
    grep -qx "$c" <<<"$clusters" || kind create cluster --name "$c"
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
  log "images $IMAGE and $MANAGER_IMAGE"
  docker build -t "$IMAGE" "$ROOT"
  kind load docker-image "$IMAGE" --name hosting
  kind load docker-image "$IMAGE" --name managed
  bash "$ROOT/hack/build-addon-manager.sh" "$WORK/manager/addon-manager"
  docker build -t "$MANAGER_IMAGE" -f "$ROOT/addon-manager/Dockerfile" "$WORK/manager"
  kind load docker-image "$MANAGER_IMAGE" --name hub
  log "the add-on manager on the hub"
  k hub apply -f "$ROOT/addon-manager/deploy/"
  k hub -n cluster-relay-addon patch deployment cluster-relay-addon-manager --type=json -p "[
    {\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/image\", \"value\": \"$MANAGER_IMAGE\"},
    {\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/imagePullPolicy\", \"value\": \"Never\"},
    {\"op\": \"replace\", \"path\": \"/spec/template/spec/containers/0/args\", \"value\": [\"--agent-image=$IMAGE\"]}]"
  k hub -n cluster-relay-addon rollout status deployment/cluster-relay-addon-manager --timeout=120s
  log "enable the add-on for $CLUSTER, hosted by hosting"
  k hub apply -f - <<YAML
apiVersion: addon.open-cluster-management.io/v1alpha1
kind: AddOnDeploymentConfig
metadata: {name: cluster-relay, namespace: $CLUSTER}
spec:
  customizedVariables:
    - {name: values, value: '{"provisioner": {"tokenExpiration": "10m", "refreshBefore": "9m50s"}}'}
---
apiVersion: addon.open-cluster-management.io/v1alpha1
kind: ManagedClusterAddOn
metadata:
  name: cluster-relay
  namespace: $CLUSTER
  annotations:
    addon.open-cluster-management.io/hosting-cluster-name: hosting
spec:
  configs:
    - {group: addon.open-cluster-management.io, resource: addondeploymentconfigs,
       namespace: $CLUSTER, name: cluster-relay}
YAML
  k hub -n "$CLUSTER" wait managedclusteraddon/cluster-relay --for=condition=Available --timeout=300s
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
  log "delete the add-on: the pre-delete Job (cleanup) runs first"
  k hub -n "$CLUSTER" delete managedclusteraddon cluster-relay --timeout=300s || true
  if k managed get serviceaccount cluster-relay -n "$MANAGED_NS" >/dev/null 2>&1; then
    echo "the relay identity is left on managed" >&2
    exit 1
  fi
  k managed get namespace "$MANAGED_NS" >/dev/null
  for c in hub hosting managed; do kind delete cluster --name "$c"; done
  rm -rf "$WORK"
}

case "${1:-}" in
  up | install | check | down) "$1" ;;
  all) up && install && check && down ;;
  *) grep '^#   e2e/kind' "$0" | cut -c3- >&2; exit 2 ;;
esac
