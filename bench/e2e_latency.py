"""End-to-end latency at a fixed rate, open loop: fastfanout through a broker vs zmq.proxy.

python bench/e2e_latency.py [--rate 10000] [--seconds 5] [--runs 3] [--prefetch 16]
One publisher process sends 64-byte messages on a fixed schedule (message i is due at
t0 + i / rate) whatever happened to the previous ones (open loop), and stamps each with
its *intended* send time; one consumer process records ``now - intended`` in an HDR
histogram, so a stall anywhere (publisher included) shows up as latency instead of
silently slowing the schedule down (no coordinated omission). Both clocks are
``CLOCK_MONOTONIC``, one clock for every process of the host.

Baseline: PUSH -> ``zmq.proxy`` (libzmq's C forwarding device, PULL -> PUSH, its own
process) -> PULL, over ipc.
fastfanout: publisher (``publish_nowait`` + ``flush()`` per message, or with
``--publish batch`` a one-message ``publish_batch_nowait``: the client's two pipelined
paths that send at once) -> broker process (topic -> one subscribed queue) -> push consumer
(``consume(prefetch=16)``, batches acked pipelined), over ipc.

Reports p50/p99/p99.9 (µs) per side as the median over runs, messages lost, and the
ratio of the p50s. The first ``--warmup`` seconds of every run are not recorded.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import struct
import sys
import tempfile
import time
from typing import Any

from e2e_common import START_DEADLINE, broker_process, connect_when_up, stop_processes

STAMP = struct.Struct("<q")
PADDING = b"x" * (64 - STAMP.size)
IDLE = 3.0  # seconds without a message after which the consumer stops
PERCENTILES = (50.0, 99.0, 99.9)




def _schedule(count: int, rate: float, send: Any) -> None:
    """Call ``send(body)`` for message i at t0 + i / rate (monotonic ns), open loop."""
    interval = 1e9 / rate
    clock = time.monotonic_ns
    start = clock() + 50_000_000
    for index in range(count):
        due = start + int(index * interval)
        # spin, but give the core away between checks: the broker and the consumer
        # share the machine's two cores with this process
        while clock() < due:
            os.sched_yield()
        send(STAMP.pack(due) + PADDING)


class Recorder:
    """Latencies of received bodies (ns, from their intended send time) after a warm-up."""

    def __init__(self, count: int, rate: float, warmup: float) -> None:
        from hdrh.histogram import HdrHistogram

        self.histogram = HdrHistogram(1, 60 * 10**9, 3)
        self.expected = count
        self.skip = int(warmup * rate)
        self.got = 0

    def record(self, bodies: list[bytes]) -> None:
        now = time.monotonic_ns()
        for body in bodies:
            if self.got >= self.skip:
                self.histogram.record_value(max(1, now - STAMP.unpack_from(body)[0]))
            self.got += 1

    def summary(self) -> tuple[list[float], int]:
        """(p50, p99, p99.9 in µs, messages lost)."""
        values = [self.histogram.get_value_at_percentile(p) / 1000 for p in PERCENTILES]
        return values, self.expected - self.got


# -- baseline: PUSH -> zmq.proxy -> PULL -------------------------------------------------


def _proxy(front: str, back: str) -> None:
    import zmq

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    push = context.socket(zmq.PUSH)
    pull.bind(front)
    push.bind(back)
    zmq.proxy(pull, push)  # runs until the process is terminated


def _pull(back: str, count: int, rate: float, warmup: float, out: Any) -> None:
    import zmq

    recorder = Recorder(count, rate, warmup)
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, int(START_DEADLINE * 1000))
    sock.connect(back)
    out.put(("ready", None))
    try:
        recorder.record([sock.recv()])
        sock.setsockopt(zmq.RCVTIMEO, int(IDLE * 1000))
        while recorder.got < count:
            recorder.record([sock.recv()])
    except zmq.Again:
        pass
    out.put(("done", recorder.summary()))
    sock.close(linger=0)
    context.term()


def _push(front: str, count: int, rate: float) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.connect(front)
    _schedule(count, rate, sock.send)
    sock.close(linger=10_000)
    context.term()


def baseline(count: int, rate: float, warmup: float) -> tuple[list[float], int]:
    """One run through ``zmq.proxy``: ([p50, p99, p99.9] µs, lost)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as directory:
        front, back = f"ipc://{directory}/front", f"ipc://{directory}/back"
        out = ctx.Queue()
        proxy = ctx.Process(target=_proxy, args=(front, back))
        pull = ctx.Process(target=_pull, args=(back, count, rate, warmup, out))
        push = ctx.Process(target=_push, args=(front, count, rate))
        started = [proxy, pull]
        try:
            proxy.start()
            pull.start()
            out.get(timeout=START_DEADLINE)
            push.start()
            started.append(push)
            result: tuple[list[float], int] = out.get(
                timeout=START_DEADLINE + count / rate + 2 * IDLE)[1]
        finally:
            proxy.terminate()
            stop_processes(started)
            out.close()
    return result


