#!/usr/bin/env bash
# The whole test suite, as documented in README.md: `bash scripts/test.sh` as root (`sudo bash
# scripts/test.sh` from a user with sudo). Root is needed: the integration tests start private
# dockerd/containerd/podman/runc instances; see tests/common/engines.rs. tests/fresh_clone.rs (in the
# cargo test step) clones HEAD into an empty folder and runs the real-capture comparisons there, and
# fails when any file refers to paths outside the repository. Stops at the first failing step with a
# non-zero exit status.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup: install missing Debian packages (no daemons started)"
bash scripts/setup-test-host.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

step "cargo test --workspace -- --test-threads=2"
cargo test --workspace -- --test-threads=2

# ---------------------------------------------------------------------------------------------
# LATER STEPS GO HERE (appended by others): benchmark smoke runs, fuzz/property runs, ...
# Each must exit non-zero on failure (set -e stops the script). Keep them below this line.
# ---------------------------------------------------------------------------------------------

step "benchmark smoke: placement-bench (sweep and trace replay; not a timed test)"
cargo run --quiet -p migrun-bench --bin placement-bench -- --gpus h100-80gb:8 --sweep --seeds 3 --arrivals 500 --loads 0.9
cargo run --quiet -p migrun-bench --bin placement-bench -- --gpus h100-80gb:2 --trace examples/traces/sample.jsonl --json >/dev/null

step "benchmark smoke: overhead-bench (docker launcher, runc hooks, shim, CDI, alloc contention; not a timed test)"
cargo build --quiet --bin migrun
cargo build --quiet -p fake-nvml
cargo run --quiet -p migrun-bench --bin overhead-bench -- all --smoke
# The driver latency model on (delays / 10 in smoke): a runc burst, a warm start, contention (issue 23).
cargo run --quiet -p migrun-bench --bin latency-bench -- all --smoke

step "benchmark smoke: slurm-bench (private Slurm cluster, srun --mig vs srun; not a timed test)"
cargo build --quiet -p migrun -p migrun-spank
cargo run --quiet -p migrun-bench --bin slurm-bench -- --pairs 6 --warmup 1 --smoke

step "fuzz smoke: every cargo-fuzz target for 10 s from its seed corpus (fails on a crash)"
bash scripts/fuzz-smoke.sh 10

step "all test steps passed"
