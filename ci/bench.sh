#!/usr/bin/env bash
# Run the micro-benchmarks (pytest-benchmark) beside their baselines, RUNS times (default
# 3), then print one table of median rates and ratios over the runs.
# Extra arguments go to pytest (e.g. RUNS=1 ci/bench.sh -k ring).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash ci/setup-venv.sh test,bench | tail -n 1)
mkdir -p bench/results
runs=${RUNS:-3}
files=()
for run in $(seq 1 "$runs"); do
    "$py" -m pytest bench -p no:cacheprovider -o addopts="" -q --benchmark-only \
        --benchmark-min-rounds=7 --benchmark-columns=min,median,max,rounds \
        --benchmark-json="bench/results/micro-$run.json" "$@"
    files+=("bench/results/micro-$run.json")
done
"$py" bench/report.py "${files[@]}"
