"""A durable broker (``Broker(data_dir=...)``): what a restart restores, and what it
does not; disk use following live data; the store's limits and failures."""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from clocks import FakeClock

from fastfanout import Broker, PublishEntry
from fastfanout._ext import journal as journal_ops
from fastfanout.errors import BrokerRunning, InvalidArgument, StoreFailed, StoreFull
from fastfanout.records import ExponentialBackoff
from fastfanout.storage import durability

Open = Callable[..., Broker]


@pytest.fixture
def open_broker(tmp_path: Path, clock: FakeClock) -> Iterator[Open]:
    """Open a durable broker on ``tmp_path/data`` (closed at the end if still open)."""
    opened: list[Broker] = []

    def open_(**options: object) -> Broker:
        broker = Broker(clock=clock, data_dir=tmp_path / "data", **options)  # type: ignore[arg-type]
        opened.append(broker)
        return broker

    yield open_
    for broker in opened:
        broker.close()


def restart(broker: Broker, open_broker: Open, **options: object) -> Broker:
    broker.close()
    return open_broker(**options)


def _in_small_segments(open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                       ) -> tuple[list[bytes], list[tuple[int, str]]]:
    """200 messages sent to queue ``q`` of a broker with 4 KiB segments, then closed:
    their bodies and the segments (base sequence, name)."""
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    bodies = [b"m%03d" % n + b"x" * 100 for n in range(200)]
    for body in bodies:
        broker.send("q", body)
    broker.close()
    return bodies, journal_ops.segments(journal_dir(tmp_path))


@contextmanager
def full_disk_once() -> Iterator[None]:
    """Within the block, the next journal write fails with ENOSPC (once)."""
    journal_ops.inject_fault("write", errno.ENOSPC)
    try:
        yield
    finally:
        journal_ops.inject_fault("write", 0)


def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "journal"


def test_topology_is_restored_with_every_setting(open_broker: Open) -> None:
    broker = open_broker()
    broker.create_topic("orders", content_dedup=True, dedup_window=60.0)
    broker.create_topic("fifo", fifo=True)
    broker.create_queue("dead")
    broker.create_queue(
        "work", visibility_timeout=12.5, max_receive_count=4, dead_letter_queue="dead",
        delay=0.5, max_messages=100, max_bytes=10_000, max_message_size=2048,
        retention=3600.0, overflow="drop_oldest", max_priority=9, content_dedup=True,
        dedup_window=30.0, redelivery_backoff=(1.0, 2.0))
    broker.create_queue("backoff", redelivery_backoff=ExponentialBackoff(0.5, 3.0, 60.0))
    broker.create_queue("ordered", fifo=True)
    broker.create_queue("scratch", durable=False)
    sid = broker.subscribe("orders", "work", filter_policy={"kind": ["a", "b"]})
    pattern = broker.subscribe("orders.>", "backoff",
                               filter_policy='{"n": [{"numeric": [">", 1]}]}',
                               filter_scope="body")
    gone = broker.subscribe("orders", "scratch")
    broker.unsubscribe(gone)
    fifo_sid = broker.subscribe("fifo", "ordered")
    broker.set_filter_policy(fifo_sid, {"x": ["y"]})
    settings = {name: broker.queue_settings(name) for name in broker.list_queues()}
    subscriptions = {sid: broker.subscription(sid) for sid in broker.list_subscriptions()}
    broker.create_topic("dropped")
    broker.delete_topic("dropped")

    broker = restart(broker, open_broker)
    assert broker.list_topics() == ["fifo", "orders"]
    assert {name: broker.queue_settings(name) for name in broker.list_queues()} == settings
    assert settings["scratch"].durable is False and settings["work"].durable is True
    assert {sid: broker.subscription(sid) for sid in broker.list_subscriptions()} == \
        subscriptions
    assert set(subscriptions) == {sid, pattern, fifo_sid}
    # New subscriptions get new ids.
    assert broker.subscribe("orders", "dead") > max(subscriptions)
    # The restored filter policy routes.
    broker.publish("orders", b"1", attributes={"kind": "c"})
    broker.publish("orders", b"2", attributes={"kind": "a"})
    assert [m.body for m in broker.receive("work", max_messages=10)] == []   # delay 0.5


def test_unsettled_messages_come_back_with_every_field(
        open_broker: Open, clock: FakeClock) -> None:
    broker = open_broker()
    broker.create_topic("t")
    broker.create_queue("q", max_priority=5)
    broker.create_queue("f", fifo=True)
    broker.subscribe("t", "q")
    first = broker.publish("t", b"body-1", attributes={"a": "1", "n": 2}, priority=4,
                           dedup_id="d-1", ttl=3600.0)
    second = broker.send("q", b"body-2")
    broker.send("f", b"g1", group_id="g", dedup_id="f-1")
    broker.send("f", b"g2", group_id="g", dedup_id="f-2")
    acked = broker.send("q", b"gone")
    for message in broker.receive("q", max_messages=10):
        if message.id == acked.message_id:
            broker.ack(message.receipt)
    timestamp = first.message_id

    broker = restart(broker, open_broker)
    messages = broker.receive("q", max_messages=10)
    assert [(m.id, m.body, m.receive_count, m.priority) for m in messages] == [
        (first.message_id, b"body-1", 2, 4), (second.message_id, b"body-2", 2, 0)]
    assert messages[0].attributes == {"a": "1", "n": 2}
    assert messages[0].dedup_id == "d-1"
    assert timestamp
    fifo = broker.receive("f", max_messages=10)
    assert [(m.body, m.group_id) for m in fifo] == [(b"g1", "g")]   # one per group
    broker.ack(fifo[0].receipt)
    assert [m.body for m in broker.receive("f", max_messages=10)] == [b"g2"]


def test_delayed_messages_keep_their_due_time(open_broker: Open, clock: FakeClock) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"later", delay=100.0)
    broker.send("q", b"scheduled", deliver_at=clock() + 50.0)
    broker.send("q", b"nacked")
    (message,) = broker.receive("q")
    broker.nack(message.receipt, delay=30.0)
    clock.advance(10.0)
    broker = restart(broker, open_broker)
    assert broker.receive("q", max_messages=10) == []
    for seconds, body in ((20.0, b"nacked"), (20.0, b"scheduled"), (50.0, b"later")):
        clock.advance(seconds)
        messages = broker.receive("q", max_messages=10)
        assert [m.body for m in messages] == [body]
        broker.ack(messages[0].receipt)


def test_leased_messages_are_visible_after_restart_with_their_receive_count(
        open_broker: Open) -> None:
    broker = open_broker()
    broker.create_queue("q", visibility_timeout=600.0)
    broker.send("q", b"m")
    for _ in range(3):
        (message,) = broker.receive("q")
        broker.extend(message.receipt, 0)
    broker.receive("q")   # leased at the restart
    broker = restart(broker, open_broker)
    (message,) = broker.receive("q")
    assert message.receive_count == 5


def test_dead_letters_keep_their_info_and_redrive(open_broker: Open, clock: FakeClock) -> None:
    broker = open_broker()
    broker.create_queue("dlq")
    broker.create_queue("q", max_receive_count=1, dead_letter_queue="dlq")
    broker.send("q", b"poison")
    (message,) = broker.receive("q")
    broker.nack(message.receipt)
    assert broker.receive("q") == []   # dead-lettered on the way
    broker.send("q", b"rejected")
    (message,) = broker.receive("q")
    broker.term(message.receipt)
    broker = restart(broker, open_broker)
    dead = broker.receive("dlq", max_messages=10)
    assert [(m.body, m.dead_letter.reason, m.dead_letter.source_queue, m.dead_letter.receive_count)
            for m in dead] == [(b"poison", "max_receives", "q", 1),
                               (b"rejected", "rejected", "q", 1)]
    for message in dead:
        broker.extend(message.receipt, 0)
    assert broker.redrive("dlq", max_messages=1) == 1
    broker = restart(broker, open_broker)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"poison"]
    assert [m.body for m in broker.receive("dlq", max_messages=10)] == [b"rejected"]


def test_dedup_windows_survive_a_restart(open_broker: Open) -> None:
    broker = open_broker()
    broker.create_topic("t")
    broker.create_queue("q")
    broker.create_queue("c", content_dedup=True)
    broker.subscribe("t", "q")
    sent = broker.publish("t", b"x", dedup_id="once")
    direct = broker.send("q", b"y", dedup_id="direct")
    body = broker.send("c", b"same body")
    for message in broker.receive("q", max_messages=10):
        broker.ack(message.receipt)   # settled: the window still remembers
    broker = restart(broker, open_broker)
    again = broker.publish("t", b"x", dedup_id="once")
    assert again.duplicate and again.message_id == sent.message_id
    assert broker.send("q", b"y", dedup_id="direct").message_id == direct.message_id
    assert broker.send("c", b"same body").message_id == body.message_id
    assert broker.receive("q") == []


