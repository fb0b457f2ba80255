"""Deliveries by reference: a push that is exactly one publish frame of a local producer,
read in place from its ring, reaches a local consumer as a reference to that frame
(shmring.pyx, "Deliveries by reference"; deliveries.pyx says when), and the frame stays
pinned in the producer's ring until the consumer is done with it.

Most tests run the server in this process; the last one runs a broker, a producer and a
consumer as three processes, as users do."""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import signal
import struct
import textwrap
import time
from typing import Any

import numpy as np

from fastfanout import PublishEntry
from fastfanout._ext.shmring import RingFrame

Tracker = Any
ITEMS = 256   # float32 items: 1 KiB rows, bodies left in place by the broker
WRITER_WATCHES = 80   # offset of the ring header's writer_watches (shmring.pyx)
WATCHING = struct.pack("<Q", 1)


def rows(count: int, start: int = 0) -> np.ndarray:
    return np.arange(start * ITEMS, (start + count) * ITEMS,
                     dtype=np.float32).reshape(count, ITEMS)


def wired(client: Any, *queues: str) -> None:
    client.create_topic("t")
    for name in queues:
        client.create_queue(name)
        client.subscribe("t", name)


def stat(client: Any, key: str) -> int:
    return int(client.server_stats()[key])


def one_to_one(track: Tracker, prefetch: int) -> tuple[Any, Any, Any]:
    """(producer, consumer's client, consumer): a broker delivering by reference, topic
    ``t`` -> queue ``q``, both clients with 1 MiB rings."""
    server = track.server(deliver_by_reference=True)
    producer = track.client(server.endpoint, ring_bytes=1 << 20)
    consumer_client = track.client(server.endpoint, ring_bytes=1 << 20)
    wired(producer, "q")
    return producer, consumer_client, consumer_client.consume("q", prefetch=prefetch)


def test_a_push_that_is_one_publish_frame_is_the_producers_frame_itself(track: Tracker):
    server = track.server(deliver_by_reference=True)
    producer = track.client(server.endpoint, ring_bytes=1 << 20)
    consumer_client = track.client(server.endpoint, ring_bytes=1 << 20)
    wired(producer, "q")
    table = rows(300)   # 300 KiB: more than a quarter of the consumer's ring
    ids = producer.publish_batch("t", table)
    consumer = consumer_client.consume("q", prefetch=1000)
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and len(batch) == 300   # one push: no copy to bound
    assert stat(producer, "local_references") == 1
    view = batch.as_array(np.float32, (ITEMS,))
    assert (view == table).all()
    assert type(batch.bodies.obj) is RingFrame
    assert batch.ids.tolist() == [result.message_id for result in ids]
    assert batch.receive_counts.tolist() == [1] * 300
    batch.ack()
    track.wait_until(lambda: producer.stats().queues["q"].acked == 300, what="300 acks")
    # acked, yet the view still reads the producer's frame: it stays pinned there
    assert stat(producer, "local_pinned_frames") == 1
    assert (view == table).all()
    del batch, view
    gc.collect()
    track.wait_until(lambda: stat(producer, "local_pinned_frames") == 0,
                     what="the frame let go once the consumer dropped its view")
    consumer.cancel()


def test_the_producers_ring_is_reused_only_after_the_consumer_let_go(track: Tracker):
    # A kept view pins its frame: the producer goes on (around its ring if it must) and
    # the kept rows never change; every later batch arrives whole.
    producer, _, consumer = one_to_one(track, prefetch=200)
    producer.publish_batch("t", rows(100))
    first = consumer.next_batch(timeout=5.0)
    assert first is not None
    kept = first.as_array(np.float32, (ITEMS,))
    first.ack()
    got = []
    for start in range(100, 3100, 100):   # three rings' worth behind the kept view
        producer.publish_batch("t", rows(100, start))
        batch = consumer.next_batch(timeout=10.0)
        assert batch is not None, f"the batch from row {start} never came"
        got.append(np.array(batch.as_array(np.float32, (ITEMS,))))
        batch.ack()
        del batch
        assert (kept == rows(100)).all(), f"the kept rows changed at row {start}"
    assert (np.concatenate(got) == rows(3000, 100)).all()
    assert stat(producer, "local_references") >= 1
    del first, kept
    gc.collect()
    consumer.cancel()
    track.wait_until(lambda: stat(producer, "local_pinned_frames") == 0,
                     what="every frame let go")


