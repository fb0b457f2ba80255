"""Message bodies of the benchmarks and their checks: sequence numbers and latency.

Every body starts with a 16-byte header, ``<IIq``: the publisher's index, the message's
sequence number at that publisher (from 0), and its *intended* send time
(``time.monotonic_ns()``, one clock for every process of the host; 0 in the throughput
scenarios), then padding up to the message size. A receiver counts every (publisher,
sequence) pair it sees (``SequenceCheck``): a pair never seen is a lost message, a pair
seen twice a duplicate. The counts of every receiver of a group are merged (``merge``),
so a message delivered to two competing consumers is a duplicate as well.

Counting is done per batch with numpy when it is installed (the ``bench`` extra), so the
check costs the receiver little per message; without numpy a plain loop does the same.
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
JOIN_LIMIT = 256
"""Bodies up to this size (bytes) are checked from one copy of the whole batch; larger
ones from a copy of their headers."""

_np: Any
try:   # optional: the bench extra
    import numpy as _np
except ImportError:   # pragma: no cover - exercised when numpy is absent
    _np = None


def make_bodies(publisher: int, first: int, count: int, size: int, stamp: int = 0
                ) -> list[bytes]:
    """``count`` bodies of ``size`` bytes from sequence ``first`` of ``publisher``."""
    pad = b"x" * (size - HEADER.size)
    pack = HEADER.pack
    return [pack(publisher, seq, stamp) + pad for seq in range(first, first + count)]


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

    def record(self, bodies: Sequence[bytes]) -> None:
        """Count every body of one batch (all of one size, or of any sizes without numpy)."""
        if not bodies:
            return
        self.received += len(bodies)
        size = len(bodies[0])
        if _np is not None and len(bodies[-1]) == size:
            # small bodies: one join of the batch; large ones: of their headers only
            width = size if size <= JOIN_LIMIT else 8
            joined = b"".join(bodies) if width == size else b"".join(
                [body[:8] for body in bodies])
            if len(joined) == width * len(bodies):
                fields = [("publisher", "<u4"), ("seq", "<u4")]
                rows = _np.frombuffer(joined, dtype=_np.dtype(
                    [*fields, ("rest", f"V{width - 8}")] if width > 8 else fields))
                publishers, seqs = rows["publisher"], rows["seq"]
                first = int(publishers[0])
                if (publishers == first).all():
                    self._count_numpy(first, seqs)
                else:
                    for publisher in _np.unique(publishers).tolist():
                        self._count_numpy(int(publisher), seqs[publishers == publisher])
                return
        unpack = HEADER.unpack_from
        for body in bodies:
            publisher, seq, _ = unpack(body)
            self._count_one(publisher, seq)

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

    def record(self, bodies: Sequence[bytes]) -> None:
        """Record each body's latency, measured now from its intended send time."""
        now = time.monotonic_ns()
        unpack = HEADER.unpack_from
        record = self.histogram.record_value
        for body in bodies:
            stamp = unpack(body)[2]
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
