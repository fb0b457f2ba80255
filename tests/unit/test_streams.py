"""The broker's stream side alone, on a stand-in XPUB (fastfanout.streams)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastfanout.errors import WouldBlock
from fastfanout.streams import Streams


class FakeXpub:
    """Queued (un)subscriptions to read; sent batches, or WouldBlock while ``full``."""

    def __init__(self) -> None:
        self.changes: list[tuple[bool, bytes]] = []
        self.sent: list[list[bytes]] = []
        self.full = False

    def recv_subscription(self) -> tuple[bool, bytes] | None:
        return self.changes.pop(0) if self.changes else None

    def publish_stream(self, frames: list[bytes]) -> None:
        if self.full:
            raise WouldBlock("full")
        self.sent.append(frames)


class Result:
    """A publish result that streams its ``accepted`` records as one frame."""

    def __init__(self, accepted: int) -> None:
        self.accepted = accepted

    def stream_frame(self, batch: bytes, topic: str, first: int, now_us: int
                     ) -> tuple[bytes, int]:
        return b"%s:%d+%d" % (topic.encode(), first, self.accepted), self.accepted


def test_listeners_are_counted_per_prefix_and_the_cache_follows_changes() -> None:
    xpub, counters = FakeXpub(), Counter[str]()
    streams = Streams(counters, "drop", 0.0)
    transport: Any = xpub
    assert not streams.listened("ticks.a")
    xpub.changes = [(True, b"ticks."), (True, b"ticks."), (True, b"")]
    streams.read_subscriptions(transport)
    assert streams.subscriptions() == 3 and streams.listened("ticks.a")
    xpub.changes = [(False, b"ticks."), (False, b"")]
    streams.read_subscriptions(transport)
    assert streams.subscriptions() == 1 and streams.listened("ticks.a")
    assert not streams.listened("other")
    xpub.changes = [(False, b"ticks.")]
    streams.read_subscriptions(transport)
    assert streams.subscriptions() == 0 and not streams.listened("ticks.a")


def test_sequences_advance_whether_or_not_anyone_listens() -> None:
    xpub, counters = FakeXpub(), Counter[str]()
    streams = Streams(counters, "drop", 0.0)
    transport: Any = xpub
    streams.published(transport, "t", b"", Result(3))        # nobody listens: 1..3 pass
    xpub.changes = [(True, b"t")]
    streams.read_subscriptions(transport)
    streams.published(transport, "t", b"", Result(2))
    streams.published(transport, "u", b"", Result(1))         # its own sequence
    assert xpub.sent == [[b"t", b"t:4+2"]]
    assert counters["stream_batches"] == 1 and counters["stream_messages"] == 2


def test_a_full_listener_queue_drops_the_batch_and_counts_it() -> None:
    xpub, counters = FakeXpub(), Counter[str]()
    streams = Streams(counters, "wait", 0.01)
    transport: Any = xpub
    xpub.changes = [(True, b"")]
    streams.read_subscriptions(transport)
    xpub.full = True
    streams.published(transport, "t", b"", Result(5))
    assert xpub.sent == [] and counters["stream_dropped"] == 5
    assert counters["stream_dropped.wait"] == 5
    xpub.full = False
    streams.published(transport, "t", b"", Result(1))         # numbering went on: 6
    assert xpub.sent == [[b"t", b"t:6+1"]]
