"""The disk's own limits: write and fdatasync loops, the journal alone, recovery.

What ``bench/e2e_durable.py`` holds each durable figure of a broker to.

Every function writes under a directory it is given (put it on the disk to measure: a
tmpfs makes fdatasync free, ``describe_disk`` says which it is) and returns rates of
64-byte messages:

- ``disk_write``: the physical ceiling, a plain loop of ``os.write`` of the bytes the
  journal writes per message (``RECORD_BYTES``: a 24-byte record header + the 64-byte
  body), G messages per write, each write followed by ``os.fdatasync`` or not;
  ``disk_read``: a sequential read of such a file;
- ``journal_write``: ``fastfanout._ext.journal`` alone, ``append`` per message and
  ``commit`` every G; ``journal_scan``: its recovery scan;
- ``recovery_run``: an embedded durable broker storing N messages, then a new one
  recovering them, against a sequential read of the same segment files.

These are not scenarios of ``fastfanout bench`` (no publisher, no consumer: one loop in
one process); the end-to-end durable figures are (``--durable --fsync``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

BODY = b"x" * 64
"""The body of every message here (64 bytes)."""
RECORD_BYTES = 24 + 64
"""Bytes the journal writes per 64-byte message: its record header + the payload."""
READ_CHUNK = 1 << 20
"""Bytes per read of the sequential reads."""


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



def disk_write(directory: str, count: int, group: int, sync: bool,
               record_bytes: int = RECORD_BYTES) -> tuple[float, str]:
    """Write ``count`` records of ``record_bytes`` (88), ``group`` per write.

    Each write is followed by an ``os.fdatasync`` when ``sync``. Returns (records per
    second, the file written: the caller removes it).
    """
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


def recovery_run(count: int, base: str) -> tuple[float, float]:
    """Time a new embedded broker recovering ``count`` stored messages.

    Stores them (batches of 10,000) in a durable queue of an embedded broker under
    ``base``, closes it, times a new broker recovering them, then reads the same segment
    files sequentially. Returns (records recovered per second, records per second of
    the plain sequential read of the same bytes).

    Raises:
        RuntimeError: fewer messages recovered than stored, or no segment file.
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
