#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install fastfanout into it,
# editable, with the given extras. Prints the venv's python path on the last line.
# Usage: ci/setup-venv.sh [extras]   e.g. ci/setup-venv.sh test,bench
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
venv=${FASTFANOUT_VENV:-.venv}
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "fastfanout needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" >&2
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" >&2
echo "$venv/bin/python"
