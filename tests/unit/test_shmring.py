"""The shared-memory ring of local channels: layout checks, wrap, room, markers, wake-ups."""

import ctypes
import fcntl
import os
import struct
import subprocess
import sys
import textwrap
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastfanout._ext.shmring import (
    FULL,
    MAX_FRAMES,
    MIN_CAPACITY,
    PINNED,
    TOO_LARGE,
    WROTE,
    WROTE_WAKE,
    SharedRing,
)

HEADER = 256


def proc_path(ring) -> str:
    """The path another process would open ``ring`` by (here: this process's)."""
    return f"/proc/{os.getpid()}/fd/{ring.fileno()}"


@pytest.fixture
def pair():
    """(writer, reader): two mappings of one fresh ring of MIN_CAPACITY bytes."""
    writer = SharedRing.create(MIN_CAPACITY)
    reader = SharedRing(proc_path(writer))
    yield writer, reader
    writer.close()
    reader.close()


def scribble(ring, offset: int, data: bytes) -> None:
    """A third party writes ``data`` at ``offset`` of the ring's memory file."""
    os.pwrite(ring.fileno(), data, offset)


def read_all(reader):
    messages, _ = reader.read(1 << 20)
    return messages


@pytest.mark.parametrize("capacity", [0, MIN_CAPACITY - 8, MIN_CAPACITY + 8, 3 << 20,
                                      1 << 31])
def test_capacity_must_be_a_power_of_two_in_range(capacity):
    before = set(os.listdir(f"/proc/{os.getpid()}/fd"))
    with pytest.raises(ValueError):
        SharedRing.create(capacity)
    assert set(os.listdir(f"/proc/{os.getpid()}/fd")) <= before   # no descriptor left


