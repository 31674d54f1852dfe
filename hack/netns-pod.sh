#!/usr/bin/env bash
# The network side of a "pod" without a kubelet (SUBSTRATE.md, "Pods without a
# kubelet"): a network namespace on a pod network that the host and every
# other pod reach directly, so a kube-apiserver in the host namespace reaches
# a process in it by pod IP (services/proxy refuses loopback addresses), and
# pods reach each other by pod IP.
#
#   netns-pod.sh create NSNAME   prints HOST_IP= POD_IP= PREFIX= HOST_IF= POD_IF=
#   netns-pod.sh delete NSNAME   kills its processes, removes it (idempotent)
#
# The pod network is a switch: a bridge in a dedicated "node" network
# namespace (crp-node). Each pod has a veth pair from the pod to that bridge,
# and one more pair joins the host (interface crpnode) to it. All share one
# /24 of the documentation ranges, 198.51.100.0/24 or 203.0.113.0/24, the
# first that overlaps no address or route of the host (eth0 may sit in
# 192.0.2.0/24): the host is .1, pods .2 to .254.
#
# So host-to-pod and pod-to-pod traffic is switched, never routed: no IP
# forwarding is enabled anywhere and no sysctl is touched. (Forwarding enabled
# only on per-pod host interfaces works too, but the host would then forward
# whatever a pod sends elsewhere, to a deleted pod's IP or the internet, out
# of eth0 with a documentation source address.) A pod's default route ends at
# the host, which does not forward, so such packets are dropped there.
#
# Every interface with an address gets a MAC derived from it (02:00 and the
# four octets). Addresses are reused as pods come and go, and the host and
# other pods keep a neighbour (ARP) entry for up to a minute: with random MACs
# they would keep sending a reused address's frames to the deleted pod's MAC.
#
# The node namespace and crpnode come with the first pod and go with the last.
# Creates and deletes take one lock across processes, so the choice of
# addresses and the node's lifetime never race.
#
# Run a process in a pod with `ip netns exec NSNAME CMD`. Inside, 127.0.0.1 is
# the pod's own loopback: apiservers bound to the host's 127.0.0.1 are reached
# through a forwarder that tests/support/forward.rs runs. The Kubernetes
# objects (Pod with status, Service, Endpoints) are registered by
# tests/support/netns_pod.rs.
set -euo pipefail

NODE=crp-node     # the node's network namespace
HOST_IF=crpnode   # the host's end of the host-to-node pair
UPLINK=uplink     # its other end, in the node, on the bridge
BRIDGE=br0        # in the node
RANGES="198.51.100.0/24 203.0.113.0/24"

