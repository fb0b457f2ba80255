"""Received messages made in C from a delivery frame, and their ack buffer (issue 15)."""

from __future__ import annotations

import json
import struct
import time
import types

import pytest

from fastfanout import Broker
from fastfanout._ext.codec import Record, encode_batch
from fastfanout._ext.received import DONE, AckBuffer, MessageCursor, RemoteMessage, messages_of
from fastfanout.errors import InvalidArgument, MalformedBatch, StaleReceipt
from fastfanout.records import DeadLetterInfo


class Owner:
    """Records what messages settle by receipt."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, receipt: int) -> None:
        self.acked.append(receipt)


def _frame(count: int, start: int = 1) -> bytes:
    return encode_batch([Record(b"m%d" % index, id=index, receipt=100 + index,
                                receive_count=1, timestamp_us=2_000_000)
                         for index in range(start, start + count)])


def _receipts(frame: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(frame) // 8}Q", frame))


def test_fields_come_from_the_frame_lazily() -> None:
    dead = json.dumps(["max_receives", "src", 3, 1_000_000, None, 5_000_000]).encode()
    frame = encode_batch([
        Record(b"body", id=7, timestamp_us=1_500_000, attributes=b"\x81\xa1k\xa1v",
               name="q", group_id="g", dedup_id="d", priority=4, receipt=9,
               receive_count=2),
        Record(b"x", id=8, receipt=10, receive_count=1, name=dead.decode(),
               dead_letter=True),
    ])
    first, second = messages_of(frame, Owner())
    assert (first.id, first.receipt, first.receive_count, first.priority) == (7, 9, 2, 4)
    assert first.timestamp == 1.5 and first.body == b"body" and first.body is first.body
    assert (first.attributes, first.group_id, first.dedup_id) == ({"k": "v"}, "g", "d")
    assert first.queue == "q" and first.dead_letter is None
    assert second.queue == "" and second.priority == 0
    assert second.dead_letter == DeadLetterInfo("max_receives", "src", 3, 1.0, None, 5.0)
    assert "RemoteMessage(id=7" in repr(first)


def test_memoryview_of_a_message_is_its_body_without_a_copy() -> None:
    frame = _frame(2)
    message = messages_of(frame, Owner())[1]
    view = memoryview(message)
    assert view.readonly and bytes(view) == b"m2"
    del message, frame   # the view keeps the message, and so the frame, alive
    assert bytes(view) == b"m2"


def test_memoryview_of_an_embedded_message_is_its_body_too() -> None:
    # the embedded broker (the test double) gives the same view as the clients: code
    # reading memoryview(message) raised TypeError on it
    with Broker() as broker:
        broker.create_queue("q")
        broker.send_batch("q", [b"one", b"two"])
        received = broker.receive("q")[0]
        consumer = broker.consume("q")
        pushed = next(iter(consumer))
        views = [memoryview(received), memoryview(pushed)]
        assert [bytes(received), bytes(pushed)] == [b"one", b"two"]
        received.ack()
        pushed.ack()
        del received, pushed   # the views keep the bodies alive
        assert [(view.readonly, bytes(view)) for view in views] == [(True, b"one"),
                                                                     (True, b"two")]
        consumer.cancel()


def test_a_malformed_frame_makes_no_message() -> None:
    frame = bytearray(_frame(3))
    frame[-60] ^= 0xFF   # inside the last record's header
    with pytest.raises(MalformedBatch):
        messages_of(bytes(frame), Owner())
    with pytest.raises(InvalidArgument):   # MalformedBatch is an InvalidArgument
        messages_of(b"nonsense", Owner())


def test_the_cursor_refills_frame_by_frame_and_ends_on_none() -> None:
    frames = [_frame(2, 1), _frame(0), _frame(3, 3)]
    calls = []

    def refill() -> bytes | None:
        calls.append(len(frames))
        return frames.pop(0) if frames else None

    cursor = MessageCursor(Owner(), None, "q", refill)
    assert [message.id for message in cursor] == [1, 2, 3, 4, 5]
    assert calls == [3, 2, 1, 0] and cursor.pending == 0
    cursor.feed(_frame(2))
    assert cursor.pending == 2 and next(cursor).id == 1


def test_acks_of_one_delivery_share_a_frame() -> None:
    state = types.SimpleNamespace(closed=False)
    acks = AckBuffer(state, 1000)
    first = messages_of(_frame(3, 1), Owner(), acks)
    second = messages_of(_frame(2, 4), Owner(), acks)
    before = time.monotonic()
    for message in (*first[:2], *second, first[2]):
        assert message.ack() is DONE
    assert acks.count == 5 and before - 1 <= acks.since <= time.monotonic()
    assert [_receipts(frame) for frame in acks.take()] == [[101, 102], [104, 105], [103]]
    assert acks.count == 0 and acks.take() == []
    first[0].ack()   # acked already: nothing more is queued
    assert acks.count == 0


def test_limit_and_first_callbacks() -> None:
    state = types.SimpleNamespace(closed=False)
    events: list[str] = []
    acks = AckBuffer(state, 2, on_full=lambda: events.append(f"full {acks.count}"),
                     on_first=lambda: events.append("first"))
    for message in messages_of(_frame(3), Owner(), acks):
        message.ack()
    assert events == ["first", "full 2", "full 3"]
    acks.clear()
    assert acks.count == 0
    with pytest.raises(InvalidArgument):
        AckBuffer(state, 0)


def test_a_closed_buffer_sends_acks_through_the_owner() -> None:
    state = types.SimpleNamespace(closed=True)
    owner = Owner()
    acks = AckBuffer(state, 10)
    message = messages_of(_frame(1), owner, acks)[0]
    message.ack()
    assert owner.acked == [101] and acks.count == 0 and acks.closed


def test_an_owner_error_still_settles_the_message() -> None:
    class Refusing:
        def ack(self, receipt: int) -> None:
            raise StaleReceipt("stale", [receipt])

    message = messages_of(_frame(1), Refusing())[0]
    with pytest.raises(StaleReceipt):
        message.ack()
    assert message.detach() is False


def test_the_record_constructor_still_works() -> None:
    record = Record(b"b", id=3, receipt=5, receive_count=1, name="q", attributes=b"\x80")
    message = RemoteMessage(record, Owner(), None)
    assert (message.id, message.body, message.queue, message.attributes) == (3, b"b", "q", {})
    assert bytes(memoryview(message)) == b"b"


class SlottedState:
    """A consumer's state as the client keeps it: ``closed`` is a ``__slots__`` slot."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False


