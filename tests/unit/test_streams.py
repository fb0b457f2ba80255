"""The stream sides alone: the broker's ``Streams`` on a stand-in XPUB, ``StreamFollower``."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq

from fastfanout._ext import codec
from fastfanout.errors import WouldBlock
from fastfanout.server.streams import (
    BEACON_INTERVAL,
    BEACON_QUIET,
    PROBE_PREFIX,
    StreamFollower,
    Streams,
    beacon_frame,
)
from fastfanout.transport.sockets import Peer, ServerTransport

Change = tuple[bool | None, bytes, Peer | None]


def peer(fd: int, address: str = "localhost:0:0:1") -> Peer:
    """A stand-in connection: descriptor ``fd`` of a process."""
    return fd, address, ""


class FakeXpub:
    """Queued (un)subscriptions to read; sent messages, or WouldBlock while ``full``."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.sent: list[list[bytes]] = []
        self.full = False

    def recv_subscription(self) -> Change | None:
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


def streams_on(policy: str = "drop", wait: float = 0.0) -> tuple[Streams, FakeXpub, Any,
                                                                  Counter[str]]:
    xpub, counters = FakeXpub(), Counter[str]()
    return Streams(counters, policy, wait), xpub, xpub, counters


def test_listeners_are_counted_per_peer_and_prefix() -> None:
    streams, xpub, transport, _ = streams_on()
    assert not streams.listened("ticks.a")
    xpub.changes = [(True, b"ticks.", peer(7)), (True, b"ticks.", peer(8)),
                    (True, b"", peer(9))]
    streams.read_subscriptions(transport)
    assert streams.subscriptions() == 3 and streams.listened("ticks.a")
    xpub.changes = [(False, b"ticks.", peer(7)), (False, b"", peer(9))]
    streams.read_subscriptions(transport)
    assert streams.subscriptions() == 1 and streams.listened("ticks.a")
    assert not streams.listened("other")
    xpub.changes = [(False, b"ticks.", None)]   # libzmq: peer 8's connection ended
    streams.read_subscriptions(transport)
    assert streams.subscriptions() == 0 and not streams.listened("ticks.a")


def test_no_peer_changes_another_peers_subscriptions() -> None:
    streams, xpub, transport, counters = streams_on()
    xpub.changes = [(True, b"", peer(7)), (True, b"t", peer(7))]
    streams.read_subscriptions(transport)
    xpub.changes = [(None, b"\x02", peer(8)), (None, b"", peer(8)),   # neither 0x01 nor 0x00
                    (False, b"", peer(8)), (False, b"t", peer(8)),    # never subscribed
                    (True, b"t", peer(8)), (False, b"t", peer(8)), (False, b"t", peer(8)),
                    (False, b"t", peer(7, "localhost:0:0:2"))]   # 7 in another process
    streams.read_subscriptions(transport)
    assert counters["stream_bad_frames"] == 2
    assert counters["stream_unknown_unsubscribes"] == 4
    assert streams.subscriptions() == 2 and streams.listened("anything")


def test_a_reused_descriptor_never_hides_a_new_connection() -> None:
    streams, xpub, transport, _ = streams_on()
    # the new connection on descriptor 7 subscribes before libzmq reports the old one's end
    xpub.changes = [(True, b"t", peer(7)), (True, b"t", peer(7)), (False, b"t", None)]
    streams.read_subscriptions(transport)
    assert streams.listened("t") and streams.subscriptions() == 1


def test_probe_subscriptions_are_answered_not_counted() -> None:
    streams, xpub, transport, counters = streams_on()
    probe = PROBE_PREFIX + b"abc"
    xpub.changes = [(True, b"t", peer(7)), (True, probe, peer(7)), (False, probe, peer(7)),
                    (True, PROBE_PREFIX + bytes(64), peer(8))]   # too long: not answered
    streams.read_subscriptions(transport)
    assert xpub.sent == [[probe, b""]] and counters["stream_probes"] == 1
    assert counters["stream_bad_frames"] == 1 and streams.subscriptions() == 1


def test_a_refused_probe_is_retried_on_the_tick() -> None:
    streams, xpub, transport, counters = streams_on("wait", 0.01)
    xpub.full = True
    xpub.changes = [(True, PROBE_PREFIX + b"x", peer(7))]
    streams.read_subscriptions(transport)
    assert xpub.sent == []
    xpub.full = False
    streams.tick(transport, 1.0)
    assert xpub.sent == [[PROBE_PREFIX + b"x", b""]] and counters["stream_probes"] == 1


def test_sequences_advance_whether_or_not_anyone_listens() -> None:
    streams, xpub, transport, counters = streams_on()
    streams.published(transport, "t", b"", Result(3))        # nobody listens: 1..3 pass
    xpub.changes = [(True, b"t", peer(7))]
    streams.read_subscriptions(transport)
    streams.published(transport, "t", b"", Result(2))
    streams.published(transport, "u", b"", Result(1))         # its own sequence
    assert xpub.sent == [[b"t", b"t:4+2"]]
    assert counters["stream_batches"] == 1 and counters["stream_messages"] == 2


