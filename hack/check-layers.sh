#!/usr/bin/env bash
# Fails when a feature module (one per subcommand) imports another feature's
# module: what several features share lives in a layer below them all
# (src/upstream/, src/flags.rs, src/signature.rs, ...). STYLE.md, "Layers".
set -euo pipefail
cd "$(dirname "$0")/.."
features="apiserver_relay provisioner service_relay read_cache webhook_fanout delivery_forwarder"
status=0
for f in $features; do
  files=$(find "src/$f.rs" "src/$f" -name '*.rs' 2>/dev/null)
  for g in $features; do
    [ "$f" = "$g" ] && continue
    # `crate::g::...`, or `g::...` inside a `use crate::{ ... }` group.
    # shellcheck disable=SC2086  # one file per word
    hits=$(grep -nE "crate::$g(::|\b)|^\s+$g::" $files || true)
    if [ -n "$hits" ]; then
      printf 'check-layers: feature %s imports feature %s:\n%s\n' "$f" "$g" "$hits" >&2
      status=1
    fi
  done
done
[ "$status" = 0 ] && echo "check-layers: no feature imports another"
exit "$status"