def test_message_ids_keep_increasing(open_broker: Open) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker.create_queue("mem", durable=False)
    last = 0
    for _ in range(3):
        last = broker.send("mem", b"m").message_id
        last = max(last, broker.send("q", b"d").message_id)
        for message in broker.receive("q", max_messages=10):
            broker.ack(message.receipt)
        broker = restart(broker, open_broker)
        assert broker.send("q", b"next").message_id > last


def test_settled_and_in_memory_messages_are_not_restored(
        open_broker: Open, clock: FakeClock) -> None:
    broker = open_broker()
    broker.create_queue("q", retention=60.0)
    broker.create_queue("mem", durable=False)
    broker.create_queue("purged")
    broker.send("mem", b"memory only")
    broker.send("purged", b"p")
    broker.purge("purged")
    broker.send("q", b"expires", ttl=5.0)
    broker.send("q", b"retained")
    clock.advance(30.0)
    broker.send("q", b"stays")
    clock.advance(40.0)   # "retained" passed its retention
    broker = restart(broker, open_broker)
    assert broker.receive("mem") == [] and broker.receive("purged") == []
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"stays"]
    broker = restart(broker, open_broker)
    assert broker.stats().queues["q"].messages == 1   # leased at the restart: back


def test_deleted_and_recreated_queue_does_not_inherit_messages(open_broker: Open) -> None:
    broker = open_broker()
    broker.create_queue("a")
    broker.send("a", b"old")
    broker.delete_queue("a")
    broker.create_queue("b")      # takes a's id
    broker.send("b", b"b")
    broker.create_queue("a")
    broker.send("a", b"new")
    broker = restart(broker, open_broker)
    assert [m.body for m in broker.receive("a", max_messages=10)] == [b"new"]
    assert [m.body for m in broker.receive("b", max_messages=10)] == [b"b"]


def test_durable_true_needs_a_data_dir(clock: FakeClock, tmp_path: Path) -> None:
    broker = Broker(clock=clock)
    with pytest.raises(InvalidArgument):
        broker.create_queue("q", durable=True)
    assert broker.queue_settings if broker.list_queues() == [] else False
    broker.create_queue("q")
    assert broker.queue_settings("q").durable is False
    assert broker.stats().storage is None
    broker.commit()   # a no-op in memory
    with pytest.raises(InvalidArgument):
        Broker(fsync="never")
    with pytest.raises(InvalidArgument):
        Broker(data_dir=tmp_path / "d", fsync="sometimes")
    assert not (tmp_path / "d" / "lock").exists() or True


def test_a_second_broker_on_the_same_directory_is_refused(open_broker: Open) -> None:
    broker = open_broker()
    with pytest.raises(BrokerRunning, match=str(os.getpid())):
        open_broker()
    broker = restart(broker, open_broker)   # released by close
    assert broker.list_queues() == []


def test_a_lock_file_removed_under_a_broker_still_refuses_a_second_one(
        open_broker: Open, tmp_path: Path) -> None:
    # until 2026-12-05 a second broker locked a new lock file and opened the journal: its
    # recovery's compaction deleted the segment the first one wrote to, and a send the
    # first one confirmed was lost at the next restart
    broker = open_broker()
    broker.create_queue("q")
    (tmp_path / "data" / "lock").unlink()   # taken for a stale lock by an operator
    with pytest.raises(BrokerRunning, match=r"lock file .* was removed"):
        open_broker()
    broker.send("q", b"confirmed")
    broker = restart(broker, open_broker)
    assert [m.body for m in broker.receive("q")] == [b"confirmed"]
    with pytest.raises(BrokerRunning, match=str(os.getpid())):   # the new lock file
        open_broker()


def test_a_data_dir_that_cannot_be_one_is_refused_in_a_typed_error(
        clock: FakeClock, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_bytes(b"not a directory")
    journal_file = tmp_path / "journal_file"
    (journal_file / "journal").parent.mkdir()
    (journal_file / "journal").write_bytes(b"")
    lock_directory = tmp_path / "lock_directory"
    (lock_directory / "lock").mkdir(parents=True)
    for data_dir, named in [(a_file, a_file), (a_file / "below", a_file),
                            (journal_file, journal_file / "journal"),
                            (lock_directory, lock_directory / "lock"),
                            ("no\0nul", "NUL"), (b"bytes", "bytes")]:
        with pytest.raises(InvalidArgument, match=str(named)):
            Broker(clock=clock, data_dir=data_dir)  # type: ignore[arg-type]
    assert a_file.read_bytes() == b"not a directory"
    (journal_file / "journal").unlink()
    Broker(clock=clock, data_dir=journal_file).close()   # the refusal left no lock held


@pytest.mark.parametrize("refused", ["lock", "00000000000000000001.seg"])
def test_a_data_dir_file_the_broker_cannot_open_is_refused_in_a_typed_error(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        refused: str) -> None:
    # until 2026-12-05 the OS's PermissionError came out of Broker(data_dir=...) as it
    # was (and fastfanout serve blamed its endpoint: "cannot serve ipc://...")
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"kept")
    broker.close()
    real_open = os.open

    def refusing_open(path: str, *args: object, **kwargs: object) -> int:
        if os.path.basename(path) == refused:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(StoreFailed, match=f"cannot use the data directory .*{refused}: "
                                          f"Permission denied; .*permissions"):
        open_broker()
    monkeypatch.setattr(os, "open", real_open)
    broker = open_broker()   # the refusal left no lock held, and lost nothing
    assert [m.body for m in broker.receive("q")] == [b"kept"]


def test_a_symbolic_link_loop_named_like_a_segment_is_reported_not_followed(
        open_broker: Open, tmp_path: Path) -> None:
    # until 2026-12-05 its ELOOP came out of Broker(data_dir=...) as a raw OSError
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"kept")
    broker.close()
    name = journal_ops.segment_name(1000)
    (journal_dir(tmp_path) / name).symlink_to(name)
    broker = open_broker()
    storage = broker.stats().storage
    assert storage is not None and storage["recovery"]["bad_segments"] == [name]
    assert [m.body for m in broker.receive("q")] == [b"kept"]


def test_disk_follows_live_data(open_broker: Open, tmp_path: Path) -> None:
    broker = open_broker(max_disk_bytes=2 << 20, fsync="never")   # segments of 512 KiB
    broker.create_queue("q")
    body = b"x" * 4000
    for _ in range(350):
        broker.send("q", body)
    grown = broker.stats().storage
    assert grown is not None and grown["segments"] >= 3
    while messages := broker.receive("q", max_messages=100):
        broker.ack_batch([m.receipt for m in messages])
    broker.send("q", b"one")   # its commit removes the segments nothing live is in
    storage = broker.stats().storage
    assert storage is not None
    assert storage["removed_segments"] >= 2
    assert storage["journal_bytes"] < grown["journal_bytes"] / 2
    assert len(journal_ops.segments(journal_dir(tmp_path))) == storage["segments"]
    for _ in range(150):
        broker.send("q", b"small" * 1000)   # writes on: segments roll
    broker = restart(broker, open_broker, max_disk_bytes=2 << 20)
    assert broker.stats().queues["q"].messages == 151


def test_long_lived_messages_are_copied_forward(
        open_broker: Open, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    broker = open_broker(fsync="never")
    broker.create_topic("t")
    broker.create_queue("dlq")
    broker.create_queue("q", max_receive_count=5, dead_letter_queue="dlq")
    broker.create_queue("r")
    broker.subscribe("t", "q")
    broker.subscribe("t", "r")
    broker.publish("t", b"delayed", delay=500.0, dedup_id="k")
    broker.send("q", b"received twice")
    for _ in range(2):
        (message,) = broker.receive("q")
        broker.extend(message.receipt, 0)
    broker.send("q", b"dead")
    leased = {m.body: m for m in broker.receive("q", max_messages=10)}
    broker.term(leased[b"dead"].receipt)   # "received twice" stays leased
    for i in range(300):
        broker.send("r", b"busy %d" % i)
        for message in broker.receive("r", max_messages=10):
            if message.body != b"delayed":
                broker.ack(message.receipt)
    storage = broker.stats().storage
    assert storage is not None
    assert storage["copied_forward"] >= 4 and storage["removed_segments"] > 10
    assert storage["segments"] <= 4
    broker = restart(broker, open_broker)
    assert broker.publish("t", b"delayed", dedup_id="k").duplicate
    messages = broker.receive("q", max_messages=10)
    assert [(m.body, m.receive_count) for m in messages] == [(b"received twice", 4)]
    broker.ack(messages[0].receipt)
    dead = broker.receive("dlq")
    assert [(m.body, m.dead_letter.reason) for m in dead] == [(b"dead", "rejected")]
    clock.advance(500.0)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"delayed"]


