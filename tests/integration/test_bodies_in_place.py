"""Bodies left in place: a local client's publish frame read from its ring keeps its large
bodies there (blobs.pyx, "Bodies left in place") until the messages are settled, and the
ring evacuates them (copies them out) when it needs the room.

The server runs in this process, so ``blobs.in_place_stats()`` is its state.
"""

from __future__ import annotations

import gc
import signal
import textwrap

import numpy as np
import pytest
from conftest import Tracker

from fastfanout._ext import blobs
from fastfanout._ext.batches import IN_PLACE_MIN_BODY

ROW_ITEMS = 256   # float32 items: 1 KiB rows, well past IN_PLACE_MIN_BODY
# A frame is read in place from 64 KiB (HOLD_MIN_BYTES): the tests publish 100 rows.


def anchors() -> int:
    return blobs.in_place_stats()[0]


def evacuations() -> int:
    return blobs.in_place_stats()[1]


def rows(count: int, start: int = 0, items: int = ROW_ITEMS) -> np.ndarray:
    return np.arange(start * items, (start + count) * items,
                     dtype=np.float32).reshape(count, items)


def settle_all(track: Tracker, client, queue: str, table: np.ndarray, before: int) -> None:
    """Receive every row of ``table`` from ``queue``, whole, ack them, and wait until the
    frames they lay in are let go (back to ``before`` anchors)."""
    got = receive_all(client, queue, len(table))
    assert same_bodies(got, table)
    client.ack_batch([m.receipt for m in got])
    track.wait_until(lambda: anchors() == before, what="every frame let go")


def wired(client, *queues: str, **settings) -> None:
    """Topic ``t`` with the queues (of ``settings``) subscribed to it."""
    client.create_topic("t")
    for name in queues:
        client.create_queue(name, **settings)
        client.subscribe("t", name)


def same_bodies(got: list, table: np.ndarray) -> bool:
    return [bytes(m.body) for m in got] == [row.tobytes() for row in table]


def receive_all(client, queue: str, expected: int) -> list:
    got: list = []
    while len(got) < expected:
        batch = client.receive(queue, max_messages=expected - len(got), wait=2.0)
        assert batch, f"{len(got)} of {expected} messages arrived"
        got.extend(batch)
    return got


def test_large_bodies_stay_in_the_ring_until_their_messages_are_settled(track: Tracker):
    server = track.server()
    client = track.client(server.endpoint)
    assert client.info["local_channels"] is True
    wired(client, "q")
    before, evacuated = anchors(), evacuations()
    table = rows(100)
    assert table.shape[1] * 4 >= IN_PLACE_MIN_BODY
    assert len(client.publish_batch("t", table)) == 100
    assert anchors() == before + 1   # one frame kept by its 100 blobs
    got = receive_all(client, "q", 100)
    assert same_bodies(got, table)
    for message in got[:99]:
        message.ack()
    track.wait_until(lambda: client.stats().queues["q"].leased == 1, what="99 acks")
    assert anchors() == before + 1   # one message still refers to the frame
    got[99].ack()
    track.wait_until(lambda: anchors() == before, what="the frame let go")
    assert evacuations() == evacuated


def test_a_ring_that_needs_its_room_evacuates_the_bodies_and_they_stay_whole(track: Tracker):
    server = track.server()
    # a small ring (1 MiB): 2 MiB of unconsumed rows cannot all stay in it
    client = track.client(server.endpoint, ring_bytes=1 << 20)
    assert client.info["local_channels"] is True
    wired(client, "q")
    before, evacuated = anchors(), evacuations()
    counted = client.server_stats()
    frames = 20   # 2 MiB of bodies, none consumed: the oldest frames must move out
    for index in range(frames):
        assert len(client.publish_batch("t", rows(100, index * 100))) == 100
    assert evacuations() > evacuated
    assert anchors() - before < frames
    stats = client.server_stats()   # the same counters, as a client reads them
    assert stats["bodies_in_place_frames"] == anchors()
    assert stats["bodies_evacuations"] == evacuations()
    moved = stats["bodies_evacuated"] - counted["bodies_evacuated"]
    assert moved >= 100   # at least one frame's rows
    assert (stats["bodies_evacuated_bytes"] - counted["bodies_evacuated_bytes"]
            == moved * ROW_ITEMS * 4)
    # each evacuation was asked for by the producer waiting for room, which it then got
    # in its ring: none of its messages went around it over the socket
    assert stats["local_pinned_spills"] == counted["local_pinned_spills"]
    settle_all(track, client, "q", rows(frames * 100), before)


def test_frames_pinning_more_than_half_the_ring_stay_while_the_writer_has_room(
        track: Tracker):
    server = track.server()
    client = track.client(server.endpoint, ring_bytes=1 << 20)
    assert client.info["local_channels"] is True
    wired(client, "q")
    before, evacuated = anchors(), evacuations()
    frames = 7   # about 720 KiB of a 1 MiB ring: past its half, which other held
                 # frames may pin
    for index in range(frames):
        assert len(client.publish_batch("t", rows(100, index * 100))) == 100
    assert anchors() == before + frames   # every frame still in place: no copy made
    assert evacuations() == evacuated
    settle_all(track, client, "q", rows(frames * 100), before)


