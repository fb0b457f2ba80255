#!/usr/bin/env bash
# Run the micro-benchmarks (pytest-benchmark) beside their baselines.
# Extra arguments go to pytest (e.g. ci/bench.sh -k ring).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash ci/setup-venv.sh test,bench | tail -n 1)
exec "$py" -m pytest bench -p no:cacheprovider -o addopts="" --benchmark-only \
    --benchmark-min-rounds=5 --benchmark-columns=min,median,max,rounds "$@"
