#!/usr/bin/env bash
# The debug leg: build the native core with FASTFANOUT_DEBUG=1 (C asserts, bounds checks,
# the store's invariant checks before every broker call) into build/debug, apart from the
# release build, and run the unit and embedded tests on it under `python -X dev`.
# The debug core is rebuilt only when ext/, setup.py or pyproject.toml changed.
# Usage: ci/test-debug.sh [pytest args]   (ci/test.sh calls it after the release suite,
# with FASTFANOUT_PY set to the venv's python so the venv is not set up twice)
#        ci/test-debug.sh --build-only      (builds the debug core if it is not current,
# runs no test: ci/test.sh starts this in the background, at low priority, while the
# release suite runs)
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
if [ "${1:-}" = --build-only ]; then
    build_only=1
    shift
fi
py=${FASTFANOUT_PY:-$(bash ci/setup-venv.sh test | tail -n 1)}
say() { echo "test-debug: $*" >&2; }

stamp_file=build/debug/.fastfanout-core
source ci/lib.sh
stamp=$(core_stamp "$py")
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
    say "building the debug core into build/debug (about a minute)"
    # The release build ran in pip's isolated build environment; this one runs setup.py here.
    if ! "$py" -c 'import Cython, setuptools, wheel' 2>/dev/null; then
        quiet_pip "$py" "Cython>=3.0.8" "setuptools>=77" "wheel>=0.41"
    fi
    rm -rf build/debug
    mkdir -p build/debug/fastfanout
    FASTFANOUT_DEBUG=1 "$py" setup.py -q build_ext --build-lib build/debug \
        --build-temp build/debug-temp >/dev/null
    echo "$stamp" > "$stamp_file"
fi
[ "$build_only" = 1 ] && exit 0
# The Python layer is copied fresh each time (cheap); the built modules stay.
find build/debug/fastfanout -name '*.py' -o -name '*.pyi' -o -name py.typed | xargs rm -f
(cd fastfanout && find . \( -name '*.py' -o -name '*.pyi' -o -name py.typed \) \
    -exec cp --parents {} ../build/debug/fastfanout/ \;)
# -P: do not put the working directory first on sys.path, so `fastfanout` is the debug copy.
PYTHONPATH=build/debug "$py" -P -X dev -c \
    'import fastfanout._ext.store as s, sys; sys.exit(0 if s.DEBUG else "not the debug build")'
# The tests run on FASTFANOUT_TEST_WORKERS pytest-xdist workers (default 2; 0: serially,
# in this process), each a python started with the same -P -X dev (not passed on to the
# processes the tests start, as before).
workers=${FASTFANOUT_TEST_WORKERS:-2}
parallel=()
if [ "$workers" != 0 ]; then
    parallel=(--dist worksteal --tx "$workers*popen//python=$(printf '%q' "$py") -P -X dev")
fi
PYTHONPATH=build/debug "$py" -P -X dev -m pytest -p no:cacheprovider -q "${parallel[@]}" \
    tests/unit tests/integration/test_embedded_threads.py tests/integration/test_producer.py \
    tests/property/test_broker_model.py \
    tests/property/test_broker_features_model.py "$@"
