#!/usr/bin/env bash
# Placement benchmark sweep (issue 7): both mixes at loads 0.7, 0.9 and 1.1 on h100-80gb:8 over
# 50 paired seeds, with means and 95% confidence intervals of the paired differences
# migrun - first-fit (count and slice-weighted). Extra arguments go to placement-bench,
# e.g. `scripts/placement-sweep.sh --json` or `scripts/placement-sweep.sh --seeds 100`.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/Model name: *//')"
exec cargo run --quiet --release -p migrun-bench --bin placement-bench -- \
    --gpus h100-80gb:8 --sweep --seeds 50 --arrivals 4000 \
    --loads 0.7,0.9,1.1 --mixes uniform,small-heavy "$@"
