"""The shared-memory ring of local channels: layout checks, wrap, room, markers, wake-ups."""

import os
import struct
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastfanout._ext.shmring import (
    FULL,
    MAX_FRAMES,
    MIN_CAPACITY,
    TOO_LARGE,
    WROTE,
    WROTE_WAKE,
    SharedRing,
)

HEADER = 256


@pytest.fixture
def pair(tmp_path):
    """(writer, reader): two mappings of one fresh ring of MIN_CAPACITY bytes."""
    path = str(tmp_path / "ring")
    writer = SharedRing.create(path, MIN_CAPACITY)
    reader = SharedRing(path)
    yield writer, reader
    writer.close()
    reader.close()


def read_all(reader):
    messages, _ = reader.read(1 << 20)
    return messages


@pytest.mark.parametrize("capacity", [0, MIN_CAPACITY - 8, MIN_CAPACITY + 8, 3 << 20,
                                      1 << 31])
def test_capacity_must_be_a_power_of_two_in_range(tmp_path, capacity):
    with pytest.raises(ValueError):
        SharedRing.create(str(tmp_path / "r"), capacity)
    assert not (tmp_path / "r").exists()


def test_create_refuses_an_existing_path(tmp_path):
    (tmp_path / "r").write_bytes(b"")
    with pytest.raises(FileExistsError):
        SharedRing.create(str(tmp_path / "r"), MIN_CAPACITY)


def test_open_checks_the_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        SharedRing(str(tmp_path / "missing"))
    (tmp_path / "small").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="wrong size"):
        SharedRing(str(tmp_path / "small"))
    (tmp_path / "zeros").write_bytes(b"\0" * (HEADER + MIN_CAPACITY))
    with pytest.raises(ValueError, match="not a shared ring"):
        SharedRing(str(tmp_path / "zeros"))
    ring = SharedRing.create(str(tmp_path / "good"), MIN_CAPACITY)
    ring.close()
    os.symlink(tmp_path / "good", tmp_path / "link")
    with pytest.raises(OSError):
        SharedRing(str(tmp_path / "link"))   # O_NOFOLLOW
    with pytest.raises(OSError):
        SharedRing(str(tmp_path))            # a directory
    # a header whose capacity disagrees with the file's size
    with open(tmp_path / "good", "r+b") as f:
        f.seek(16)
        f.write(struct.pack("<Q", MIN_CAPACITY * 2))
    with pytest.raises(ValueError, match="disagrees"):
        SharedRing(str(tmp_path / "good"))


def test_round_trip_keeps_frames_and_order(pair):
    writer, reader = pair
    messages = [[b"header", b"payload"], [], [b""], [b"x" * 1001, b"", b"y"],
                [bytearray(b"buffer"), memoryview(b"view")]]
    for message in messages:
        assert writer.write(message) in (WROTE, WROTE_WAKE)
    assert writer.used == sum(writer.record_size(m) for m in messages)
    got = read_all(reader)
    assert got == [[bytes(f) for f in m] for m in messages]
    assert all(type(f) is bytes for m in got for f in m)
    assert writer.used == 0 and not reader.pending()


def test_wraps_around_many_times(pair):
    writer, reader = pair
    sent = 0
    for round_ in range(200):
        body = bytes([round_ % 256]) * (1000 + 37 * round_ % 5000)
        assert writer.write([body, b"%d" % round_]) != FULL
        [message], _ = reader.read(1)
        assert message == [body, b"%d" % round_]
        sent += writer.record_size([body, b"%d" % round_])
    assert sent > 4 * writer.capacity and writer.used == 0


def test_a_full_ring_refuses_and_the_reader_wakes_the_writer(pair):
    writer, reader = pair
    body = b"z" * 4000
    written = 0
    while writer.write([body]) != FULL:
        written += 1
    assert written == writer.capacity // writer.record_size([body])
    assert writer.write([body]) == FULL                 # still full, nothing written
    messages, wake_writer = reader.read(1)
    assert messages == [[body]] and wake_writer         # room made for a waiting writer
    assert writer.write([body]) in (WROTE, WROTE_WAKE)
    messages, wake_writer = reader.read(1 << 20)
    assert len(messages) == written and not wake_writer


