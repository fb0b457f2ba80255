"""Recovery of a durable broker: the journal is replayed in C (``ext/recovery.pyx``), and
storage reaches the broker only through its documented interface (``BrokerState``)."""

from __future__ import annotations

import ast
import errno
import random
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clocks import FakeClock

from fastfanout import Broker
from fastfanout._ext import journal, store
from fastfanout._ext.recovery import Replay
from fastfanout.errors import StoreFull
from fastfanout.storage import durability


def fill(broker: Broker, count: int) -> None:
    """``count`` messages of every kind a durable queue journals: plain, delayed,
    leased, returned with a delay, acked, dead-lettered, keyed in a queue and a topic."""
    broker.create_topic("t")
    broker.create_queue("dlq")
    broker.create_queue("q", max_receive_count=1, dead_letter_queue="dlq")
    broker.create_queue("keyed", content_dedup=True)
    broker.subscribe("t", "q")
    for i in range(count):
        broker.publish("t", b"message %d" % i, dedup_id=f"id-{i}")
        broker.send("keyed", b"body %d" % i)
        broker.send("q", b"later %d" % i, delay=60.0)
    leased = broker.receive("q", max_messages=count)
    for message in leased[: count // 4]:
        broker.ack(message.receipt)
    for message in leased[count // 4: count // 2]:
        broker.nack(message.receipt, delay=30.0)
    for message in leased[count // 2: 3 * count // 4]:
        broker.term(message.receipt)   # dead-lettered


def python_calls_while(action: Callable[[], Any]) -> int:
    """How many Python-level calls (functions and builtins) ``action`` makes.

    The debug build traces its Cython functions too (``linetrace``): their events, whose
    frames are in ``.pyx`` sources, are native work and not counted.
    """
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call") and not frame.f_code.co_filename.endswith(
                (".pyx", ".pxd", ".pxi")):
            calls += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def test_recovery_makes_no_python_call_per_message(tmp_path: Path) -> None:
    """Every per-message record is replayed in C: recovering 40 times the messages
    makes (about) as many Python calls, not 40 times as many."""
    calls = {}
    for count in (50, 2000):
        directory = tmp_path / str(count)
        with Broker(data_dir=directory, fsync="never") as broker:
            fill(broker, count)
            expected = broker.stats().queues
        opened: list[Broker] = []
        calls[count] = python_calls_while(
            lambda directory=directory, opened=opened: opened.append(
                Broker(data_dir=directory)))
        with opened[0] as broker:
            got = broker.stats().queues
            for name in ("q", "dlq", "keyed"):
                assert (got[name].messages, got[name].delayed, got[name].dedup_entries) == (
                    expected[name].messages, expected[name].delayed,
                    expected[name].dedup_entries)
            assert broker.stats().topics["t"].dedup_entries == count
    assert calls[2000] - calls[50] < 100, calls


def test_a_queue_keeps_its_messages_when_a_restart_renumbers_it(tmp_path: Path) -> None:
    """Queue ids are given again at each restart: the journal names a queue by one id
    before a restart and by another after it, and its copies follow its name."""
    with Broker(data_dir=tmp_path) as broker:
        broker.create_queue("gone")          # id 0
        broker.create_queue("kept")          # id 1
        broker.delete_queue("gone")
        broker.create_queue("other")         # id 0 again
        broker.send("kept", b"old")          # journaled under id 1
    with Broker(data_dir=tmp_path) as broker:   # kept is id 0 now, other id 1
        broker.send("other", b"new")
    with Broker(data_dir=tmp_path) as broker:   # replays both numberings
        assert [m.body for m in broker.receive("kept", max_messages=5)] == [b"old"]
        assert [m.body for m in broker.receive("other", max_messages=5)] == [b"new"]


def test_copies_come_back_in_entry_order_after_a_copy_forward(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compaction journals an old copy afresh (a later record than newer copies): the
    restart still puts the queue back in the order its copies entered it.

    Which churn makes compaction copy ``first`` forward after ``second`` was journaled
    depends on the segments' layout (it moved when segments came to be counted after
    their head snapshot), so several are tried: the case must occur in one at least,
    and every restart keeps the order."""
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)

    def churn(broker: Broker, rounds: int) -> None:
        for i in range(rounds):
            broker.send("busy", b"x" * 200 + b"%d" % i)
            for message in broker.receive("busy", max_messages=10):
                broker.ack(message.receipt)

    reordered = 0
    for between in (5, 10, 20, 30):
        for after in (50, 100, 200):
            data_dir = tmp_path / f"{between}-{after}"
            with Broker(data_dir=data_dir, fsync="never") as broker:
                broker.create_queue("q")
                broker.create_queue("busy")
                broker.send("q", b"first")
                churn(broker, between)
                broker.send("q", b"second")
                churn(broker, after)
                storage = broker.stats().storage
                assert storage is not None and storage["copied_forward"] >= 1
            enqueued: list[bytes] = []

            def record(seq: int, kind: int, payload: bytes,
                       enqueued: list[bytes] = enqueued) -> None:
                if kind == 2:
                    enqueued.extend(body for body in (b"first", b"second") if body in payload)

            journal.scan(data_dir / "journal", record, repair=False)
            # first journaled afresh, after second
            reordered += enqueued[-2:] == [b"second", b"first"]
            with Broker(data_dir=data_dir) as broker:
                assert [m.body for m in broker.receive("q", max_messages=5)] == [
                    b"first", b"second"]
    assert reordered >= 1, "no churn copied the older message forward after the newer"


def test_a_fifo_group_keeps_its_order_when_compaction_moves_its_head(
        tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies that entered a queue in the same microsecond (a frozen test clock here; a
    batch in life) move together: the head of a group, journaled afresh, must not come
    back after the message behind it."""
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)

    def churn(broker: Broker) -> None:
        for i in range(40):
            broker.send("busy", b"x" * 100 + b"%d" % i)
            for message in broker.receive("busy", max_messages=10):
                broker.ack(message.receipt)

    with Broker(data_dir=tmp_path, clock=clock, fsync="never") as broker:
        broker.create_queue("fifo", fifo=True, content_dedup=True)
        broker.create_queue("busy")
        broker.send("fifo", b"first", group_id="g")
        churn(broker)
        broker.send("fifo", b"second", group_id="g")
        churn(broker)
        storage = broker.stats().storage
        assert storage is not None and storage["copied_forward"] >= 1
    with Broker(data_dir=tmp_path, clock=clock) as broker:
        (head,) = broker.receive("fifo", max_messages=5)
        assert head.body == b"first"
        broker.ack(head.receipt)
        assert [m.body for m in broker.receive("fifo", max_messages=5)] == [b"second"]


def test_the_restore_order_is_by_entry_time_then_journal_order(tmp_path: Path) -> None:
    """Many out-of-order runs (a clock stepping back and forth): the restored queue is in
    entry-time order, ties in the order the copies were journaled (a stable sort)."""
    clock = FakeClock()
    start = clock.now
    steps = random.Random(14).choices(range(40), k=3000)
    with Broker(data_dir=tmp_path, clock=clock, fsync="never") as broker:
        broker.create_queue("q", max_messages=None, retention=86_400.0)
        for i, step in enumerate(steps):
            clock.now = start + step
            broker.send("q", b"%d" % i)
    clock.now = start + 100
    with Broker(data_dir=tmp_path, clock=clock) as broker:
        got = [int(m.body) for m in broker.receive("q", max_messages=10_000)]
    assert got == sorted(range(len(steps)), key=lambda i: steps[i])


def test_storage_reaches_no_private_name_of_the_broker() -> None:
    """durability.py uses the broker only through ``BrokerState`` (public names): no
    ``other._name`` anywhere in it."""
    tree = ast.parse(Path(durability.__file__).read_text())
    reaches = [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_")
               and not node.attr.startswith("__")
               and not (isinstance(node.value, ast.Name) and node.value.id == "self")]
    assert reaches == []


@pytest.mark.parametrize("removed", [True, False])
def test_an_enqueue_naming_a_compacted_message_is_an_orphan_only_if_its_copy_lived_on(
        tmp_path: Path, removed: bool) -> None:
    # A copy recorded by naming its message's record (a fan-out, a dead-lettering) may
    # outlive that record's segment in the journal only if the copy was gone first
    # (acked, or copied forward): a remove record follows. Such a clean journal has no
    # orphan; one without the remove lost the message in a stretch.
    kinds = store.RECORD_KINDS
    writer = journal.Journal(tmp_path, next_seq=100)
    named = writer.append(kinds["enqueue"], struct.pack(
        "<IIQqqII", 0, 0, 7, 1_000, 1_000, 1, 0))   # message record 7: compacted away
    writer.append(kinds["lease"], struct.pack("<Q", named))
    if removed:
        writer.append(kinds["remove"], struct.pack("<Q", named))
    writer.commit()
    writer.close()
    replay = Replay()
    replay.bind_queue(0, replay.new_queue())
    journal.scan(tmp_path, replay)
    assert replay.restore(store.Store(), [None], 0) == 0
    assert replay.orphans == (0 if removed else 1)


def test_a_full_disk_under_a_copy_forward_loses_no_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A copy-forward journals a live copy afresh (its new record, then a remove of the
    old one). When a full disk drops that write, the copy goes back to its old record:
    until 2026-12-07 it stayed in memory only, the next compaction removed its old
    segment, and the restart lost the message. (With settles kept on a full disk, the
    old record's remove would even have been written without the new record: moves
    write kind ``moved``, never kept.)

    Which write carries the copy-forward depends on the layout, so the failure is put
    at each of the first writes in turn: one of them at least must be an internal one
    (no send refused, yet a write failed), and no case may lose the message."""
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    caplog.set_level("WARNING", logger="fastfanout")
    internal_failures = 0
    for after in range(4):
        data_dir = tmp_path / f"after-{after}"
        with Broker(data_dir=data_dir, fsync="never") as broker:
            broker.create_queue("q")
            broker.send("q", b"keeper")
            for n in range(60):
                broker.send("q", b"m%03d" % n + b"x" * 100)
            received = broker.receive("q", max_messages=100)
            broker.ack_batch([m.receipt for m in received if m.body != b"keeper"])
            refused = sent = 0
            journal.inject_fault("write", errno.ENOSPC, after)
            try:
                while sent < 500:
                    stats = broker.stats().storage
                    assert stats is not None
                    if stats["copied_forward"]:
                        break
                    try:
                        broker.send("q", b"f%03d" % sent + b"y" * 100)
                    except StoreFull:
                        refused += 1
                    sent += 1
            finally:
                journal.inject_fault("write", 0)
            for n in range(80):   # more segments: compaction runs
                broker.send("q", b"g%03d" % n + b"z" * 100)
            stats = broker.stats().storage
            assert stats is not None and stats["copied_forward"] >= 1
            internal_failures += refused == 0 and stats["store_full"] > 0
        with Broker(data_dir=data_dir) as broker:
            bodies = [m.body for m in broker.receive("q", max_messages=1000)]
            assert b"keeper" in bodies, f"lost with the write {after + 1} failing"
    assert internal_failures >= 1, "no case failed the copy-forward's own write"
    # a segment whose head snapshot a full disk refused is not called damaged
    assert "is damaged" not in caplog.text