def test_fan_out_redeliveries_and_the_setting_off_are_copied(track: Tracker):
    server = track.server(deliver_by_reference=True)
    producer = track.client(server.endpoint)
    consumer_client = track.client(server.endpoint)
    wired(producer, "a", "b")   # one blob in two queues: no header to rewrite for both
    consumers = [consumer_client.consume(queue, prefetch=1000) for queue in ("a", "b")]
    track.wait_until(lambda: stat(producer, "consumers") == 2, what="both consumers")
    producer.publish_batch("t", rows(100))
    batches = [consumer.next_batch(timeout=5.0) for consumer in consumers]
    for batch in batches:
        assert batch is not None and (batch.as_array(np.float32, (ITEMS,)) == rows(100)).all()
        batch.ack()
    assert stat(producer, "local_references") == 0
    for consumer in consumers:
        consumer.cancel()
    producer.delete_queue("b")
    producer.publish_batch("t", rows(100, 100))
    consumer = consumer_client.consume("a", prefetch=1000)
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and stat(producer, "local_references") == 1
    batch.nack()   # back to the queue: a redelivery is a copy
    again = consumer.next_batch(timeout=5.0)
    assert again is not None and again.receive_counts.tolist() == [2] * 100
    assert (again.as_array(np.float32, (ITEMS,)) == rows(100, 100)).all()
    assert type(again.bodies.obj) is RingFrame and stat(producer, "local_references") == 1
    again.ack()
    consumer.cancel()

    off = track.server(deliver_by_reference=False)
    producer = track.client(off.endpoint)
    consumer_client = track.client(off.endpoint)
    wired(producer, "q")
    producer.publish_batch("t", rows(100))
    consumer = consumer_client.consume("q", prefetch=1000)
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and (batch.as_array(np.float32, (ITEMS,)) == rows(100)).all()
    assert stat(producer, "local_references") == 0
    batch.ack()
    consumer.cancel()


CONSUME_THEN_HANG = textwrap.dedent("""
    import sys, time
    import numpy as np
    from fastfanout.client import connect
    client = connect(sys.argv[1])
    consumer = client.consume("q", prefetch=1000)
    batch = consumer.next_batch(timeout=10.0)
    table = batch.as_array(np.float32, (256,))
    print(len(batch), float(table.sum(dtype=np.float64)), flush=True)
    time.sleep(120)   # holds the view, acks nothing
""")


def test_across_processes_a_consumer_killed_lets_go_of_its_frames(track: Tracker):
    endpoint = track.endpoint()
    track.broker_process(endpoint, "--deliver-by-reference")
    producer = track.client(endpoint)
    wired(producer, "q")
    consumer = track.process(["-c", CONSUME_THEN_HANG, endpoint])
    track.wait_until(lambda: stat(producer, "consumers") == 1, what="the consumer")
    table = rows(200)
    producer.publish_batch("t", table)
    assert consumer.stdout is not None
    count, total = consumer.stdout.readline().split()
    assert int(count) == 200 and float(total) == float(table.sum(dtype=np.float64))
    assert stat(producer, "local_references") == 1
    assert stat(producer, "local_pinned_frames") == 1
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(10)
    track.wait_until(lambda: stat(producer, "local_pinned_frames") == 0,
                     what="the killed consumer's pins let go")
    again = track.client(endpoint)
    got = again.receive("q", max_messages=200, wait=5.0)
    while len(got) < 200:
        more = again.receive("q", max_messages=200 - len(got), wait=5.0)
        assert more, f"{len(got)} of 200 came back"
        got.extend(more)
    assert [bytes(m.body) for m in got] == [row.tobytes() for row in table]
    assert {m.receive_count for m in got} == {2}


