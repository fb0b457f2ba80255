#!/usr/bin/env bash
# The main job: set up the venv and run the fan-out demo.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash ci/setup-venv.sh | tail -n 1)
exec "$py" -m fastfanout.demo "$@"
