"""Workers: a no-op handler through ``fastfanout worker`` vs a hand-written consume loop.

python bench/e2e_workers.py [--messages 100000] [--runs 3] [--dramatiq-messages 10000]
A broker process; each way runs in its own process, started on an empty queue, then
``--messages`` 64-byte messages are sent and the time until the broker counts them all
acked is measured (the same clock for every way):

- per message: a hand-written loop (``client.consume(prefetch=1000)``, call the no-op
  function, ``message.ack()``) — the baseline — and ``fastfanout worker`` with a no-op
  handler (``concurrency=1``, ``prefetch=1000``);
- per batch of 100: the hand-written loop collecting 100 messages, calling the function
  with the list and acking each; ``fastfanout worker`` with ``batch_size=100``;
- the per-message no-op through dramatiq with its Redis broker (``redis-server`` started
  on loopback, stopped by PID; skipped with the reason when absent), one process with
  dramatiq's default 8 threads, timed from its first ack (its start is not counted).

Reports messages per second (median of the runs) and ratios: each worker against its
hand-written loop (the worker's overhead), and fastfanout's worker against dramatiq.
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

from e2e_common import BODY, broker_process

import fastfanout

HERE = Path(__file__).resolve().parent
PREFETCH = 1000
BATCH = 100
DRAMATIQ_THREADS = "8"   # dramatiq's default; with 1 thread it was 8x slower still

# -- what the worker processes run (imported by name: fastfanout worker e2e_workers:app) --

single = fastfanout.Worker(os.environ.get("BENCH_ENDPOINT"))
batched = fastfanout.Worker(os.environ.get("BENCH_ENDPOINT"))


def noop(message: Any) -> None:
    """The handler: nothing."""


def noop_batch(batch: list[Any]) -> None:
    """The batch handler: nothing."""


single.handler("q", concurrency=1, prefetch=PREFETCH)(noop)
batched.handler("q", concurrency=1, batch_size=BATCH, prefetch=PREFETCH)(noop_batch)


def consume_loop(endpoint: str, how: str) -> None:
    """The hand-written baseline: consume, call, ack, until SIGTERM."""
    from fastfanout.client import connect

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with connect(endpoint) as client:
        consumer = client.consume("q", prefetch=PREFETCH)
        while not stop:
            delivery = consumer.next_batch(0.1)
            if delivery is None:
                continue
            if how == "single":
                for message in delivery:
                    noop(message)
                    message.ack()
                continue
            messages = list(delivery)
            for start in range(0, len(messages), BATCH):
                chunk = messages[start:start + BATCH]
                noop_batch(chunk)
                for message in chunk:
                    message.ack()
        consumer.cancel()


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
    args = parser.parse_args()
    python = sys.executable
    rates: dict[str, float] = {}
    with broker_process() as (endpoint, _):
        ways = {
            "per message: hand-written consume loop (baseline)":
                [python, "-c", f"import e2e_workers as b; b.consume_loop({endpoint!r}, 'single')"],
            "per message: fastfanout worker":
                [python, "-m", "fastfanout", "worker", "e2e_workers:single", "--log-level",
                 "WARNING"],
            "per batch of 100: hand-written consume loop (baseline)":
                [python, "-c", f"import e2e_workers as b; b.consume_loop({endpoint!r}, 'batch')"],
            "per batch of 100: fastfanout worker":
                [python, "-m", "fastfanout", "worker", "e2e_workers:batched", "--log-level",
                 "WARNING"],
        }
        for name, command in ways.items():
            rates[name] = statistics.median(
                _timed(endpoint, command, args.messages) for _ in range(args.runs))
    for name, rate in rates.items():
        print(f"{name}: median {rate:,.0f} msg/s")
    names = list(rates)
    for baseline, worker in ((names[0], names[1]), (names[2], names[3])):
        overhead = rates[baseline] / rates[worker] - 1
        print(f"{worker}: {overhead:+.1%} time per message against its baseline")
    dramatiq = _dramatiq(args.dramatiq_messages)
    if isinstance(dramatiq, str):
        print(f"dramatiq + Redis: skipped: {dramatiq}")
    else:
        print(f"per message: dramatiq + Redis, 1 process, {DRAMATIQ_THREADS} threads: "
              f"{dramatiq:,.0f} msg/s; fastfanout worker is {rates[names[1]] / dramatiq:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
