# Shell helpers shared by the ci/ scripts (sourced, never run).

# core_stamp PY: a hash of everything the native core is built from (and the Python that
# builds it): a build made from the same stamp needs no rebuild.
core_stamp() {
    { "$1" -c 'import sys; print(sys.version)'; cat setup.py pyproject.toml ext/*.pyx ext/*.pxd ext/*.h; } |
        "$1" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# quiet_pip PY ARGS...: pip install, quietly; its warnings about find-links folders this
# machine does not have are noise here.
quiet_pip() {
    local py=$1
    shift
    "$py" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 |
        { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
}