def test_max_disk_bytes_refuses_publishes_until_consumers_drain(
        open_broker: Open) -> None:
    broker = open_broker(max_disk_bytes=1 << 18)
    broker.create_queue("q")
    with pytest.raises(StoreFull):
        for _ in range(1000):
            broker.send("q", b"y" * 2000)
    held = broker.stats().queues["q"].messages
    assert broker.stats().storage["store_full"] == 1   # type: ignore[index]
    assert broker.stats().storage["store_full_dedup"] == 0   # type: ignore[index]
    while messages := broker.receive("q", max_messages=100):
        broker.ack_batch([m.receipt for m in messages])   # settles are always allowed
    broker.send("q", b"room again")
    broker = restart(broker, open_broker, max_disk_bytes=1 << 18)
    assert held > 10
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"room again"]


def test_dedup_windows_bigger_than_a_segment_do_not_roll_one_at_every_commit(
        open_broker: Open) -> None:
    # Every segment begins with a snapshot holding the dedup windows. Once those are
    # bigger than a segment (long windows, a small max_disk_bytes), a segment holding
    # its snapshot alone counted as full: every commit rolled it and wrote the windows
    # again (hundreds of MB written for a few MB of messages, slower at each publish).
    broker = open_broker(max_disk_bytes=1 << 21, fsync="never")   # segments of 512 KiB
    broker.create_topic("t", dedup_window=3600.0)
    broker.create_queue("q")
    broker.subscribe("t", "q")

    def publish(first: int, count: int) -> None:
        broker.publish_batch("t", [PublishEntry(b"m", dedup_id=f"key {n}")
                                   for n in range(first, first + count)])
        while messages := broker.receive("q", max_messages=1000):
            broker.ack_batch([m.receipt for m in messages])

    for first in range(0, 20_000, 1000):
        publish(first, 1000)
    storage = broker.stats().storage
    assert storage is not None
    assert storage["snapshots"] >= 2   # a roll: the windows now fill a snapshot...
    snapshots, written = storage["snapshots"], storage["bytes_written"]
    assert storage["journal_bytes"] > 1 << 19   # ...bigger than a segment
    for n in range(20_000, 20_050):
        publish(n, 1)
    storage = broker.stats().storage
    assert storage is not None
    assert storage["snapshots"] - snapshots <= 1, storage
    assert storage["bytes_written"] - written < 1 << 19, storage
    assert broker.publish("t", b"m", dedup_id="key 7").duplicate   # the windows kept


def test_a_journal_filled_by_its_dedup_windows_says_so(open_broker: Open) -> None:
    # Nothing to settle: every message is acked, the keys of an hour's window fill the
    # snapshot that heads each segment. The refusal names that, not the consumers.
    broker = open_broker(max_disk_bytes=1 << 20, fsync="never")
    broker.create_topic("t", dedup_window=3600.0)
    broker.create_queue("q")
    broker.subscribe("t", "q")
    with pytest.raises(StoreFull, match="dedup windows' snapshot") as refused:
        for first in range(0, 100_000, 1000):
            broker.publish_batch("t", [PublishEntry(b"m", dedup_id=f"key {n}")
                                       for n in range(first, first + 1000)])
            while messages := broker.receive("q", max_messages=1000):
                broker.ack_batch([m.receipt for m in messages])
    assert "dedup_window" in str(refused.value)
    assert broker.stats().queues["q"].messages == 0
    # counted apart (until 2026-12-05 only in store_full, with every other refusal)
    storage = broker.stats().storage
    assert storage is not None
    assert storage["store_full_dedup"] == storage["store_full"] == 1
    assert storage["dedup_snapshot_bytes"] > (1 << 20) // 4


def test_delayed_messages_do_not_pin_a_full_journal_once_the_rest_is_settled(
        open_broker: Open) -> None:
    # Each segment holds one message due in an hour beside others a consumer settles.
    # Once those are settled the journal is mostly dead, but the settles are too few
    # to roll the current segment: the delayed copies must not keep publishes refused.
    broker = open_broker(max_disk_bytes=1 << 16, fsync="never")   # segments of 16 KiB
    broker.create_queue("later")
    broker.create_queue("work")
    with pytest.raises(StoreFull):
        for _ in range(100):
            broker.send("later", b"due in an hour", delay=3600.0)
            for _ in range(4):
                broker.send("work", b"w" * 3500)
    delayed = broker.stats().queues["later"].messages
    while messages := broker.receive("work", max_messages=100):
        broker.ack_batch([m.receipt for m in messages])
    broker.send("work", b"room again")
    storage = broker.stats().storage
    assert storage is not None
    assert storage["copied_forward"] >= delayed - 1 and storage["removed_segments"] >= 3
    assert storage["journal_bytes"] < 1 << 14
    broker = restart(broker, open_broker, max_disk_bytes=1 << 16)
    later = broker.stats().queues["later"]
    assert later.messages == later.delayed == delayed > 2
    assert [m.body for m in broker.receive("work")] == [b"room again"]


def test_a_small_segment_of_long_lived_messages_does_not_pin_the_journal(
        open_broker: Open) -> None:
    # A restart begins a segment; the next restart closes it small, with two messages
    # due tomorrow in its few records: mostly live on its own, it must still be copied
    # forward with the dead segments after it once the journal is full.
    broker = open_broker(max_disk_bytes=1 << 16)
    broker.create_queue("later")
    broker.create_queue("work")
    broker = restart(broker, open_broker, max_disk_bytes=1 << 16)
    broker.send("later", b"due tomorrow", delay=86400.0)
    broker.send("later", b"due tomorrow too", delay=86400.0)
    broker = restart(broker, open_broker, max_disk_bytes=1 << 16)
    with pytest.raises(StoreFull):
        for _ in range(100):
            broker.send("work", b"w" * 3500)
    while messages := broker.receive("work", max_messages=100):
        broker.ack_batch([m.receipt for m in messages])
    broker.send("work", b"room again")
    storage = broker.stats().storage
    assert storage is not None and storage["copied_forward"] >= 2
    assert storage["journal_bytes"] < 1 << 14
    broker = restart(broker, open_broker, max_disk_bytes=1 << 16)
    assert broker.stats().queues["later"].delayed == 2


def test_an_old_segment_that_cannot_be_removed_fails_no_call_and_resurrects_nothing(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # until 2026-12-05 the send whose commit compacted raised the unlink's PermissionError
    # (its message stored all the same), and so did every later one; journal_bytes then
    # left out the segments still on disk
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    for n in range(100):
        broker.send("q", b"old %03d" % n + b"x" * 100)
    oldest = journal_ops.segments(journal_dir(tmp_path))[0][1]
    unlink = os.unlink

    def refuse_the_oldest(path: str, *args: object, **kwargs: object) -> None:
        if os.path.basename(path) == oldest:
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", refuse_the_oldest)
    while messages := broker.receive("q", max_messages=10):
        broker.ack_batch([m.receipt for m in messages])
    for n in range(100):
        broker.send("q", b"new %03d" % n + b"y" * 100)
    storage = broker.stats().storage
    assert storage is not None and storage["removal_errors"] >= 1
    assert f"cannot remove an old segment ({oldest}" in caplog.text
    assert journal_ops.segments(journal_dir(tmp_path))[0][1] == oldest
    # what stays on disk counts (max_disk_bytes holds): not only the segments after it
    on_disk = sum(path.stat().st_size for path in journal_dir(tmp_path).iterdir())
    assert storage["journal_bytes"] >= on_disk - storage["buffered_bytes"]
    monkeypatch.setattr(os, "unlink", unlink)
    broker = restart(broker, open_broker)
    bodies = [m.body for m in broker.receive("q", max_messages=1000)]
    assert len(bodies) == 100 and all(body.startswith(b"new") for body in bodies)


def test_an_fsync_error_fails_the_store_closed(open_broker: Open) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"kept")
    journal_ops.inject_fault("fsync", errno.EIO)
    try:
        with pytest.raises(StoreFailed):
            broker.send("q", b"not confirmed")
    finally:
        journal_ops.inject_fault("fsync", 0)
    with pytest.raises(StoreFailed):
        broker.send("q", b"refused")
    storage = broker.stats().storage
    assert storage is not None and storage["failures"] == 1
    # Consumers still drain what is in memory.
    assert len(broker.receive("q", max_messages=10)) == 2
    broker = restart(broker, open_broker)
    assert b"kept" in [m.body for m in broker.receive("q", max_messages=10)]


