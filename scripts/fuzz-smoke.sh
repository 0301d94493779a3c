#!/usr/bin/env bash
# Short fuzz run of every cargo-fuzz target in fuzz/ (CI smoke, not a search for new bugs): builds the
# targets, runs each for N seconds from its seed corpus, prints the executions per target, and exits
# non-zero when any target crashes (the crashing input is kept under fuzz/artifacts/<target>/).
#
# usage: scripts/fuzz-smoke.sh [SECONDS_PER_TARGET (default 10)] [TARGET...]   (default: every target)
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer=address, sancov); only a stable toolchain is
# installed, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them. The fuzz crate is its own workspace
# (fuzz/Cargo.toml), so root `cargo build/test/clippy --workspace` never builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-10}"
[[ $# -gt 0 ]] && shift
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz-smoke: SECONDS must be a positive integer, got '$secs'; usage: scripts/fuzz-smoke.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RUSTC_BOOTSTRAP=1
# The instrumented build must not share a target dir with the normal build (different RUSTFLAGS
# would make each rebuild everything): cargo-fuzz's default, fuzz/target, is gitignored.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz not found; installing it (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "fuzz-smoke: no fuzz targets found in fuzz/" >&2; exit 1; }

start=$SECONDS
# `cargo fuzz build` takes one target or none; build all at once (none) unless a subset was named.
if [[ $# -gt 0 ]]; then
    for t in "${targets[@]}"; do cargo fuzz build "$t"; done
else
    cargo fuzz build
fi
echo "fuzz-smoke: built ${#targets[@]} targets in $((SECONDS - start)) s" >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    seeds="fuzz/corpus/$t"
    [[ -d "$seeds" ]] || { echo "fuzz-smoke: no seed corpus $seeds for target $t; add a few real examples there" >&2; exit 1; }
    # New inputs go to the first (scratch) corpus dir; the committed seeds stay untouched.
    mkdir -p "$work/$t"
    log="$work/$t.log"
    rc=0
    cargo fuzz run "$t" "$work/$t" "$seeds" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    runs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)"
    [[ -n "$runs" ]] || runs="$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n 1 || true)"
    [[ -n "$runs" ]] || runs="?"
    if [[ $rc -ne 0 ]]; then
        echo "fuzz-smoke: target $t FAILED (exit $rc) after $runs executions; last lines of its log:" >&2
        tail -n 40 "$log" >&2
        failed+=("$t")
        summary+=("$(printf '%-14s %12s executions in %ss  CRASH (see fuzz/artifacts/%s/)' "$t" "$runs" "$secs" "$t")")
    else
        summary+=("$(printf '%-14s %12s executions in %ss  ok' "$t" "$runs" "$secs")")
    fi
done

echo "fuzz-smoke summary (${secs}s per target):"
printf '  %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz-smoke: ${#failed[@]} target(s) crashed: ${failed[*]}; reproduce with RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>" >&2
    exit 1
fi
