#!/usr/bin/env bash
# A whole local Kubernetes cluster with one real node, for the e2e, the demo
# and humans: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# and a node of containerd (runc, CNI bridge + host-local + loopback), a
# kubelet registered as a Node, and kube-proxy (iptables mode). The binaries
# are hack/build-kubernetes.sh's; images come only from local archives
# (hack/build-image.sh), since nothing can be pulled.
#
#   cluster.sh up DIR NAME INDEX  make and start cluster NAME in DIR (INDEX 0-2
#                                 picks its addresses), wait until its Node is
#                                 Ready; prints DIR/env
#   cluster.sh import DIR ARCHIVE import an OCI archive into the node's containerd
#   cluster.sh down DIR           stop everything of the cluster, remove DIR
#   cluster.sh env DIR            print DIR/env
#
# Everything of cluster NAME runs in the network namespace crn-NAME (its
# "node"), entered with nsenter --net only, so the processes share the host's
# mount namespace: the kubelet's volume mounts are the ones containerd's
# containers see. Namespaces are per cluster, so every cluster uses the
# standard ports (apiserver 6443, kubelet 10250) without clashing, and the
# iptables rules of kubelet and kube-proxy and the forwarding the CNI bridge
# turns on stay inside the node: the host's sysctls and tables are untouched.
#
# Addresses come from one /24 of the documentation ranges (203.0.113.0/24,
# else 198.51.100.0/24, whichever overlaps nothing of the host), split so:
#   .0/27                 a switch (bridge in netns crn-switch) joining the
#                         host (.1, interface crnsw) and the nodes (.2+INDEX)
#   .64+32*INDEX /27      the cluster's pods (CNI bridge cni0 on the node)
#   .160+32*INDEX /27     the cluster's Service IPs
# The host reaches every apiserver at https://<node IP>:6443 over the switch
# and routes nothing: pods and Service IPs are reached from inside a node
# (`nsenter --net=/run/netns/crn-NAME CMD`), or through an apiserver.
#
# Every process of the cluster lives in the cgroup /crn-NAME (every v1
# hierarchy), the kubelet's pods under /crn-NAME/kubepods, so `down` finds and
# kills all of them, containerd's shims included, however the caller ended.
# NAME, DIR, NETNS, NODE_IP, SERVER, ... come from DIR/env (load_env).
# shellcheck disable=SC2153
set -euo pipefail

HACK=$(cd "$(dirname "$0")" && pwd)
CACHE=${CLUSTER_RELAY_CACHE:-/var/cache/cluster-relay}
KUBE_VERSION=${KUBE_VERSION:-1.37.2}
KUBE_BIN=${KUBE_BIN:-$CACHE/kubernetes-$KUBE_VERSION-r1}
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/cluster-relay/pause:$KUBE_VERSION}
MARKER=.cluster-relay-cluster
SWITCH=crn-switch
HOST_IF=crnsw
SA_ISSUER=https://kubernetes.default.svc
RANGES="203.0.113.0/24 198.51.100.0/24"
# Every mounted hierarchy (v1 controllers, the named systemd one, and the
# unified v2 one of a hybrid host): the kubelet wants its cgroup root in all.
CGROUP_HIERARCHIES=$(find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d -printf '%f ')

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { grep '^#   cluster.sh' "$0" | cut -c3- >&2; exit 2; }
# shellcheck source=hack/lib/net.sh
. "$HACK/lib/net.sh"

load_env() {
  [ -f "$1/env" ] || die "$1/env is missing; run: $0 up $1 NAME INDEX"
  # shellcheck source=/dev/null
  . "$1/env"
}

# --- network -------------------------------------------------------------------

