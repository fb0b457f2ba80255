"""End-to-end fan-out throughput: fastfanout through a broker vs raw pyzmq PUSH->PULL.

python bench/e2e_fanout.py [--messages N] [--runs R] [--consumers 1 4]
Baseline: one PUSH process -> one PULL process, one 64-byte message per send (one hop).
fastfanout: one publisher process -> broker process -> C queue consumer processes (one
queue each, subscribed to one topic), push delivery, acks in batches. Reports the
per-consumer rate (messages/s) medians and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

from e2e_common import BODY, add_modes_argument, broker_process, connect_when_up, publish_run

PREFETCH = 16000   # pushes of up to 8,192 (the server's push_batch), two in flight
# Each queue holds at most this many messages with overflow="hold": a publish that does
# not fit is held by the broker until acks make room, so the publisher (8 batches in
# flight) is paced to its consumers, as PUSH's high-water mark paces the baseline.
# Unbounded queues would instead grow by the whole run and pay for fresh memory.
QUEUE_BOUND = int(os.environ.get("FASTFANOUT_BENCH_QUEUE_BOUND", "65536"))


def _pull(endpoint: str, count: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.bind(endpoint)
    out.put("ready")
    sock.recv()
    started = time.perf_counter()
    for _ in range(count - 1):
        sock.recv()
    out.put(count / (time.perf_counter() - started))
    sock.close()
    context.term()


def _push(endpoint: str, count: int) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.connect(endpoint)
    for _ in range(count):
        sock.send(BODY)
    sock.close(linger=-1)
    context.term()


def baseline(count: int) -> float:
    ctx = mp.get_context("spawn")
    endpoint = f"ipc://{tempfile.mkdtemp()}/pp"
    out = ctx.Queue()
    pull = ctx.Process(target=_pull, args=(endpoint, count, out))
    pull.start()
    out.get(timeout=30)
    push = ctx.Process(target=_push, args=(endpoint, count))
    push.start()
    rate = out.get(timeout=120)
    push.join(30)
    pull.join(30)
    return float(rate)


def _consume(endpoint: str, queue: str, count: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from fastfanout import keep_freed_memory
    from fastfanout.client import connect

    keep_freed_memory()   # 1 MB delivery frames: reuse freed memory (see allocator.py)
    with connect(endpoint) as client:
        consumer = client.consume(queue, prefetch=PREFETCH)
        out.put("ready")
        got = 0
        started = None
        while got < count:
            batch = consumer.next_batch(timeout=30)
            if batch is None:
                break
            if started is None:
                started = time.perf_counter()
            got += len(batch)
            batch.ack()
        out.put(got / (time.perf_counter() - (started or 0)))
        consumer.cancel()




def fastfanout_run(count: int, consumers: int, mode: str) -> float:
    ctx = mp.get_context("spawn")
    with broker_process() as (endpoint, broker):
        with connect_when_up(endpoint, broker) as client:
            client.create_topic("t")
            for i in range(consumers):
                client.create_queue(f"q{i}", max_messages=QUEUE_BOUND, overflow="hold")
                client.subscribe("t", f"q{i}")
        out = ctx.Queue()
        procs = [ctx.Process(target=_consume, args=(endpoint, f"q{i}", count, out))
                 for i in range(consumers)]
        for p in procs:
            p.start()
        for _ in procs:
            out.get(timeout=30)
        pub = ctx.Process(target=publish_run, args=(endpoint, count, mode))
        pub.start()
        rates = [out.get(timeout=300) for _ in procs]
        pub.join(60)
        for p in procs:
            p.join(30)
        return float(statistics.median(rates))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4])
    add_modes_argument(parser)
    args = parser.parse_args()
    base = [baseline(args.messages) for _ in range(args.runs)]
    base_median = statistics.median(base)
    print(f"baseline PUSH->PULL: median {base_median / 1e6:.3f} M msg/s  runs {base}")
    for mode in args.modes:
        for consumers in args.consumers:
            runs = [fastfanout_run(args.messages, consumers, mode) for _ in range(args.runs)]
            median = statistics.median(runs)
            print(f"fastfanout ({mode} publish) 1 pub -> broker -> {consumers} consumer(s): "
                  f"median {median / 1e6:.3f} M msg/s per consumer, "
                  f"ratio {median / base_median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