def memory_file(size: int, seals: int = 0) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_a_ring_has_no_name_and_its_size_is_sealed():
    ring = SharedRing.create(MIN_CAPACITY, "fastfanout-test")
    try:
        assert os.readlink(proc_path(ring)).startswith("/memfd:fastfanout-test")
        assert fcntl.fcntl(ring.fileno(), fcntl.F_GET_SEALS) & (
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL) == (
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        with open(proc_path(ring), "r+b") as other:   # another opening of the same file
            for size in (0, HEADER, HEADER + 2 * MIN_CAPACITY):
                with pytest.raises(PermissionError):
                    os.ftruncate(other.fileno(), size)
            with pytest.raises(PermissionError):
                fcntl.fcntl(other.fileno(), fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert os.fstat(ring.fileno()).st_size == HEADER + MIN_CAPACITY
    finally:
        ring.close()
    assert ring.fileno() == -1


TRUNCATE_AND_READ = textwrap.dedent("""
    import os, sys
    from fastfanout._ext.shmring import SharedRing
    reader = SharedRing(sys.argv[1])
    try:
        os.ftruncate(int(sys.argv[2]), 0)
    except PermissionError:
        print("refused", flush=True)
    print(reader.read(10)[0], reader.used, flush=True)
""")


def test_a_truncation_cannot_kill_the_reader():
    # The reader is another process: it maps the ring, then something tries to cut the
    # file to nothing; its next read would die of SIGBUS if the file could shrink.
    writer = SharedRing.create(MIN_CAPACITY)
    try:
        writer.write([b"before"])
        result = subprocess.run(
            [sys.executable, "-c", TRUNCATE_AND_READ, proc_path(writer),
             str(writer.fileno())], pass_fds=[writer.fileno()], capture_output=True,
            timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split(b"\n")[:2] == [b"refused", b"[[b'before']] 0"]
    finally:
        writer.close()


def test_a_punched_hole_reads_as_zeros_not_a_crash(pair):
    # The seals leave the contents writable, so a hostile peer may punch a hole (free
    # the pages); inside the sealed size a page then reads as zeros, never SIGBUS.
    writer, reader = pair
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    writer.write([b"lost"])
    punch_hole_keep_size = 0x02 | 0x01
    assert libc.fallocate(writer.fileno(), punch_hole_keep_size, 0,
                          HEADER + MIN_CAPACITY) == 0, os.strerror(ctypes.get_errno())
    assert reader.read(10) == ([], False)   # head and tail read as 0: nothing to read
    assert writer.write([b"after"]) == WROTE
    assert read_all(reader) == [[b"after"]]


def test_open_checks_the_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        SharedRing(str(tmp_path / "missing"))
    with pytest.raises(OSError):
        SharedRing(str(tmp_path))            # a directory
    full = HEADER + MIN_CAPACITY
    (tmp_path / "file").write_bytes(b"\0" * full)
    with pytest.raises(ValueError, match="not sealed"):   # a file that could shrink
        SharedRing(str(tmp_path / "file"))
    unsealed = memory_file(full)
    small = memory_file(100, fcntl.F_SEAL_SHRINK)
    zeros = memory_file(full, fcntl.F_SEAL_SHRINK)
    try:
        with pytest.raises(ValueError, match="not sealed"):
            SharedRing(f"/proc/self/fd/{unsealed}")
        with pytest.raises(ValueError, match="wrong size"):
            SharedRing(f"/proc/self/fd/{small}")
        with pytest.raises(ValueError, match="not a shared ring"):
            SharedRing(f"/proc/self/fd/{zeros}")
    finally:
        for fd in (unsealed, small, zeros):
            os.close(fd)
    ring = SharedRing.create(MIN_CAPACITY)
    try:
        # a header whose capacity disagrees with the file's size
        scribble(ring, 16, struct.pack("<Q", MIN_CAPACITY * 2))
        with pytest.raises(ValueError, match="disagrees"):
            SharedRing(proc_path(ring))
    finally:
        ring.close()


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


def test_a_first_wrap_takes_no_page_faults():
    """Both mappings are made whole at open (MAP_POPULATE): the first pass of messages
    through a fresh ring does not stop at a page fault on each of its pages (4 MiB: a
    thousand of them in the writer, the throughput of a short run's start)."""
    import resource

    capacity = 4 << 20
    writer = SharedRing.create(capacity)
    reader = SharedRing(proc_path(writer))
    try:
        body = b"z" * (60 << 10)
        assert writer.write([body]) in (WROTE, WROTE_WAKE)
        [message], _ = reader.read(1)
        assert message == [body]                     # warm: the read's own allocations
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        passed = 0
        while passed < capacity + (1 << 20):
            assert writer.write([body]) in (WROTE, WROTE_WAKE)
            [message], _ = reader.read(1)
            assert len(message[0]) == len(body)
            passed += writer.record_size([body])
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        assert faults < (capacity >> 12) // 4, f"{faults} page faults in the first wrap"
    finally:
        writer.close()
        reader.close()


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


def advance(writer, reader, to: int) -> None:
    """Write and read records until the writer's head lies ``to`` bytes into the ring."""
    left = to
    while left:
        size = min(left, writer.capacity // 4)
        assert writer.write([b"x" * (size - 16)]) in (WROTE, WROTE_WAKE)
        reader.read(1)
        left -= size


def test_a_pair_is_cut_to_end_where_the_ring_ends_within_a_quarter(pair):
    writer, reader = pair
    quarter = writer.capacity // 4
    overhead = 16 + 3   # the record's header and two lengths, then b"HDR"
    assert writer.pair_room(b"HDR") == quarter - overhead
    advance(writer, reader, writer.capacity - 10 * 1024)   # 10 KiB left before the end
    room = writer.pair_room(b"HDR")
    assert room == 10 * 1024 - overhead
    assert writer.write([b"HDR", b"y" * room]) in (WROTE, WROTE_WAKE)
    assert writer.used == 10 * 1024   # no wrap filler: the record ends at the ring's end
    [[header, body]], _ = reader.read(1)
    assert (header, len(body)) == (b"HDR", room)
    assert writer.pair_room(b"HDR") == quarter - overhead   # at the start again
    # less than a sixteenth before the end: a whole quarter, past a wrap filler
    advance(writer, reader, writer.capacity - 2 * 1024)
    assert writer.pair_room(b"HDR") == quarter - overhead


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


def test_a_malformed_record_is_refused(pair):
    writer, reader = pair
    writer.write([b"fine"])
    writer.write([b"bad"])
    second = HEADER + writer.record_size([b"fine"])
    scribble(writer, second + 4, struct.pack("<I", 1 << 24))   # on the length
    with pytest.raises(ValueError, match="overruns"):
        reader.read(10)
    assert reader.pending()                             # nothing was consumed


def test_a_count_record_reads_as_its_number_and_stops_the_read(pair):
    writer, reader = pair
    assert writer.write([b"before"]) == WROTE
    assert writer.write_count(3) == WROTE
    assert writer.write([b"after"]) == WROTE
    assert reader.read(10) == ([[b"before"], 3], False)   # stops: the socket's first
    assert reader.read(10) == ([[b"after"]], False)
    assert writer.write_count(1 << 40) == WROTE
    at = writer.record_size([b"before"]) + 16 + writer.record_size([b"after"])
    scribble(writer, HEADER + at + 4, struct.pack("<I", 0))   # its length: not 8
    with pytest.raises(ValueError, match="not 8 bytes"):
        reader.read(10)


def test_a_frame_table_that_overruns_its_record_is_refused(pair):
    writer, reader = pair
    writer.write([b"abc"])
    scribble(writer, HEADER + 8, struct.pack("<I", 5000))
    with pytest.raises(ValueError, match="overruns itself"):
        reader.read(1)


REWRITE_WHILE_READ = textwrap.dedent("""
    import gc, os, struct, sys
    from fastfanout._ext.shmring import MIN_CAPACITY, SharedRing
    writer = SharedRing.create(MIN_CAPACITY)
    writer.write([b"12345678", b"x"])
    path = f"/proc/{os.getpid()}/fd/{writer.fileno()}"
    fits, past = struct.pack("<I", 8), struct.pack("<I", 0x7FFFFFF8)
    armed = [False]

    def rewrite(phase, info):
        # a collection runs inside read() (the lists it makes): the peer's write lands
        # there, between read()'s checks and its copies for one of the tries below
        if armed[0]:
            armed[0] = False
            os.pwrite(writer.fileno(), past, 256 + 8)   # the first frame's length

    gc.callbacks.append(rewrite)
    for extra in range(6):   # each try moves the collection by one allocation
        os.pwrite(writer.fileno(), fits, 256 + 8)
        os.pwrite(writer.fileno(), bytes(8), 128)   # the tail back to 0: read it again
        reader = SharedRing(path)
        keep = []
        gc.collect()
        gc.set_threshold(1)
        keep.extend([] for _ in range(extra))
        armed[0] = True
        try:
            messages, _ = reader.read(1)
            assert messages == [[b"12345678", b"x"]], messages
        except ValueError as exc:
            assert "overruns itself" in str(exc), exc
        finally:
            gc.set_threshold(700)
            armed[0] = False
        reader.close()
    print("survived", flush=True)
""")


def test_a_frame_length_rewritten_while_read_is_checked_again():
    # until 2026-12-05 read() checked each frame length of a record, then read the
    # lengths again to copy the frames: a peer that rewrote one in between (a hostile
    # client of the broker) made it copy past the mapping, and the broker died (SIGSEGV)
    result = subprocess.run([sys.executable, "-c", REWRITE_WHILE_READ],
                            capture_output=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, b"survived\n"), result.stderr[-2000:]


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
def test_matches_a_queue_model(steps):
    writer = SharedRing.create(MIN_CAPACITY)
    reader = SharedRing(proc_path(writer))
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
                if writer.write_marker() not in (FULL, PINNED):
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
