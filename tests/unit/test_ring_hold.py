"""Frames read in place from a shared ring (``read``'s ``hold_min``) and publish frames
that write themselves into it (``RowsFrame``): what is held, for how long, and the bound."""

from __future__ import annotations

import ctypes
import gc
import os

import numpy as np
import pytest

from fastfanout._ext.codec import Record, decode_batch, encode_batch
from fastfanout._ext.shmring import (
    FULL,
    MIN_CAPACITY,
    PINNED,
    WROTE,
    WROTE_WAKE,
    RingFrame,
    SharedRing,
)
from fastfanout._ext.wire import RowsFrame, encode_entries, publish_frame_of

BIG = 4096   # hold_min of these tests


@pytest.fixture
def pair():
    """(writer, reader) of one fresh ring of MIN_CAPACITY bytes (half of it: max_held)."""
    writer = SharedRing.create(MIN_CAPACITY)
    reader = SharedRing(f"/proc/{os.getpid()}/fd/{writer.fileno()}")
    yield writer, reader
    writer.close()
    reader.close()


def fill_until_full(writer, reader) -> None:
    """Write small messages, reading (and dropping) each, until one finds no room."""
    for _ in range(MIN_CAPACITY // 1000):
        if writer.write([b"s" * 1000]) == FULL:
            return
        reader.read(1 << 10, BIG)


def test_a_large_frame_is_a_read_only_view_of_the_ring_held_until_it_is_gone(pair):
    writer, reader = pair
    writer.write([b"head", b"x" * BIG])
    (message,), _ = reader.read(8, BIG)
    small, frame = message
    assert type(small) is bytes and type(frame) is RingFrame
    assert len(frame) == BIG and bytes(frame) == b"x" * BIG
    assert memoryview(frame).readonly
    with pytest.raises(TypeError, match="not writable"):
        ctypes.c_char.from_buffer(frame)   # asks for a writable buffer
    view = np.frombuffer(frame, np.uint8)
    assert not view.flags.writeable
    used = writer.used
    assert used > BIG and reader.held == 1 and reader.held_bytes == used
    del message, small, frame
    gc.collect()
    assert writer.used == used and reader.held == 1   # the array keeps the record
    del view
    assert reader.held == 0 and writer.used == 0       # released: the writer reuses it


def test_small_frames_and_no_hold_min_are_copies(pair):
    writer, reader = pair
    writer.write([b"y" * (BIG - 1)])
    writer.write([b"z" * BIG])
    messages, _ = reader.read(8)
    assert [type(m[0]) for m in messages] == [bytes, bytes] and writer.used == 0
    writer.write([b"y" * (BIG - 1)])
    (message,), _ = reader.read(8, BIG)
    assert type(message[0]) is bytes and writer.used == 0


def test_a_held_record_keeps_its_room_and_its_release_wakes_the_waiting_writer(pair):
    writer, reader = pair
    writer.write([b"x" * BIG])
    (held,), _ = reader.read(1, BIG)
    view = np.frombuffer(held[0], np.uint8)   # viewed: it cannot move out of the ring
    fill_until_full(writer, reader)   # behind it: small messages, read (copied)
    assert writer.write([b"s" * 1000]) == FULL and reader.held == 1
    messages, wake = reader.read(8, BIG)
    assert messages == [] and not wake and not reader.pending()   # nothing to read
    # about to sleep while the writer waits for room its held frame pins: once, the
    # reader reads instead, and that read says to ring the writer (see the next test)
    assert not reader.sleep()
    messages, wake = reader.read(8, BIG)
    assert messages == [] and wake
    assert reader.sleep()   # nothing to read or to release
    assert writer.write([b"s" * 1000]) == PINNED   # asleep: the writer goes around
    del held, view
    # the release moved the tail while the writer waited: the reader must not sleep,
    # and its next read says to ring the writer
    assert reader.pending()
    assert not reader.sleep()
    messages, wake = reader.read(8, BIG)
    assert messages == [] and wake
    assert writer.write([b"s" * 1000]) in (WROTE, WROTE_WAKE)


def test_frames_beyond_max_held_are_copied_and_counted(pair):
    writer, reader = pair
    assert reader.max_held == MIN_CAPACITY // 2
    per_record = 8 + 8 + BIG
    held = reader.max_held // per_record
    for _ in range(held + 3):
        writer.write([b"x" * BIG])
    first, _ = reader.read(held, BIG)
    assert [type(m[0]) for m in first] == [RingFrame] * held
    views = [np.frombuffer(m[0], np.uint8) for m in first]   # viewed: they cannot move
    rest, _ = reader.read(8, BIG)
    assert [type(m[0]) for m in rest] == [bytes] * 3
    assert reader.hold_refusals == 3 and reader.hold_detaches == 0
    assert reader.held == held and reader.held_bytes == (held + 3) * per_record
    del first, views
    assert reader.held == 0 and writer.used == 0
    reader.max_held = 0   # holding nothing: every frame is copied
    writer.write([b"x" * BIG])
    (message,), _ = reader.read(8, BIG)
    assert type(message[0]) is bytes and reader.hold_refusals == 4


def test_out_of_order_releases_free_only_from_the_oldest(pair):
    writer, reader = pair
    for _ in range(3):
        writer.write([b"x" * BIG])
    (a,), (b,), (c,) = (m for m in reader.read(8, BIG)[0])
    record = 8 + 8 + BIG
    del b
    assert reader.held == 3 and writer.used == 3 * record
    del a
    assert reader.held == 1 and writer.used == record
    del c
    assert reader.held == 0 and writer.used == 0


def test_closing_with_live_frames_unmaps_at_the_last_release(pair):
    writer, reader = pair
    writer.write([b"q" * BIG])
    (message,), _ = reader.read(8, BIG)
    frame = message[0]
    del message
    reader.close()
    assert reader.closed and reader.live_frames == 1
    with pytest.raises(ValueError, match="closed"):
        reader.read(8)
    assert bytes(frame) == b"q" * BIG   # still mapped: reading it is safe
    del frame
    assert reader.live_frames == 0


ROWS = np.arange(16 * 300, dtype=np.float32).reshape(16, 300)   # 19 KB: fits the ring


def test_a_rows_frame_writes_itself_into_the_ring_as_encode_entries_would(pair):
    writer, reader = pair
    frame = publish_frame_of(ROWS)
    assert type(frame) is RowsFrame and frame.count == 16
    expected = encode_entries(ROWS)
    assert len(frame) == len(expected)
    assert writer.record_size([b"h", frame]) == writer.record_size([b"h", expected])
    assert writer.write([b"h", frame]) in (WROTE, WROTE_WAKE)
    (message,), _ = reader.read(8)
    assert message == [b"h", expected]
    assert [r.body for r in decode_batch(message[1])] == [row.tobytes() for row in ROWS]


def test_a_rows_frame_read_as_a_buffer_is_built_once_and_lets_the_array_go():
    rows = ROWS.copy()
    frame = publish_frame_of(rows)
    assert bytes(frame) == encode_entries(ROWS)
    rows[:] = 0   # built: the frame is a snapshot now, and the array may even resize
    rows.resize((1, 300), refcheck=False)
    assert bytes(memoryview(frame)) == encode_entries(ROWS)
    assert frame.count == 16


def test_lists_still_make_bytes_frames():
    assert type(publish_frame_of([b"a", b"b"])) is bytes


def delivery_frame(rows) -> bytes:
    """A delivery frame of one record per row (ids from 1, receipts set)."""
    return encode_batch([Record(row.tobytes(), id=index + 1, receipt=100 + index,
                                receive_count=1) for index, row in enumerate(rows)])


def fill_behind(writer, reader, until) -> None:
    """Write small messages, read (and drop) each, until ``until()`` (at most a ring)."""
    for _ in range(MIN_CAPACITY // 1000):
        if until():
            return
        assert writer.write([b"s" * 1000]) in (WROTE, WROTE_WAKE)
        reader.read(1 << 10, BIG)
    assert until()


def test_a_held_frame_nobody_views_moves_out_of_the_ring_past_half_of_it(pair):
    writer, reader = pair
    writer.write([b"k" * BIG])
    (message,), _ = reader.read(8, BIG)
    frame = message[0]
    assert frame.in_ring
    fill_behind(writer, reader, lambda: reader.hold_detaches)
    assert not frame.in_ring and bytes(frame) == b"k" * BIG   # copied, same bytes
    assert reader.held == 0 and writer.used <= MIN_CAPACITY // 2
    del message, frame   # nothing more to release
    assert reader.held == 0 and reader.live_frames == 0


def test_a_held_frame_still_viewed_stays_and_pins_the_ring(pair):
    writer, reader = pair
    writer.write([b"v" * BIG])
    (message,), _ = reader.read(8, BIG)
    view = np.frombuffer(message[0], np.uint8)
    fill_until_full(writer, reader)
    assert reader.hold_detaches == 0 and message[0].in_ring and reader.held == 1
    assert bytes(view[:3]) == b"vvv"
    del view   # no view left: the next read past half the ring moves it out
    reader.read(8, BIG)
    assert reader.hold_detaches == 1 and not message[0].in_ring
    assert writer.write([b"s" * 1000]) in (WROTE, WROTE_WAKE)


def test_a_release_that_makes_room_for_a_waiting_writer_calls_on_room(pair):
    writer, reader = pair
    rang = []
    reader.on_room = lambda: rang.append(1)
    writer.write([b"x" * BIG])
    (held,), _ = reader.read(1, BIG)
    view = np.frombuffer(held[0], np.uint8)
    fill_until_full(writer, reader)
    assert rang == []
    del held, view   # room, and the writer waits: the reader's owner rings it at once
    assert rang == [1] and not reader.pending()
    reader.on_room = None


def test_a_writer_kept_out_by_frames_a_sleeping_reader_holds_is_told_pinned(pair):
    # Half the ring free, in two pieces too small for the next record (a record never
    # straddles the ring's end): only the reader's owner letting go of its view frees
    # room. Awake, the reader may still read and release: FULL. Asleep, with every
    # record read: PINNED, and the writer sends around the ring (marker, socket).
    writer, reader = pair
    kib = MIN_CAPACITY // 64
    writer.write([b"f" * 20 * kib])                # copied and let go: moves the head on
    reader.read(8, BIG)
    writer.write([b"h" * 28 * kib])                # held in place, viewed: 20 to 48 KiB
    (held,), _ = reader.read(8, BIG)
    view = np.frombuffer(held[0], np.uint8)
    assert reader.held == 1 and writer.used < MIN_CAPACITY // 2
    big = [b"n" * 24 * kib]                        # fits neither 16 KiB at the end nor
    # the 20 KiB at the start, though 36 KiB are free
    assert writer.write(big) == FULL               # the writer now waits for room
    assert reader.sleep() is False                 # once: read, and ring the writer
    messages, wake = reader.read(8, BIG)
    assert messages == [] and wake is True
    assert reader.sleep() is True                  # asleep now; not woken twice for it
    assert writer.write(big) == PINNED
    assert writer.write_marker() == WROTE_WAKE     # the marker fits: the reader wakes
    messages, _ = reader.read(8, BIG)
    assert messages == [None]
    assert bytes(view[:2]) == b"hh" and reader.held == 1
    del held, view
    assert reader.held == 0 and writer.write(big) in (WROTE, WROTE_WAKE)


def test_an_awake_reader_or_one_holding_nothing_never_pins_the_writer_out(pair):
    writer, reader = pair
    big = [b"b" * (MIN_CAPACITY * 15 // 32)]
    assert writer.write(big) in (WROTE, WROTE_WAKE)
    assert writer.write(big) in (WROTE, WROTE_WAKE)
    assert writer.write(big) == FULL               # unread: the reader will make room
    messages, _ = reader.read(8)                   # copied, nothing held
    assert len(messages) == 2 and reader.held == 0
    assert reader.sleep() is True                  # nothing held: it just sleeps
    assert writer.write(big) in (WROTE, WROTE_WAKE)


def test_batch_views_count_as_views_of_a_held_frame(pair):
    # numpy.ndarray(buffer=...) keeps no buffer export, only the object: the views of
    # a delivery batch are made over numpy.frombuffer, so the ring sees them as views
    # and never moves the frame out (or gives its room back) under them.
    from fastfanout.arrays import FrameViews

    writer, reader = pair
    rows = np.arange(8 * 256, dtype=np.float32).reshape(8, 256)
    writer.write([delivery_frame(rows)])
    (message,), _ = reader.read(8, BIG)
    views = FrameViews(message[0])
    table = views.as_array(np.float32, (256,))
    ids = views.ids
    del views, message
    fill_until_full(writer, reader)   # behind the held frame, read as it comes
    assert writer.write([b"s" * 1000]) == FULL
    assert reader.hold_detaches == 0 and reader.held == 1
    assert (table == rows).all() and ids.tolist() == list(range(1, 9))
    del table
    reader.read(8, BIG)
    assert reader.held == 1                         # the ids still view it
    del ids
    assert reader.held == 0


def message_frame(count: int, size: int) -> bytes:
    """A delivery frame of ``count`` records of ``size``-byte bodies, attributes set."""
    return encode_batch([Record(bytes([65 + index % 26]) * size, id=index + 1,
                                receipt=100 + index, receive_count=1,
                                attributes=b"\x81\xa1k\xa1v", name="q")
                         for index in range(count)])


def test_a_cursor_walks_a_held_frame_in_place_and_its_messages_follow_it_out(pair):
    # MessageCursor reads a RingFrame where it lies (no copy); its messages keep the
    # frame and their records' offsets, so the ring moving the frame out (detach) once
    # the cursor has moved on changes nothing they read
    from fastfanout._ext.received import MessageCursor

    writer, reader = pair
    writer.write([message_frame(40, 100)])
    (message,), _ = reader.read(8, BIG)
    frame = message[0]
    assert type(frame) is RingFrame
    cursor = MessageCursor(None, None, "q")
    cursor.feed(frame)
    first = next(cursor)
    fill_behind(writer, reader, lambda: reader.held_bytes > MIN_CAPACITY // 2)
    assert reader.hold_detaches == 0 and frame.in_ring   # the cursor's frame stays put
    kept = [first, *cursor]
    assert cursor.pending == 0 and len(kept) == 40
    del message, frame
    reader.read(8, BIG)                                   # past half: moved out now
    assert reader.hold_detaches == 1 and reader.held == 0
    for _ in range(MIN_CAPACITY // 1000):                 # its old room written over
        assert writer.write([b"s" * 1000]) in (WROTE, WROTE_WAKE)
        reader.read(1 << 10, BIG)
    assert [m.body for m in kept] == [bytes([65 + i % 26]) * 100 for i in range(40)]
    assert [(m.id, m.receipt, m.queue, m.attributes) for m in kept[-2:]] == [
        (39, 138, "q", {"k": "v"}), (40, 139, "q", {"k": "v"})]


def test_a_memoryview_of_a_message_on_a_held_frame_keeps_it_in_place(pair):
    from fastfanout._ext.received import MessageCursor

    writer, reader = pair
    writer.write([message_frame(40, 100)])
    (message,), _ = reader.read(8, BIG)
    cursor = MessageCursor(None, None, "q")
    cursor.feed(message[0])
    kept = list(cursor)
    view = memoryview(kept[5])
    del message, cursor
    fill_until_full(writer, reader)
    assert reader.hold_detaches == 0 and reader.held == 1   # the view pins it
    assert view.readonly and bytes(view) == b"F" * 100
    view.release()
    reader.read(8, BIG)
    assert reader.hold_detaches == 1 and reader.held == 0   # then it moves out
    for _ in range(MIN_CAPACITY // 1000):                   # its old room written over
        assert writer.write([b"s" * 1000]) in (WROTE, WROTE_WAKE)
        reader.read(1 << 10, BIG)
    assert bytes(memoryview(kept[5])) == b"F" * 100 and kept[6].body == b"G" * 100
    del kept
    assert reader.live_frames == 0
