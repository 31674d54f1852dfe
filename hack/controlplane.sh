#!/usr/bin/env bash
# The single source of truth for how a plain local Kubernetes control plane
# (one etcd plus one kube-apiserver, both bound to 127.0.0.1, no node and no
# controller-manager) is made, for the focused integration tests
# (tests/support/) and the benches. Whole clusters with a real node are
# hack/cluster.sh's.
#
# The apiserver and etcd are the current version's (hack/build-kubernetes.sh)
# unless KUBE_APISERVER and ETCD say otherwise: `make test-oldest` points them
# at kube-apiserver 1.20.2 (hack/install-deps.sh) and Debian's etcd 3.4.
#
#   controlplane.sh prepare DIR NAME   ports, CA and certs, kubeconfig, DIR/env
#   controlplane.sh exec-etcd DIR      exec etcd in the foreground (log: DIR/etcd.log)
#   controlplane.sh exec-apiserver DIR exec kube-apiserver in the foreground (log: DIR/apiserver.log)
#   controlplane.sh ready DIR          exit 0 when /readyz answers ok, else 1
#   controlplane.sh bootstrap DIR      create what a controller-manager would (the default ServiceAccount)
#   controlplane.sh up DIR NAME        all of the above in the background, then print DIR/env
#   controlplane.sh down DIR           stop what `up` started and remove DIR (idempotent)
#
# exec-* exec, so whoever starts them holds the real process id: the tests
# SIGKILL the apiserver and start it again on the same port with the same data.
# NAME, DIR, SERVER and the *_PORT variables come from DIR/env (load_env).
# shellcheck disable=SC2153
set -euo pipefail

KUBE_BIN=${KUBE_BIN:-${CLUSTER_RELAY_CACHE:-/var/cache/cluster-relay}/kubernetes-${KUBE_VERSION:-1.37.2}-r1}
KUBE_APISERVER=${KUBE_APISERVER:-$KUBE_BIN/kube-apiserver}
ETCD=${ETCD:-$KUBE_BIN/etcd}
# Marks a directory as made by `prepare`, so `down` never removes anything else.
MARKER=.cluster-relay-controlplane
SA_ISSUER=https://kubernetes.default.svc

