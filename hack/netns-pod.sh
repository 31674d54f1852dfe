#!/usr/bin/env bash
# The network side of a "pod" without a kubelet (SUBSTRATE.md, "Pods without a
# kubelet"): a network namespace joined to the host by a veth pair, so a
# kube-apiserver in the host namespace can reach a process in it by pod IP
# (services/proxy refuses loopback addresses).
#
#   netns-pod.sh create NSNAME [HOST_CIDR POD_CIDR]   prints HOST_IP= POD_IP= HOST_IF= POD_IF=
#   netns-pod.sh delete NSNAME                        kills its processes, removes it (idempotent)
#
# Without addresses, create takes the first /30 of 198.51.100.0/24 or
# 203.0.113.0/24 (documentation ranges) that no host address or route
# overlaps, so up to 128 pods coexist and the host's own networks (eth0 may
# sit in 192.0.2.0/24) are never touched. The host end is .1 of the /30, the
# pod end .2, and the pod's default route goes to the host end.
#
# Run a process in it with `ip netns exec NSNAME CMD`. Inside, 127.0.0.1 is the
# pod's own loopback: apiservers bound to the host's 127.0.0.1 are reached
# through a forwarder that tests/support/forward.rs runs (a socket bound to
# 127.0.0.1 inside the pod, relaying to the host's 127.0.0.1).
#
# The Kubernetes objects (Pod with status, Service, Endpoints) are registered
# by tests/support/netns_pod.rs.
set -euo pipefail

# Serialises address choice across processes: the host check and the
# assignment happen under it, so two creates never pick the same /30.
LOCK=/run/cluster-relay-netns-pod.lock

log() { printf 'netns-pod: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { grep '^#   netns-pod.sh' "$0" | cut -c3- >&2; exit 2; }

# Every IPv4 prefix the host already has: addresses and main-table routes
# (except the default route, which overlaps everything).
host_prefixes() {
  ip -4 -o addr show | awk '{print $4}'
  ip -4 route show | awk '
    $1 == "default" { next }
    $1 ~ /^(unicast|local|broadcast|multicast|blackhole|unreachable|prohibit|throw)$/ { print $2; next }
    { print $1 }'
}

# The /30 networks of the documentation ranges that overlap nothing on the host.
free_subnets() {
  python3 - "$(host_prefixes | tr '\n' ' ')" <<'PY'
import ipaddress, sys
used = [ipaddress.ip_network(p, strict=False) for p in sys.argv[1].split()]
for rng in ("198.51.100.0/24", "203.0.113.0/24"):
    for net in ipaddress.ip_network(rng).subnets(new_prefix=30):
        if not any(net.overlaps(u) for u in used):
            print(net)
PY
}

# Interface names derive from the subnet (crp0..crp127 + h/p), so a name in
# use also marks its subnet as taken.
if_index() {
  python3 - "$1" <<'PY'
import ipaddress, sys
net = ipaddress.ip_network(sys.argv[1], strict=False)
for i, rng in enumerate(("198.51.100.0/24", "203.0.113.0/24")):
    if net.subnet_of(ipaddress.ip_network(rng)):
        print(i * 64 + (int(net.network_address) - int(ipaddress.ip_network(rng).network_address)) // 4)
        break
else:
    print("x" + str(int(net.network_address)))
PY
}

cmd_create() {
  local ns=$1 host_cidr=${2:-} pod_cidr=${3:-} idx host_if pod_if net
  [ ! -e "/run/netns/$ns" ] || die "network namespace $ns already exists"
  ip netns add "$ns"
  # From here on a failure must not leave the namespace (and its veth) behind.
  trap 'ip netns delete "$ns" 2>/dev/null || true; rm -rf "/etc/netns/${ns:?}"' EXIT
  exec 9>"$LOCK"
  flock -w 30 9 || die "could not take $LOCK within 30 s"
  if [ -z "$host_cidr" ]; then
    local cands cand addr
    cands=$(free_subnets)
    net=
    while read -r cand; do
      [ -n "$cand" ] || continue
      idx=$(if_index "$cand")
      ip link show "crp${idx}h" >/dev/null 2>&1 || { net=$cand; break; }
    done <<<"$cands"
    [ -n "$net" ] || die "no free /30 left in 198.51.100.0/24 or 203.0.113.0/24"
    addr=${net%/*}
    host_cidr="${addr%.*}.$((${addr##*.} + 1))/30"
    pod_cidr="${addr%.*}.$((${addr##*.} + 2))/30"
  else
    # Explicit addresses get the same host check as chosen ones.
    net=$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$host_cidr")
    [ "$net" = "$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$pod_cidr")" ] ||
      die "$host_cidr and $pod_cidr are not in one network"
    free_subnets | grep -qxF "$net" || die "$net overlaps an address or route of the host (or is not a documentation /30)"
  fi
  idx=$(if_index "$host_cidr")
  host_if="crp${idx}h"
  pod_if="crp${idx}p"
  ip link add "$host_if" type veth peer name "$pod_if" netns "$ns"
  ip addr add "$host_cidr" dev "$host_if"
  ip link set "$host_if" up
  flock -u 9
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$pod_cidr" dev "$pod_if"
  ip -n "$ns" link set "$pod_if" up
  ip -n "$ns" route add default via "${host_cidr%/*}"
  # The host's resolver is unreachable from the pod, so a lookup there (even
  # Python's http.server does one while binding) would hang for its timeout.
  # `ip netns exec` mounts /etc/netns/NS/* over /etc/*: point the resolver at
  # the pod's own loopback, where nothing listens, so lookups fail at once.
  mkdir -p "/etc/netns/$ns"
  printf '# made by %s for %s\nnameserver 127.0.0.1\n' "$0" "$ns" >"/etc/netns/$ns/resolv.conf"
  trap - EXIT
  printf 'HOST_IP=%s\nPOD_IP=%s\nHOST_IF=%s\nPOD_IF=%s\n' \
    "${host_cidr%/*}" "${pod_cidr%/*}" "$host_if" "$pod_if"
}

cmd_delete() {
  local ns=$1 pids pod_if deadline=$((SECONDS + 10))
  rm -rf "/etc/netns/${ns:?}"
  rmdir /etc/netns 2>/dev/null || true # only when no other namespace uses it
  [ -e "/run/netns/$ns" ] || return 0
  pids=$(ip netns pids "$ns" || true)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $pids 2>/dev/null || true
    while [ -n "$(ip netns pids "$ns" || true)" ]; do
      [ "$SECONDS" -lt "$deadline" ] || die "processes in $ns do not exit: $(ip netns pids "$ns" | tr '\n' ' ')"
      sleep 0.05
    done
  fi
  # Deleting the host end removes the pair at once; the namespace itself is
  # torn down by the kernel asynchronously, and only once no socket holds it.
  pod_if=$(ip -n "$ns" -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | head -1)
  if [ -n "$pod_if" ]; then
    ip link delete "${pod_if%p}h" 2>/dev/null || true
  fi
  ip netns delete "$ns"
}

[ $# -ge 2 ] || usage
cmd=$1
shift
case "$cmd" in
  create) [ $# -eq 1 ] || [ $# -eq 3 ] || usage; cmd_create "$@" ;;
  delete) [ $# -eq 1 ] || usage; cmd_delete "$1" ;;
  *) usage ;;
esac
