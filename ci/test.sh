#!/usr/bin/env bash
# The test command: set up the venv, build the native core, lint, type-check, run pytest.
# Extra arguments go to pytest (e.g. ci/test.sh -k ring).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash ci/setup-venv.sh test | tail -n 1)
"$py" -m ruff check fastfanout tests bench
"$py" -m mypy fastfanout
# Two workers would fight over two cores with the threaded and multi-process tests;
# the suite runs serially.
"$py" -m pytest "$@"
# The debug build (C asserts, bounds checks, invariant checks) runs the core suites too.
bash ci/test-debug.sh