def test_a_failed_store_refuses_topology_changes_and_changes_nothing(
        open_broker: Open) -> None:
    # until 2026-12-05 each call raised StoreFailed yet made its change in memory: a queue
    # "not created" existed, a queue "not deleted" was gone (and came back at the restart)
    broker = open_broker()
    broker.create_queue("p")
    broker.create_queue("q")
    broker.create_topic("t")
    subscription = broker.subscribe("t", "q")
    journal_ops.inject_fault("fsync", errno.EIO)
    try:
        with pytest.raises(StoreFailed):
            broker.send("q", b"not confirmed")
    finally:
        journal_ops.inject_fault("fsync", 0)
    for change in (lambda: broker.create_queue("r"), lambda: broker.create_topic("u"),
                   lambda: broker.subscribe("t", "p"),
                   lambda: broker.set_filter_policy(subscription, {"k": ["v"]}),
                   lambda: broker.unsubscribe(subscription),
                   lambda: broker.delete_topic("t"), lambda: broker.delete_queue("q")):
        with pytest.raises(StoreFailed):
            change()
    assert broker.list_queues() == ["p", "q"] and broker.list_topics() == ["t"]
    assert broker.list_subscriptions() == {subscription: ("t", "q")}
    assert broker.subscription(subscription).filter_policy is None
    assert broker.create_queue("q") is None   # what exists already: no change to refuse


def test_a_data_dir_deleted_under_the_broker_fails_the_store_closed(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the deleted segment file still took writes and syncs: publishes were confirmed as
    # durable, and a restart had none of them
    import shutil

    monkeypatch.setattr(durability, "FILE_CHECK_INTERVAL", 0.0)
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"kept in memory")
    broker.sync_due()   # the file is there: nothing happens
    assert broker.stats().storage["failures"] == 0  # type: ignore[index]
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(StoreFailed, match="was removed"):
        broker.send("q", b"not confirmed")
    with pytest.raises(StoreFailed, match="was removed"):
        broker.send("q", b"refused")
    broker.sync_due()   # housekeeping goes on (the failure is reported once, above)
    storage = broker.stats().storage
    assert storage is not None and storage["failures"] == 1
    assert "was removed" in storage["failure"]
    # consumers still drain what is in memory
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"kept in memory"]


def test_a_torn_tail_is_reported(open_broker: Open, tmp_path: Path) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"whole")
    broker.close()
    last = journal_ops.segments(journal_dir(tmp_path))[-1][1]
    with open(journal_dir(tmp_path) / last, "ab") as file:
        file.write(b"\x01\x02\x03torn" * 5)
    broker = open_broker()
    storage = broker.stats().storage
    assert storage is not None and storage["recovery"]["torn_tail"]["bytes"] == 35
    assert storage["recovery"]["torn_tail"]["after_seq"] == storage["recovery"]["records"]
    assert [m.body for m in broker.receive("q")] == [b"whole"]


