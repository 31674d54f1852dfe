#!/usr/bin/env bash
# Writes hack/agent.order: the functions the hosting-side roles run from start
# to idle (probes, scrapes, their own timers) and for a first request, by
# demangled name, for the image's layout
# (hack/build-image.sh turns the names into the linker's
# --symbol-ordering-file). `make order-file` runs it on the image's binary.
#
# Why: the kernel maps a file-backed page fault's neighbours too (fault-around,
# 64 KiB), so a process's resident text is every 64 KiB window that any
# function it ran lies in. Spread over the 15 MB of text, the ~1.5 MB an idle
# relay runs kept ~8.6 MiB of each pod's RSS. Packed together, it is about the
# size of the code itself (README, "Footprint").
#
#   profile-startup.sh BINARY [OUT]
#
# BINARY: the image's binary (target/x86_64-unknown-linux-musl/release/agent).
# Runs each hosting-side role under valgrind's callgrind against a local
# control plane (hack/controlplane.sh), configured as in a pod (in-cluster
# configuration, JSON logs), waits until it is ready, sends it a
# request, stops it with SIGINT and maps the instructions it ran to
# functions. Code changed after the file was made is only placed less
# tightly (build-image.sh says how many names it still finds); the binary is
# correct whatever the order. KEEP_PROFILE=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1")
out=${2:-hack/agent.order}
work=$(mktemp -d /tmp/cluster-relay-profile.XXXXXX)
plane=$work/plane
log() { printf 'profile-startup: %s\n' "$*" >&2; }
cleanup() {
  pkill -INT -f "callgrind-out-file=$work/" 2>/dev/null || true
  bash hack/controlplane.sh down "$plane" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -z "${KEEP_PROFILE:-}" ] || trap - EXIT

command -v valgrind >/dev/null || {
  log "valgrind is missing (apt-get install valgrind)"
  exit 1
}
bash hack/controlplane.sh up "$plane" profile >"$work/env"
# shellcheck source=/dev/null
. "$work/env"
k() { kubectl --kubeconfig "$KUBECONFIG" "$@"; }
k create namespace c1 >/dev/null
k -n c1 create secret generic external-managed-kubeconfig --from-file=kubeconfig="$KUBECONFIG" >/dev/null
# A caller whose reads are allowed, so the read cache fills and serves a hit.
# (No controller-manager here aggregates `view`: a role of its own.)
k create clusterrole profile-reader --verb=get,list,watch --resource=pods >/dev/null
k create clusterrolebinding profile-reader --clusterrole=profile-reader --serviceaccount=default:default >/dev/null
token=$(k create token default -n default --duration 1h)
# The roles run as in a pod, so the code they run is a pod's: in-cluster
# configuration (a ServiceAccount token, the CA and the namespace in
# /var/run/secrets/kubernetes.io/serviceaccount of a mount namespace of
# their own, KUBERNETES_SERVICE_HOST/PORT, no kubeconfig) and the chart's
# JSON logs.
k -n c1 create serviceaccount profile >/dev/null
k create clusterrolebinding profile-admin --clusterrole=cluster-admin --serviceaccount=c1:profile >/dev/null
mkdir -p "$work/sa" "$work/home"
k -n c1 create token profile --duration 1h >"$work/sa/token"
cp "$DIR/ca.crt" "$work/sa/ca.crt"
printf c1 >"$work/sa/namespace"