def test_a_view_dropped_while_the_broker_sleeps_wakes_it_to_let_the_frame_go(
        track: Tracker):
    # No request and no heartbeat comes between the drop and the release: the consumer's
    # ring rings the broker when its tail passes the reference (``watch_pins``).
    server = track.server(heartbeat_interval=30.0, heartbeat_timeout=90.0,
                          deliver_by_reference=True)
    producer = track.client(server.endpoint)
    consumer_client = track.client(server.endpoint)
    wired(producer, "q")
    consumer = consumer_client.consume("q", prefetch=1000)
    producer.publish_batch("t", rows(100))
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None
    view = batch.as_array(np.float32, (ITEMS,))
    consumer_client.ack_batch(batch.receipts)   # a round trip: acked when it returns
    assert stat(producer, "local_pinned_frames") == 1
    ring = producer.connection.transport.channel.outgoing   # the producer's own ring
    assert ring.used > 0   # its frame, pinned by the consumer's view
    # the broker asleep with a frame pinned has the consumer's ring watch its tail
    incoming = consumer_client.connection.transport.channel.incoming
    track.wait_until(lambda: os.pread(incoming.fileno(), 8, WRITER_WATCHES) == WATCHING,
                     what="the broker watching the consumer's tail")
    del batch, view
    gc.collect()
    track.wait_until(lambda: ring.used == 0, timeout=5.0,
                     what="the producer's frame let go with no request to the broker")
    assert os.pread(incoming.fileno(), 8, WRITER_WATCHES) == bytes(8)   # rung once
    consumer.cancel()


def test_a_frame_expired_at_the_head_leaves_the_next_frame_by_reference(track: Tracker):
    # The expired frame's messages are settled as the push leases past them (its anchor
    # ends with the last one); the frame behind it still goes whole, by reference.
    server = track.server(deliver_by_reference=True)
    producer = track.client(server.endpoint)
    consumer_client = track.client(server.endpoint)
    wired(producer, "q")
    producer.publish_batch("t", [PublishEntry(row.tobytes(), ttl=0.1) for row in rows(100)])
    expired_by = time.monotonic() + 0.2
    while time.monotonic() < expired_by:   # a deadline on the ttl's clock, not a sync
        time.sleep(0.05)
    producer.publish_batch("t", rows(100, 100))
    consumer = consumer_client.consume("q", prefetch=1000)
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None
    assert (batch.as_array(np.float32, (ITEMS,)) == rows(100, 100)).all()
    assert stat(producer, "local_references") == 1
    batch.ack()
    consumer.cancel()


def test_a_producer_goes_around_its_ring_while_a_slow_consumer_pins_a_frame(
        track: Tracker):
    # The consumer holds its first batch (leased, not acked) while the producer publishes
    # three rings' worth: the frame pinned by the reference cannot be evacuated, so the
    # producer's writes go around its ring (over the socket) instead of waiting for room
    # that nothing would make (until the fix it waited, and its session was ended for
    # missed heartbeats while the broker spun).
    producer, _, consumer = one_to_one(track, prefetch=100)
    producer.publish_batch("t", rows(100))
    first = consumer.next_batch(timeout=5.0)
    assert first is not None and type(first.bodies.obj) is RingFrame
    started = time.monotonic()
    for start in range(100, 3000, 100):   # ~3 MB into a 1 MiB ring
        producer.publish_batch("t", rows(100, start))
    assert time.monotonic() - started < 30   # a bound on a hang, not a speed
    assert (first.as_array(np.float32, (ITEMS,)) == rows(100)).all()
    first.ack()
    del first
    got: list[np.ndarray] = []
    while sum(map(len, got)) < 2900:
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None, f"{sum(map(len, got))} of 2,900 rows came"
        got.append(np.array(batch.as_array(np.float32, (ITEMS,))))
        batch.ack()
        del batch
    assert (np.concatenate(got) == rows(2900, 100)).all()
    consumer.cancel()