log() { printf 'netns-pod: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { grep '^#   netns-pod.sh' "$0" | cut -c3- >&2; exit 2; }
# shellcheck source=hack/lib/net.sh
. "$(dirname "$0")/lib/net.sh"

# Pod veths attached to the bridge (crpNn in the node), one per line.
node_ports() {
  ip -n "$NODE" -o link show type veth 2>/dev/null |
    awk -F': ' '{split($2, a, "@"); if (a[1] ~ /^crp[0-9]+n$/) print a[1]}'
}

# Removes the node and the host's crpnode once no pod uses them; also what is
# left of a create that was killed half-way.
remove_node_if_unused() {
  [ -z "$(node_ports)" ] || return 0
  ip link delete "$HOST_IF" 2>/dev/null || true
  if [ -e "/run/netns/$NODE" ]; then
    ip netns delete "$NODE"
  fi
}

# Makes the node if it is missing; prints the pod network's first three octets.
ensure_node() {
  local cidr
  cidr=$(ip -4 -o addr show dev "$HOST_IF" 2>/dev/null | awk '{print $4}' | head -1)
  if [ -n "$cidr" ] && [ -e "/run/netns/$NODE" ]; then
    printf '%s\n' "${cidr%.*}"
    return
  fi
  [ -z "$(node_ports)" ] || die "$NODE has pods but the host has no $HOST_IF address; delete those pods first"
  remove_node_if_unused
  local net
  net=$(free_range "$RANGES")
  [ -n "$net" ] || die "both $RANGES overlap addresses or routes of the host"
  ip netns add "$NODE"
  ip -n "$NODE" link add "$BRIDGE" type bridge
  ip -n "$NODE" link set "$BRIDGE" up
  ip link add "$HOST_IF" address "$(mac_of "${net%.*}.1")" type veth peer name "$UPLINK" netns "$NODE"
  ip -n "$NODE" link set "$UPLINK" master "$BRIDGE" up
  ip addr add "${net%.*}.1/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  printf '%s\n' "${net%.*}"
}

cmd_create() {
  local ns=$1 base idx node_if pod_if
  [ ! -e "/run/netns/$ns" ] || die "network namespace $ns already exists"
  net_lock
  # From here on a failure must not leave anything behind.
  trap 'ip netns delete "$ns" 2>/dev/null || true; rm -rf "/etc/netns/${ns:?}";
        ip -n "$NODE" link delete "${node_if:-none}" 2>/dev/null || true; remove_node_if_unused' EXIT
  ip netns add "$ns"
  base=$(ensure_node)
  # The interface index gives the address, so a name in use marks it taken.
  idx=
  for i in $(seq 0 252); do
    if ! ip -n "$NODE" link show "crp${i}n" >/dev/null 2>&1; then
      idx=$i
      break
    fi
  done
  [ -n "$idx" ] || die "all 253 pod addresses in $base.0/24 are in use"
  node_if="crp${idx}n"
  pod_if="crp${idx}p"
  ip -n "$NODE" link add "$node_if" type veth peer name "$pod_if" netns "$ns" \
    address "$(mac_of "$base.$((idx + 2))")"
  ip -n "$NODE" link set "$node_if" master "$BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$base.$((idx + 2))/24" dev "$pod_if"
  ip -n "$ns" link set "$pod_if" up
  ip -n "$ns" route add default via "$base.1"
  # The host's resolver is unreachable from the pod, so a lookup there (even
  # Python's http.server does one while binding) would hang for its timeout.
  # `ip netns exec` mounts /etc/netns/NS/* over /etc/*: point the resolver at
  # the pod's own loopback, where nothing listens, so lookups fail at once.
  mkdir -p "/etc/netns/$ns"
  printf '# made by %s for %s\nnameserver 127.0.0.1\n' "$0" "$ns" >"/etc/netns/$ns/resolv.conf"
  trap - EXIT
  printf 'HOST_IP=%s\nPOD_IP=%s\nPREFIX=24\nHOST_IF=%s\nPOD_IF=%s\n' \
    "$base.1" "$base.$((idx + 2))" "$HOST_IF" "$pod_if"
}

cmd_delete() {
  local ns=$1 pids pod_if deadline=$((SECONDS + 10))
  rm -rf "/etc/netns/${ns:?}"
  rmdir /etc/netns 2>/dev/null || true # only when no other namespace uses it
  if [ -e "/run/netns/$ns" ]; then
    pids=$(ip netns pids "$ns" || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086  # one pid per word
      kill -KILL $pids 2>/dev/null || true
      while [ -n "$(ip netns pids "$ns" || true)" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "processes in $ns do not exit: $(ip netns pids "$ns" | tr '\n' ' ')"
        sleep 0.05
      done
    fi
  fi
  net_lock
  if [ -e "/run/netns/$ns" ]; then
    # Deleting the node's end removes the pair at once; the namespace itself
    # is torn down by the kernel asynchronously, once no socket holds it.
    pod_if=$(ip -n "$ns" -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | head -1)
    if [ -n "$pod_if" ]; then
      ip -n "$NODE" link delete "${pod_if%p}n" 2>/dev/null ||
        ip link delete "${pod_if%p}h" 2>/dev/null || # a pod of the former /30-per-pod layout
        true
    fi
    ip netns delete "$ns"
  fi
  remove_node_if_unused
}

[ $# -eq 2 ] || usage
case "$1" in
  create) cmd_create "$2" ;;
  delete) cmd_delete "$2" ;;
  *) usage ;;
esac
