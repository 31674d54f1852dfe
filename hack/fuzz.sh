#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ (the exit relay's own HTTP/1.1
# path) for a bounded time each.
#   hack/fuzz.sh [SECONDS]   each target for SECONDS (default: FUZZ_SECONDS, else 180)
#   hack/fuzz.sh --smoke     each target for 15 s (make test's smoke)
# FUZZ_NIGHTLY=no builds with the default toolchain and RUSTC_BOOTSTRAP=1
# even where rustup has a nightly (what a machine without one does).
# New inputs libFuzzer finds go to fuzz/target/corpus/<target> (not
# committed); the committed seeds in fuzz/corpus/<target> are only read.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --smoke ]]; then
	seconds=15
else
	seconds=${1:-${FUZZ_SECONDS:-180}}
fi

# cargo-fuzz comes from crates.io.
if ! cargo fuzz --version >/dev/null 2>&1; then
	cargo install --locked cargo-fuzz
fi
# cargo-fuzz passes -Z flags to rustc: a nightly toolchain when rustup has
# one (unless FUZZ_NIGHTLY=no), else the default one with RUSTC_BOOTSTRAP=1.
toolchain=()
if [[ ${FUZZ_NIGHTLY:-} != no ]] && rustup run nightly rustc --version >/dev/null 2>&1; then
	toolchain=(+nightly)
else
	export RUSTC_BOOTSTRAP=1
fi

# No sanitizer: the code under test is safe Rust; overflow checks and debug
# assertions stay on (cargo-fuzz's default), and coverage guides the search.
fuzz=(cargo "${toolchain[@]}" fuzz)
"${fuzz[@]}" build --sanitizer none
mapfile -t targets < <("${fuzz[@]}" list)
for target in "${targets[@]}"; do
	work=fuzz/target/corpus/$target
	mkdir -p "$work" "fuzz/corpus/$target"
	log=fuzz/target/$target.log
	echo "fuzz: $target for ${seconds}s"
	if ! "${fuzz[@]}" run --sanitizer none "$target" "$work" "fuzz/corpus/$target" -- \
		-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		>"$log" 2>&1; then
		tail -n 40 "$log" >&2
		echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
		exit 1
	fi
	grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|INFO: seed corpus)' "$log" || true
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no failure"
