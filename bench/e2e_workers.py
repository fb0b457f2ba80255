"""Workers: a no-op handler through ``fastfanout.Worker`` vs a hand-written consume loop.

python bench/e2e_workers.py [--messages 100000] [--runs 3] [--dramatiq-messages 10000]
    [--transport local] [--json FILE] [--plot FILE]

Runs the installed harness (``fastfanout.bench``): one publisher process
(``publish_batch_nowait`` of 1,000) -> broker process -> one queue -> one consumer
process, 64-byte messages, each numbered and checked, consumed three ways in the same
run (``--receive``), the first the baseline of the ratios:

- ``each``: the hand-written loop, ``for message in client.consume(q): message.ack()``;
- ``worker``: a ``fastfanout.Worker`` handler per message (``concurrency=1``,
  ``prefetch=1000``) in the consumer process, acked when it returns;
- ``worker-batch``: a handler of ``batch_size=100``.

Every handler hands each body to the harness's check (what a no-op handler does not).
The same as::

    fastfanout bench workqueue -n N --runs R --receive each --receive worker \
        --receive worker-batch --peers none

Then, with its own code (dramatiq is not a harness peer: its workers are processes of
its own, started by its command line): the per-message no-op through dramatiq with its
Redis broker (``redis-server`` started on loopback, stopped by PID; skipped with the
reason when absent), one process with dramatiq's default 8 threads, timed from its first
ack (its start is not counted), and fastfanout's worker with a no-op handler against it.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e_common import (
    BODY,
    add_harness_arguments,
    broker_process,
    harness,
    harness_options,
)

import fastfanout

HERE = Path(__file__).resolve().parent
PREFETCH = 1000
DRAMATIQ_THREADS = "8"   # dramatiq's default; with 1 thread it was 8x slower still

# -- what the worker processes run (imported by name: fastfanout worker e2e_workers:app) --

single = fastfanout.Worker(os.environ.get("BENCH_ENDPOINT"))


def noop(message: Any) -> None:
    """The handler: nothing."""


single.handler("q", concurrency=1, prefetch=PREFETCH)(noop)


# -- the runs ------------------------------------------------------------------------------


def _env(endpoint: str) -> dict[str, str]:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "BENCH_ENDPOINT": endpoint}


def _timed(endpoint: str, command: list[str], count: int) -> float:
    """Start ``command``, send ``count`` messages, time until all are acked."""
    from fastfanout.client import connect

    with connect(endpoint) as client:
        client.create_queue("q", max_messages=10_000_000)
        process = subprocess.Popen(command, env=_env(endpoint))
        try:
            deadline = time.monotonic() + 30
            while client.server_stats().get("consumers", 0) < 1:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{command} did not start consuming")
                time.sleep(0.01)
            started = time.perf_counter()
            for start in range(0, count, 10_000):
                client.send_batch("q", [BODY] * min(10_000, count - start))
            while client.stats().queues["q"].acked < count:
                time.sleep(0.0005)
            elapsed = time.perf_counter() - started
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        client.delete_queue("q")
    return count / elapsed


def _dramatiq(count: int) -> float | str:
    """The per-message no-op through dramatiq + Redis; or why it cannot run."""
    try:
        import dramatiq  # noqa: F401
        from peers import PeerUnavailable, redis_server
    except ImportError:
        return "dramatiq is not installed (pip install 'dramatiq[redis]')"
    try:
        with redis_server(appendfsync="no") as peer:
            import redis

            env = {**_env(""), "BENCH_REDIS_URL": peer.url}
            r = redis.Redis(host=peer.host, port=peer.port)
            subprocess.run([sys.executable, "-c",
                            f"import e2e_dramatiq_app as app; app.send({count})"],
                           env=env, check=True)
            worker = subprocess.Popen(
                [sys.executable, "-m", "dramatiq", "e2e_dramatiq_app", "--processes", "1",
                 "--threads", DRAMATIQ_THREADS], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            try:
                # timed from the first message acked: the worker's start is not counted
                deadline = time.monotonic() + 600
                while (left := r.hlen("dramatiq:default.msgs")) >= count:
                    if time.monotonic() > deadline or worker.poll() is not None:
                        raise RuntimeError("dramatiq did not start")
                    time.sleep(0.001)
                started = time.perf_counter()
                while r.hlen("dramatiq:default.msgs") > 0:
                    if time.monotonic() > deadline or worker.poll() is not None:
                        raise RuntimeError("dramatiq did not finish")
                    time.sleep(0.01)
                elapsed = time.perf_counter() - started
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(60)
            return left / elapsed
    except PeerUnavailable as exc:
        return str(exc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--dramatiq-messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    add_harness_arguments(parser, "none")
    args = parser.parse_args()
    status = harness(["workqueue", "-n", str(args.messages), "--runs", str(args.runs),
                      "--receive", "each", "--receive", "worker", "--receive",
                      "worker-batch", *harness_options(args)])
    dramatiq = _dramatiq(args.dramatiq_messages)
    if isinstance(dramatiq, str):
        print(f"dramatiq + Redis: skipped: {dramatiq}")
        return status
    with broker_process() as (endpoint, _):
        worker = statistics.median(
            _timed(endpoint, [sys.executable, "-m", "fastfanout", "worker",
                              "e2e_workers:single", "--log-level", "WARNING"],
                   args.dramatiq_messages) for _ in range(args.runs))
    print(f"per message: dramatiq + Redis, 1 process, {DRAMATIQ_THREADS} threads: "
          f"{dramatiq:,.0f} msg/s; fastfanout worker (no-op handler) {worker:,.0f} msg/s, "
          f"{worker / dramatiq:.1f}x")
    return status


if __name__ == "__main__":
    sys.exit(main())
