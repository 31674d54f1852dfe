#!/usr/bin/env bash
# make demo: the whole hosted topology on two real local control planes
# ('hosting' and 'managed': etcd and kube-apiserver processes), deployed the
# way the Helm chart deploys it. The chart is rendered with the values the
# add-on framework passes in hosted mode; its manifests are applied to the
# cluster each belongs to; each Deployment's command runs as a process in its
# own network namespace with its own ServiceAccount's token. Then:
# the managed kubeconfig is provisioned and rotates, kubectl reaches the
# managed cluster through the apiserver relay, a managed Service answers
# through the service relay, a read is served by the read cache (once the
# binary has `read-cache`), and the cleanup Job's command removes it all.
#
# The driver is the local-process e2e (tests/e2e_local.rs); this prints its
# narration. Everything it starts is removed when it ends.
set -euo pipefail

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

printf '\033[1mcluster-relay: the hosted topology from the Helm chart, on local control planes\033[0m\n'
printf 'building the agent and the e2e driver (cargo, debug profile)...\n'
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
