"""Per-handler counters of a worker, and the frozen records ``Worker.stats()`` returns.

Each thread (or the event loop) that runs a handler owns one ``Tally``: it alone writes
it, so counting needs no lock; ``stats()`` sums the tallies of a handler. Handler times
are kept as the last ``TIMES_KEPT`` durations of each tally (a bounded window, as
dramatiq's and Celery's event monitors do), from which p50 and p99 are read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["TIMES_KEPT", "HandlerStats", "Tally", "WorkerStats", "combine"]

TIMES_KEPT = 1024
"""Handler durations each tally keeps for the percentiles (the most recent ones)."""


class Tally:
    """The counters one thread (or one event loop) keeps for one handler.

    Attributes:
        processed: messages whose handler returned (acked).
        failed: messages whose handler raised, reported them failed, or timed out.
        retried: failed messages nacked for another delivery.
        dead_lettered: failed messages on their last allowed delivery (the nack moved
            them to the dead-letter queue).
        timed_out: calls abandoned after the handler's ``timeout``.
        in_flight: messages being handled now (async runners; thread runners read it
            from their slots).
        extended: lease extensions sent for messages held.
        times: the most recent handler durations, seconds.
    """

    __slots__ = ("dead_lettered", "extended", "failed", "in_flight", "processed", "retried",
                 "timed_out", "times")

    def __init__(self) -> None:
        self.processed = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.timed_out = 0
        self.in_flight = 0
        self.extended = 0
        self.times: deque[float] = deque(maxlen=TIMES_KEPT)

    def failures(self, receive_counts: Iterable[int], max_receive_count: int | None) -> None:
        """Count failed messages, each as retried or dead-lettered by its receive count."""
        for count in receive_counts:
            self.failed += 1
            if max_receive_count is not None and count >= max_receive_count:
                self.dead_lettered += 1
            else:
                self.retried += 1


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True, slots=True)
class HandlerStats:
    """What one handler did since the worker started.

    Attributes:
        queue: the queue it consumes.
        processed: messages handled and acked.
        failed: messages whose call raised, reported them failed, or timed out (with
            ``processes``: or that a child that died had in flight at its last report).
        retried: failed messages nacked for redelivery (with the queue's backoff).
        dead_lettered: failed messages on their last delivery (``max_receive_count``):
            the nack moved them to the queue's dead-letter queue.
        timed_out: calls abandoned after ``timeout`` seconds.
        in_flight: messages being handled now.
        extended: lease extensions sent while calls ran.
        p50: median handler time, seconds (None before the first call).
        p99: 99th-percentile handler time, seconds (None before the first call).
        processes: worker processes running the handler.
    """

    queue: str
    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    timed_out: int = 0
    in_flight: int = 0
    extended: int = 0
    p50: float | None = None
    p99: float | None = None
    processes: int = 1

    @classmethod
    def of(cls, queue: str, tallies: Iterable[Tally], in_flight: int | None = None
           ) -> HandlerStats:
        """The sum of a handler's tallies in this process.

        ``in_flight``: the count when the runner knows it better than its tallies do.
        """
        tallies = list(tallies)
        times = sorted(t for tally in tallies for t in list(tally.times))
        return cls(queue, sum(t.processed for t in tallies), sum(t.failed for t in tallies),
                   sum(t.retried for t in tallies), sum(t.dead_lettered for t in tallies),
                   sum(t.timed_out for t in tallies),
                   sum(t.in_flight for t in tallies) if in_flight is None else in_flight,
                   sum(t.extended for t in tallies), _percentile(times, 0.5),
                   _percentile(times, 0.99))


def combine(queue: str, parts: Iterable[HandlerStats]) -> HandlerStats:
    """One handler's stats over its processes: counters summed, percentiles the largest.

    The processes' percentiles cannot be merged exactly without their samples; the
    largest is an upper bound.
    """
    parts = list(parts)
    p50s = [part.p50 for part in parts if part.p50 is not None]
    p99s = [part.p99 for part in parts if part.p99 is not None]
    return HandlerStats(
        queue, sum(p.processed for p in parts), sum(p.failed for p in parts),
        sum(p.retried for p in parts), sum(p.dead_lettered for p in parts),
        sum(p.timed_out for p in parts), sum(p.in_flight for p in parts),
        sum(p.extended for p in parts), max(p50s, default=None), max(p99s, default=None),
        max(1, len(parts)))


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """``Worker.stats()``: every handler's stats, by handler name.

    Attributes:
        handlers: handler name (the function's ``__name__``, or ``NAME@QUEUE`` for
            a name registered already on another queue) -> its stats.
        restarts: worker processes started again after they died.
    """

    handlers: dict[str, HandlerStats] = field(default_factory=dict)
    restarts: int = 0