# The switch and the host's port on it; prints the /24's first three octets.
ensure_switch() {
  local cidr net
  cidr=$(ip -4 -o addr show dev "$HOST_IF" 2>/dev/null | awk '{print $4}' | head -1)
  if [ -n "$cidr" ] && [ -e "/run/netns/$SWITCH" ]; then
    printf '%s\n' "${cidr%.*}"
    return
  fi
  ip link delete "$HOST_IF" 2>/dev/null || true
  [ ! -e "/run/netns/$SWITCH" ] || ip netns delete "$SWITCH"
  net=$(free_range "$RANGES")
  [ -n "$net" ] || die "both $RANGES overlap addresses or routes of the host"
  local base=${net%.*}
  ip netns add "$SWITCH"
  ip -n "$SWITCH" link add br0 type bridge
  ip -n "$SWITCH" link set br0 up
  ip link add "$HOST_IF" address "$(mac_of "$base.1")" type veth peer name host netns "$SWITCH"
  ip -n "$SWITCH" link set host master br0 up
  ip addr add "$base.1/27" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  printf '%s\n' "$base"
}

remove_switch_if_unused() {
  [ -e "/run/netns/$SWITCH" ] || return 0
  # awk decides (not grep -q, which may stop reading early and, with
  # pipefail, fail the pipeline: the switch would go while nodes use it).
  if ip -n "$SWITCH" -o link show type veth | awk -F': ' '$2 ~ /^sw-/ {found = 1} END {exit !found}'; then
    return 0
  fi
  ip link delete "$HOST_IF" 2>/dev/null || true
  ip netns delete "$SWITCH"
}

make_node_netns() {
  local ns=$1 ip=$2 base=$3 index=$4 other
  ip netns add "$ns"
  ip -n "$SWITCH" link add "sw-$NAME" type veth peer name eth0 netns "$ns" address "$(mac_of "$ip")"
  ip -n "$SWITCH" link set "sw-$NAME" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ip/27" dev eth0
  ip -n "$ns" link set eth0 up
  # Nodes route their pods' traffic (the CNI bridge would turn this on too);
  # per namespace, so the host's own setting is untouched. No default route:
  # a node reaches the switch and nothing else.
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
  # The other clusters' pods are behind their nodes, so pods of different
  # clusters see each other's real addresses (an apiserver's client, a
  # relay's peer), as on a flat network.
  for other in 0 1 2; do
    [ "$other" = "$index" ] && continue
    ip -n "$ns" route add "$base.$((64 + 32 * other))/27" via "$base.$((2 + other))"
  done
  # A route for the cluster's Service IPs, so the node's own connections to
  # them get as far as kube-proxy's DNAT (which then routes to the pod).
  ip -n "$ns" route add "$base.$((160 + 32 * index))/27" dev eth0
}

# --- certificates and configuration --------------------------------------------

# Signs DIR/pki/$leaf.crt with the cluster CA; $ext holds X.509 v3 extensions
# (rustls rejects v1 certificates, which openssl makes without -extfile).
sign_leaf() {
  local leaf=$1 subj=$2 ext=$3 pki=$DIR/pki
  printf '%s\n' "$ext" >"$pki/$leaf.ext"
  openssl req -new -nodes -newkey rsa:2048 -keyout "$pki/$leaf.key" \
    -out "$pki/$leaf.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -sha256 -days 3650 -in "$pki/$leaf.csr" \
    -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -extfile "$pki/$leaf.ext" -out "$pki/$leaf.crt" 2>/dev/null
  rm -f "$pki/$leaf.csr" "$pki/$leaf.ext"
}

client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

# kubeconfig $1 for the client certificate pki/$2, against $3.
write_kubeconfig() {
  local kc=$1 leaf=$2 server=$3
  kubectl config --kubeconfig "$kc" set-cluster "$NAME" --server "$server" \
    --certificate-authority "$DIR/pki/ca.crt" --embed-certs=true >/dev/null
  kubectl config --kubeconfig "$kc" set-credentials "$leaf" \
    --client-certificate "$DIR/pki/$leaf.crt" --client-key "$DIR/pki/$leaf.key" --embed-certs=true >/dev/null
  kubectl config --kubeconfig "$kc" set-context "$NAME" --cluster "$NAME" --user "$leaf" >/dev/null
  kubectl config --kubeconfig "$kc" use-context "$NAME" >/dev/null
}