# run ROLE ADMIN_PORT ARGS...: the role under callgrind until ready; prints
# nothing, leaves $work/cg.ROLE.
start_role() {
  local role=$1 port=$2
  shift 2
  # unshare execs sh, which execs valgrind: $! is valgrind's pid.
  # shellcheck disable=SC2016 # $0 and $@ are the inner shell's
  env -u KUBECONFIG HOME="$work/home" \
    KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT="$APISERVER_PORT" \
    unshare --mount --propagation private -- sh -c '
      mount -t tmpfs -o mode=0755 tmpfs /run &&
        mkdir -p /run/secrets/kubernetes.io &&
        cp -r "$0" /run/secrets/kubernetes.io/serviceaccount &&
        exec "$@"' "$work/sa" \
    valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$work/cg.$role" \
    "$bin" "$@" --log-format json --admin-addr "127.0.0.1:$port" \
    >"$work/$role.log" 2>&1 &
  echo $! >"$work/$role.pid"
  local deadline=$((SECONDS + 180))
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
    kill -0 "$(cat "$work/$role.pid")" 2>/dev/null || {
      tail -20 "$work/$role.log" >&2
      exit 1
    }
    [ "$SECONDS" -lt "$deadline" ] || {
      log "$role not ready within 180 s"
      tail -20 "$work/$role.log" >&2
      exit 1
    }
    sleep 0.5
  done
  idle "$port"
}
# What a pod does at idle: the kubelet's probes, a scrape, and whatever the
# role's own timers run (lease renewals, resyncs, polls), for IDLE_SECONDS.
idle() {
  local until=$((SECONDS + ${IDLE_SECONDS:-20}))
  while [ "$SECONDS" -lt "$until" ]; do
    curl -s -o /dev/null "http://127.0.0.1:$1/healthz" || true
    curl -s -o /dev/null "http://127.0.0.1:$1/readyz" || true
    curl -s -o /dev/null "http://127.0.0.1:$1/metrics" || true
    sleep 1
  done
}
stop_role() {
  local pid
  pid=$(cat "$work/$1.pid")
  kill -INT "$pid"
  wait "$pid" || true
  log "$1: $(grep -c '^0x' "$work/cg.$1") instruction addresses"
}

log "provision-kubeconfig"
start_role provisioner 19301 provision-kubeconfig --namespace c1 \
  --source-secret external-managed-kubeconfig --target-secret managed-kubeconfig \
  --leader-elect --leader-election-namespace c1
deadline=$((SECONDS + 180))
until k -n c1 get secret managed-kubeconfig >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || {
    log "the provisioner wrote no managed kubeconfig within 180 s"
    tail -20 "$work/provisioner.log" >&2
    exit 1
  }
  sleep 0.5
done
stop_role provisioner

log "apiserver-relay"
start_role apiserver-relay 19302 apiserver-relay --listen-addr 127.0.0.1:19312 \
  --managed-kubeconfig-secret c1/managed-kubeconfig
kubectl --kubeconfig "$KUBECONFIG" --server https://127.0.0.1:19312 --tls-server-name 127.0.0.1 \
  get namespaces >/dev/null
idle 19302
stop_role apiserver-relay

log "service-relay (entry)"
start_role service-relay-entry 19303 service-relay --role entry --listen-addr 127.0.0.1:19313 \
  --managed-kubeconfig-secret c1/managed-kubeconfig --exit-namespace c1 --exit-service exit
# No exit relay runs here: the entry's whole path up to the managed apiserver's
# answer (a 503 from services/proxy) is what it runs for every request.
curl -s -o /dev/null -H "Authorization: Bearer $token" \
  "http://127.0.0.1:19313/api/v1/namespaces/default/services/echo:8080/proxy/" || true
idle 19303
stop_role service-relay-entry

log "read-cache (kubernetes)"
start_role read-cache 19304 read-cache --profile kubernetes --listen-addr 127.0.0.1:19314 \
  --managed-kubeconfig-secret c1/managed-kubeconfig
for _ in 1 2; do
  log "read-cache answered $(curl -s -o /dev/null -w '%{http_code} %header{cluster-relay-cache}' \
    -H "Authorization: Bearer $token" "http://127.0.0.1:19314/api/v1/namespaces/default/pods")"
done
idle 19304
stop_role read-cache

python3 hack/lib/order_symbols.py profile "$bin" "$out" "$work"/cg.*
