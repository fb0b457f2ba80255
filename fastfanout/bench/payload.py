"""Message bodies of the benchmarks and their checks: sequence numbers and latency.

Every body starts with a 16-byte header, ``<IIq``: the publisher's index, the message's
sequence number at that publisher (from 0), and its *intended* send time
(``time.monotonic_ns()``, one clock for every process of the host; 0 in the throughput
scenarios), then padding up to the message size. A receiver counts every (publisher,
sequence) pair it sees (``SequenceCheck``): a pair never seen is a lost message, a pair
seen twice a duplicate. The counts of every receiver of a group are merged (``merge``),
so a message delivered to two competing consumers is a duplicate as well.

Counting is done per batch with numpy when it is installed (the ``bench`` extra) and the
batch holds at least ``NUMPY_MIN`` messages, so the check costs the receiver little per
message; smaller batches (what a receiver gets at a low rate, as in the latency scenario,
where numpy's fixed cost per call would be most of the receiver's work) and every batch
without numpy take a plain loop.
A receiver may hand over the batch's headers as columns (``Headers``) instead of its
bodies: fastfanout's receivers read them from the delivery frame at a fixed stride
(``frame_headers``), without a Python object per message.
"""

from __future__ import annotations

import struct
import time
from array import array
from collections.abc import Sequence
from typing import Any

HEADER = struct.Struct("<IIq")
"""Publisher index (u32), sequence number (u32), intended send time (ns, i64)."""
MIN_SIZE = HEADER.size
"""The smallest message size a benchmark can use, in bytes."""
MAX_SIZE = 16 * 1024 * 1024
"""The largest message size a benchmark accepts, in bytes."""
MAX_BATCH_BYTES = 64 * 1024 * 1024
"""The most body bytes of one publish call (``--batch`` x ``--size``): the default batch
is cut to fit it, a larger ``--batch`` refused (a batch is one request to fastfanout's
broker, whose limit the harness raises to fit it: ``processes.MAX_REQUEST_BYTES``)."""
NUMPY_MIN = 16
"""Batches of fewer messages are checked with a plain loop: numpy's fixed cost per call
(tens of µs) is more than the loop's ~1 µs per message there."""
JOIN_LIMIT = 256
"""Bodies up to this size (bytes) are checked from one copy of the whole batch; larger
ones from a copy of their headers."""

_np: Any
try:   # optional: the bench extra
    import numpy as _np
except ImportError:   # pragma: no cover - exercised when numpy is absent
    _np = None
_HEADER_DTYPE: Any = None if _np is None else _np.dtype(
    [("publisher", "<u4"), ("seq", "<u4"), ("stamp", "<i8")])


def make_bodies(publisher: int, first: int, count: int, size: int, stamp: int = 0
                ) -> list[bytes]:
    """``count`` bodies of ``size`` bytes from sequence ``first`` of ``publisher``.

    With numpy the headers are written as columns into one array whose rows numpy
    turns into the bodies (no packing or slicing per body in Python: ~15 ns a body
    instead of ~80, time the publishers of every system spend before sending).
    """
    if _np is not None and count >= 16:
        rows = make_rows(publisher, first, count, size, stamp)
        return rows.view(_np.dtype((_np.void, size))).reshape(count).tolist()  # type: ignore[no-any-return]
    pad = b"x" * (size - HEADER.size)
    pack = HEADER.pack
    return [pack(publisher, seq, stamp) + pad for seq in range(first, first + count)]


def make_rows(publisher: int, first: int, count: int, size: int, stamp: int = 0) -> Any:
    """``make_bodies``' bodies as one ``(count, size)`` uint8 numpy array, a row a body.

    Raises:
        RuntimeError: numpy is not installed.
    """
    if _np is None:
        raise RuntimeError("numpy is not installed (pip install 'fastfanout[bench]')")
    rows = _np.full((count, size), ord("x"), dtype=_np.uint8)
    columns = _np.empty(count, dtype=_HEADER_DTYPE)
    columns["publisher"] = publisher
    columns["seq"] = _np.arange(first, first + count, dtype=_np.uint32)
    columns["stamp"] = stamp
    rows[:, :HEADER.size] = columns.view(_np.uint8).reshape(count, HEADER.size)
    return rows


def array_headers(rows: Any) -> Headers:
    """The headers of a ``(n, size)`` uint8 array of bodies (``MessageBatch.as_array``)."""
    columns = _np.ascontiguousarray(rows[:, :HEADER.size]).view(_HEADER_DTYPE).reshape(
        len(rows))
    return Headers(columns["publisher"], columns["seq"], columns["stamp"])


