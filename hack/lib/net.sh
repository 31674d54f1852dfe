# shellcheck shell=bash
# Sourced by hack/netns-pod.sh and hack/cluster.sh: what both need to put
# test networks on documentation ranges beside the host's own, never over it.
# Expects log() and die() from the script that sources it.

# One lock across both scripts and all processes: choosing a free range and
# creating or removing the interfaces that hold it never race.
NET_LOCK=/run/cluster-relay-netns-pod.lock

net_lock() {
  exec 9>"$NET_LOCK"
  flock -w 30 9 || die "could not take $NET_LOCK within 30 s"
}

# Every IPv4 prefix the host already has: addresses and main-table routes
# (except the default route, which overlaps everything).
host_prefixes() {
  ip -4 -o addr show | awk '{print $4}'
  ip -4 route show | awk '
    $1 == "default" { next }
    $1 ~ /^(unicast|local|broadcast|multicast|blackhole|unreachable|prohibit|throw)$/ { print $2; next }
    { print $1 }'
}

# The first of the /24s given (in order of preference) that overlaps nothing
# on the host; prints nothing when all do.
free_range() {
  python3 - "$(host_prefixes | tr '\n' ' ')" "$*" <<'PY'
import ipaddress, sys
used = [ipaddress.ip_network(p, strict=False) for p in sys.argv[1].split()]
for rng in map(ipaddress.ip_network, sys.argv[2].split()):
    if not any(rng.overlaps(u) for u in used):
        print(rng)
        break
PY
}

# The MAC of the interface that has IPv4 address $1: addresses are reused as
# pods and nodes come and go, and neighbours keep ARP entries for a while;
# with random MACs they would send a reused address's frames to a gone MAC.
mac_of() {
  local IFS=.
  # shellcheck disable=SC2086  # split into octets on purpose
  printf '02:00:%02x:%02x:%02x:%02x' $1
}