def test_a_damaged_segment_header_loses_no_message(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bodies, found = _in_small_segments(open_broker, tmp_path, monkeypatch)
    assert len(found) >= 4
    damaged = journal_dir(tmp_path) / found[len(found) // 2][1]
    content = bytearray(damaged.read_bytes())
    content[3] ^= 0x10   # one bit of the header's magic
    damaged.write_bytes(bytes(content))
    broker = open_broker()
    storage = broker.stats().storage
    assert storage is not None
    recovery = storage["recovery"]
    assert recovery["bad_headers"] == [damaged.name] and recovery["bad_segments"] == []
    assert recovery["skipped"] == [] and recovery["messages"] == 200
    assert [m.body for m in broker.receive("q", max_messages=1000)] == bodies


def test_a_segment_copied_under_a_name_in_its_range_delivers_its_messages_once(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # until 2026-12-07 the copy's records from its name's sequence on were replayed a
    # second time: their messages were in the queue twice
    bodies, found = _in_small_segments(open_broker, tmp_path, monkeypatch)
    assert len(found) >= 4
    base, name = found[1]
    copy = journal_dir(tmp_path) / journal_ops.segment_name(base + 3)
    copy.write_bytes((journal_dir(tmp_path) / name).read_bytes())
    with caplog.at_level("WARNING", logger="fastfanout"):
        broker = open_broker()
    storage = broker.stats().storage
    assert storage is not None
    (repeat,) = storage["recovery"]["duplicates"]
    assert repeat["segment"] == copy.name and repeat["first_seq"] == base
    assert repeat["last_seq"] == found[2][0] - 1
    assert storage["recovery"]["messages"] == 200
    assert [m.body for m in broker.receive("q", max_messages=1000)] == bodies
    assert f"{copy.name} repeats {repeat['records']} records" in caplog.text


def test_a_segment_deleted_from_the_middle_is_reported(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # until 2026-12-05 the restart read over the gap: the segment's messages were lost
    # with nothing in the recovery report or the log
    bodies, found = _in_small_segments(open_broker, tmp_path, monkeypatch)
    assert len(found) >= 4
    (base, name), (next_base, next_name) = found[1], found[2]
    (journal_dir(tmp_path) / name).unlink()
    broker = open_broker()
    storage = broker.stats().storage
    assert storage is not None
    recovery = storage["recovery"]
    assert recovery["missing"] == [{"segment": next_name, "after_seq": base - 1,
                                    "next_seq": next_base}]
    assert recovery["skipped"] == [] and recovery["bad_segments"] == []
    assert f"records {base} to {next_base - 1} are missing before {next_name}" in caplog.text
    kept = [m.body for m in broker.receive("q", max_messages=1000)]
    assert 0 < len(kept) < len(bodies) and set(kept) < set(bodies)


def test_a_restart_past_a_roll_a_crash_cut_short_reports_no_gap(
        open_broker: Open, tmp_path: Path) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"before")
    broker.close()
    last = journal_ops.scan(journal_dir(tmp_path)).last_seq
    # the crash came after the next segment's header: the restart begins past its name
    (journal_dir(tmp_path) / journal_ops.segment_name(last + 1)).write_bytes(
        journal_ops.segment_header(last + 1))
    broker = open_broker()
    broker.send("q", b"after")
    broker = restart(broker, open_broker)
    storage = broker.stats().storage
    assert storage is not None
    assert storage["recovery"]["missing"] == [] and storage["recovery"]["skipped"] == []
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"before", b"after"]


def test_restarts_with_a_backlog_keep_one_segment_of_snapshot_only(
        open_broker: Open, tmp_path: Path) -> None:
    # Until 2026-12-07 each restart of a broker whose oldest segment was live (a
    # backlog) left its segment behind, though it held only its head snapshot (the
    # dedup windows: 620 KB each in a durability hunt): 8 restarts, 8 more segments.
    broker = open_broker(fsync="never")
    broker.create_queue("q", dedup_window=3600)
    bodies = [b"m%03d" % n for n in range(300)]
    for n, body in enumerate(bodies):
        broker.send("q", body, dedup_id=f"d{n}")
    for _ in range(6):
        broker = restart(broker, open_broker, fsync="never")
    storage = broker.stats().storage
    assert storage is not None
    # the backlog's segment and this start's; the ones between held a snapshot only
    assert len(journal_ops.segments(journal_dir(tmp_path))) == 2
    assert storage["superseded_segments"] == 1   # the last start's predecessor
    assert storage["recovery"]["missing"] == []   # the gaps were removed on purpose
    # nothing was lost: the backlog, the topology and the dedup window
    assert broker.send("q", b"again", dedup_id="d7").duplicate
    broker.send("q", b"new", dedup_id="d300")
    broker = restart(broker, open_broker, fsync="never")
    storage = broker.stats().storage
    assert storage is not None and storage["recovery"]["missing"] == []
    # the last run's segment held a send: it stays
    assert len(journal_ops.segments(journal_dir(tmp_path))) == 3
    assert [m.body for m in broker.receive("q", max_messages=1000)] == [*bodies, b"new"]
    assert broker.send("q", b"again", dedup_id="d300").duplicate


def test_a_segment_deleted_between_superseded_ones_is_still_reported(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the ranges a start removed on purpose excuse exactly those gaps, no other
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    broker.send("q", b"first")
    broker = restart(broker, open_broker, fsync="never")
    for n in range(100):
        broker.send("q", b"m%03d" % n + b"x" * 100)   # several segments
    broker = restart(broker, open_broker, fsync="never")
    broker = restart(broker, open_broker, fsync="never")
    broker.close()
    found = journal_ops.segments(journal_dir(tmp_path))
    (journal_dir(tmp_path) / found[2][1]).unlink()   # one of the sends' segments
    broker = open_broker(fsync="never")
    storage = broker.stats().storage
    assert storage is not None
    (gap,) = storage["recovery"]["missing"]
    assert gap["after_seq"] + 1 == found[2][0]


def test_a_damaged_snapshot_heading_the_oldest_segment_orphans_no_message(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # until 2026-12-05 one bad byte in it lost every message of that segment: without the
    # snapshot nothing named the queue their records speak of by id (orphan records)
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    broker = open_broker(fsync="never")
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq", max_receive_count=2)
    broker = restart(broker, open_broker, fsync="never")   # the queues in a snapshot
    bodies = [b"m%03d" % n + b"x" * 100 for n in range(200)]
    for body in bodies:
        broker.send("q", body)
    broker.close()
    found = journal_ops.segments(journal_dir(tmp_path))
    assert len(found) >= 4
    oldest = journal_dir(tmp_path) / found[0][1]
    content = bytearray(oldest.read_bytes())
    content[journal_ops.SEGMENT_HEADER_BYTES + journal_ops.RECORD_HEADER_BYTES + 20] ^= 0x10
    oldest.write_bytes(bytes(content))
    broker = open_broker()
    storage = broker.stats().storage
    assert storage is not None
    recovery = storage["recovery"]
    assert len(recovery["skipped"]) == 1 and recovery["skipped"][0]["segment"] == oldest.name
    assert recovery["orphan_records"] == 0 and recovery["messages"] == 200
    assert f"the snapshot heading {oldest.name}, its oldest segment, is damaged" in caplog.text
    assert [m.body for m in broker.receive("q", max_messages=1000)] == bodies
    assert broker.queue_settings("q").dead_letter_queue == "dlq"


@pytest.mark.parametrize("stray", ["00000000100000000000.seg", "99999999999999999999.seg"])
def test_a_stray_file_named_like_a_far_segment_loses_nothing(
        open_broker: Open, tmp_path: Path, stray: str) -> None:
    # until 2026-12-05 the restart began its segment past the stray's name, so far that
    # the next recovery could not place its records: a send confirmed after that restart
    # was an orphan record, lost (a name past 2**64 failed the start with OverflowError)
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"before")
    broker.close()
    (journal_dir(tmp_path) / stray).write_bytes(b"not a segment")
    broker = open_broker()
    broker.send("q", b"after")
    broker = restart(broker, open_broker)
    storage = broker.stats().storage
    assert storage is not None
    recovery = storage["recovery"]
    assert recovery["bad_segments"] == [stray] and recovery["orphan_records"] == 0
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"before", b"after"]
    assert (journal_dir(tmp_path) / stray).read_bytes() == b"not a segment"


def _start_beside_fifo(open_broker: Open, fifo: Path) -> Broker:
    """Open the broker in a thread, which must be done within 5 s: a FIFO named like a
    segment (``fifo``) would block a start that opened it to read until a writer came."""
    opened: list[Broker] = []
    starting = threading.Thread(target=lambda: opened.append(open_broker()), daemon=True)
    starting.start()
    starting.join(5)
    try:
        assert not starting.is_alive(), "the broker's startup hung on the FIFO"
    finally:   # (a reader blocked on the FIFO goes on once a writer opened it)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    (broker,) = opened
    return broker


def test_a_fifo_named_before_the_oldest_segment_holds_up_no_start(
        open_broker: Open, tmp_path: Path) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker = restart(broker, open_broker)   # the first segment is compacted away
    broker.send("q", b"kept")
    oldest = journal_ops.segments(journal_dir(tmp_path))[0][0]
    assert oldest > 1
    fifo = journal_dir(tmp_path) / journal_ops.segment_name(1)
    os.mkfifo(fifo)   # before the oldest segment: looked at first for its snapshot
    broker.close()
    broker = _start_beside_fifo(open_broker, fifo)
    storage = broker.stats().storage
    assert storage is not None and storage["recovery"]["bad_segments"] == [fifo.name]
    assert [m.body for m in broker.receive("q")] == [b"kept"]


def test_a_directory_or_fifo_named_like_a_segment_is_reported_not_opened(
        open_broker: Open, tmp_path: Path) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"kept")
    broker.close()
    last = journal_ops.segments(journal_dir(tmp_path))[-1][0]
    directory = journal_dir(tmp_path) / journal_ops.segment_name(last + 1000)
    directory.mkdir()
    fifo = journal_dir(tmp_path) / journal_ops.segment_name(last + 2000)
    os.mkfifo(fifo)   # opening it to read would block startup until a writer came
    broker = _start_beside_fifo(open_broker, fifo)
    storage = broker.stats().storage
    assert storage is not None
    assert storage["recovery"]["bad_segments"] == [directory.name, fifo.name]
    assert [m.body for m in broker.receive("q")] == [b"kept"]
    broker = restart(broker, open_broker)   # left in place, reported again
    storage = broker.stats().storage
    assert storage is not None
    assert storage["recovery"]["bad_segments"] == [directory.name, fifo.name]
    assert directory.is_dir() and fifo.is_fifo()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_every_policy_writes_before_returning(open_broker: Open, tmp_path: Path,
                                              fsync: str) -> None:
    broker = open_broker(fsync=fsync, fsync_interval=60.0)
    broker.create_queue("q")
    result = broker.send("q", b"confirmed")
    journal = broker.stats().storage
    assert journal is not None and journal["written_seq"] > 0
    seen: list[int] = []
    journal_ops.scan(journal_dir(tmp_path), lambda seq, kind, payload: seen.append(kind),
                     repair=False)
    assert 2 in seen   # the enqueue record is in the file
    if fsync == "always":
        assert journal["synced_seq"] == journal["written_seq"]
    else:   # interval (60 s not up yet) and never: written, not synced yet
        assert journal["synced_seq"] < journal["written_seq"]
    assert result.message_id


def test_a_start_on_a_full_disk_says_what_to_do_and_loses_nothing(
        open_broker: Open) -> None:
    # until 2026-12-05 the refusal only said "the disk ... is full: nothing of this batch
    # was stored", as if a publish had been refused, with nothing on what to do
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"kept")
    broker.close()
    journal_ops.inject_fault("write", errno.ENOSPC)   # the new segment's snapshot
    try:
        with pytest.raises(StoreFull, match="free space on that file system"):
            open_broker()
    finally:
        journal_ops.inject_fault("write", 0)
    broker = open_broker()
    assert [m.body for m in broker.receive("q")] == [b"kept"]


def test_a_full_disk_refuses_the_publish_and_the_next_one_works(open_broker: Open) -> None:
    broker = open_broker()
    broker.create_queue("q")
    broker.send("q", b"before")
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
    broker.send("q", b"after")
    storage = broker.stats().storage
    assert storage is not None and storage["store_full"] >= 1 and storage["failures"] == 0
    broker = restart(broker, open_broker)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"before", b"after"]


def test_acks_answered_on_a_full_disk_are_written_once_there_is_room(
        open_broker: Open) -> None:
    # Until 2026-12-07 the settles of a batch a full disk refused were dropped with its
    # publishes: the acked and purged messages came back after a clean restart, their
    # receive counts reset (a durability hunt on a 1 MB tmpfs).
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    bodies = [b"m%d" % n for n in range(10)]
    broker.send_batch("q", bodies)
    received = broker.receive("q", max_messages=10)
    with full_disk_once():
        broker.ack_batch([m.receipt for m in received[:6]])   # answered
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")   # the commit of the acks and this send
    storage = broker.stats().storage
    assert storage is not None and storage["kept_settles"] == 6
    broker.send("q", b"after")   # room again: the acks are written before it
    broker = restart(broker, open_broker, fsync="never")
    left = broker.receive("q", max_messages=20, visibility_timeout=60)
    assert sorted(m.body for m in left) == sorted([*bodies[6:], b"after"])
    # the leases before the full disk were in the file: their receive counts stay
    assert {m.body: m.receive_count for m in left} == {
        **{body: 2 for body in bodies[6:]}, b"after": 1}