def test_too_large_messages_are_refused_whole(pair):
    writer, reader = pair
    assert writer.max_message == writer.capacity // 2
    assert writer.write([b"a" * writer.max_message]) == TOO_LARGE
    assert writer.write([b""] * (MAX_FRAMES + 1)) == TOO_LARGE
    assert writer.used == 0
    just = b"a" * (writer.max_message - 16)
    assert writer.record_size([just]) == writer.max_message
    assert writer.write([just]) != TOO_LARGE
    assert read_all(reader) == [[just]]


def test_a_marker_stops_the_read(pair):
    writer, reader = pair
    writer.write([b"before"])
    writer.write_marker()
    writer.write([b"after"])
    messages, _ = reader.read(10)
    assert messages == [[b"before"], None]
    assert reader.pending()
    assert read_all(reader) == [[b"after"]]


def test_sleep_handshake_asks_for_exactly_one_bell(pair):
    writer, reader = pair
    assert writer.write([b"one"]) == WROTE              # nobody sleeps
    assert reader.sleep() is False                      # a message is waiting: no sleep
    read_all(reader)
    assert reader.sleep() is True
    assert writer.write([b"two"]) == WROTE_WAKE         # the sleeper needs its bell
    assert writer.write([b"three"]) == WROTE            # ... once
    assert writer.write_marker() == WROTE
    assert read_all(reader) == [[b"two"], [b"three"], None]
    assert reader.sleep() is True
    assert writer.write_marker() == WROTE_WAKE


def test_a_malformed_record_is_refused(pair, tmp_path):
    writer, reader = pair
    writer.write([b"fine"])
    writer.write([b"bad"])
    second = HEADER + writer.record_size([b"fine"])
    with open(tmp_path / "ring", "r+b") as f:   # a third party scribbles on the length
        f.seek(second + 4)
        f.write(struct.pack("<I", 1 << 24))
    with pytest.raises(ValueError, match="overruns"):
        reader.read(10)
    assert reader.pending()                             # nothing was consumed


def test_a_frame_table_that_overruns_its_record_is_refused(pair, tmp_path):
    writer, reader = pair
    writer.write([b"abc"])
    with open(tmp_path / "ring", "r+b") as f:
        f.seek(HEADER + 8)
        f.write(struct.pack("<I", 5000))
    with pytest.raises(ValueError, match="overruns itself"):
        reader.read(1)


def test_closed_and_bad_arguments(pair):
    writer, reader = pair
    with pytest.raises(TypeError):
        writer.write([1])
    with pytest.raises(TypeError):
        writer.write((b"tuple",))
    assert writer.used == 0
    reader.close()
    assert reader.closed
    for call in (reader.pending, reader.sleep, lambda: reader.read(1), reader.write_marker):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert writer.write([b"still works"]) == WROTE


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.lists(st.binary(max_size=9000), max_size=4),     # a message
    st.integers(min_value=1, max_value=8),              # read up to n
    st.just(None),                                      # a marker
), max_size=80))
def test_matches_a_queue_model(tmp_path_factory, steps):
    path = str(tmp_path_factory.mktemp("model") / "ring")
    writer = SharedRing.create(path, MIN_CAPACITY)
    reader = SharedRing(path)
    model: deque = deque()
    try:
        for step in steps:
            if isinstance(step, list):
                status = writer.write(step)
                if status != FULL:
                    model.append(step)
                else:
                    assert writer.used > 0   # up to half a ring always fits an empty one
            elif step is None:
                if writer.write_marker() != FULL:
                    model.append(None)
            else:
                messages, _ = reader.read(step)
                expected = []
                while model and len(expected) < step:
                    expected.append(model.popleft())
                    if expected[-1] is None:
                        break
                assert messages == expected
        assert writer.used >= 0
    finally:
        writer.close()
        reader.close()