def test_a_slotted_state_closed_later_sends_the_next_ack_through_the_owner() -> None:
    # The buffer reads a slotted ``closed`` in C: it must see each change at once.
    state, owner = SlottedState(), Owner()
    acks = AckBuffer(state, 10)
    first, second, third = messages_of(_frame(3), owner, acks)
    first.ack()
    state.closed = True
    second.ack()
    state.closed = 0   # any falsy value: open again
    third.ack()
    assert owner.acked == [102]
    assert _receipts(b"".join(acks.take())) == [101, 103]


def test_a_state_whose_type_changed_is_read_through_getattr() -> None:
    class State:
        __slots__ = ("closed",)

    state, owner = State(), Owner()
    state.closed = False
    acks = AckBuffer(state, 10)
    first, second = messages_of(_frame(2), owner, acks)
    first.ack()
    State.closed = property(lambda self: True)   # the slot is no longer what is read
    second.ack()
    assert owner.acked == [102] and acks.count == 1


def test_an_unset_slot_raises_as_getattr_does() -> None:
    state = SlottedState()
    del state.closed
    message = messages_of(_frame(1), Owner(), AckBuffer(state, 10))[0]
    with pytest.raises(AttributeError):
        message.ack()


def test_messages_of_one_cursor_settle_each_on_its_own() -> None:
    # They share their owner, consumer and queue: settling one leaves the others live.
    acks = AckBuffer(SlottedState(), 10)
    cursor = MessageCursor(Owner(), acks, "q")
    cursor.feed(_frame(3))
    first, second, third = cursor
    assert cursor.consumer is acks and isinstance(cursor.owner, Owner)
    first.ack()
    assert second.detach() is True and second.detach() is False
    assert first.detach() is False and third.detach() is True
    assert [m.queue for m in (first, second, third)] == ["q", "q", "q"]
    assert acks.count == 1
