"""A numpy pipeline: float32 rows through a broker vs raw pyzmq and multiprocessing.Queue.

python bench/e2e_numpy.py [--rows 1000000] [--chunk 2000] [--runs 3] [--row-items 256]
    [--in-flight 2] [--prefetch 4000] [--queue-bound 8192] [--ring-mib 32]

The data: a float32 array of ``--rows`` rows of 256 items (1 KiB a row), sent in chunks
of ``--chunk`` rows; the consumer turns each chunk it gets into one ``(n, 256)`` float32
array and sums its first column (a read of every row). Three ways, in the same run,
each from one producer process to one consumer process:

- fastfanout: ``publish_batch_nowait(topic, chunk)`` (a 2-D array: one row = one
  message, encoded natively), at most ``--in-flight`` batches unanswered -> broker
  process (a queue of ``--queue-bound`` rows, ``overflow="hold"``) -> a push consumer
  (``--prefetch``); each push is one publish frame, handed to the consumer by reference
  (docs/arrays.md, "Deliveries by reference", the broker's ``deliver_by_reference``,
  which this broker turns on: the broker copies no body), so
  ``batch.as_array(numpy.float32, (256,))`` is a view of the rows where the producer
  wrote them, in its ring; ``batch.ack()`` acks it whole. The window: a prefetch of two
  whole batches (one of 2,048 with 1,000-row batches cut each third push short, and a
  frame so split is copied), and rings that hold what the queue and the consumer keep
  (up to 12 MB: in rings too small, frames are evacuated, copied, for room). Batches
  of 2,000 rows: their per-batch costs (Python, wake-ups: a fifth of the broker's time
  with 1,000) halve, and the frames in flight still fit the CPU's last-level cache
  (docs/benchmarks.md, 2026-12-07, thirteenth session; when the broker still copied
  every row, 2 batches of 1,000, 4,096 rows and 8 MiB rings ran 1.3x the rows per
  second of 8 batches, 16,384, 32,768 and 64 MiB: 2026-12-04);
- raw pyzmq PUSH -> PULL: each chunk sent zero-copy (``copy=False``), received without a
  copy and viewed with ``numpy.frombuffer`` (one hop, no broker);
- ``multiprocessing.Queue``: each chunk pickled through the queue.

Reports bytes per second (the rows after the consumer's first chunk or batch, over the
time from its arrival to the last one's: the first is not counted, as its time is not;
medians of the runs) and the ratios fastfanout / pyzmq and fastfanout /
multiprocessing.Queue; and the CPU a row of each fastfanout process (the producer's and
the consumer's from ``time.process_time``, the broker's from ``/proc``: e2e_common's
``cpu_seconds``), whose sum against the cores the machine has says how near the pipeline
is to what its CPU allows. A million rows (1 GB; until 2026-12-06 200,000): a run of
200,000 lasted 0.1 s, and a start's page faults and one preemption swung pyzmq's figure
from 0.7 to 3 GB/s within one invocation; ``--rows 200000`` measures it so still.

``--row-items 4`` (16-byte rows, the same number of messages) leaves almost nothing to
copy: what fastfanout reaches then is the ceiling its per-message work sets on this
pipeline, whatever the rows' size (docs/benchmarks.md, 2026-12-06).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from e2e_common import broker_process, connect_when_up, cpu_seconds

# numpy's BLAS threads spin while idle: on a small machine they would take the cores the
# three processes of each path need (set before numpy loads, inherited by the children).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

MPQ_MAXSIZE = 8          # chunks multiprocessing.Queue holds (its maxsize)
CHUNK = 2000             # rows a chunk, batch or message of each path (--chunk)
ROW_ITEMS = 256          # float32 items a row: 1 KiB (--row-items changes it)


@dataclass(frozen=True)
class Window:
    """How much a fastfanout run keeps in flight (the command line's options)."""

    in_flight: int = 2
    """array batches the producer has unanswered at most"""
    prefetch: int = 4000
    """the consumer's prefetch: pushes of up to half of it, two in flight"""
    queue_bound: int = 8192
    """rows the queue holds; a publish beyond waits (``overflow="hold"``)"""
    ring_bytes: int = 32 << 20
    """each local channel ring; a push takes at most a quarter of it"""


def _data(rows: int, items: int) -> Any:
    import numpy as np

    return np.arange(rows * items, dtype=np.float32).reshape(rows, items)


def _chunks(rows: int, chunk: int, items: int) -> list[Any]:
    data = _data(rows, items)
    return [data[start:start + chunk] for start in range(0, rows, chunk)]


# -- fastfanout ---------------------------------------------------------------------------

def _ff_consume(endpoint: str, rows: int, items: int, window: Window, out: Any) -> None:
    import numpy as np

    from fastfanout import keep_freed_memory
    from fastfanout.client import connect

    keep_freed_memory()   # frames of megabytes: reuse freed memory (see allocator.py)
    with connect(endpoint, ring_bytes=window.ring_bytes) as client:
        consumer = client.consume("q", prefetch=window.prefetch)
        out.put("ready")
        got = first = 0
        checksum = 0.0
        started = time.perf_counter()
        cpu_started = time.process_time()
        while got < rows:
            batch = consumer.next_batch(timeout=30)
            if batch is None:
                break
            table = batch.as_array(np.float32, (items,))
            if got == 0:
                started = time.perf_counter()
                cpu_started = time.process_time()
                first = len(table)
            checksum += float(table[:, 0].sum(dtype=np.float64))
            got += len(table)
            batch.ack()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        consumer.cancel()
    out.put((got, got - first, elapsed, checksum, cpu))


def _ff_publish(endpoint: str, rows: int, chunk: int, items: int, window: Window,
                out: Any) -> None:
    from fastfanout import keep_freed_memory
    from fastfanout.client import connect

    keep_freed_memory()
    chunks = _chunks(rows, chunk, items)
    with connect(endpoint, ring_bytes=window.ring_bytes) as client:
        cpu_started = time.process_time()
        unanswered: deque[Any] = deque()
        for part in chunks:
            unanswered.append(client.publish_batch_nowait("t", part))
            if len(unanswered) >= window.in_flight:
                unanswered.popleft().result()
        while unanswered:
            unanswered.popleft().result()
        out.put(time.process_time() - cpu_started)


def _process_cpu(pid: int | None) -> float | None:
    """``cpu_seconds`` of process ``pid``, or None where it cannot be read (not Linux)."""
    try:
        return None if pid is None else cpu_seconds(pid)
    except OSError:
        return None


@dataclass(frozen=True)
class RowCosts:
    """CPU a row (seconds) of each fastfanout process in one run (None: not measured).

    The consumer's over the rows it timed; the producer's over every row it published
    (from its connection on); the broker's from the producer's start to the last row.
    """

    producer: float
    broker: float | None
    consumer: float


def fastfanout_run(rows: int, chunk: int, items: int, window: Window,
                   costs: list[RowCosts] | None = None) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    # the broker's defaults: deliveries by reference on (docs/arrays.md)
    with broker_process() as (endpoint, broker):
        with connect_when_up(endpoint, broker) as client:
            client.create_topic("t")
            client.create_queue("q", max_messages=window.queue_bound, overflow="hold",
                                max_message_size=items * 4)
            client.subscribe("t", "q")
        out = ctx.Queue()
        consumer = ctx.Process(target=_ff_consume, args=(endpoint, rows, items, window, out))
        consumer.start()
        out.get(timeout=30)
        spent = ctx.Queue()   # the producer's CPU (it may end before the consumer does)
        producer = ctx.Process(target=_ff_publish,
                               args=(endpoint, rows, chunk, items, window, spent))
        broker_started = _process_cpu(broker.pid)
        producer.start()
        got, timed, elapsed, checksum, consumer_cpu = out.get(timeout=600)
        broker_ended = _process_cpu(broker.pid)
        producer_cpu = spent.get(timeout=60)
        producer.join(60)
        consumer.join(30)
    if got != rows:
        raise RuntimeError(f"fastfanout: {got} of {rows} rows arrived")
    if costs is not None:
        broker_cpu = (None if broker_started is None or broker_ended is None
                      else (broker_ended - broker_started) / rows)
        costs.append(RowCosts(producer_cpu / rows, broker_cpu, consumer_cpu / max(timed, 1)))
    return timed * items * 4 / elapsed, checksum


# -- raw pyzmq PUSH -> PULL, zero-copy ----------------------------------------------------

def _zmq_pull(endpoint: str, rows: int, items: int, out: Any) -> None:
    import numpy as np
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.bind(endpoint)
    out.put("ready")
    got = first = 0
    checksum = 0.0
    started = time.perf_counter()
    while got < rows:
        frame = sock.recv(copy=False)
        table = np.frombuffer(frame.buffer, dtype=np.float32).reshape(-1, items)
        if got == 0:
            started = time.perf_counter()
            first = len(table)
        checksum += float(table[:, 0].sum(dtype=np.float64))
        got += len(table)
    out.put((got, got - first, time.perf_counter() - started, checksum))
    sock.close()
    context.term()


def _zmq_push(endpoint: str, rows: int, chunk: int, items: int) -> None:
    import zmq

    chunks = _chunks(rows, chunk, items)
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.connect(endpoint)
    for part in chunks:
        sock.send(part, copy=False)
    sock.close(linger=-1)
    context.term()


def zmq_run(rows: int, chunk: int, items: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    endpoint = f"ipc://{tempfile.mkdtemp()}/pp"
    out = ctx.Queue()
    pull = ctx.Process(target=_zmq_pull, args=(endpoint, rows, items, out))
    pull.start()
    out.get(timeout=30)
    push = ctx.Process(target=_zmq_push, args=(endpoint, rows, chunk, items))
    push.start()
    _, timed, elapsed, checksum = out.get(timeout=600)
    push.join(30)
    pull.join(30)
    return timed * items * 4 / elapsed, checksum


# -- multiprocessing.Queue (pickles each chunk) -------------------------------------------

def _mpq_put(queue: Any, rows: int, chunk: int, items: int) -> None:
    for part in _chunks(rows, chunk, items):
        queue.put(part)


def mpq_run(rows: int, chunk: int, items: int) -> tuple[float, float]:
    import numpy as np

    ctx = mp.get_context("spawn")
    queue = ctx.Queue(maxsize=MPQ_MAXSIZE)
    producer = ctx.Process(target=_mpq_put, args=(queue, rows, chunk, items))
    producer.start()
    got = first = 0
    checksum = 0.0
    started = time.perf_counter()
    while got < rows:
        table = queue.get(timeout=60)
        if got == 0:
            started = time.perf_counter()
            first = len(table)
        checksum += float(table[:, 0].sum(dtype=np.float64))
        got += len(table)
    elapsed = time.perf_counter() - started
    producer.join(30)
    return (got - first) * items * 4 / elapsed, checksum


def _costs_line(costs: list[RowCosts]) -> str:
    """The medians of the runs' CPU a row, per fastfanout process and summed."""
    def ns(values: list[float]) -> float:
        return statistics.median(values) * 1e9

    producer = ns([cost.producer for cost in costs])
    consumer = ns([cost.consumer for cost in costs])
    brokers = [cost.broker for cost in costs if cost.broker is not None]
    if not brokers:
        return (f"fastfanout CPU a row (medians): producer {producer:,.0f} ns, consumer "
                f"{consumer:,.0f} ns (the broker's needs /proc)")
    broker = ns(brokers)
    total = producer + broker + consumer
    return (f"fastfanout CPU a row (medians): producer {producer:,.0f} ns, broker "
            f"{broker:,.0f} ns, consumer {consumer:,.0f} ns; sum {total:,.0f} ns on "
            f"{os.cpu_count()} cores")


def main() -> int:
    """Run the three side by side, ``--runs`` times, and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=CHUNK)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--row-items", type=int, default=ROW_ITEMS,
                        help="float32 items a row (default 256: 1 KiB); 4 (16-byte rows) "
                             "shows what each path costs a row with almost nothing to copy")
    parser.add_argument("--in-flight", type=int, default=Window.in_flight,
                        help="fastfanout: array batches unanswered at most")
    parser.add_argument("--prefetch", type=int, default=Window.prefetch,
                        help="fastfanout: the consumer's prefetch (pushes of half of it)")
    parser.add_argument("--queue-bound", type=int, default=Window.queue_bound,
                        help="fastfanout: rows the queue holds before a publish waits")
    parser.add_argument("--ring-mib", type=int, default=Window.ring_bytes >> 20,
                        help="fastfanout: MiB of each local channel ring")
    args = parser.parse_args()
    if args.row_items < 1 or args.rows < 1 or args.chunk < 1:
        parser.error("--rows, --chunk and --row-items must be at least 1")
    window = Window(args.in_flight, args.prefetch, args.queue_bound, args.ring_mib << 20)
    results: dict[str, list[float]] = {"fastfanout": [], "pyzmq": [], "mp.Queue": []}
    costs: list[RowCosts] = []
    expected = None
    for _ in range(args.runs):
        for name, run in (("pyzmq", zmq_run),
                          ("fastfanout", partial(fastfanout_run, window=window, costs=costs)),
                          ("mp.Queue", mpq_run)):
            rate, checksum = run(args.rows, args.chunk, args.row_items)
            if expected is None:
                expected = checksum
            elif checksum != expected:
                raise RuntimeError(f"{name}: checksum {checksum} != {expected}")
            results[name].append(rate)
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    print(f"{args.rows:,} float32 rows of {args.row_items * 4:,} bytes in chunks of {args.chunk}, "
          f"median of {args.runs} runs; fastfanout: {window.in_flight} batches in flight, "
          f"prefetch {window.prefetch}, queue bound {window.queue_bound}, "
          f"{window.ring_bytes >> 20} MiB rings")
    print("| path | MB/s (median) | rows/s (median) | runs, MB/s |")
    print("|---|---:|---:|---|")
    for name, rates in results.items():
        print(f"| {name} | {medians[name] / 1e6:,.0f} | "
              f"{medians[name] / (args.row_items * 4) / 1e6:,.2f} M | "
              f"{', '.join(f'{rate / 1e6:,.0f}' for rate in rates)} |")
    print(_costs_line(costs))
    print(f"fastfanout / pyzmq zero-copy: {medians['fastfanout'] / medians['pyzmq']:.2f}x")
    print(f"fastfanout / multiprocessing.Queue: "
          f"{medians['fastfanout'] / medians['mp.Queue']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