def test_a_view_outliving_its_connection_keeps_its_rows(track: Tracker):
    # The consumer closes its connection but keeps an array of a batch that came by
    # reference: its close() makes the array's pages its own (privatized), so the
    # producer's later frames never land on it (until a fix the close let the frame go
    # at once, and the array changed under it; then the broker kept the consumer's ring
    # lingering while its process lived, and past MAX_LINGERING such rings it changed
    # again: the next test).
    server = track.server(deliver_by_reference=True)
    producer = track.client(server.endpoint, ring_bytes=1 << 20)
    wired(producer, "q")
    leaving = track.client(server.endpoint)
    consumer = leaving.consume("q", prefetch=100)
    producer.publish_batch("t", rows(100))
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and type(batch.bodies.obj) is RingFrame
    kept = batch.as_array(np.float32, (ITEMS,))
    batch.ack()
    del batch
    incoming = leaving.connection.transport.channel.incoming
    leaving.close()
    assert incoming.references_privatized == 1
    track.wait_until(lambda: stat(producer, "local_pinned_frames") == 0,
                     what="the frame let go once the closed consumer had its own copy")
    staying = track.client(server.endpoint)
    consumer = staying.consume("q", prefetch=100)
    for start in range(100, 3100, 100):   # three of the producer's rings over
        producer.publish_batch("t", rows(100, start))
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None
        batch.ack()
        del batch
        assert (kept == rows(100)).all(), f"the kept rows changed at row {start}"
    assert stat(producer, "local_lingering_rings") == 0
    consumer.cancel()


