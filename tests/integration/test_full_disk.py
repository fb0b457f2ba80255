"""A durable broker on a file system that is really full (a small tmpfs).

Fault injection (tests/unit/test_durable_broker.py) makes one write fail; here no write
finds room until the broker makes some itself: the settles it keeps, the segments they
free, and the reserve it gives back to roll away a settled segment. Needs root (a tmpfs
is mounted, and unmounted at the end); skipped elsewhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastfanout import Broker
from fastfanout.errors import StoreFull


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs under ``tmp_path`` (unmounted at the end)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30,
                       check=False)


def _fill(broker: Broker) -> int:
    sent = 0
    with pytest.raises(StoreFull):
        while sent < 100_000:
            broker.send("q", b"x" * 200)
            sent += 1
    return sent


def _ack_all(broker: Broker) -> int:
    acked = 0
    while batch := broker.receive("q", max_messages=1000):
        broker.ack_batch([m.receipt for m in batch])
        acked += len(batch)
    return acked


def test_a_full_disk_whose_messages_are_all_acked_takes_publishes_again(
        small_disk: Path) -> None:
    # Until 2026-12-07: every publish refused after all messages were acked (their
    # settles dropped with the refused batches, the segment never rolled away), and the
    # restart refused for want of room for its new segment.
    data = small_disk / "data"
    broker = Broker(data_dir=data, fsync="never")
    try:
        broker.create_queue("q")
        sent = _fill(broker)
        assert sent > 1000
        assert _ack_all(broker) >= sent
        with pytest.raises(StoreFull):   # this write gives back the reserve
            broker.send("q", b"refused")
        broker.send("q", b"after")       # room again
        storage = broker.stats().storage
        assert storage is not None and storage["reserve_releases"] == 1
    finally:
        broker.close()
    broker = Broker(data_dir=data, fsync="never")
    try:
        assert [m.body for m in broker.receive("q", max_messages=10)] == [b"after"]
        storage = broker.stats().storage
        assert storage is not None and storage["reserve_bytes"] > 0
    finally:
        broker.close()


def test_acks_on_a_full_disk_are_kept_until_room_comes(small_disk: Path) -> None:
    # Half acked on the full disk; room comes from outside (a file deleted): the acks
    # are written, and the restart brings back only the other half.
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (256 << 10))
    data = small_disk / "data"
    broker = Broker(data_dir=data, fsync="never")
    try:
        broker.create_queue("q")
        sent = _fill(broker)
        received = broker.receive("q", max_messages=sent // 2)
        broker.ack_batch([m.receipt for m in received])
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
        ballast.unlink()
        broker.send("q", b"after")   # writes the kept acks first
    finally:
        broker.close()
    broker = Broker(data_dir=data, fsync="never")
    try:
        left = _ack_all(broker)
        assert left == sent - len(received) + 1
    finally:
        broker.close()


def _fill_disk(path: Path, leave: int = 0) -> None:
    """Fill the file system with ``path`` (a file), then give back ``leave`` bytes."""
    with path.open("ab", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass
    if leave:
        os.truncate(path, max(0, path.stat().st_size - leave))


def test_a_roll_refused_twice_loses_no_answered_send(small_disk: Path) -> None:
    # A full disk refused a roll's snapshot (the new segment: a header alone); the next
    # roll took that file, the current segment, for one a crash left behind and deleted
    # it, and with no room to make it again the journal wrote on into the deleted file:
    # every send answered after was lost (a durability hunt, 2026-12-07).
    import errno

    from fastfanout._ext import journal

    data, filler = small_disk / "data", small_disk / "filler"
    broker = Broker(data_dir=data, fsync="never")
    try:
        broker.create_queue("q")
        broker.send("q", b"kept")
        journal.inject_fault("write", errno.ENOSPC)
        try:
            with pytest.raises(StoreFull):
                broker.send("q", b"refused")   # a drop: the next commit rolls
            _fill_disk(filler, leave=4096)    # room for a header, not for a snapshot
            journal.inject_fault("write", errno.ENOSPC)
            with pytest.raises(StoreFull):
                broker.create_queue("x")       # the new segment's snapshot refused
        finally:
            journal.inject_fault("write", 0)
        _fill_disk(filler)
        try:   # rolls again, on a full disk (the segment's page may hold the snapshot)
            broker.create_queue("y")
        except StoreFull:
            pass
        filler.unlink()
        broker.send("q", b"answered")
        broker.send("q", b"answered too")
    finally:
        broker.close()
    broker = Broker(data_dir=data, fsync="never")
    try:
        assert [m.body for m in broker.receive("q", max_messages=10)] == [
            b"kept", b"answered", b"answered too"]
        storage = broker.stats().storage
        assert storage is not None and storage["recovery"]["missing"] == []
    finally:
        broker.close()


def test_starts_on_a_full_disk_again_and_again(small_disk: Path) -> None:
    # Each start on a full disk spends the reserve on its new segment, and takes it
    # again once there is room: the next start on a full disk works too.
    data, filler = small_disk / "data", small_disk / "filler"
    broker = Broker(data_dir=data, fsync="never")
    broker.create_queue("q")
    broker.send("q", b"kept")
    broker.close()
    for _ in range(2):
        _fill_disk(filler)
        broker = Broker(data_dir=data, fsync="never")   # the reserve makes room
        try:
            filler.unlink()
            broker.send("q", b"room again")
            storage = broker.stats().storage
            assert storage is not None and storage["reserve_bytes"] > 0
        finally:
            broker.close()
    broker = Broker(data_dir=data, fsync="never")
    try:
        assert [m.body for m in broker.receive("q", max_messages=10)] == [
            b"kept", b"room again", b"room again"]
    finally:
        broker.close()
