#!/usr/bin/env bash
# make demo: bring up a hosting and a managed control plane (real etcd and
# kube-apiserver processes), run `agent apiserver-relay` on the hosting side
# following the managed kubeconfig held in a Secret, run kubectl through the
# relay, print what it shows, and clean everything up.
set -euo pipefail

AGENT=${1:-target/release/agent}
AGENT=$(realpath "$AGENT")
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/cluster-relay-demo.XXXXXX)
RELAY_PID=

cleanup() {
  set +e
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null
  bash "$HERE/controlplane.sh" down "$WORK/hosting" >/dev/null 2>&1
  bash "$HERE/controlplane.sh" down "$WORK/managed" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "demo: timed out waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

step "Starting two control planes: 'hosting' (runs the relay) and 'managed' (runs nothing of ours)"
bash "$HERE/controlplane.sh" up "$WORK/hosting" hosting >/dev/null
bash "$HERE/controlplane.sh" up "$WORK/managed" managed >/dev/null
HOSTING_KC="$WORK/hosting/admin.kubeconfig"
MANAGED_KC="$WORK/managed/admin.kubeconfig"
echo "hosting apiserver: $(kubectl --kubeconfig "$HOSTING_KC" config view -o jsonpath='{.clusters[0].cluster.server}')"
echo "managed apiserver: $(kubectl --kubeconfig "$MANAGED_KC" config view -o jsonpath='{.clusters[0].cluster.server}')"

step "On the hosting cluster: namespace c1 with the managed cluster's kubeconfig in a Secret"
kubectl --kubeconfig "$HOSTING_KC" create namespace c1
kubectl --kubeconfig "$HOSTING_KC" -n c1 create secret generic external-managed-kubeconfig \
  --from-file=kubeconfig="$MANAGED_KC"

step "Starting: agent apiserver-relay --managed-kubeconfig-secret c1/external-managed-kubeconfig"
"$AGENT" apiserver-relay \
  --kubeconfig "$HOSTING_KC" \
  --managed-kubeconfig-secret c1/external-managed-kubeconfig \
  --listen-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
  --log-format json 2>"$WORK/relay.log" &
RELAY_PID=$!
relay_addr() { sed -n 's/.*"listener":"'"$1"'","addr":"\([^"]*\)".*/\1/p' "$WORK/relay.log" | head -n1; }
relay_listening() { [ -n "$(relay_addr relay)" ] || { kill -0 "$RELAY_PID" || { cat "$WORK/relay.log" >&2; exit 1; }; false; }; }
wait_for 30 "the relay to listen" relay_listening
RELAY=$(relay_addr relay)
ADMIN=$(relay_addr admin)
wait_for 30 "the relay to be ready" curl -sf "http://$ADMIN/readyz"
echo "relay listening on $RELAY; readiness:"
curl -s "http://$ADMIN/readyz"

# kubectl keeps TLS end to end with the managed apiserver: the relay only
# moves bytes, so the managed apiserver's certificate and CA are what kubectl
# checks (its name, not the relay's address, via --tls-server-name).
through_relay() { kubectl --kubeconfig "$MANAGED_KC" --server "https://$RELAY" --tls-server-name kubernetes.default.svc "$@"; }

step "kubectl through the relay: get namespaces of the managed cluster"
through_relay get namespaces

step "kubectl through the relay: apply a ConfigMap, then read it back"
through_relay apply -f - <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: hello-from-the-hosting-cluster, namespace: default}
data: {greeting: "relayed over raw TCP, TLS end to end"}
YAML
through_relay get configmap hello-from-the-hosting-cluster -o jsonpath='{.data.greeting}{"\n"}'

step "The managed cluster saw it directly too"
kubectl --kubeconfig "$MANAGED_KC" get configmap hello-from-the-hosting-cluster

step "Relay metrics"
curl -s "http://$ADMIN/metrics" | grep -E '^cluster_relay_apiserver_relay_(connections_total|connections_active|bytes_total|dial_errors_total\{reason="refused"\})'

step "Done; cleaning up"