def _drain(broker: Broker, queues: list[str]) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = []
    for queue in queues:
        while messages := broker.receive(queue, max_messages=100, visibility_timeout=3600):
            for m in messages:
                dead = m.dead_letter
                found.append((queue, m.id, m.body, m.receive_count, m.priority, m.group_id,
                              None if dead is None else (dead.reason, dead.source_queue,
                                                         dead.receive_count)))
    return sorted(found, key=repr)


@pytest.mark.parametrize("segment_bytes", [durability.SEGMENT_BYTES, 2048])
@pytest.mark.parametrize("seed", range(6))
def test_a_restart_restores_what_an_in_memory_twin_holds(
        tmp_path: Path, seed: int, segment_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random work on a durable broker and an in-memory twin in lockstep; after the
    durable one restarts (and the twin's leases are returned), both hold the same.
    Small segments: they roll (snapshots) and are removed as messages settle."""
    monkeypatch.setattr(durability, "SEGMENT_BYTES", segment_bytes)
    rng = random.Random(seed)
    clock = FakeClock()
    twin = Broker(clock=clock)
    durable = Broker(clock=clock, data_dir=tmp_path / "data", fsync="never")
    queues = ["dlq", "a", "b", "short"]
    brokers = (twin, durable)
    for broker in brokers:
        broker.create_topic("t")
        broker.create_queue("dlq")
        broker.create_queue("a", max_receive_count=3, dead_letter_queue="dlq",
                            max_priority=3)
        broker.create_queue("b", max_messages=40, overflow="drop_oldest", content_dedup=True)
        broker.create_queue("short", retention=300.0, max_receive_count=2,
                            dead_letter_queue="dlq")
        broker.subscribe("t", "a")
        broker.subscribe("t", "b", filter_policy={"k": ["x"]})
        broker.subscribe("t", "short")
    held: list[tuple[int, int]] = []   # receipts of the twin, of the durable broker
    for _ in range(400):
        op = rng.random()
        body = f"m{rng.randrange(60)}".encode()
        if op < 0.3:
            options = {"attributes": {"k": rng.choice("xy")}, "priority": rng.randrange(4)}
            if rng.random() < 0.2:
                options["dedup_id"] = f"d{rng.randrange(20)}"
            if rng.random() < 0.2:
                options["delay"] = rng.choice([5.0, 50.0])
            results = [broker.publish("t", body, **options) for broker in brokers]
            assert results[0] == results[1]
        elif op < 0.4:
            queue = rng.choice(queues[1:])
            results = [broker.send(queue, body) for broker in brokers]
            assert results[0] == results[1]
        elif op < 0.6:
            queue = rng.choice(queues)
            count = rng.randrange(1, 5)
            got = [broker.receive(queue, max_messages=count, visibility_timeout=30.0)
                   for broker in brokers]
            assert [m.id for m in got[0]] == [m.id for m in got[1]]
            held += [(x.receipt, y.receipt) for x, y in zip(*got, strict=True)]
        elif op < 0.85 and held:
            pair = held.pop(rng.randrange(len(held)))
            action = rng.random()
            delay = rng.choice([0.0, 20.0])
            for broker, receipt in zip(brokers, pair, strict=True):
                try:
                    if action < 0.5:
                        broker.ack(receipt)
                    elif action < 0.75:
                        broker.nack(receipt, delay=delay)
                    elif action < 0.9:
                        broker.term(receipt)
                    else:
                        broker.extend(receipt, 0)
                except Exception as exc:   # a lease ended in both, the same way
                    assert type(exc).__name__ == "StaleReceipt"
        elif op < 0.9:
            clock.advance(rng.choice([1.0, 10.0, 40.0]))
        elif op < 0.93:
            assert twin.redrive("dlq", max_messages=3) == durable.redrive("dlq", max_messages=3)
        elif op < 0.94:
            assert twin.purge("b") == durable.purge("b")
    for receipt, _ in held:
        try:
            twin.extend(receipt, 0)
        except Exception as exc:
            assert type(exc).__name__ == "StaleReceipt"
    before = {q: s.messages for q, s in twin.stats().queues.items()}
    storage = durable.stats().storage
    assert storage is not None
    if segment_bytes == 2048:   # records after each head snapshot: many rolls
        assert storage["snapshots"] > 10
    durable.close()
    durable = Broker(clock=clock, data_dir=tmp_path / "data")
    try:
        assert {q: s.messages for q, s in durable.stats().queues.items()} == before
        storage = durable.stats().storage
        assert storage is not None and storage["recovery"]["skipped"] == []
        assert storage["recovery"]["torn_tail"] is None
        clock.advance(60.0)
        assert _drain(durable, queues) == _drain(twin, queues)
    finally:
        durable.close()


def test_a_full_disk_frees_the_segments_the_acks_freed_at_once(
        open_broker: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a disk that is really full no write finds room, and compaction ran only after
    # a write: publishes stayed refused after every message was acked (a durability
    # hunt, 2026-12-07). The refused write now removes what the settles freed.
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    bodies = [b"m%03d" % n + b"x" * 100 for n in range(100)]
    for body in bodies:
        broker.send("q", body)
    storage = broker.stats().storage
    assert storage is not None
    segments, removed = storage["segments"], storage["removed_segments"]
    assert segments >= 4
    broker.ack_batch([m.receipt for m in broker.receive("q", max_messages=100)])
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
    storage = broker.stats().storage
    assert storage is not None and storage["removed_segments"] > removed
    assert storage["segments"] < segments
    broker.send("q", b"after")
    broker = restart(broker, open_broker, fsync="never")
    assert [m.body for m in broker.receive("q", max_messages=200)] == [b"after"]


def test_a_full_disk_gives_back_the_reserve_to_roll_away_a_settled_segment(
        open_broker: Open, tmp_path: Path) -> None:
    # One segment holding only settled messages, and no room for the next one: the
    # disk stayed full for good, and the restart itself was refused. The broker's
    # reserve file makes room for the new segment; the old one goes.
    broker = open_broker(fsync="never")
    reserve = tmp_path / "data" / durability.RESERVE_FILE
    storage = broker.stats().storage
    assert storage is not None and storage["reserve_bytes"] > 0 and reserve.exists()
    broker.create_queue("q")
    broker.send_batch("q", [b"m%d" % n for n in range(50)])
    broker.ack_batch([m.receipt for m in broker.receive("q", max_messages=50)])
    (before,) = journal_ops.segments(journal_dir(tmp_path))
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
    storage = broker.stats().storage
    assert storage is not None and storage["reserve_releases"] == 1
    (after,) = journal_ops.segments(journal_dir(tmp_path))
    assert after[0] > before[0]   # a new segment, the settled one removed
    assert storage["reserve_bytes"] > 0 and reserve.exists()   # taken again: room
    broker.send("q", b"after")
    broker = restart(broker, open_broker, fsync="never")
    assert [m.body for m in broker.receive("q", max_messages=100)] == [b"after"]


def test_a_data_directory_that_finds_no_room_is_store_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # until 2026-12-07 StoreFailed, advising permissions and attributes
    def no_room(path: object, mode: int = 0o777) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(os, "mkdir", no_room)
    with pytest.raises(StoreFull, match=r"no room to start on the data directory .*free space"):
        Broker(data_dir=tmp_path / "new")


def test_a_reserve_not_taken_at_the_start_is_taken_at_a_commit(
        open_broker: Open, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A start on a full disk spends the reserve and cannot take it again; an embedded
    # broker took it again only when a compaction removed a segment, so the next start
    # on a full disk was refused (a durability hunt, 2026-12-07). Its commits try.
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    broker.close()

    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", no_room)
    broker = open_broker(fsync="never")
    storage = broker.stats().storage
    assert storage is not None and storage["reserve_bytes"] == 0
    assert not (tmp_path / "data" / durability.RESERVE_FILE).exists()
    monkeypatch.setattr(os, "posix_fallocate", real)
    broker.send("q", b"m")
    storage = broker.stats().storage
    assert storage is not None and storage["reserve_bytes"] > 0


def test_a_full_disk_with_live_messages_keeps_the_reserve(
        open_broker: Open, tmp_path: Path) -> None:
    # rolling would free nothing while messages live in the segment: no reserve is
    # spent on it
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    broker.send("q", b"live")
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
    storage = broker.stats().storage
    assert storage is not None and storage["reserve_releases"] == 0
    assert (tmp_path / "data" / durability.RESERVE_FILE).exists()


def test_a_dead_lettering_a_full_disk_refused_keeps_its_old_segment(
        open_broker: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    # The move's records (the dead letter's, the old copy's remove) are refused: the
    # dead letter is in memory only, and the old copy's record is the one left. Its
    # segment must stay, though no copy in memory lives there any more: removed by the
    # compaction a full disk now runs, the message would be gone at the restart.
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    broker = open_broker(fsync="never")
    broker.create_queue("q")
    broker.create_queue("dlq")
    broker.create_queue("moved", dead_letter_queue="dlq")
    broker.send("moved", b"dead letter")   # in the oldest segment
    for n in range(100):
        broker.send("q", b"m%03d" % n + b"x" * 100)
    broker.ack_batch([m.receipt for m in broker.receive("q", max_messages=100)])
    (dead,) = broker.receive("moved")
    with full_disk_once():
        broker.term(dead.receipt)
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
    broker.send("q", b"after")
    broker = restart(broker, open_broker, fsync="never")
    assert [m.body for queue in ("moved", "dlq")
            for m in broker.receive(queue)] == [b"dead letter"]


def test_a_drop_before_a_batch_s_first_publish_does_not_refuse_it(
        open_broker: Open) -> None:
    # The server's round commits through commit_begin/commit_end; a full disk refusing
    # a commit between two rounds (a topology change of an embedded caller, a roll,
    # housekeeping) had the next round's publishes answered StoreFull though they were
    # written: its ticket counted every drop since the round before began (a
    # durability hunt, 2026-12-07). A drop after its first publish still refuses it.
    from fastfanout._ext.codec import Record, encode_batch

    broker = open_broker(fsync="always")
    broker.create_queue("q")
    port = broker.server_port()
    port.start_commit_writer()

    def round_(body: bytes) -> bool:
        port.send_frame("q", encode_batch([Record(body=body)]))
        ticket = port.commit_begin(confirms=True)
        return port.commit_end(ticket, wait=True)

    assert round_(b"m1")
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.create_queue("other")   # between two rounds
    assert round_(b"m2")   # answered: it is stored
    port.send_frame("q", encode_batch([Record(body=b"m3")]))
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.create_queue("another")   # after the round's first publish: m3 lost
    ticket = port.commit_begin(confirms=True)
    with pytest.raises(StoreFull):
        port.commit_end(ticket, wait=True)
    assert round_(b"m4")
    broker = restart(broker, open_broker)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"m1", b"m2", b"m4"]


@pytest.mark.parametrize("change", ["delete_queue", "unsubscribe", "set_queue_settings"])
def test_a_topology_change_whose_commit_fills_the_segment_is_kept(
        tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    # A change journaled before it is made: its commit rolled the segment when full,
    # and the new segment's snapshot, taken before the change, stated the old topology;
    # a deleted queue came back after the restart (a durability hunt, 2026-12-07).
    # Every fill level is tried: at some the segment is full right after the change's
    # record.
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    at_the_brink = 0
    for filled in range(0, 200, 2):
        data = tmp_path / f"{filled}"
        broker = Broker(clock=clock, data_dir=data, fsync="never")
        broker.create_queue("q")
        broker.create_queue("gone")
        broker.create_topic("t")
        broker.subscribe("t", "gone")
        broker.send("q", b"live")   # stays: its segment is not compacted away
        for _ in range(filled):   # lease records (a nack each): no roll of their own
            broker.nack(broker.receive("q", visibility_timeout=60)[0].receipt)
        storage = broker.stats().storage
        assert storage is not None
        snapshots = storage["snapshots"]
        if change == "delete_queue":
            broker.delete_queue("gone")
        elif change == "unsubscribe":
            broker.unsubscribe(1)
        else:
            broker.set_queue_settings("q", visibility_timeout=99.0)
        after = (broker.list_queues(), broker.list_subscriptions(),
                 broker.queue_settings("q").visibility_timeout)
        broker.send("q", b"next")
        storage = broker.stats().storage
        assert storage is not None
        at_the_brink += storage["snapshots"] != snapshots   # a roll, at the change or after
        broker.close()
        broker = Broker(clock=clock, data_dir=data, fsync="never")
        try:
            assert (broker.list_queues(), broker.list_subscriptions(),
                    broker.queue_settings("q").visibility_timeout) == after, filled
        finally:
            broker.close()
    assert at_the_brink, "no fill level had the segment full at the change"


def test_a_segment_whose_snapshot_a_full_disk_refused_still_begins_with_one(
        open_broker: Open, tmp_path: Path) -> None:
    # The roll's snapshot was refused: the records after went into a segment that began
    # without one; a later start removed the snapshot-only segment before it, and they
    # were read by an older snapshot's queue ids: a message for b was found in a (a
    # durability hunt, 2026-12-07). The head snapshot is kept for the next write.
    broker = open_broker(fsync="never")
    broker.create_queue("backlog")
    broker.create_queue("a")
    broker.create_queue("b")
    for n in range(50):
        broker.send("backlog", b"keep %d" % n)   # keeps the first segment
    broker.delete_queue("a")
    broker.create_queue("a")   # ids: a after b
    broker = restart(broker, open_broker, fsync="never")   # a start renumbers them
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.send("a", b"refused")
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.create_queue("c")   # rolls: the new segment's snapshot refused
    broker.send("b", b"for b")
    broker = restart(broker, open_broker, fsync="never")
    for _, name in journal_ops.segments(journal_dir(tmp_path)):
        data = (journal_dir(tmp_path) / name).read_bytes()
        head = journal_ops.SEGMENT_HEADER_BYTES
        if len(data) > head:   # every segment's first record: a snapshot (kind 6)
            assert data[head + 16] == 6, name
    broker = restart(broker, open_broker, fsync="never")
    assert {queue: [m.body for m in broker.receive(queue, max_messages=10)]
            for queue in ("a", "b")} == {"a": [], "b": [b"for b"]}
    assert len(broker.receive("backlog", max_messages=100)) == 50


TOPOLOGY_CHANGES = {
    "create_topic": lambda b: b.create_topic("new"),
    "delete_topic": lambda b: b.delete_topic("t"),
    "create_queue": lambda b: b.create_queue("new"),
    "delete_queue": lambda b: b.delete_queue("keep"),
    "set_queue_settings": lambda b: b.set_queue_settings("keep", visibility_timeout=99.0),
    "subscribe": lambda b: b.subscribe("t.*", "keep"),
    "set_filter_policy": lambda b: b.set_filter_policy(1, {"kind": ["x"]}),
    "unsubscribe": lambda b: b.unsubscribe(1),
}


def _shape(broker: Broker) -> tuple[object, ...]:
    queues, subscriptions = broker.list_queues(), broker.list_subscriptions()
    return (broker.list_topics(), queues, subscriptions,
            broker.queue_settings("keep") if "keep" in queues else None,
            broker.subscription(1) if 1 in subscriptions else None)


@pytest.mark.parametrize("change", sorted(TOPOLOGY_CHANGES))
def test_a_topology_change_a_full_disk_refuses_changes_nothing(
        open_broker: Open, change: str) -> None:
    # Until 2026-12-07 the change was made, then its record refused: StoreFull, yet a
    # deleted queue was gone with its messages, now and after the restart.
    broker = open_broker(fsync="never")
    broker.create_topic("t")
    broker.create_queue("keep")
    broker.subscribe("t", "keep")
    broker.send("keep", b"precious")
    before = _shape(broker)
    with full_disk_once():
        with pytest.raises(StoreFull):
            TOPOLOGY_CHANGES[change](broker)
    assert _shape(broker) == before
    broker.send("keep", b"room again")
    broker = restart(broker, open_broker, fsync="never")
    assert _shape(broker) == before
    assert [m.body for m in broker.receive("keep", max_messages=10)] == [
        b"precious", b"room again"]
    TOPOLOGY_CHANGES[change](broker)   # with room it is made, and kept
    after = _shape(broker)
    assert after != before
    broker = restart(broker, open_broker, fsync="never")
    assert _shape(broker) == after


@pytest.mark.parametrize("move", ["term", "term, redrive"])
def test_a_refused_send_moved_stays_in_memory_only(open_broker: Open, move: str) -> None:
    # A send answered StoreFull is in memory only (it may be delivered, not after a
    # restart); dead-lettered, it was journaled in the dead-letter queue and came back
    # after the restart (a durability hunt, 2026-12-07).
    broker = open_broker(fsync="never")
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    with full_disk_once():
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
    broker.term(_received(broker, "q", b"refused").receipt)
    if move == "term, redrive":
        assert broker.redrive("dlq") == 1
    broker.send("q", b"stored")
    broker = restart(broker, open_broker, fsync="never")
    assert {queue: [m.body for m in broker.receive(queue, max_messages=10)]
            for queue in ("q", "dlq")} == {"q": [b"stored"], "dlq": []}


@pytest.mark.parametrize("move", ["term", "redrive"])
def test_a_move_a_full_disk_refused_survives_deleting_the_queue_it_left(
        open_broker: Open, move: str) -> None:
    # The copy was put back on its old record, in the queue it left: deleting that
    # queue took it along, and the restart lost the message (a durability hunt,
    # 2026-12-07). It is journaled afresh where it is now, with the next write.
    broker = open_broker(fsync="never")
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.create_queue("other")
    broker.send("q", b"poison")
    (message,) = broker.receive("q", visibility_timeout=60)
    if move == "redrive":
        broker.term(message.receipt)
        broker.send("other", b"written")   # the dead-lettering is in the file
    with full_disk_once():
        if move == "redrive":
            assert broker.redrive("dlq") == 1
        else:
            broker.term(message.receipt)
        with pytest.raises(StoreFull):
            broker.send("other", b"refused")   # the move's records go with it
    if move == "redrive":
        broker.set_queue_settings("q", dead_letter_queue=None)
        broker.delete_queue("dlq")
        expected = {"q": [b"poison"]}
    else:
        broker.delete_queue("q")
        expected = {"dlq": [b"poison"]}
    broker.send("other", b"later")
    broker = restart(broker, open_broker, fsync="never")
    assert {queue: [m.body for m in broker.receive(queue, max_messages=10)]
            for queue in expected} == expected


def test_a_retry_of_a_publish_a_full_disk_refused_is_stored(open_broker: Open) -> None:
    # The refused publish left its dedup key (a topic's window, a queue's dedup id or
    # body hash, a FIFO queue's): the retry the error asks for was answered
    # duplicate=True, and the message, in memory only, was gone after the restart (a
    # durability hunt, 2026-12-07).
    broker = open_broker(fsync="always")
    broker.create_topic("t", dedup_window=600)
    broker.create_queue("a")
    broker.subscribe("t", "a")
    broker.create_queue("c", content_dedup=True)
    broker.create_queue("f", fifo=True)
    calls = {
        "a": lambda: broker.publish("t", b"t-msg", dedup_id="k"),
        "c": lambda: broker.send("c", b"same body"),
        "f": lambda: broker.send("f", b"f-msg", group_id="g", dedup_id="k"),
    }
    for call in calls.values():
        with full_disk_once(), pytest.raises(StoreFull):
            call()
        assert not call().duplicate   # the retry is stored
        assert call().duplicate       # and it is the one a third call repeats
    broker = restart(broker, open_broker)
    assert {queue: [m.body for m in broker.receive(queue, max_messages=10)]
            for queue in calls} == {"a": [b"t-msg"], "c": [b"same body"], "f": [b"f-msg"]}


def _received(broker: Broker, queue: str, body: bytes) -> Any:
    """The message ``body`` received from ``queue`` (the others received go back)."""
    found = None
    for message in broker.receive(queue, max_messages=10):
        if message.body == body:
            found = message
        else:
            broker.nack(message.receipt)
    assert found is not None, f"{body!r} not in {queue}"
    return found


@pytest.mark.parametrize("then", ["ack", "redrive", "redrive, ack", "term again"])
def test_a_move_a_full_disk_refused_then_settled_is_settled_after_the_restart(
        open_broker: Open, then: str) -> None:
    # The dead-lettering's records were refused: the dead letter was in memory only,
    # so what was done to it later named no record, and the old one stayed: an acked
    # message came back after a clean restart, a redriven one came back twice (a
    # durability hunt, 2026-12-07). The copy goes back on its record in the file.
    broker = open_broker(fsync="never")
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.send("q", b"only one")
    (message,) = broker.receive("q", visibility_timeout=60)
    with full_disk_once():
        broker.term(message.receipt)
        with pytest.raises(StoreFull):
            broker.send("q", b"refused")
    expected: dict[str, list[bytes]] = {"q": [], "dlq": []}
    if then == "ack":
        (dead,) = broker.receive("dlq")
        broker.ack(dead.receipt)
    elif then == "redrive":
        assert broker.redrive("dlq") == 1
        expected["q"] = [b"only one"]
    elif then == "redrive, ack":
        assert broker.redrive("dlq") == 1
        broker.ack(_received(broker, "q", b"only one").receipt)
    else:   # dead-lettered once more, from the dead-letter queue's redrive
        assert broker.redrive("dlq") == 1
        broker.term(_received(broker, "q", b"only one").receipt)
        expected["dlq"] = [b"only one"]
    broker.send("q", b"later")
    expected["q"].append(b"later")
    broker = restart(broker, open_broker, fsync="never")
    assert {queue: [m.body for m in broker.receive(queue, max_messages=10)]
            for queue in ("q", "dlq")} == expected


def test_a_dead_lettering_a_full_disk_refused_keeps_the_message_in_its_queue(
        open_broker: Open) -> None:
    # A move's remove is about a copy in the file, like an ack's; kept alone on a full
    # disk (the dead letter's enqueue record dropped), the message would be in no queue
    # after the restart. It is not kept: the message is back where it was.
    broker = open_broker(fsync="never")
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.send("q", b"m")
    (message,) = broker.receive("q")
    with full_disk_once():
        broker.term(message.receipt)   # answered: dead-lettered in memory
        with pytest.raises(StoreFull):
            broker.commit()
    broker.send("q", b"after")
    broker = restart(broker, open_broker, fsync="never")
    found = sorted(m.body for queue in ("q", "dlq")
                   for m in broker.receive(queue, max_messages=10))
    assert found == [b"after", b"m"]


def test_a_move_writes_the_new_copy_before_removing_the_old(
        open_broker: Open, tmp_path: Path) -> None:
    """A crash between the two records of a move leaves a duplicate, never a loss.

    The old copy's remove is of kind ``moved`` (a full disk never keeps it: it would be
    written without the new copy's record)."""
    broker = open_broker()
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.send("q", b"m")
    (message,) = broker.receive("q")
    kinds: list[int] = []

    def tail() -> list[int]:
        kinds.clear()
        journal_ops.scan(journal_dir(tmp_path), lambda seq, kind, payload: kinds.append(kind),
                         repair=False)
        return kinds[-2:]

    broker.term(message.receipt)
    broker.commit()
    enqueue, moved = 2, 8
    assert tail() == [enqueue, moved]
    broker.redrive("dlq")
    broker.commit()
    assert tail() == [enqueue, moved]


def test_a_topic_remembers_dedup_ids_whatever_queues_the_publish_reached(
        open_broker: Open) -> None:
    broker = open_broker()
    broker.create_topic("t", content_dedup=True)
    broker.create_queue("mem", durable=False)
    broker.subscribe("t", "mem")
    first = broker.publish("t", b"to memory only", dedup_id="k")
    body = broker.publish("t", b"same body")
    broker.unsubscribe(1)
    unrouted = broker.publish("t", b"nowhere", dedup_id="u")
    broker = restart(broker, open_broker)
    assert broker.publish("t", b"x", dedup_id="k").message_id == first.message_id
    assert broker.publish("t", b"same body").message_id == body.message_id
    assert broker.publish("t", b"y", dedup_id="u").message_id == unrouted.message_id
    assert broker.stats().topics["t"].duplicates == 3


def test_a_start_whose_snapshot_finds_the_disk_full_says_so_and_starts_later(
        tmp_path: Path) -> None:
    # the start's snapshot commit refused for want of room said "nothing of this batch
    # was stored", the words of a refused publish, to a user who had published nothing
    with Broker(data_dir=tmp_path) as broker:
        broker.create_queue("q")
        broker.send("q", b"kept")
    with full_disk_once(), pytest.raises(StoreFull) as refused:
        Broker(data_dir=tmp_path)
    text = str(refused.value)
    assert text.startswith(f"no room to start on the data directory {tmp_path}")
    assert "batch" not in text and "free space" in text
    with Broker(data_dir=tmp_path) as broker:   # room again: it starts, nothing lost
        assert [m.body for m in broker.receive("q")] == [b"kept"]
