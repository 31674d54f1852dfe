#!/usr/bin/env bash
# Fails when a feature module (one per subcommand) imports another feature's
# module, or when a shared module below them (src/upstream/, src/tls.rs,
# src/token_review.rs, src/flags.rs, src/signature.rs, ...) imports any
# feature: what several features share lives in a layer below them all.
# STYLE.md, "Layers".
set -euo pipefail
cd "$(dirname "$0")/.."
features="apiserver_relay provisioner service_relay read_cache webhook_fanout delivery_forwarder"
# The modules that dispatch to every feature, and so are above them.
above="cli lib main"
status=0
# Prints the lines of the files of module $1 that import feature $2:
# `crate::g::...`, or `g::...` inside a `use crate::{ ... }` group.
imports() {
  local files
  files=$(find "src/$1.rs" "src/$1" -name '*.rs' 2>/dev/null)
  # shellcheck disable=SC2086  # one file per word
  grep -nE "crate::$2(::|\b)|^\s+$2::" $files /dev/null || true
}
# Fails the check when module $2 (a $1) imports feature $3.
refuse() {
  local hits
  hits=$(imports "$2" "$3")
  if [ -n "$hits" ]; then
    printf 'check-layers: %s %s imports feature %s:\n%s\n' "$1" "$2" "$3" "$hits" >&2
    status=1
  fi
}
for f in $features; do
  for g in $features; do
    [ "$f" = "$g" ] || refuse feature "$f" "$g"
  done
done
for file in src/*.rs; do
  m=$(basename "$file" .rs)
  case " $features $above " in *" $m "*) continue ;; esac
  for g in $features; do
    refuse "shared module" "$m" "$g"
  done
done
[ "$status" = 0 ] && echo "check-layers: no feature imports another, no shared module imports a feature"
exit "$status"