# -- fastfanout: publisher -> broker -> push consumer -------------------------------------


def _consume(endpoint: str, count: int, rate: float, warmup: float, prefetch: int,
             out: Any) -> None:
    from fastfanout.client import connect

    recorder = Recorder(count, rate, warmup)
    with connect(endpoint) as client:
        consumer = client.consume("q", prefetch=prefetch)
        out.put(("ready", None))
        timeout = START_DEADLINE
        while recorder.got < count:
            batch = consumer.next_batch(timeout)
            if batch is None:
                break
            recorder.record(batch.bodies)
            batch.ack()
            timeout = IDLE
        consumer.cancel()
    out.put(("done", recorder.summary()))


def _publish(endpoint: str, count: int, rate: float, mode: str) -> None:
    from fastfanout.client import connect

    with connect(endpoint) as client:
        def send(body: bytes) -> None:
            client.publish_nowait("t", body)
            client.flush()

        def send_batch(body: bytes) -> None:
            client.publish_batch_nowait("t", [body])

        _schedule(count, rate, send if mode == "nowait" else send_batch)


def fastfanout_run(count: int, rate: float, warmup: float, prefetch: int, mode: str
                   ) -> tuple[list[float], int]:
    """One run through the broker: ([p50, p99, p99.9] µs, lost)."""
    ctx = mp.get_context("spawn")
    with broker_process() as (endpoint, broker):
        out = ctx.Queue()
        consumer = ctx.Process(target=_consume,
                               args=(endpoint, count, rate, warmup, prefetch, out))
        publisher = ctx.Process(target=_publish, args=(endpoint, count, rate, mode))
        started: list[Any] = []
        try:
            with connect_when_up(endpoint, broker) as client:
                client.create_topic("t")
                client.create_queue("q")
                client.subscribe("t", "q")
            consumer.start()
            started.append(consumer)
            out.get(timeout=START_DEADLINE)
            publisher.start()
            started.append(publisher)
            result: tuple[list[float], int] = out.get(
                timeout=START_DEADLINE + count / rate + 2 * IDLE)[1]
        finally:
            stop_processes(started)
            out.close()
    return result


def _medians(runs: list[tuple[list[float], int]]) -> list[float]:
    return [statistics.median(run[0][i] for run in runs) for i in range(len(PERCENTILES))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not recorded")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--publish", choices=["nowait", "batch"], default="nowait",
                        help="nowait: publish_nowait + flush(); batch: publish_batch_nowait "
                             "of one message")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    header = " / ".join(f"p{p:g}" for p in PERCENTILES)
    base = [baseline(count, args.rate, args.warmup) for _ in range(args.runs)]
    base_medians = _medians(base)
    print(f"baseline PUSH->zmq.proxy->PULL at {args.rate:g} msg/s: {header} "
          f"{' / '.join(f'{v:.1f}' for v in base_medians)} µs; lost {[r[1] for r in base]}; "
          f"runs {[[round(v, 1) for v in r[0]] for r in base]}")
    runs = [fastfanout_run(count, args.rate, args.warmup, args.prefetch, args.publish)
            for _ in range(args.runs)]
    medians = _medians(runs)
    print(f"fastfanout pub ({args.publish}) -> broker -> consume(prefetch={args.prefetch}): "
          f"{header} "
          f"{' / '.join(f'{v:.1f}' for v in medians)} µs; lost {[r[1] for r in runs]}; "
          f"runs {[[round(v, 1) for v in r[0]] for r in runs]}")
    print(f"p50 ratio fastfanout / zmq.proxy: {medians[0] / base_medians[0]:.2f}x "
          f"(p99 {medians[1] / base_medians[1]:.2f}x, p99.9 {medians[2] / base_medians[2]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