def test_a_send_to_a_queue_leaves_its_bodies_in_place_too(track: Tracker):
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    before = anchors()
    table = rows(100)
    assert len(client.send_batch("q", table)) == 100
    assert anchors() == before + 1
    settle_all(track, client, "q", table, before)


def test_small_bodies_are_copied_as_before(track: Tracker):
    server = track.server()
    client = track.client(server.endpoint)
    wired(client, "q")
    before = anchors()
    table = rows(100, items=(IN_PLACE_MIN_BODY // 4) - 1)
    client.publish_batch("t", table)
    assert anchors() == before
    got = receive_all(client, "q", 100)
    assert same_bodies(got, table)


def test_bodies_outlive_the_client_that_published_them(track: Tracker):
    server = track.server()
    producer = track.client(server.endpoint)
    wired(producer, "q")
    before = anchors()
    table = rows(100)
    producer.publish_batch("t", table)
    assert anchors() == before + 1
    producer.close()
    consumer = track.client(server.endpoint)
    got = receive_all(consumer, "q", 100)
    assert same_bodies(got, table)


def test_a_client_gone_leaves_no_frame_kept_in_its_ring(track: Tracker):
    # its frames' bodies move out when its session ends: until 2026-12-07 each frame
    # kept the client's whole ring mapped while its messages waited (400 short-lived
    # clients, one 900 KB body each: a broker of 1.6 GB)
    server = track.server()
    producer = track.client(server.endpoint)
    wired(producer, "q")
    before, evacuated = anchors(), evacuations()
    table = rows(100)
    producer.publish_batch("t", table)
    assert anchors() == before + 1
    producer.close()
    consumer = track.client(server.endpoint)
    track.wait_until(lambda: consumer.server_stats()["local_sessions"] == 1,
                     what="the producer's session ended")
    track.wait_until(lambda: anchors() == before, what="its frame evacuated")
    assert evacuations() == evacuated + 1
    assert consumer.server_stats()["bodies_in_place_frames"] == 0
    got = receive_all(consumer, "q", 100)
    assert same_bodies(got, table)


PUBLISH_THEN_HANG = textwrap.dedent("""
    import sys, time
    import numpy as np
    from fastfanout.client import connect
    client = connect(sys.argv[1], ring_bytes=1 << 20)
    for batch in range(8):   # 800 KiB of rows: frames kept in its ring
        start = batch * 100 * 256
        rows = np.arange(start, start + 100 * 256, dtype=np.float32).reshape(100, 256)
        client.publish_batch("t", rows)
    print("published", flush=True)
    time.sleep(120)
""")


def test_bodies_outlive_a_producer_killed_with_sigkill(track: Tracker):
    server = track.server()
    client = track.client(server.endpoint)
    wired(client, "q")
    before = anchors()
    process = track.process(["-c", PUBLISH_THEN_HANG, server.endpoint])
    assert process.stdout is not None
    assert process.stdout.readline().split() == [b"published"]
    assert anchors() > before   # some frames still lie in the producer's ring
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    track.wait_until(lambda: client.server_stats()["local_sessions"] == 1,
                     what="the killed producer's session ended")
    settle_all(track, client, "q", rows(800), before)


def test_purging_and_deleting_queues_let_the_frames_go(track: Tracker):
    server = track.server()
    client = track.client(server.endpoint)
    wired(client, "a", "b")
    before = anchors()
    client.publish_batch("t", rows(100))
    assert anchors() == before + 1
    assert client.purge("a") == 100
    assert anchors() == before + 1   # queue b still holds the 100 messages
    client.delete_queue("b")
    track.wait_until(lambda: anchors() == before, what="the frame let go")


@pytest.mark.parametrize("pattern", ["t.*", "t.>"])
def test_a_queue_keeping_topics_gets_its_bodies_and_topics_whole(track: Tracker, pattern):
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t.x")
    client.create_queue("q")
    client.subscribe(pattern, "q")   # a pattern subscription keeps topics
    before = anchors()
    table = rows(100)
    client.publish_batch("t.x", table)
    assert anchors() == before   # the blobs carry the topic: copies, as before
    got = receive_all(client, "q", 100)
    assert same_bodies(got, table)
    assert {m.topic for m in got} == {"t.x"}


@pytest.mark.parametrize("durable", [False, True])
def test_a_stopped_server_lets_go_of_the_frames_its_queues_kept(track: Tracker, tmp_path,
                                                                 durable):
    # Not when the collector gets to the broker: a process that goes on after a server
    # stopped must not keep its clients' rings mapped (nor the bodies' memory). A
    # durable broker journals the bodies it left in place: they come back after it.
    gc.disable()   # so that only the stop can let the frame go
    try:
        endpoint = track.endpoint()
        data = str(tmp_path / "data") if durable else None
        server = track.server(endpoint, data_dir=data)
        client = track.client(endpoint)
        wired(client, "q", durable=durable)
        before = anchors()
        table = rows(100)
        client.publish_batch("t", table)
        assert anchors() == before + 1
        client.close()
        track.stop_server(server)
        assert anchors() == before
    finally:
        gc.enable()
    if durable:   # the journal kept them: letting go of the memory removed nothing
        track.server(endpoint, data_dir=data)
        got = receive_all(track.client(endpoint), "q", 100)
        assert same_bodies(got, table)