prepare() {
  local dir=$1 name=$2 index=$3 base
  case "$index" in 0 | 1 | 2) ;; *) die "INDEX must be 0, 1 or 2, not $index" ;; esac
  [[ "$name" =~ ^[a-z][a-z0-9-]{0,11}$ ]] || die "NAME must be 1-12 of a-z, 0-9, '-'"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  touch "$dir/$MARKER"
  NAME=$name DIR=$dir
  net_lock
  base=$(ensure_switch)
  local node_ip="$base.$((2 + index))"
  local pod_cidr="$base.$((64 + 32 * index))/27"
  # Services: the /27s above the pods' (.160, .192, .224).
  local service_cidr="$base.$((160 + 32 * index))/27"
  local first_service_ip="$base.$((160 + 32 * index + 1))"
  local ns="crn-$name"
  [ ! -e "/run/netns/$ns" ] || die "network namespace $ns exists: $0 down the cluster that made it"
  make_node_netns "$ns" "$node_ip" "$base" "$index"
  # From here on the namespace (and the cgroup named alike) is this
  # directory's to remove, even if `up` dies before writing env.
  echo "$ns" >"$dir/netns"
  exec 9>&-

  umask 077
  mkdir -p "$dir/pki" "$dir/etcd" "$dir/cni" "$dir/kubelet" "$dir/containerd"
  local pki=$dir/pki
  openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=cluster-relay-$name-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  sign_leaf apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,IP:127.0.0.1,IP:$first_service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$name"
  sign_leaf admin "/O=system:masters/CN=admin" "$client_ext"
  sign_leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
  sign_leaf controller-manager "/CN=system:kube-controller-manager" "$client_ext"
  sign_leaf scheduler "/CN=system:kube-scheduler" "$client_ext"
  sign_leaf kube-proxy "/CN=system:kube-proxy" "$client_ext"
  sign_leaf kubelet "/O=system:nodes/CN=system:node:$name" "$client_ext"
  sign_leaf kubelet-serving "/CN=$name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,DNS:$name"
  # Where hack/controlplane.sh keeps it too (tests/support reads it there).
  cp "$pki/ca.crt" "$dir/ca.crt"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

  local server="https://$node_ip:6443" local_server="https://127.0.0.1:6443"
  write_kubeconfig "$dir/admin.kubeconfig" admin "$server"
  write_kubeconfig "$dir/controller-manager.kubeconfig" controller-manager "$local_server"
  write_kubeconfig "$dir/scheduler.kubeconfig" scheduler "$local_server"
  write_kubeconfig "$dir/kube-proxy.kubeconfig" kube-proxy "$local_server"
  write_kubeconfig "$dir/kubelet.kubeconfig" kubelet "$local_server"

  # The CNI network: a bridge with the pods' gateway; host-local's leases in
  # DIR, so they go with the cluster. Hairpin lets a pod reach itself
  # through its own Service.
  cat >"$dir/cni/10-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "crn-$name",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$pod_cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE here: lowering an OOM score fails, and runc with it.
  restrict_oom_score_adj = true
  tolerate_missing_hugepages_controller = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
    max_conf_num = 1
EOF
  : >"$dir/resolv.conf"
  cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
# No systemd here, and cgroups are v1 (see SUBSTRATE.md); every pod of this
# node under /crn-$name, apart from the other clusters' nodes.
cgroupDriver: cgroupfs
cgroupRoot: /crn-$name
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
# containerd 1.6 does not pin the pause image and nothing can pull it back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
# No cluster DNS: pods find the apiserver by KUBERNETES_SERVICE_HOST, and
# Services by the API.
clusterDomain: cluster.local
resolvConf: $dir/resolv.conf
maxPods: 30
serializeImagePulls: false
rotateCertificates: false
EOF
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $name
mode: iptables
clusterCIDR: $pod_cidr
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Service traffic is masqueraded, so a pod reaching another pod on the same
# bridge through a Service gets the answer back through the node (no
# br_netfilter needed). Conntrack sysctls are global on this kernel: left alone.
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  {
    printf 'NAME=%q\n' "$name"
    printf 'DIR=%q\n' "$dir"
    printf 'INDEX=%q\n' "$index"
    printf 'NETNS=%q\n' "$ns"
    printf 'NODE_IP=%q\n' "$node_ip"
    printf 'POD_CIDR=%q\n' "$pod_cidr"
    printf 'SERVICE_CIDR=%q\n' "$service_cidr"
    printf 'SERVER=%q\n' "$server"
    printf 'KUBECONFIG=%q\n' "$dir/admin.kubeconfig"
    printf 'KUBE_VERSION=%q\n' "$KUBE_VERSION"
    printf 'CONTAINERD_SOCK=%q\n' "$dir/containerd/containerd.sock"
  } >"$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

