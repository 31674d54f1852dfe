#!/usr/bin/env bash
# make demo: the whole hosted topology on two real local clusters of the
# current Kubernetes ('hosting' and 'managed', each with a real node:
# containerd, kubelet, kube-proxy; hack/cluster.sh), deployed from the Helm
# chart with the values the add-on framework passes in hosted mode, running
# as pods of the agent's image (hack/build-image.sh). It prints each
# cluster's version and `kubectl get pods -o wide` while everything runs,
# then: the managed kubeconfig is provisioned and rotates, kubectl reaches
# the managed cluster through the apiserver relay, the echo Service answers
# through the service relay, a read is served by the read cache, the
# footprint of the hosting-side pods, and the cleanup Job removes it all.
#
# The driver is the e2e (tests/e2e_local.rs); this prints its narration.
# Everything it starts is removed when it ends.
set -euo pipefail

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

printf '\033[1mcluster-relay: the hosted topology from the Helm chart, on two local clusters with real nodes\033[0m\n'
printf 'building the e2e driver (cargo, debug profile)...\n'
"$CARGO" test --locked --test e2e_local --no-run 2>&1 | tail -n 1
set +e
"$CARGO" test --locked --test e2e_local -- --nocapture 2>&1 |
  grep --line-buffered -E '^(==|   |test result|thread .* panicked|  left:|timed out)'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "demo: the hosted topology did not come up; run: cargo test --test e2e_local -- --nocapture" >&2
  exit "$status"
fi
printf '\n\033[1mDone\033[0m: everything the demo started has been removed.\n'
