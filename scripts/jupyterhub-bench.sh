#!/usr/bin/env bash
# Benchmark (docs/benchmarks.md, "JupyterHub spawn"): the time from a JupyterHub spawn request to a ready
# server, with a 1g.10gb slice through migrun's docker runtime and without a GPU, paired in each round on
# one hub, one private dockerd and one image (tests/jupyter.rs, `hub_spawn_bench`, which shares the Jupyter
# test's harness). Prints every pair, the medians, the median paired difference and ratio.
#
#   sudo bash scripts/jupyterhub-bench.sh [ROUNDS]     (default 10)
#
# migrun is the test profile's (debug) build, as in the tests; the hub, docker and the notebook server are
# the same either way. Needs what tests/jupyter.rs needs (root, scripts/setup-test-host.sh's packages; the image is cached).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10} cargo test --quiet --test jupyter -- --exact hub_spawn_bench --nocapture