# --- processes -------------------------------------------------------------------

cgroup_make() {
  local h
  for h in $CGROUP_HIERARCHIES; do
    [ -d "/sys/fs/cgroup/$h" ] || continue
    mkdir -p "/sys/fs/cgroup/$h/crn-$NAME/system"
    if [ "$h" = cpuset ]; then
      # A new cpuset has no CPUs or memory nodes until given its parent's.
      for f in cpuset.cpus cpuset.mems; do
        cat "/sys/fs/cgroup/cpuset/$f" >"/sys/fs/cgroup/cpuset/crn-$NAME/$f"
        cat "/sys/fs/cgroup/cpuset/$f" >"/sys/fs/cgroup/cpuset/crn-$NAME/system/$f"
      done
    fi
  done
}

# Starts $1 (a log name) as `$2...` detached, in the node's network namespace
# and the cluster's cgroup; its pid goes to DIR/$1.pid.
start() {
  local what=$1
  shift
  (
    for h in $CGROUP_HIERARCHIES; do
      [ -d "/sys/fs/cgroup/$h/crn-$NAME/system" ] && echo $BASHPID >"/sys/fs/cgroup/$h/crn-$NAME/system/cgroup.procs"
    done
    exec setsid nsenter --net="/run/netns/$NETNS" -- "$@" >>"$DIR/$what.log" 2>&1 </dev/null
  ) &
  echo $! >"$DIR/$what.pid"
}

alive() {
  local pid
  pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
  [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]
}

# Waits up to $2 s for `$3...` to succeed, failing early if a started process
# named in $1 (space-separated) died.
wait_for() {
  local watch=$1 seconds=$2 what
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    for what in $watch; do
      alive "$what" || { tail -20 "$DIR/$what.log" >&2; die "$what exited; see $DIR/$what.log"; }
    done
    [ "$SECONDS" -lt "$deadline" ] || die "not within ${seconds}s: $*"
    sleep 0.2
  done
}

in_node() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
kctl() { kubectl --kubeconfig "$KUBECONFIG" "$@"; }

cmd_up() {
  local dir=$1 name=$2 index=$3
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd; do
    [ -x "$KUBE_BIN/$b" ] || die "$KUBE_BIN/$b is missing: run hack/build-kubernetes.sh"
  done
  [ ! -f "$dir/env" ] || die "$dir is in use: $0 down $dir first"
  prepare "$dir" "$name" "$index"
  # prepare's umask 077 kept the keys private; the daemons need the usual
  # one, or containerd makes image snapshots only root may enter, and a
  # container's non-root user cannot reach its own binary.
  umask 022
  dir=$(cd "$dir" && pwd)
  load_env "$dir"
  cgroup_make
  local pki=$DIR/pki
  start etcd "$KUBE_BIN/etcd" --name "$NAME" --data-dir "$DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381
  start apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 --secure-port 6443 --bind-address 0.0.0.0 \
    --advertise-address "$NODE_IP" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --cert-dir "$DIR/apiserver-certs" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer "$SA_ISSUER" --api-audiences "$SA_ISSUER" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range "$SERVICE_CIDR"
  wait_for "etcd apiserver" 90 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" \
    --key "$pki/admin.key" "$SERVER/readyz"
  start controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR"
  start scheduler "$KUBE_BIN/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false
  start containerd containerd --config "$DIR/containerd/config.toml"
  wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
  cmd_import "$DIR" "${PAUSE_ARCHIVE:-$CACHE/images/pause-$KUBE_VERSION.tar}"
  start kubelet "$KUBE_BIN/kubelet" --config "$DIR/kubelet/config.yaml" \
    --kubeconfig "$DIR/kubelet.kubeconfig" --hostname-override "$NAME" --node-ip "$NODE_IP" \
    --root-dir "$DIR/kubelet/root" --cert-dir "$DIR/kubelet/pki"
  start kube-proxy "$KUBE_BIN/kube-proxy" --config "$DIR/kube-proxy.yaml"
  wait_for "kubelet kube-proxy controller-manager scheduler" 120 \
    kctl wait --for=condition=Ready "node/$NAME" --timeout=1s
  # The token controller makes each namespace's `default` ServiceAccount;
  # pods wait for it.
  wait_for controller-manager 60 kctl -n default get serviceaccount default
  cat "$DIR/env"
}

