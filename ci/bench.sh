#!/usr/bin/env bash
# Run the micro-benchmarks (pytest-benchmark) beside their baselines, then print a table
# of median rates and ratios. Extra arguments go to pytest (e.g. ci/bench.sh -k ring).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash ci/setup-venv.sh test,bench | tail -n 1)
mkdir -p bench/results
"$py" -m pytest bench -p no:cacheprovider -o addopts="" -q --benchmark-only \
    --benchmark-min-rounds=7 --benchmark-columns=min,median,max,rounds \
    --benchmark-json=bench/results/micro.json "$@"
"$py" bench/report.py bench/results/micro.json
