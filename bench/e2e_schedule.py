"""One million scheduled messages: memory per pending message and firing lateness.

Run: python bench/e2e_schedule.py [--messages 1000000] [--spread 5] [--lead 10] [--runs 3]

fastfanout holds each scheduled message as a C blob + pending copy + timer node (an entry
only once it is due), no Python object. The baseline is the usual pure-Python scheduler:
a ``heapq`` of ``(due, sequence, body)`` tuples drained by a loop that sleeps until the
next due time.
Both schedule the same messages over ``--spread`` seconds (real clock) starting
``--lead`` seconds after the first is scheduled, then a consumer takes each message as
soon as it is due; lateness = taken - due. Memory is the growth of the process's
resident set while the messages are pending: the lead must outlast scheduling them all
(the table says which share was still pending when memory was read). Each run is a fresh
process (this script with ``--one``), so no run finds memory an earlier run freed: every
figure is a first run's.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import statistics
import subprocess
import sys
import time

from fastfanout import Broker, PublishEntry


def rss_bytes() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)], ordered[-1])


def run_fastfanout(count: int, spread: float, lead: float
                   ) -> tuple[float, tuple[float, float, float], float]:
    gc.collect()
    broker = Broker()
    broker.create_queue("scheduled", retention=3600)
    body = b"x" * 64
    before = rss_bytes()
    start = time.time() + lead
    step = spread / count
    for first in range(0, count, 10_000):
        broker.send_batch("scheduled", [
            PublishEntry(body, deliver_at=start + n * step) for n in range(first, first + 10_000)])
    memory = (rss_bytes() - before) / count
    pending = broker.stats().queues["scheduled"].delayed / count
    lateness = []
    received = 0
    while received < count:
        messages = broker.receive("scheduled", max_messages=10_000, wait=1.0)
        now = time.time()
        # Message n was due at start + (id - 1) * step (ids are assigned in send order).
        lateness.extend(now - (start + (m.id - 1) * step) for m in messages)
        broker.ack_batch([m.receipt for m in messages])
        received += len(messages)
    broker.close()
    return memory, percentiles(lateness), pending


def run_heapq(count: int, spread: float, lead: float
              ) -> tuple[float, tuple[float, float, float], float]:
    gc.collect()
    before = rss_bytes()
    start = time.time() + lead
    step = spread / count
    heap: list[tuple[float, int, bytes]] = []
    for n in range(count):
        heapq.heappush(heap, (start + n * step, n, n.to_bytes(8, "little") * 8))
    memory = (rss_bytes() - before) / count
    pending = sum(1 for entry in heap if entry[0] > time.time()) / count
    lateness = []
    while heap:
        due = heap[0][0]
        now = time.time()
        if due > now:
            time.sleep(due - now)
            continue
        while heap and heap[0][0] <= now:
            due, _, _ = heapq.heappop(heap)
            lateness.append(now - due)
    return memory, percentiles(lateness), pending


RUNNERS = {"ff": run_fastfanout, "heapq": run_heapq}


def run_fresh(name: str, args: argparse.Namespace
              ) -> tuple[float, tuple[float, float, float], float]:
    """One run of scheduler ``name`` in a new process (this script with ``--one``)."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", name, "--messages", str(args.messages),
         "--spread", str(args.spread), "--lead", str(args.lead)],
        capture_output=True, text=True, check=True, timeout=600)
    memory, lateness, pending = json.loads(done.stdout)
    return memory, (lateness[0], lateness[1], lateness[2]), pending


def main() -> int:
    """Measure both, several runs each (each in a fresh process), and print medians and
    ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--spread", type=float, default=5.0)
    parser.add_argument("--lead", type=float, default=10.0,
                        help="seconds from the start to the first due time")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        # One run in this process (a fresh one: main() starts it), printed as JSON.
        print(json.dumps(RUNNERS[args.one](args.messages, args.spread, args.lead)))
        return 0
    results: dict[str, list[tuple[float, tuple[float, float, float], float]]] = {
        "ff": [], "heapq": []}
    for _ in range(args.runs):
        results["ff"].append(run_fresh("ff", args))
        results["heapq"].append(run_fresh("heapq", args))
    print(f"{args.messages} messages scheduled over {args.spread} s after {args.lead} s, "
          f"median of {args.runs} runs, each in a fresh process")
    print("| scheduler | bytes per pending message | each run | pending when read "
          "| lateness p50 | p99 | max |")
    print("|---|---:|---|---:|---:|---:|---:|")
    summary = {}
    for name, runs in results.items():
        memory = statistics.median(r[0] for r in runs)
        p50, p99, worst = (statistics.median(r[1][i] for r in runs) * 1000 for i in range(3))
        summary[name] = memory
        label = "fastfanout" if name == "ff" else "heapq baseline"
        each = " / ".join(f"{r[0]:.0f}" for r in runs)
        pending = min(r[2] for r in runs)
        print(f"| {label} | {memory:.0f} | {each} | {pending:.0%} | {p50:.2f} ms "
              f"| {p99:.2f} ms | {worst:.2f} ms |")
    print(f"memory ratio fastfanout/heapq: {summary['ff'] / summary['heapq']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