cmd_import() {
  local dir=$1 archive=$2 name
  load_env "$dir"
  [ -f "$archive" ] || die "$archive is missing (hack/build-image.sh builds it)"
  # The archive's ref is the image's full name (build-image.sh), which the
  # import takes as the image's name; the kubelet sees only the k8s.io
  # namespace. (--index-name would name the archive's index, which ctr 1.6
  # then cannot find: "content digest ... not found".)
  name=$(tar xOf "$archive" index.json | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])')
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null
  # Listed whole first: with pipefail, `ctr ... | grep -q` fails when grep
  # stops reading early and ctr gets SIGPIPE.
  local images
  images=$(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q)
  grep -qxF "$name" <<<"$images" || die "$archive did not import as $name"
  log "imported $name into $NAME"
}

cgroup_pids() {
  local h=$1
  [ -d "/sys/fs/cgroup/$h/crn-$NAME" ] || return 0
  find "/sys/fs/cgroup/$h/crn-$NAME" -name cgroup.procs -exec cat {} + 2>/dev/null
}

cmd_down() {
  local dir=$1 deadline pid
  [ -d "$dir" ] || return 0
  [ -f "$dir/$MARKER" ] || die "$dir was not made by $0; not removing it"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/env" ]; then
    load_env "$dir"
  elif [ -f "$dir/netns" ]; then
    # Killed before `up` wrote env, after it made the node.
    NETNS=$(cat "$dir/netns") DIR=$dir
    NAME=${NETNS#crn-}
  else
    # Nothing made yet, or `up` refused (another cluster of that name
    # runs): nothing here is this directory's but the directory.
    rm -rf "$dir"
    return 0
  fi
  # etcd gets a SIGTERM to close its data; everything else is killed.
  if pid=$(cat "$DIR/etcd.pid" 2>/dev/null); then kill -TERM "$pid" 2>/dev/null || true; fi
  deadline=$((SECONDS + 30))
  while [ -n "$(cgroup_pids pids)" ]; do
    # shellcheck disable=SC2046  # one pid per word
    kill -KILL $(cgroup_pids pids) 2>/dev/null || true
    [ "$SECONDS" -lt "$deadline" ] || die "processes of $NAME do not exit: $(cgroup_pids pids | tr '\n' ' ')"
    sleep 0.1
  done
  # Mounts under DIR (container rootfs, pod volumes, pod network
  # namespaces), deepest first.
  awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  local h
  for h in $CGROUP_HIERARCHIES; do
    [ -d "/sys/fs/cgroup/$h/crn-$NAME" ] || continue
    find "/sys/fs/cgroup/$h/crn-$NAME" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  net_lock
  if [ -n "${NETNS:-}" ] && [ -e "/run/netns/$NETNS" ]; then
    ip -n "$SWITCH" link delete "sw-$NAME" 2>/dev/null || true
    ip netns delete "$NETNS"
  fi
  remove_switch_if_unused
  exec 9>&-
  rm -rf "$DIR"
}

[ $# -ge 2 ] || usage
cmd=$1
shift
case "$cmd" in
  up) [ $# -eq 3 ] || usage; cmd_up "$@" ;;
  import) [ $# -eq 2 ] || usage; cmd_import "$@" ;;
  down) [ $# -eq 1 ] || usage; cmd_down "$1" ;;
  env) [ $# -eq 1 ] || usage; load_env "$1"; cat "$1/env" ;;
  *) usage ;;
esac