class Headers:
    """The body headers of one received batch as numpy columns (no bytes per body).

    ``SequenceCheck.record`` and ``LatencyRecorder.record`` take it in place of the
    bodies.

    Attributes:
        publishers: the publisher index of each body (uint32).
        seqs: the sequence number of each body (uint32).
        stamps: the intended send time of each body (int64 ns, 0 when not stamped).
    """

    __slots__ = ("publishers", "seqs", "stamps")

    def __init__(self, publishers: Any, seqs: Any, stamps: Any) -> None:
        self.publishers = publishers
        self.seqs = seqs
        self.stamps = stamps

    def __len__(self) -> int:
        return len(self.seqs)


FRAME_MAGIC = b"FFB1"
"""The first bytes of a fastfanout record batch (docs/protocol.md, Record batch)."""
RECORD_HEADER = 56
"""Bytes of a record's fixed header; its name, group id, dedup id, attributes and body
follow in that order."""


def frame_headers(frame: bytes) -> Headers | None:
    """The body headers of a fastfanout delivery frame, read with numpy at a fixed stride.

    Only when every record has the same layout (lengths, flags) — as in a benchmark,
    where every body has one size — so record i starts at ``8 + i * record_len``, and the
    frame holds at least ``NUMPY_MIN`` records; None otherwise, or without numpy (then
    the caller decodes the bodies).
    """
    if _np is None or len(frame) < 8 + RECORD_HEADER or frame[:4] != FRAME_MAGIC:
        return None
    count, record_len = struct.unpack_from("<II", frame, 4)
    if count < NUMPY_MIN or record_len * count != len(frame) - 8:
        return None
    group_len, dedup_len, name_len, attrs_len, body_len = struct.unpack_from(
        "<HHHII", frame, 8 + 6)
    start = RECORD_HEADER + name_len + group_len + dedup_len + attrs_len
    if body_len < HEADER.size or start + HEADER.size > record_len:
        return None
    rows = _np.frombuffer(frame, dtype=_np.uint8, count=count * record_len,
                          offset=8).reshape(count, record_len)
    lengths = rows[:, :20]   # record_len, flags, priority and every field's length
    if count > 1 and not bool((lengths == lengths[0]).all()):
        return None
    columns = _np.ascontiguousarray(rows[:, start:start + HEADER.size]).view(
        _np.dtype([("publisher", "<u4"), ("seq", "<u4"), ("stamp", "<i8")])).reshape(count)
    return Headers(columns["publisher"], columns["seq"], columns["stamp"])


def make_body(publisher: int, seq: int, size: int, stamp: int) -> bytes:
    """One body of ``size`` bytes stamped with its intended send time ``stamp`` (ns)."""
    return HEADER.pack(publisher, seq, stamp) + b"x" * (size - HEADER.size)


class SequenceCheck:
    """Counts of the (publisher, sequence) pairs a receiver saw, one array per publisher.

    Args:
        publishers: how many publishers send.
        expected: messages each publisher is expected to send (the arrays grow past it).
    """

    def __init__(self, publishers: int, expected: int) -> None:
        self.received = 0
        self.counts: list[Any] = [self._zeros(max(1, expected)) for _ in range(publishers)]

    @staticmethod
    def _zeros(length: int) -> Any:
        if _np is not None:
            return _np.zeros(length, dtype=_np.uint16)
        return array("H", bytes(2 * length))

    def _grow(self, publisher: int, needed: int) -> None:
        old = self.counts[publisher]
        new = self._zeros(max(needed, 2 * len(old)))
        new[: len(old)] = old
        self.counts[publisher] = new

    def record(self, bodies: Sequence[bytes] | Headers) -> None:
        """Count every body of one batch (all of one size, or of any sizes without numpy)."""
        if not len(bodies):
            return
        self.received += len(bodies)
        if isinstance(bodies, Headers):
            self._count_columns(bodies.publishers, bodies.seqs)
            return
        size = len(bodies[0])
        if _np is not None and len(bodies) >= NUMPY_MIN and len(bodies[-1]) == size:
            # small bodies: one join of the batch; large ones: of their headers only
            width = size if size <= JOIN_LIMIT else 8
            joined = b"".join(bodies) if width == size else b"".join(
                [body[:8] for body in bodies])
            if len(joined) == width * len(bodies):
                fields = [("publisher", "<u4"), ("seq", "<u4")]
                rows = _np.frombuffer(joined, dtype=_np.dtype(
                    [*fields, ("rest", f"V{width - 8}")] if width > 8 else fields))
                self._count_columns(rows["publisher"], rows["seq"])
                return
        unpack = HEADER.unpack_from
        for body in bodies:
            publisher, seq, _ = unpack(body)
            self._count_one(publisher, seq)

    def _count_columns(self, publishers: Any, seqs: Any) -> None:
        first = int(publishers[0])
        if (publishers == first).all():
            self._count_numpy(first, seqs)
        else:
            for publisher in _np.unique(publishers).tolist():
                self._count_numpy(int(publisher), seqs[publishers == publisher])

    def _count_numpy(self, publisher: int, seqs: Any) -> None:
        if publisher >= len(self.counts):
            self.counts.extend(self._zeros(1) for _ in range(publisher + 1 - len(self.counts)))
        top = int(seqs.max()) + 1
        if top > len(self.counts[publisher]):
            self._grow(publisher, top)
        counts = self.counts[publisher]
        if len(seqs) < 2 or bool((seqs[1:] > seqs[:-1]).all()):
            counts[seqs] += 1   # increasing, so no index twice: one fancy add does it
        else:
            _np.add.at(counts, seqs, 1)

    def _count_one(self, publisher: int, seq: int) -> None:
        if publisher >= len(self.counts):
            self.counts.extend(self._zeros(1) for _ in range(publisher + 1 - len(self.counts)))
        if seq >= len(self.counts[publisher]):
            self._grow(publisher, seq + 1)
        counts = self.counts[publisher]
        if counts[seq] < 0xFFFF:
            counts[seq] += 1

    def export(self) -> list[bytes]:
        """The counts per publisher as bytes (uint16, native order), for ``merge``."""
        return [bytes(counts) if _np is None else counts.tobytes() for counts in self.counts]


