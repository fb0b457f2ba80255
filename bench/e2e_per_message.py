"""The per-message Python path, side by side with its baselines in one run.

python bench/e2e_per_message.py [--messages N] [--runs R] [--parts remote embedded]

Remote (one broker process, 64-byte messages, each pipeline against raw pyzmq PUSH->PULL
with one message per send, measured in the same run):

- ``producer.offer(body)`` per message -> broker -> ``for m in client.consume(q):
  m.ack()``, with 1 consumer, and with 4 consumers (one queue each, subscribed to the
  topic; the rate is per consumer);
- one ``client.publish_nowait(topic, body)`` per message -> broker -> the same consumer.

Embedded (one process):

- ``Broker.publish(topic, body)`` one call per message against ``queue.Queue.put``;
- ``Broker.receive(queue)`` + ``message.ack()`` one message at a time against
  ``queue.Queue`` put/get between two threads.

Reports each median (of ``--runs``) in messages per second and its ratio to its baseline.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable

from e2e_common import BODY, broker_process, connect_when_up, publish_run
from e2e_common import push_pull_baseline as baseline

PREFETCH = 16000
QUEUE_BOUND = int(os.environ.get("FASTFANOUT_BENCH_QUEUE_BOUND", "65536"))


def _consume_each(endpoint: str, queue_name: str, count: int,
                  out: mp.Queue) -> None:  # type: ignore[type-arg]
    """The loop users write: ``for message in consume(q): message.ack()``."""
    from fastfanout import keep_freed_memory
    from fastfanout.client import connect

    keep_freed_memory()
    with connect(endpoint) as client:
        consumer = client.consume(queue_name, prefetch=PREFETCH, timeout=30)
        out.put("ready")
        got = 0
        started = 0.0
        for message in consumer:
            if not got:
                started = time.perf_counter()
            message.ack()
            got += 1
            if got == count:
                break
        out.put(got / (time.perf_counter() - started))
        consumer.cancel()


def remote_run(count: int, consumers: int, mode: str) -> float:
    """Median per-consumer rate of one run: 1 publisher (``mode``) -> broker -> consumers."""
    ctx = mp.get_context("spawn")
    with broker_process() as (endpoint, broker):
        with connect_when_up(endpoint, broker) as client:
            client.create_topic("t")
            for i in range(consumers):
                client.create_queue(f"q{i}", max_messages=QUEUE_BOUND, overflow="hold")
                client.subscribe("t", f"q{i}")
        out = ctx.Queue()
        procs = [ctx.Process(target=_consume_each, args=(endpoint, f"q{i}", count, out))
                 for i in range(consumers)]
        for proc in procs:
            proc.start()
        for _ in procs:
            out.get(timeout=30)
        publisher = ctx.Process(target=publish_run, args=(endpoint, count, mode))
        publisher.start()
        rates = [out.get(timeout=300) for _ in procs]
        publisher.join(60)
        for proc in procs:
            proc.join(30)
        return float(statistics.median(rates))


def queue_put(count: int) -> float:
    """``queue.Queue.put`` per message (the embedded publish's baseline)."""
    channel: queue.Queue[bytes] = queue.Queue()
    put = channel.put
    started = time.perf_counter()
    for _ in range(count):
        put(BODY)
    return count / (time.perf_counter() - started)


def broker_publish(count: int) -> float:
    """``Broker.publish`` one call per message, to a topic with one queue."""
    from fastfanout import Broker

    broker = Broker()
    broker.create_topic("t")
    broker.create_queue("q", max_messages=10_000_000)
    broker.subscribe("t", "q")
    publish = broker.publish
    started = time.perf_counter()
    for _ in range(count):
        publish("t", BODY)
    rate = count / (time.perf_counter() - started)
    broker.close()
    return rate


def queue_put_get(count: int) -> float:
    """``queue.Queue`` put in this thread, get in another (the embedded receive's baseline)."""
    channel: queue.Queue[bytes] = queue.Queue()

    def consume() -> None:
        get = channel.get
        for _ in range(count):
            get()

    consumer = threading.Thread(target=consume)
    started = time.perf_counter()
    consumer.start()
    put = channel.put
    for _ in range(count):
        put(BODY)
    consumer.join(60)
    return count / (time.perf_counter() - started)


def broker_receive_ack(count: int) -> float:
    """``Broker.receive`` + ``message.ack()`` one message at a time, from a full queue."""
    from fastfanout import Broker

    broker = Broker()
    broker.create_queue("q", max_messages=10_000_000)
    for start in range(0, count, 10_000):
        broker.send_batch("q", [BODY] * min(10_000, count - start))
    receive = broker.receive
    started = time.perf_counter()
    for _ in range(count):
        for message in receive("q"):
            message.ack()
    rate = count / (time.perf_counter() - started)
    broker.close()
    return rate


def median_rate(way: Callable[[], float], runs: int) -> float:
    """The median of ``runs`` runs of ``way``."""
    return statistics.median(way() for _ in range(runs))


def report(name: str, rate: float, base: float) -> None:
    """Print one row: its median rate and the ratio to its baseline."""
    print(f"{name}: median {rate / 1e6:.3f} M msg/s, ratio {rate / base:.2f}x", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["remote", "embedded"],
                        choices=["remote", "embedded"])
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["producer", "single"],
                        choices=["producer", "single"])
    args = parser.parse_args()
    count = args.messages
    if "remote" in args.parts:
        base = median_rate(lambda: baseline(count), args.runs)
        print(f"baseline PUSH->PULL, one message per send: median {base / 1e6:.3f} M msg/s",
              flush=True)
        for mode in args.modes:
            for consumers in args.consumers if mode == "producer" else [1]:
                rate = statistics.median(remote_run(count, consumers, mode)
                                         for _ in range(args.runs))
                call = "producer.offer()" if mode == "producer" else "publish_nowait()"
                report(f"{call} per message -> broker -> {consumers} consumer(s), "
                       f"message.ack() each (per consumer)", rate, base)
    if "embedded" in args.parts:
        embedded = min(count, 500_000)
        base = median_rate(lambda: queue_put(embedded), args.runs)
        print(f"baseline queue.Queue.put: median {base / 1e6:.3f} M msg/s", flush=True)
        report("Broker.publish one call per message",
               median_rate(lambda: broker_publish(embedded), args.runs), base)
        base = median_rate(lambda: queue_put_get(embedded), args.runs)
        print(f"baseline queue.Queue put/get between two threads: median "
              f"{base / 1e6:.3f} M msg/s", flush=True)
        report("Broker.receive + message.ack() one message at a time",
               median_rate(lambda: broker_receive_ack(embedded), args.runs), base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