log() { printf 'controlplane: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { grep '^#   controlplane.sh' "$0" | cut -c3- >&2; exit 2; }

load_env() {
  local dir=$1
  [ -f "$dir/env" ] || die "$dir/env is missing; run: $0 prepare $dir NAME"
  # shellcheck source=/dev/null
  . "$dir/env"
}

# Three distinct free loopback ports below the ephemeral range (32768+), so an
# outgoing connection cannot take one between this check and the bind.
pick_ports() {
  python3 - <<'PY'
import random, socket
held, ports = [], []
while len(ports) < 3:
    port = random.randint(20000, 32000)
    if port in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(port)
print(*ports)
PY
}

# Signs DIR/$leaf.crt with the plane's CA; $ext holds the X.509 v3 extensions
# (without -extfile openssl writes v1 certificates, which rustls rejects).
sign_leaf() {
  local dir=$1 leaf=$2 subj=$3 ext=$4
  printf '%s\n' "$ext" >"$dir/$leaf.ext"
  openssl req -new -nodes -newkey rsa:2048 -keyout "$dir/$leaf.key" \
    -out "$dir/$leaf.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -sha256 -days 3650 -in "$dir/$leaf.csr" \
    -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -extfile "$dir/$leaf.ext" -out "$dir/$leaf.crt" 2>/dev/null
  rm -f "$dir/$leaf.csr" "$dir/$leaf.ext"
}

cmd_prepare() {
  local dir=$1 name=$2
  if [ -f "$dir/env" ]; then
    # Idempotent: a prepared directory keeps its ports, certs and data.
    load_env "$dir"
    [ "$NAME" = "$name" ] || die "$dir was prepared for $NAME, not $name"
    return 0
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  touch "$dir/$MARKER"
  umask 077
  local etcd_port etcd_peer_port apiserver_port
  read -r etcd_port etcd_peer_port apiserver_port < <(pick_ports)

  openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=cluster-relay-$name-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  sign_leaf "$dir" apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$name,IP:10.96.0.1"
  sign_leaf "$dir" admin "/O=system:masters/CN=admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer"
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null

  # kubectl writes the kubeconfig, so it is well-formed YAML by construction.
  local kc="$dir/admin.kubeconfig"
  local server="https://127.0.0.1:$apiserver_port"
  kubectl config --kubeconfig "$kc" set-cluster "$name" --server "$server" \
    --certificate-authority "$dir/ca.crt" --embed-certs=true >/dev/null
  kubectl config --kubeconfig "$kc" set-credentials "$name-admin" \
    --client-certificate "$dir/admin.crt" --client-key "$dir/admin.key" --embed-certs=true >/dev/null
  kubectl config --kubeconfig "$kc" set-context "$name" --cluster "$name" --user "$name-admin" >/dev/null
  kubectl config --kubeconfig "$kc" use-context "$name" >/dev/null

  mkdir -p "$dir/etcd" "$dir/certdir"
  # Written last: its presence means the directory is complete.
  {
    printf 'NAME=%q\n' "$name"
    printf 'DIR=%q\n' "$dir"
    printf 'ETCD_PORT=%q\n' "$etcd_port"
    printf 'ETCD_PEER_PORT=%q\n' "$etcd_peer_port"
    printf 'APISERVER_PORT=%q\n' "$apiserver_port"
    printf 'SERVER=%q\n' "$server"
    printf 'KUBECONFIG=%q\n' "$kc"
  } >"$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

cmd_exec_etcd() {
  local dir=$1
  load_env "$dir"
  exec "$ETCD" --name "$NAME" --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NAME=http://127.0.0.1:$ETCD_PEER_PORT" \
    >>"$DIR/etcd.log" 2>&1 </dev/null
}

cmd_exec_apiserver() {
  local dir=$1
  load_env "$dir"
  [ -x "$KUBE_APISERVER" ] || die "$KUBE_APISERVER is missing; run hack/build-kubernetes.sh (or hack/install-deps.sh for 1.20.2)"
  # --insecure-port exists (and must be 0) up to 1.23 only. No pod uses the
  # `kubernetes` Service here, and current apiservers refuse to publish a
  # loopback address in its endpoints: no endpoint reconciler.
  local old=()
  case "$("$KUBE_APISERVER" --version 2>/dev/null)" in
    "Kubernetes v1.2"[0-3].*) old=(--insecure-port 0) ;;
  esac
  exec "$KUBE_APISERVER" "${old[@]}" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --secure-port "$APISERVER_PORT" --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
    --tls-cert-file "$DIR/apiserver.crt" --tls-private-key-file "$DIR/apiserver.key" \
    --client-ca-file "$DIR/ca.crt" --cert-dir "$DIR/certdir" \
    --service-account-key-file "$DIR/sa.pub" \
    --service-account-signing-key-file "$DIR/sa.key" \
    --service-account-issuer "$SA_ISSUER" --api-audiences "$SA_ISSUER" \
    --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 \
    >>"$DIR/apiserver.log" 2>&1 </dev/null
}

cmd_ready() {
  local dir=$1 body
  load_env "$dir"
  body=$(curl -sS --max-time 2 --cacert "$DIR/ca.crt" --cert "$DIR/admin.crt" \
    --key "$DIR/admin.key" "$SERVER/readyz" 2>/dev/null) || return 1
  [ "$body" = ok ]
}

# The `default` namespace appears shortly after /readyz, created by the
# apiserver itself; its ServiceAccount would come from a controller-manager.
cmd_bootstrap() {
  local dir=$1 deadline=$((SECONDS + 30))
  load_env "$dir"
  until kubectl --kubeconfig "$KUBECONFIG" -n default get serviceaccount default >/dev/null 2>&1 ||
    kubectl --kubeconfig "$KUBECONFIG" -n default create serviceaccount default >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "the default ServiceAccount could not be created within 30 s"
    sleep 0.2
  done
}

# True while PID exists and is not a zombie waiting for its parent to reap it.
running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# A pid file counts only while its process still runs from this DIR, so a
# recycled pid is never signalled.
live_pid() {
  local dir=$1 what=$2 pid args
  [ -f "$dir/$what.pid" ] || return 1
  pid=$(cat "$dir/$what.pid")
  # An argument is DIR itself (this script, before it execs) or a path in it.
  [ -r "/proc/$pid/cmdline" ] || return 1
  # Read whole first: with pipefail, `tr ... | grep -q` fails when grep
  # exits before tr has written everything.
  args=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  grep -qE -- "^$dir(/|\$)" <<<"$args" || return 1
  echo "$pid"
}

cmd_up() {
  local dir=$1 name=$2 what pid deadline
  cmd_prepare "$dir" "$name"
  dir=$(cd "$dir" && pwd)
  for what in etcd apiserver; do
    if ! live_pid "$dir" "$what" >/dev/null; then
      "$0" "exec-$what" "$dir" &
      echo $! >"$dir/$what.pid"
    fi
  done
  deadline=$((SECONDS + 60))
  until cmd_ready "$dir"; do
    for what in etcd apiserver; do
      live_pid "$dir" "$what" >/dev/null || {
        tail -20 "$dir/$what.log" >&2 || true
        die "$what exited; see $dir/$what.log"
      }
    done
    [ "$SECONDS" -lt "$deadline" ] || die "not ready within 60 s; see $dir/apiserver.log"
    sleep 0.2
  done
  cmd_bootstrap "$dir"
  cat "$dir/env"
}

cmd_down() {
  local dir=$1 what pid pids=() deadline
  [ -d "$dir" ] || return 0
  [ -f "$dir/$MARKER" ] || die "$dir was not made by $0 prepare; not removing it"
  dir=$(cd "$dir" && pwd)
  for what in apiserver etcd; do
    if pid=$(live_pid "$dir" "$what"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  # SIGTERM lets etcd close its data cleanly; SIGKILL after 15 s, give up after 30 s.
  deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while running "$pid"; do
      if [ "$SECONDS" -ge $((deadline + 15)) ]; then
        die "process $pid does not exit; not removing $dir"
      elif [ "$SECONDS" -ge "$deadline" ]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
  done
  rm -rf "$dir"
}

[ $# -ge 2 ] || usage
cmd=$1
shift
case "$cmd" in
  prepare) [ $# -eq 2 ] || usage; cmd_prepare "$@" ;;
  exec-etcd) cmd_exec_etcd "$1" ;;
  exec-apiserver) cmd_exec_apiserver "$1" ;;
  ready) cmd_ready "$1" ;;
  bootstrap) cmd_bootstrap "$1" ;;
  up) [ $# -eq 2 ] || usage; cmd_up "$@" ;;
  down) cmd_down "$1" ;;
  *) usage ;;
esac
