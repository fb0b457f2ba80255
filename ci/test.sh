#!/usr/bin/env bash
# The test command: install the Debian peers when root (ci/debian-peers.sh), set up the
# venv (building the native core only when its sources changed), lint, type-check, run
# the whole pytest suite, then the core suites again on the debug build (built in the
# background meanwhile). Every step runs even when an earlier one failed; the last line
# sums them up and the exit status is non-zero if any failed.
# Extra arguments go to both pytest runs (e.g. ci/test.sh -k ring).
set -uo pipefail
cd "$(dirname "$0")/.."
# Ctrl-C or SIGTERM stops the whole command. Without these traps bash would go on to the
# next step whenever the step running handled the signal itself and exited (pytest,
# pip), as they do; with them it stops once that step has ended.
interrupted() { echo "test.sh: interrupted" >&2; exit "$1"; }
trap 'interrupted 130' INT
trap 'interrupted 143' TERM
debug_build=""
bash ci/debian-peers.sh
py=$(bash ci/setup-venv.sh test,bench,peers | tail -n 1) || exit 1
log=$(mktemp)
debug_log=$(mktemp)
# The debug core (about a minute and a half of compiling) is built in the background, at
# the lowest priority, while ruff, mypy and the release suite run: that suite mostly
# waits, so the build takes little from it. The debug step waits for it; if it failed,
# the step builds again in the foreground and shows why.
# Its own process group (setsid), so that an interrupted run stops the compilers too.
own_group=()
command -v setsid >/dev/null && own_group=(setsid)
FASTFANOUT_PY="$py" "${own_group[@]}" nice -n 19 bash ci/test-debug.sh --build-only \
    >"$debug_log" 2>&1 &
debug_build=$!
stop_debug_build() {
    [ -n "$debug_build" ] || return 0
    kill -- "-$debug_build" 2>/dev/null || kill "$debug_build" 2>/dev/null || true
}
trap 'stop_debug_build; rm -f "$log" "$debug_log"' EXIT
summary=()
failed=0

step() {   # step LABEL COMMAND...: run it, remember "LABEL ok|failed" (with pytest's counts)
    local label=$1
    shift
    echo "== $label" >&2
    "$@" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    local counts
    counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|errors?)\b.* in [0-9.]+s' "$log" |
             tail -n 1 | sed -E 's/^=+ //; s/ in [0-9.]+s.*//')
    if [ "$status" = 0 ]; then
        summary+=("$label ${counts:-ok}")
    else
        summary+=("$label FAILED${counts:+ ($counts)}")
        failed=1
    fi
}

step "ruff" "$py" -m ruff check fastfanout tests bench
step "mypy" "$py" -m mypy fastfanout
# The suite spends most of its time waiting (servers starting, leases and deadlines
# running out), so it runs on FASTFANOUT_TEST_WORKERS pytest-xdist workers (default 2:
# 10.7 -> 6 minutes on a 2-core machine, where 3 gained nothing more); 0 runs it in
# this process, serially.
workers=${FASTFANOUT_TEST_WORKERS:-2}
step "release build" "$py" -m pytest -n "$workers" --dist worksteal "$@"
wait "$debug_build" || echo "test.sh: the debug core's background build failed; building it again" >&2
step "debug build" env FASTFANOUT_PY="$py" bash ci/test-debug.sh "$@"

joined=$(printf '%s, ' "${summary[@]}")
echo "summary: ${joined%, }"
exit "$failed"