def merge(exports: Sequence[Sequence[bytes]], published: Sequence[int]) -> tuple[int, int, int]:
    """(delivered once or more, lost, duplicates) over the receivers of one group.

    Args:
        exports: ``SequenceCheck.export()`` of every receiver of the group.
        published: how many messages each publisher sent (sequence 0 to n-1).
    """
    unique = lost = duplicates = 0
    for publisher, sent in enumerate(published):
        total: Any
        if _np is not None:
            total = _np.zeros(sent, dtype=_np.int64)
            extra = 0
            for export in exports:
                if publisher < len(export):
                    counts = _np.frombuffer(export[publisher], dtype=_np.uint16)
                    total[: min(sent, len(counts))] += counts[:sent]
                    extra += int(counts[sent:].sum())   # sequences never sent
            seen = int(_np.count_nonzero(total))
            duplicates += int(total.sum()) - seen + extra
        else:
            total = [0] * sent
            extra = 0
            for export in exports:
                if publisher < len(export):
                    counts = array("H")
                    counts.frombytes(export[publisher])
                    for seq, count in enumerate(counts):
                        if seq < sent:
                            total[seq] += count
                        else:
                            extra += count
            seen = sum(1 for count in total if count)
            duplicates += sum(total) - seen + extra
        unique += seen
        lost += sent - seen
    return unique, lost, duplicates


class LatencyRecorder:
    """An HdrHistogram of ``now - intended send time`` (ns) of each body after a warm-up.

    Args:
        skip_before: bodies intended before this ``monotonic_ns`` time are not recorded
            (the warm-up).
    """

    LOWEST = 1
    HIGHEST = 60 * 10**9
    DIGITS = 3

    def __init__(self, skip_before: int) -> None:
        from hdrh.histogram import HdrHistogram

        self.histogram = HdrHistogram(self.LOWEST, self.HIGHEST, self.DIGITS)
        self.skip_before = skip_before

    def record(self, bodies: Sequence[bytes] | Headers) -> None:
        """Record each body's latency, measured now from its intended send time."""
        now = time.monotonic_ns()
        record = self.histogram.record_value
        if isinstance(bodies, Headers):
            stamps = bodies.stamps.tolist()
        else:
            unpack = HEADER.unpack_from
            stamps = [unpack(body)[2] for body in bodies]
        for stamp in stamps:
            if stamp >= self.skip_before:
                record(min(self.HIGHEST, max(1, now - stamp)))

    def encode(self) -> bytes:
        """The histogram, HdrHistogram's compressed base64 form."""
        return bytes(self.histogram.encode())


PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99, 100.0)
"""The latency percentiles reported (100: the maximum)."""


def percentiles(encoded: Sequence[bytes]) -> dict[str, float] | None:
    """Latency percentiles in µs of the merged histograms, or None when none was recorded."""
    from hdrh.histogram import HdrHistogram

    merged = HdrHistogram(LatencyRecorder.LOWEST, LatencyRecorder.HIGHEST,
                          LatencyRecorder.DIGITS)
    for data in encoded:
        merged.add(HdrHistogram.decode(data))
    if merged.get_total_count() == 0:
        return None
    result = {f"p{p:g}": merged.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    result["count"] = float(merged.get_total_count())
    return result