def test_a_producer_pinned_full_goes_on_unannounced_and_keeps_its_order(track: Tracker):
    # A consumer keeps a view of a batch that came by reference for good, so its frame
    # stays pinned in the producer's ring; the producer's small requests then fill the
    # rest of its ring behind it (its tail cannot pass the frame), go around it after
    # markers while one fits, then with none: over the socket unannounced, a count
    # record before the next record that finds room. Until the fix the send waited for
    # room nothing would make, and failed (PeerLost) after the client's timeout.
    server = track.server(deliver_by_reference=True)
    producer = track.client(server.endpoint, ring_bytes=1 << 18)
    consumer_client = track.client(server.endpoint)
    wired(producer, "q")
    producer.create_queue("later")   # never consumed: read back in order at the end
    consumer = consumer_client.consume("q", prefetch=100)
    producer.publish_batch("t", rows(70))   # ~76 KB: read in place, sent by reference
    batch = consumer.next_batch(timeout=5.0)
    assert batch is not None and type(batch.bodies.obj) is RingFrame
    kept = batch.as_array(np.float32, (ITEMS,))
    batch.ack()
    del batch
    sent = 0

    def send_some(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            producer.send("later", struct.pack("<I", sent) + b"p" * 100)
            sent += 1

    while stat(producer, "local_unannounced") < 5:
        send_some(10)
        assert sent < 20_000, "the producer never went unannounced"
    send_some(200)   # on, unannounced, while the frame stays pinned
    assert stat(producer, "local_pinned_frames") == 1
    assert (kept == rows(70)).all()
    del kept
    gc.collect()
    consumer.cancel()
    track.wait_until(lambda: stat(producer, "local_pinned_frames") == 0,
                     what="the frame let go once the view was dropped")
    unannounced = stat(producer, "local_unannounced")
    send_some(300)   # the ring has room again: a count record, then records in it
    assert stat(producer, "local_unannounced") == unannounced
    got: list[int] = []
    while len(got) < sent:
        messages = producer.receive("later", max_messages=1000, wait=1.0)
        assert messages, f"{len(got)} of {sent} messages came"
        got.extend(struct.unpack_from("<I", message.body)[0] for message in messages)
        producer.ack_batch([message.receipt for message in messages])
    assert got == list(range(sent))


def test_views_kept_for_good_are_copied_in_place_and_let_their_frames_go(track: Tracker):
    # The consumer keeps an array of every batch (the anti-pattern the docs warn of):
    # when the frames it pins fill a quarter of its producer's ring, the broker asks it
    # for them, and all but its newest two are copied where they lie (privatized: their
    # pages in its mapping replaced by private copies) and let go, so the producer's
    # ring is reused, every push still goes by reference, and every kept array still
    # reads its rows. Until the fix each kept array pinned its frame for good: past half
    # the ring the broker copied the producer's frames, then the producer went around
    # its ring (over the socket).
    server = track.server(deliver_by_reference=True)
    producer = track.client(server.endpoint, ring_bytes=1 << 22)
    consumer_client = track.client(server.endpoint, ring_bytes=1 << 22)
    wired(producer, "q")
    consumer = consumer_client.consume("q", prefetch=200)
    channel = consumer_client.connection.transport.channel
    kept: list[np.ndarray] = []
    for start in range(0, 6000, 100):   # 6.5 MB through a 4 MiB ring
        producer.publish_batch("t", rows(100, start))
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None, f"the batch from row {start} never came"
        assert type(batch.bodies.obj) is RingFrame
        kept.append(batch.as_array(np.float32, (ITEMS,)))
        batch.ack()
        del batch
    stats = producer.server_stats()
    assert stats["local_references"] == 60 and stats["local_pins_asked"] >= 1
    assert channel.incoming.references_privatized >= 30
    assert stats["local_pinned_frames"] <= 20
    assert stats["local_unannounced"] == 0 and stats["local_pinned_spills"] == 0
    for index, table in enumerate(kept):
        assert (table == rows(100, 100 * index)).all(), f"kept batch {index} changed"
    # memory mapped now may land in what the privatized frames' mappings gave back:
    # letting the frames go must unmap their pages alone (until a fix, the whole ring's
    # range: this process's later mappings went with it, and it crashed)
    mine = [mmap.mmap(-1, 1 << 16) for _ in range(200)]
    for area in mine:
        area.write(b"z" * (1 << 16))
    addresses = [ctypes.addressof(ctypes.c_char.from_buffer(area)) for area in mine]
    del kept, table
    gc.collect()
    with open("/proc/self/maps") as maps:
        regions = [tuple(int(bound, 16) for bound in line.split()[0].split("-"))
                   for line in maps]
    assert all(any(start <= at < end for start, end in regions) for at in addresses)
    assert all(area[:1] == b"z" and area[-1:] == b"z" for area in mine)
    consumer.cancel()
    track.wait_until(lambda: stat(producer, "local_pinned_frames") == 0,
                     what="every frame let go")


def test_arrays_of_consumers_closed_past_the_lingering_bound_keep_their_rows(
        track: Tracker, monkeypatch: Any):
    # Consumers close while keeping an array of a batch that came by reference, more of
    # them than the broker keeps lingering rings for: the oldest rings are closed and
    # their producers' frames let go. A consumer's close() has made its own copies of
    # what it still views first, so its arrays keep their rows while the producers
    # write over their rings (until the fix they read the later messages).
    from fastfanout.server import local_sessions

    monkeypatch.setattr(local_sessions, "MAX_LINGERING", 1)
    server = track.server()
    admin = track.client(server.endpoint)
    admin.create_topic("t")
    producers, kept = [], []
    for index in range(3):
        admin.create_queue(f"q{index}")
        subscription = admin.subscribe("t", f"q{index}")
        producer = track.client(server.endpoint, ring_bytes=1 << 20)
        producers.append(producer)
        producer.publish_batch("t", rows(300, 300 * index))   # one frame, one queue
        admin.unsubscribe(subscription)
        leaving = track.client(server.endpoint, ring_bytes=1 << 20)
        batch = leaving.consume(f"q{index}", prefetch=600).next_batch(timeout=5.0)
        assert batch is not None and type(batch.bodies.obj) is RingFrame
        kept.append(batch.as_array(np.float32, (ITEMS,)))
        batch.ack(wait=True)
        del batch
        leaving.close()
    admin.create_queue("sink")
    admin.subscribe("t", "sink")
    for _ in range(10):   # each producer goes over its ring: its old room reused
        for producer in producers:
            producer.publish_batch("t", rows(300, 9000))
    for index, table in enumerate(kept):
        assert (table == rows(300, 300 * index)).all(), f"consumer {index}'s rows changed"
    del kept, table
    track.wait_until(lambda: stat(admin, "local_pinned_frames") == 0
                     and stat(admin, "local_lingering_rings") == 0,
                     what="nothing pinned, nothing lingering")
