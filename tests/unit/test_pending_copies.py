"""Delayed copies held compactly until due (the store's "pending copies"): what they cost
and that every observable behaviour of a delayed message stays as it was."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from clocks import FakeClock

from fastfanout import Broker, PublishEntry


def test_a_pending_delayed_message_costs_no_entry(clock: FakeClock) -> None:
    # The store's arrays come from PyMem (traced); blobs from the slab (not traced). An
    # entry (112 bytes) and a slot timer (24 + 4) per delayed copy were 140 bytes; a
    # pending copy is 20 bytes (its blob pointer beside its queue and arrival links, no
    # padding) and its timer 20 (a packed node, no position index; was 24 + 28).
    # 16384 copies fill the arrays exactly.
    count = 16384
    with Broker(clock=clock) as broker:
        broker.create_queue("q")
        # Grow the publish path's scratch arrays to the batch's size first (a topic with
        # no subscriber: no copy, so the entry slab stays as small as it was).
        broker.create_topic("warm")
        broker.publish_batch("warm", [b"warm"] * count)
        entries = [PublishEntry(b"x" * 64, delay=60.0) for _ in range(count)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            broker.send_batch("q", entries)
            traced = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert traced / count < 41.5   # (+ the publish path's byte per copy, and slack)
        assert broker.stats().queues["q"].delayed == count
        clock.advance(60.0)
        stats = broker.stats().queues["q"]
        assert (stats.visible, stats.delayed) == (count, 0)
        assert broker.receive("q")[0].body == b"x" * 64
        assert broker.check()


def test_due_pending_copies_and_delayed_entries_fire_in_arming_order(
        broker: Broker, clock: FakeClock) -> None:
    broker.create_queue("q")
    broker.send("q", b"a")
    (a,) = broker.receive("q")
    broker.nack(a.receipt, delay=5.0)        # a delayed entry, due at +5
    broker.send("q", b"b", delay=5.0)        # a pending copy, due at +5, armed later
    broker.send("q", b"c", delay=4.0)        # due first
    clock.advance(2.0)
    broker.send("q", b"d", delay=3.0)        # due at +5 too, armed last
    assert broker.stats().queues["q"].delayed == 4
    clock.advance(3.0)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"c", b"a", b"b", b"d"]


def test_pending_copies_count_for_oldest_age_and_retention_in_arrival_order(
        broker: Broker, clock: FakeClock) -> None:
    broker.create_queue("q", retention=10.0)
    broker.send("q", b"x", delay=3.0)     # entered at 0
    clock.advance(1.0)
    assert broker.stats().queues["q"].oldest_age == 1.0
    broker.send("q", b"y")                # entered at 1, visible
    clock.advance(2.0)                    # x is due: an entry in its arrival place
    stats = broker.stats().queues["q"]
    assert (stats.visible, stats.delayed, stats.oldest_age) == (2, 0, 3.0)
    clock.advance(7.0)                    # x's retention ends (entered at 0), y's not
    stats = broker.stats().queues["q"]
    assert (stats.messages, stats.dropped["retention"], stats.oldest_age) == (1, 1, 9.0)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"y"]


def test_retention_drops_a_pending_copy_that_was_never_due_yet(
        broker: Broker, clock: FakeClock) -> None:
    broker.create_queue("q", retention=10.0)
    broker.send("q", b"x", delay=9.0)
    clock.advance(30.0)   # one step past its due time and its retention end
    stats = broker.stats().queues["q"]
    assert (stats.messages, stats.delayed, stats.dropped["retention"]) == (0, 0, 1)
    assert broker.receive("q") == []


def test_purge_and_delete_remove_pending_copies(broker: Broker, clock: FakeClock) -> None:
    broker.create_queue("q")
    broker.send_batch("q", [PublishEntry(b"p", delay=5.0)] * 3 + [b"now"])
    assert broker.purge("q") == 4
    stats = broker.stats().queues["q"]
    assert (stats.messages, stats.delayed, stats.bytes, stats.purged) == (0, 0, 0, 4)
    broker.send_batch("q", [PublishEntry(b"p", delay=5.0)] * 3)
    broker.delete_queue("q")
    broker.create_queue("q")              # takes the deleted queue's id again
    clock.advance(10.0)
    assert broker.receive("q") == []
    assert broker.stats().queues["q"].messages == 0


def test_a_delayed_fanout_copy_per_queue_shares_its_message(
        broker: Broker, clock: FakeClock) -> None:
    broker.create_topic("t")
    for name in ("a", "b"):
        broker.create_queue(name, delay=2.0)
        broker.subscribe("t", name)
    broker.publish("t", b"m", ttl=5.0)
    clock.advance(2.0)
    assert [m.body for m in broker.receive("a")] == [b"m"]
    clock.advance(3.0)                    # the ttl ran out for the copy still in b
    assert broker.receive("b") == []
    assert broker.stats().queues["b"].dropped["expired"] == 1


def test_the_narrower_blob_header_keeps_the_longest_ids_priority_and_ttl(
        broker: Broker, clock: FakeClock) -> None:
    # group and dedup id lengths are 8-bit (ids are at most 128 UTF-8 bytes), the ttl
    # end is stored after the parts only when there is one
    group, dedup = "g" * 128, "é" * 64
    broker.create_queue("f", fifo=True)
    broker.send("f", b"x", group_id=group, dedup_id=dedup, ttl=5.0)
    broker.create_queue("p", max_priority=255)
    broker.send("p", b"y" * 300, attributes={"k": "v"}, priority=255)
    (m,) = broker.receive("f")
    assert (m.body, m.group_id, m.dedup_id) == (b"x", group, dedup)
    m.nack()
    clock.advance(5.0)
    assert broker.receive("f") == []
    (p,) = broker.receive("p")
    assert (p.body, p.attributes, p.priority) == (b"y" * 300, {"k": "v"}, 255)


def test_a_durable_queue_s_delayed_copy_is_journaled_and_comes_back(
        clock: FakeClock, tmp_path: Path) -> None:
    # a durable queue's delayed copy is an entry (journaled); an in-memory queue's of the
    # same broker is a pending copy, and goes with the process like any in-memory copy
    with Broker(clock=clock, data_dir=tmp_path / "data") as broker:
        broker.create_queue("d")
        broker.create_queue("m", durable=False)
        broker.send("d", b"kept", delay=5.0, ttl=60.0)
        broker.send("m", b"gone", delay=5.0)
        assert broker.check()
    with Broker(clock=clock, data_dir=tmp_path / "data") as broker:
        assert broker.stats().queues["d"].delayed == 1
        clock.advance(5.0)
        assert [m.body for m in broker.receive("d")] == [b"kept"]
        assert broker.receive("m") == []


def test_dropped_pending_copies_give_their_places_back_and_the_rest_keep_their_order(
        broker: Broker, clock: FakeClock) -> None:
    # A dropped pending copy's timer stays in the heap until it comes up or until the
    # dropped ones outnumber the live ones: then all of them go at once and their places
    # are taken again (no growth), and the live copies still fire in (due, send) order.
    broker.create_queue("gone")
    broker.create_queue("kept")
    # due times with many ties (send order decides), interleaved in the heap with gone's
    kept = [PublishEntry(n.to_bytes(2, "big"), delay=1.0 + (n * 37 % 100) / 100)
            for n in range(1500)]
    gone = [PublishEntry(b"g", delay=1.0 + (n * 13 % 100) / 100) for n in range(2500)]
    broker.send_batch("gone", gone[:1000])
    broker.send_batch("kept", kept)
    broker.send_batch("gone", gone[1000:])
    assert broker.check()
    # Deleting gone drops its 2500: once 2001 are dropped and 1999 live (the arrays hold
    # 4096), the 2001 go; the last 499 stay dropped.
    broker.delete_queue("gone")
    assert broker.check()
    again = [PublishEntry(b"a", delay=5.0)] * 2000   # 1999 + 2000 <= 4096
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        broker.send_batch("kept", again)        # in the places the dropped ones left
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096
    assert broker.check()
    broker.purge("kept")
    broker.send_batch("kept", kept)
    clock.advance(2.0)
    got = [m.body for m in broker.receive("kept", max_messages=2000)]
    order = sorted(range(1500), key=lambda n: (n * 37 % 100, n))
    assert got == [n.to_bytes(2, "big") for n in order]
    assert broker.stats().queues["kept"].delayed == 0
    assert broker.check()


def test_the_journal_s_message_record_keeps_the_publish_s_own_due_time(
        clock: FakeClock, tmp_path: Path) -> None:
    # The blob header no longer holds it: a journaled blob keeps it in its journal part,
    # and the message part of the enqueue record still says it (docs/storage.md).
    import struct

    from fastfanout._ext import journal
    from fastfanout._ext.store import RECORD_KINDS

    with Broker(clock=clock, data_dir=tmp_path / "data") as broker:
        broker.create_queue("d", delay=2.0)
        broker.send_batch("d", [b"own", PublishEntry(b"at", deliver_at=clock() + 7.0),
                                PublishEntry(b"in", delay=5.0)])
    found = {}

    def record(seq: int, kind: int, payload: bytes) -> None:
        if kind == RECORD_KINDS["enqueue"]:
            entered, due = struct.unpack_from("<qq", payload, 16)
            message_due = struct.unpack_from("<q", payload, 40 + 16)[0]
            (length,) = struct.unpack_from("<I", payload, 40 + 32)
            found[payload[40 + 48:40 + 48 + length]] = (entered, due, message_due)

    journal.scan(str(tmp_path / "data" / "journal"), record, repair=False)
    entered, due, message_due = found[b"own"]
    assert (due - entered, message_due) == (2_000_000, -2**63)   # the queue's delay: none
    entered, due, message_due = found[b"at"]
    assert due == message_due == entered + 7_000_000
    entered, due, message_due = found[b"in"]
    assert due == message_due == entered + 5_000_000
