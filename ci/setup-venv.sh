#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install fastfanout into it,
# editable, with the given extras. Prints the venv's python path on the last line.
#
# A second run rebuilds nothing that did not change: the native core is built (about a
# minute) only when a source it is made from changed (ext/, setup.py, pyproject.toml) or a
# built module is missing; extras not installed yet are installed without a rebuild.
# Usage: ci/setup-venv.sh [extras]   e.g. ci/setup-venv.sh test,bench
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
venv=${FASTFANOUT_VENV:-.venv}
python=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "fastfanout needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtual environment $venv"
    "$python" -m venv "$venv" >&2
fi
py="$venv/bin/python"
source ci/lib.sh
pip() { quiet_pip "$py" "$@"; }

# What the native core is built from; the stamp remembers the build it made.
stamp_file="$venv/.fastfanout-core"
stamp=$(core_stamp "$py")
built=1
for pyx in ext/*.pyx; do
    name=$(basename "$pyx" .pyx)
    ls fastfanout/_ext/"$name".*.so >/dev/null 2>&1 || built=0
done
"$py" -c 'import fastfanout' 2>/dev/null || built=0

if [ "$built" = 0 ] || [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
    say "building the native core and installing fastfanout${extras:+ with [$extras]} (about a minute)"
    spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    pip -e "$spec"
    echo "$stamp" > "$stamp_file"
    echo "$extras" | tr ',' '\n' | sed '/^$/d' > "$venv/.fastfanout-extras"
else
    # The core is current: install only extras this venv does not have yet.
    missing=()
    for extra in ${extras//,/ }; do
        grep -qx "$extra" "$venv/.fastfanout-extras" 2>/dev/null || missing+=("$extra")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing the ${missing[*]} tools (the native core is up to date)"
        mapfile -t requirements < <("$py" - "${missing[@]}" <<'PY'
import sys
import tomllib

with open("pyproject.toml", "rb") as file:
    extras = tomllib.load(file)["project"]["optional-dependencies"]
for name in sys.argv[1:]:
    print("\n".join(extras[name]))
PY
)
        pip "${requirements[@]}"
        printf '%s\n' "${missing[@]}" >> "$venv/.fastfanout-extras"
    fi
fi
echo "$py"
