#!/usr/bin/env bash
# The debug leg: build the native core with FASTFANOUT_DEBUG=1 (C asserts, bounds checks,
# the store's invariant checks before every broker call) into build/debug, apart from the
# release build, and run the unit and embedded tests on it under `python -X dev`.
# Usage: ci/test-debug.sh [pytest args]   (ci/test.sh calls it after the release suite)
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash ci/setup-venv.sh test | tail -n 1)
# The release build ran in pip's isolated build environment; this one runs setup.py here.
"$py" -m pip install --quiet --disable-pip-version-check "Cython>=3.0.8" "setuptools>=77" \
    "wheel>=0.41" >&2
rm -rf build/debug
mkdir -p build/debug
cp -r fastfanout build/debug/
find build/debug -name '*.so' -delete
FASTFANOUT_DEBUG=1 "$py" setup.py -q build_ext --build-lib build/debug \
    --build-temp build/debug-temp >/dev/null
# -P: do not put the working directory first on sys.path, so `fastfanout` is the debug copy.
PYTHONPATH=build/debug "$py" -P -X dev -c \
    'import fastfanout._ext.store as s, sys; sys.exit(0 if s.DEBUG else "not the debug build")'
PYTHONPATH=build/debug "$py" -P -X dev -m pytest -p no:cacheprovider -q \
    tests/unit tests/integration/test_embedded_threads.py tests/integration/test_producer.py \
    tests/property/test_broker_model.py \
    tests/property/test_broker_features_model.py "$@"
