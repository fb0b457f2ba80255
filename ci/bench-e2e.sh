#!/usr/bin/env bash
# Run the end-to-end benchmarks (real processes over ipc://, side by side with their raw
# pyzmq baselines) and print their tables: fan-out to queue consumers, stream fan-out to
# listeners, open-loop latency at 10k msg/s, acking one by one, workers against a
# hand-written consume loop and dramatiq + Redis, asyncio publishing, and one million
# scheduled messages; requests and replies one at a time beside pyzmq REQ/REP and NATS
# request-reply; and durable messaging beside the disk's own limit, Redis
# Streams and NATS JetStream (bench/e2e_durable.py: Redis needs a redis-server binary on
# PATH, else its rows are skipped with the reason).
# Each script spawns and cleans up its own processes. Run it on an otherwise idle machine:
# the figures are rates and latencies of processes sharing the cores.
# Usage: ci/bench-e2e.sh   (environment: FASTFANOUT_VENV, PYTHON as for ci/setup-venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(bash ci/setup-venv.sh test,bench,peers | tail -n 1)
git log -1 --format='commit %h %s' 2>/dev/null || true
run() {
    echo
    echo "== $*"
    "$py" "$@"
}
run bench/e2e_fanout.py
run bench/e2e_stream.py
run bench/e2e_latency.py
run bench/e2e_consume_ack.py
run bench/e2e_workers.py      # dramatiq + Redis beside it (skipped without redis-server)
run bench/e2e_aio_publish.py
run bench/e2e_schedule.py --runs 3
run bench/e2e_durable.py --runs 3   # finds nats-server beside the venv's python
run bench/e2e_bridge.py --runs 3    # two brokers through JetStream vs nats-py alone
run bench/e2e_request_reply.py --runs 3   # requests one at a time vs pyzmq REQ/REP, NATS