def test_wait_drops_a_batch_a_full_listener_cannot_take_and_counts_it() -> None:
    streams, xpub, transport, counters = streams_on("wait", 0.01)
    assert streams.no_drop
    xpub.changes = [(True, b"", peer(7))]
    streams.read_subscriptions(transport)
    xpub.full = True
    streams.published(transport, "t", b"", Result(5))
    assert xpub.sent == [] and counters["stream_dropped"] == 5
    assert counters["stream_dropped.wait"] == 5
    xpub.full = False
    streams.published(transport, "t", b"", Result(1))         # numbering went on: 6
    assert xpub.sent == [[b"t", b"t:6+1"]]


def test_a_quiet_topic_sends_its_last_sequence() -> None:
    streams, xpub, transport, counters = streams_on()
    assert not streams.no_drop
    xpub.changes = [(True, b"t", peer(7))]
    streams.read_subscriptions(transport)
    streams.published(transport, "t", b"", Result(3))
    xpub.sent.clear()
    now = 100.0
    streams.tick(transport, now)                     # streamed since the last pass
    assert xpub.sent == []
    streams.tick(transport, now + BEACON_QUIET / 2)  # too soon for another pass
    now += BEACON_QUIET
    streams.tick(transport, now)                     # quiet now
    assert xpub.sent == [[b"t", beacon_frame(3)]] and counters["stream_beacons"] == 1
    now += BEACON_QUIET
    streams.tick(transport, now)
    assert len(xpub.sent) == 1                       # the next one after the interval
    now += BEACON_INTERVAL
    streams.tick(transport, now)
    assert len(xpub.sent) == 2
    xpub.changes = [(False, b"t", peer(7))]                # nobody listens: no more beacons
    streams.read_subscriptions(transport)
    streams.tick(transport, now + 2 * BEACON_INTERVAL)
    assert len(xpub.sent) == 2


def batch(*sequences: int) -> bytes:
    records = [codec.Record(body=b"m", receipt=sequence)
               for sequence in sequences]
    frame: bytes = codec.encode_batch(records)
    return frame


def test_follower_counts_gaps_and_the_tail_from_beacons() -> None:
    follower = StreamFollower("ticks.*")
    assert follower.prefix == b"ticks." and follower.probe.startswith(PROBE_PREFIX)
    assert follower.accept([b"ticks.a", batch(1, 2)]) is not None
    assert follower.accept([b"ticks.a", beacon_frame(2)]) is None and follower.gaps == 0
    got = follower.accept([b"ticks.a", batch(5)])
    assert got is not None and [m.sequence for m in got] == [5] and follower.gaps == 2
    assert follower.accept([b"ticks.a", beacon_frame(9)]) is None and follower.gaps == 6
    assert follower.accept([b"ticks.a", batch(10)]) is not None and follower.gaps == 6
    assert follower.accept([b"ticks.b", beacon_frame(40)]) is None   # first news of b
    assert follower.gaps == 6 and follower.received == 4


def test_follower_takes_only_its_own_topics_and_probe() -> None:
    follower = StreamFollower(">")
    assert follower.prefix == b""
    other = PROBE_PREFIX + b"someone-else"
    assert follower.accept([other, b""]) is None and not follower.live
    assert follower.accept([follower.probe, b""]) is None and follower.live
    exact = StreamFollower("t")
    assert exact.accept([b"tt", batch(1)]) is None            # shares the prefix only
    assert exact.accept([b"t", b"garbage"]) is None and exact.malformed == 1
    assert exact.accept([b"t"]) is None and exact.malformed == 2
    assert exact.accept([b"t", batch(1)]) is not None and exact.received == 1


def test_the_xpub_reads_frames_with_their_peer(tmp_path: Path) -> None:
    transport = ServerTransport(f"ipc://{tmp_path}/c.sock", f"ipc://{tmp_path}/s.sock",
                                max_frame_bytes=1 << 20, stream_no_drop=False)
    context = zmq.Context()
    try:
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"t")
        sub.connect(f"ipc://{tmp_path}/s.sock")
        xsub = context.socket(zmq.XSUB)
        xsub.setsockopt(zmq.LINGER, 0)
        xsub.connect(f"ipc://{tmp_path}/s.sock")
        for frame in (b"\x02", b"", b"\x01u"):
            xsub.send(frame)
        changes = read_changes(transport, 4)
        subscribed = [change for change in changes if change[:2] == (True, b"t")]
        assert len(subscribed) == 1 and subscribed[0][2] is not None
        assert subscribed[0][2][1].endswith(f":{os.getpid()}")   # ipc: the process
        raw = [change for change in changes if change not in subscribed]
        assert [change[:2] for change in raw] == [(None, b"\x02"), (None, b""), (True, b"u")]
        assert len({change[2] for change in raw}) == 1        # one peer
        assert raw[0][2] != subscribed[0][2]                  # another peer
        sub.close()   # libzmq's own unsubscription, without a peer
        assert read_changes(transport, 1) == [(False, b"t", None)]
        xsub.close()
    finally:
        context.term()
        transport.close(linger=0)


def read_changes(transport: ServerTransport, count: int) -> list[Change]:
    changes: list[Change] = []
    deadline = time.monotonic() + 10.0
    while len(changes) < count:
        assert time.monotonic() < deadline, changes
        transport.wait(0.05)
        while (change := transport.recv_subscription()) is not None:
            changes.append(change)
    return changes
