"""Reference records of the shared ring (shmring.pyx, "Deliveries by reference"): the
reader maps the ring a reference names and views the frame where it lies there; a
reference it cannot trust is refused with ValueError, never a crash.

The records are written here byte by byte (the broker writes them through its native
``claim_reference``; tests/integration/test_deliveries_by_reference.py runs that path)."""

import os
import struct

import pytest

from fastfanout._ext.shmring import MAX_ORIGINS, MIN_CAPACITY, WROTE, SharedRing

HEADER = 256
REFERENCE = 0xFFFFFFFD


def proc_path(ring: SharedRing) -> str:
    return f"/proc/{os.getpid()}/fd/{ring.fileno()}"


def scribble(ring: SharedRing, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of the ring's memory file (header included)."""
    os.pwrite(ring.fileno(), data, offset)


def reference(first: bytes, ring_id: int, offset: int, length: int, *,
              fd: int, pid: int | None = None) -> bytes:
    """A reference record as the broker writes it, padded to 8."""
    size = (8 + 40 + len(first) + 7) & ~7
    fields = struct.pack("<IIIIIIQQQ", REFERENCE, size - 8, len(first),
                         os.getpid() if pid is None else pid, fd, 0, ring_id, offset, length)
    return (fields + first).ljust(size, b"\0")


def publish(ring: SharedRing, record: bytes, at: int = 0) -> None:
    """Put ``record`` at byte ``at`` of the ring's data area and move the head past it."""
    scribble(ring, HEADER + at, record)
    scribble(ring, 64, struct.pack("<Q", at + len(record)))


@pytest.fixture
def rings():
    """(channel writer, channel reader, origin): the reader reads references to origin."""
    writer = SharedRing.create(MIN_CAPACITY)
    reader = SharedRing(proc_path(writer))
    origin = SharedRing.create(MIN_CAPACITY)
    yield writer, reader, origin
    reader.close()
    writer.close()
    origin.close()


def test_each_ring_has_its_own_id_which_every_mapping_of_it_reads():
    first, second = SharedRing.create(MIN_CAPACITY), SharedRing.create(MIN_CAPACITY)
    again = SharedRing(proc_path(first))
    assert first.ring_id != 0 and second.ring_id != 0
    assert first.ring_id != second.ring_id
    assert again.ring_id == first.ring_id
    for ring in (again, first, second):
        ring.close()


def test_a_reference_reads_as_a_view_of_the_frame_where_it_lies(rings):
    writer, reader, origin = rings
    payload = bytes(range(256)) * 16
    scribble(origin, HEADER + 4096, payload)
    publish(writer, reference(b"header", origin.ring_id, 4096, len(payload),
                              fd=origin.fileno()))
    messages, _ = reader.read(10, hold_min=1)
    [[first, frame]] = messages
    assert first == b"header"
    assert bytes(frame) == payload and frame.in_ring
    assert reader.held == 1 and reader.references_read == 1
    view = memoryview(frame)
    scribble(origin, HEADER + 4096, b"changed")   # no copy: the view reads the origin
    assert bytes(view[:7]) == b"changed"
    assert reader.used == len(reference(b"header", 0, 0, 0, fd=0))   # held: tail stays
    del view, frame, messages
    assert reader.held == 0 and reader.used == 0   # let go: the tail passed it


def test_without_hold_min_a_reference_reads_as_a_copy(rings):
    writer, reader, origin = rings
    scribble(origin, HEADER, b"abcdefgh")
    publish(writer, reference(b"h", origin.ring_id, 0, 8, fd=origin.fileno()))
    messages, _ = reader.read(10)
    assert messages == [[b"h", b"abcdefgh"]]
    assert reader.held == 0 and reader.used == 0


def test_a_reference_read_among_plain_records_keeps_their_order(rings):
    writer, reader, origin = rings
    scribble(origin, HEADER + 8, b"referenced")
    assert writer.write([b"one"]) in (WROTE, 2)
    at = writer.record_size([b"one"])
    record = reference(b"two", origin.ring_id, 8, 10, fd=origin.fileno())
    publish(writer, record, at)
    messages, _ = reader.read(10, hold_min=1)
    assert [[bytes(frame) for frame in message] for message in messages] == [
        [b"one"], [b"two", b"referenced"]]


def test_a_detached_reference_keeps_its_bytes(rings):
    writer, reader, origin = rings
    scribble(origin, HEADER, b"x" * 64)
    publish(writer, reference(b"h", origin.ring_id, 0, 64, fd=origin.fileno()))
    [[_, frame]], _ = reader.read(10, hold_min=1)
    origin.close()   # the reader's own mapping of it stays while the frame lives
    assert bytes(frame) == b"x" * 64


@pytest.mark.parametrize("case", ["wrong id", "no such descriptor", "not a ring",
                                  "past the end", "too short", "first overruns",
                                  "no id"])
def test_a_reference_it_cannot_trust_is_refused(rings, tmp_path, case):
    writer, reader, origin = rings
    record = reference(b"h", origin.ring_id, 0, 64, fd=origin.fileno())
    if case == "wrong id":
        record = reference(b"h", origin.ring_id ^ 1, 0, 64, fd=origin.fileno())
    elif case == "no such descriptor":
        record = reference(b"h", origin.ring_id, 0, 64, fd=1 << 20)
    elif case == "not a ring":
        plain = (tmp_path / "file").open("wb+")   # closed at the end
        plain.write(b"\0" * (HEADER + MIN_CAPACITY))
        plain.flush()
        record = reference(b"h", origin.ring_id, 0, 64, fd=plain.fileno())
    elif case == "past the end":
        record = reference(b"h", origin.ring_id, MIN_CAPACITY - 32, 64, fd=origin.fileno())
    elif case == "too short":
        record = struct.pack("<II", REFERENCE, 16) + b"\0" * 16
    elif case == "first overruns":
        record = record[:8] + struct.pack("<I", 1 << 16) + record[12:]
    elif case == "no id":
        record = reference(b"h", 0, 0, 64, fd=origin.fileno())
    publish(writer, record)
    with pytest.raises(ValueError):
        reader.read(10, hold_min=1)
    assert reader.held == 0
    if case == "not a ring":
        plain.close()


def read_only_mappings() -> int:
    """Rings this process maps read-only: the rings references named."""
    with open(f"/proc/{os.getpid()}/maps") as maps:
        return sum(1 for line in maps if " r--s " in line and "fastfanout-ring" in line)


def test_the_rings_mapped_for_references_are_bounded(rings):
    writer, reader, _ = rings
    before = read_only_mappings()
    origins = [SharedRing.create(MIN_CAPACITY) for _ in range(MAX_ORIGINS + 2)]
    at = 0
    for index, origin in enumerate(origins):
        scribble(origin, HEADER, bytes([index]) * 8)
        record = reference(b"h", origin.ring_id, 0, 8, fd=origin.fileno())
        publish(writer, record, at)
        at += len(record)
        [[_, frame]], _ = reader.read(10)
        assert frame == bytes([index]) * 8
    # the two known longest went (no frame of theirs lived): MAX_ORIGINS stay mapped
    assert read_only_mappings() - before == MAX_ORIGINS
    assert reader.origins_dropped == 2
    for origin in origins:
        origin.close()


def test_the_ring_used_last_stays_mapped(rings):
    writer, reader, _ = rings
    origins = [SharedRing.create(MIN_CAPACITY) for _ in range(MAX_ORIGINS + 1)]
    at = 0

    def refer(origin: SharedRing) -> None:
        nonlocal at
        record = reference(b"h", origin.ring_id, 0, 8, fd=origin.fileno())
        publish(writer, record, at)
        at += len(record)
        reader.read(10)

    for origin in origins[:MAX_ORIGINS]:
        refer(origin)
    refer(origins[0])              # used again: the most recent now
    refer(origins[MAX_ORIGINS])    # one more: the least recently used (origins[1]) goes
    assert reader.origins_dropped == 1
    mapped_before = read_only_mappings()
    refer(origins[0])              # still mapped: no new mapping, none dropped
    assert reader.origins_dropped == 1 and read_only_mappings() == mapped_before
    refer(origins[1])              # mapped anew: another goes
    assert reader.origins_dropped == 2
    for origin in origins:
        origin.close()
