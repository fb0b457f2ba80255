"""The client's connection core with no I/O: API calls in, frames out; frames in, results out."""

from __future__ import annotations

from typing import Any

import pytest

from fastfanout._ext import codec
from fastfanout._ext.offers import PendingBatch
from fastfanout._ext.wire import receipts_of
from fastfanout.api import ClientAPI
from fastfanout.client.consumers import StreamListening
from fastfanout.client.core import (
    SETTLE_MAX_RECEIPTS,
    ConnectionCore,
    ControlCall,
    Request,
    decode_value,
    queue_settings_payload,
)
from fastfanout.client.messages import RemotePublishBatch
from fastfanout.errors import (
    BrokenConnection,
    InvalidArgument,
    MalformedFrame,
    NotFound,
    QueueFull,
    RequestTooLarge,
    ServerStopping,
    SessionExpired,
    StaleReceipt,
    UsedAfterFork,
)
from fastfanout.records import PublishResult
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status


class Bound:
    """A ``bind`` that records which futures went with which request (the futures
    ``listed`` made)."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[Any], Request]] = []

    def __call__(self, batch: PendingBatch, request: Request) -> None:
        self.batches.append((batch.futures, request))


def listed(batch: PendingBatch, index: int) -> int:
    """A future maker: the index of the message in its batch, listed in the batch."""
    batch.futures.append(index)
    return index


def make_core(linger: float = 0.01, batch_messages: int = 3,
              batch_bytes: int = 1 << 20) -> tuple[ConnectionCore, Bound]:
    bound = Bound()
    core = ConnectionCore("ipc://test", linger=linger, batch_messages=batch_messages,
                          batch_bytes=batch_bytes, bind=bound)
    return core, bound


def sent(core: ConnectionCore) -> list[tuple[int, int, list[bytes]]]:
    """Take the outbox: (opcode, request id, payload) of each request queued."""
    out = []
    for frames in core.outbox:
        _, opcode, request_id = protocol.decode_header(frames[0])
        out.append((opcode, request_id, frames[1:]))
    core.outbox.clear()
    return out


def reply(status: int, request_id: int, *payload: bytes) -> list[bytes]:
    return [protocol.encode_header(status, request_id), *payload]


def hello(core: ConnectionCore, **info: Any) -> None:
    """The handshake: HELLO out, its answer in."""
    request = core.start(0.0)
    ((opcode, request_id, payload),) = sent(core)
    assert (opcode, request_id) == (Opcode.HELLO, 1)
    assert protocol.decode_payload(payload[0]) == {"heartbeat": True, "inbox": core.inbox}
    core.receive(reply(Status.OK, request_id, protocol.encode_payload(
        {"heartbeat_interval": 0.25, "heartbeat_timeout": 2.0, **info})), 0.0)
    core.hello(request.value())


def test_requests_get_increasing_ids_and_answers_complete_them() -> None:
    core, _ = make_core()
    hello(core)
    first = core.call(Opcode.LIST_TOPICS)
    second = core.call(Opcode.PURGE, "q")
    out = sent(core)
    assert [(opcode, request_id) for opcode, request_id, _ in out] == [
        (Opcode.LIST_TOPICS, 2), (Opcode.PURGE, 3)]
    assert protocol.decode_payload(out[1][2][0]) == [["q"], {}]
    assert not first.done and not second.done
    core.receive(reply(Status.ERROR, 3, protocol.encode_error(QueueFull("full"))), 1.0)
    core.receive(reply(Status.OK, 2, protocol.encode_payload(["a", "b"])), 1.0)
    assert decode_value(first.value()) == ["a", "b"]
    with pytest.raises(QueueFull, match="full"):
        second.value()
    assert core.pending == {} and core.last_heard == 1.0


def test_watchers_run_once_at_completion_or_at_once_when_done() -> None:
    core, _ = make_core()
    request = core.call(Opcode.CHECK)
    seen: list[str] = []
    request.watch(lambda: seen.append("first"))
    core.receive(reply(Status.OK, request.request_id, protocol.encode_payload(True)), 0.0)
    request.watch(lambda: seen.append("late"))
    assert seen == ["first", "late"]


def test_an_unencodable_argument_is_refused_and_nothing_is_queued() -> None:
    core, _ = make_core()
    with pytest.raises(InvalidArgument, match="outside the 64-bit integer range"):
        core.call(Opcode.NACK, 2**64)
    assert core.outbox == [] and core.next_id == 1 and core.pending == {}


@pytest.mark.parametrize("args, kwargs, named", [
    (("q",), {"max_messages": 1, "wait": 2**70},
     r"receive: wait=1180591620717411303424 is outside the 64-bit integer range"),
    (("q", 2**64), {}, r"receive: argument 2=18446744073709551616 is outside the 64-bit"),
    (("q",), {"visibility_timeout": object()},
     r"receive: visibility_timeout=<object .*> cannot be sent to the broker"),
])
def test_an_unencodable_argument_is_named_in_the_refusal(
        args: tuple[object, ...], kwargs: dict[str, object], named: str) -> None:
    # until 2026-12-05 the refusal said "an argument cannot be sent to the broker"; an
    # int past 64 bits says so since 2026-12-07 (msgspec's own words before)
    core, _ = make_core()
    with pytest.raises(InvalidArgument, match=named):
        core.call(Opcode.RECEIVE, *args, **kwargs)
    assert core.outbox == [] and core.pending == {}


def test_a_request_beyond_the_brokers_limits_is_refused_before_it_is_queued() -> None:
    core, _ = make_core()
    hello(core, max_request_bytes=100, max_frame_bytes=1000)
    with pytest.raises(RequestTooLarge, match="max_request_bytes=100"):
        core.publish_frame(Opcode.PUBLISH, "t", b"x" * 200)
    assert core.outbox == [] and core.pending == {}
    request = core.publish_frame(Opcode.PUBLISH, "t", b"x" * 10)
    assert request.request_id == 2 and request.publish and core.publishes == {request}


def test_publishes_batch_per_target_and_leave_before_any_other_request() -> None:
    core, bound = make_core(batch_messages=3)
    futures = [core.enqueue(Opcode.PUBLISH, "t", b"m%d" % i, None, listed, 0.5)
               for i in range(4)]
    assert futures == [0, 1, 2, 0]   # a future per message: here its index in the batch
    out = sent(core)   # the full batch left at once
    assert [(opcode, payload[0]) for opcode, _, payload in out] == [(Opcode.PUBLISH, b"t")]
    assert core.oldest_batch == 0.5 and not core.batch_due(0.505) and core.batch_due(0.52)
    core.enqueue(Opcode.SEND, "q", b"s", None, listed, 0.6)
    core.call(Opcode.STATS)   # the open batches leave first: no request overtakes them
    assert [(opcode, payload[0]) for opcode, _, payload in sent(core)[:2]] == [
        (Opcode.PUBLISH, b"t"), (Opcode.SEND, b"q")]
    assert [futures for futures, _ in bound.batches] == [[0, 1, 2], [0], [0]]
    # the batch's one answer serves every future bound to it
    request = bound.batches[0][1]
    results = protocol.encode_results([7, 8, 9], [1, 1, 1], [False, False, False])
    core.receive(reply(Status.OK, request.request_id, results), 1.0)
    assert RemotePublishBatch(request.value()[0]).message_ids == [7, 8, 9]
    assert request not in core.publishes


def test_the_next_batch_fills_the_builder_the_last_one_left() -> None:
    # its memory is grown to a batch already: a new builder per batch grew from 16 KiB,
    # copying what it held at each doubling
    core, _ = make_core(batch_messages=2)
    core.enqueue(Opcode.PUBLISH, "t", b"a" * 5000, None, listed, 0.0)
    first = core.batches[(Opcode.PUBLISH, "t")]
    core.enqueue(Opcode.PUBLISH, "t", b"b" * 5000, None, listed, 0.0)   # full: sent
    core.enqueue(Opcode.SEND, "q", b"c", None, listed, 0.0)
    second = core.batches[(Opcode.SEND, "q")]
    assert first.left and second.builder is first.builder and len(second.builder) == 1
    core.flush_batches()
    frames = [payload[1] for _, _, payload in sent(core)]
    assert [record.body for record in codec.decode_batch(frames[0])] == [b"a" * 5000,
                                                                       b"b" * 5000]
    assert [record.body for record in codec.decode_batch(frames[1])] == [b"c"]


def test_publish_results_are_read_from_their_frame_when_asked() -> None:
    import tracemalloc

    count = 10_000
    frame = protocol.encode_results(list(range(100, 100 + count)), [2] * count,
                                    [index % 3 == 0 for index in range(count)])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        results = RemotePublishBatch(frame)
        made = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert made < 1_000   # no Python object per message (the lists took ~400 KB)
    assert len(results) == count
    assert results[0] == PublishResult(100, 2, True)
    assert results[1] == PublishResult(101, 2, False)
    assert results[-1] == PublishResult(100 + count - 1, 2, (count - 1) % 3 == 0)
    assert results[2:4] == [PublishResult(102, 2, False), PublishResult(103, 2, True)]
    assert results.message_ids == list(range(100, 100 + count))
    assert list(results) == [results[index] for index in range(count)]   # one decode
    for index in (count, -count - 1):
        with pytest.raises(IndexError):
            results[index]
    with pytest.raises(MalformedFrame):
        RemotePublishBatch(frame[:-1])
    one = bytearray(protocol.encode_results([5], [1], [False]))   # any buffer is copied
    assert list(RemotePublishBatch(one)) == [PublishResult(5, 1, False)]


def test_a_batch_too_large_fails_its_futures_without_being_sent() -> None:
    core, bound = make_core(batch_messages=2)
    hello(core, max_request_bytes=64, max_frame_bytes=64)
    core.enqueue(Opcode.PUBLISH, "t", b"x" * 40, None, listed, 0.0)
    core.enqueue(Opcode.PUBLISH, "t", b"y" * 40, None, listed, 0.0)
    assert core.outbox == []
    # the second body would take the batch further past the limit: the first left
    # alone (frame_room) and, a record and header over 64 bytes, failed unsent; the
    # second opened a batch of its own, which fails the same when sent
    ((futures, request),) = bound.batches
    assert futures == [0] and isinstance(request.error, RequestTooLarge)
    core.flush_batches()
    assert core.outbox == []
    assert [futures for futures, _ in bound.batches] == [[0], [0]]
    assert all(isinstance(request.error, RequestTooLarge) for _, request in bound.batches)


def test_a_body_over_the_brokers_limits_raises_before_it_is_added() -> None:
    core, bound = make_core(batch_messages=2)
    hello(core, max_request_bytes=64, max_frame_bytes=1000)
    assert core.max_body == 64
    for body in (b"x" * 65, bytearray(65), memoryview(b"z" * 65)):
        with pytest.raises(RequestTooLarge, match="body of 65 bytes"):
            core.enqueue(Opcode.PUBLISH, "t", body, None, listed, 0.0)
    assert core.batches == {} and core.outbox == [] and bound.batches == []
    core.start(0.0)   # a new session: its limits are not known yet
    assert core.max_body == 256 * 1024 * 1024


def test_pushes_go_to_their_consumer_and_end_ends_it() -> None:
    core, _ = make_core()
    request = core.consume("q", 10, None, None)
    ((opcode, consumer_id, payload),) = sent(core)
    assert opcode == Opcode.CONSUME and protocol.decode_payload(payload[0]) == [
        [], {"queue": "q", "prefetch": 10, "visibility_timeout": None}]
    consumer = core.consumers[consumer_id]
    assert core.receive(reply(Status.PUSH, consumer_id, b"batch"), 0.0) is consumer
    assert core.receive(reply(Status.PUSH, 99, b"nobody's"), 0.0) is None
    core.receive(reply(Status.OK, consumer_id), 0.0)
    assert request.value() == [] and list(consumer.batches) == [[b"batch"]]
    core.receive(reply(Status.END, consumer_id, protocol.encode_error(
        StaleReceipt("queue deleted"))), 0.0)
    assert isinstance(consumer.error, StaleReceipt) and core.consumers == {}


def test_a_refused_consume_leaves_no_consumer_and_nothing_to_cancel() -> None:
    core, _ = make_core()
    request = core.consume("nowhere", 10, None, None)
    ((_, consumer_id, _),) = sent(core)
    consumer = core.consumers[consumer_id]
    core.receive(reply(Status.ERROR, consumer_id, protocol.encode_error(
        NotFound("queue 'nowhere' does not exist"))), 0.0)
    assert isinstance(request.error, NotFound)
    assert core.consumers == {} and consumer.closed and core.cancel(consumer) is False
    assert core.outbox == []


def test_an_invalid_inactivity_timeout_is_refused_before_anything_is_queued() -> None:
    core, _ = make_core()
    with pytest.raises(InvalidArgument, match="finite seconds"):
        core.consume("q", 10, None, -1.0)
    assert core.outbox == [] and core.consumers == {}


def test_pipelined_acks_leave_in_one_settle_within_linger_or_at_half_the_prefetch() -> None:
    core, _ = make_core(linger=0.01)
    core.consume("q", 6, None, None)
    consumer = next(iter(core.consumers.values()))
    sent(core)
    core.defer_settle(consumer, protocol.encode_receipts([1]), 1.0)
    core.defer_settle(consumer, protocol.encode_receipts([2]), 1.002)
    assert core.outbox == [] and core.settle_wait(consumer, 1.005) == pytest.approx(0.005)
    assert core.settle_wait(consumer, 1.011) is None   # due: queued now
    ((opcode, _, payload),) = sent(core)
    assert opcode == Opcode.SETTLE and payload == [
        protocol.encode_receipts([1]), protocol.encode_receipts([2]), protocol.NO_CREDIT]
    # half the prefetch (3 receipts) queued: sent at once, the broker must not starve
    core.defer_settle(consumer, protocol.encode_receipts([3, 4, 5]), 2.0)
    assert [opcode for opcode, _, _ in sent(core)] == [Opcode.SETTLE]
    assert consumer.unsent == [] and SETTLE_MAX_RECEIPTS == 65_536


def test_cancel_sends_the_queued_acks_first() -> None:
    core, _ = make_core(linger=10.0)
    core.consume("q", 100, None, None)
    consumer = next(iter(core.consumers.values()))
    sent(core)
    core.defer_settle(consumer, protocol.encode_receipts([1]), 0.0)
    assert core.cancel(consumer) is True   # the driver asks the broker to CANCEL
    assert [opcode for opcode, _, _ in sent(core)] == [Opcode.SETTLE]
    assert consumer.closed and core.consumers == {} and core.cancel(consumer) is False


def test_cancel_releases_what_was_pushed_and_not_read_and_what_crosses_the_cancel(
        broker: Any) -> None:
    # delivery frames leased by a real broker: their receipts are what is released
    port = broker.server_port()
    broker.create_queue("q")
    for body in (b"1", b"2", b"3", b"4", b"5"):
        broker.send("q", body)
    held, _ = port.receive_frame("q", max_messages=2)     # pushed, never taken
    crossing, _ = port.receive_frame("q", max_messages=2)  # pushed after the CANCEL left
    unread = receipts_of(port.receive_frame("q", max_messages=1)[0])  # rest of a frame
    core, _ = make_core()
    hello(core)
    core.consume("q", 10, None, None)
    ((_, consumer_id, _),) = sent(core)
    consumer = core.consumers[consumer_id]
    core.receive(reply(Status.PUSH, consumer_id, held), 0.0)
    core.release(unread)   # the iteration's cursor gives back the rest of its frame
    assert core.cancel(consumer) is True
    releases = sent(core)
    assert [(opcode, payload[1]) for opcode, _, payload in releases] == [
        (Opcode.NACK_BATCH, protocol.NO_DELAY)] * 2
    assert [payload[0] for _, _, payload in releases] == [unread, receipts_of(held)]
    assert not consumer.batches   # never yielded
    assert core.receive(reply(Status.PUSH, consumer_id, crossing), 0.0) is None
    ((opcode, _, payload),) = sent(core)
    assert (opcode, payload) == (Opcode.NACK_BATCH, [receipts_of(crossing),
                                                     protocol.NO_DELAY])
    # the broker takes them: all five visible again at once, none leased
    for packed in [*(frames[0] for _, _, frames in releases), payload[0]]:
        port.nack_packed(packed, None)
    assert broker.stats().queues["q"].visible == 5
    # a consumer the broker ended is not released to, nor is anything once the session
    # ended (the broker released its leases itself)
    core.receive(reply(Status.GOODBYE, 0), 0.0)
    core.receive(reply(Status.PUSH, consumer_id, crossing), 0.0)
    assert core.outbox == []


def test_acks_of_no_consumer_split_at_settle_max_frames() -> None:
    core, _ = make_core()
    core.loose_acks.extend(protocol.encode_receipt(n) for n in range(
        protocol.SETTLE_MAX_FRAMES + 5))
    core.settle_loose()
    assert [(opcode, len(payload)) for opcode, _, payload in sent(core)] == [
        (Opcode.SETTLE, protocol.SETTLE_MAX_FRAMES + 1), (Opcode.SETTLE, 6)]


def test_goodbye_fails_every_waiter_and_says_why() -> None:
    core, bound = make_core()
    hello(core)
    waiting = core.call(Opcode.LIST_QUEUES)
    core.consume("q", 10, None, None)
    consumer = next(iter(core.consumers.values()))
    core.enqueue(Opcode.PUBLISH, "t", b"open", None, listed, 0.0)
    core.receive(reply(Status.GOODBYE, 0, protocol.encode_error(
        SessionExpired("read nothing for too long"))), 1.0)
    assert isinstance(core.ended, SessionExpired) and isinstance(waiting.error, SessionExpired)
    assert isinstance(consumer.error, SessionExpired) and core.consumers == {}
    assert isinstance(bound.batches[-1][1].error, SessionExpired) and core.batches == {}
    assert core.pending == {} and core.outbox == []
    core.start(2.0)   # a new connection is a new session
    assert core.ended is None
    core.receive(reply(Status.GOODBYE, 0), 3.0)   # no payload: the broker stops
    assert isinstance(core.ended, ServerStopping)


def test_an_end_of_the_whole_session_fails_every_waiter_as_a_goodbye_does() -> None:
    core, _ = make_core()
    hello(core)
    waiting = core.call(Opcode.LIST_QUEUES)
    core.consume("a", 10, None, None)
    core.consume("b", 10, None, None)
    first, second = core.consumers.values()
    core.receive(reply(Status.END, first.consumer_id, protocol.encode_error(
        SessionExpired("it missed its heartbeats"))), 1.0)
    assert isinstance(core.ended, SessionExpired) and isinstance(waiting.error, SessionExpired)
    assert isinstance(first.error, SessionExpired) and isinstance(second.error, SessionExpired)
    assert core.consumers == {} and core.pending == {}


def test_heartbeats_fall_due_and_silence_breaks_a_waiting_connection() -> None:
    core, _ = make_core()
    hello(core)
    core.heartbeat(0.3)
    core.heartbeat(0.4)   # not due again yet
    assert [opcode for opcode, _, _ in sent(core)] == [Opcode.HEARTBEAT]
    core.receive(reply(Status.OK, core.next_id - 1), 0.3)
    assert core.silence(10.0) is None   # nothing waits: silence is fine
    core.call(Opcode.CHECK)
    assert core.silence(3.0) is None
    silent = core.silence(3.4)
    assert isinstance(silent, BrokenConnection)
    assert "sent nothing for 3.1 s (1.5 times its heartbeat timeout of 2.0 s)" in str(silent)
    assert str(silent).endswith("; is it running?")
    # what the transport knows of why is said instead (local_channel.pinned_hint)
    hinted = core.silence(3.4, "this client holds 3 frames in place")
    assert str(hinted).endswith("; this client holds 3 frames in place")


def test_no_reply_to_the_handshake_is_told_as_such() -> None:
    core, _ = make_core()
    core.start(0.0)                     # HELLO waits for an answer
    assert core.silence(3.0) is None
    silent = core.silence(3.4)
    assert isinstance(silent, BrokenConnection)
    assert str(silent) == ("no reply to the handshake (HELLO) from ipc://test within "
                           "3.4 s; is a broker running there?")


def test_a_malformed_frame_is_ignored() -> None:
    core, _ = make_core()
    request = core.call(Opcode.CHECK)
    assert core.receive([b"garbage"], 0.0) is None
    assert not request.done and core.ended is None


def test_create_queue_sends_only_the_settings_that_differ_from_the_defaults() -> None:
    defaults = {"visibility_timeout": 30.0, "fifo": False, "redelivery_backoff": None}
    assert queue_settings_payload({"visibility_timeout": 30.0, "fifo": False}, defaults) == {}
    assert queue_settings_payload({"visibility_timeout": 5, "fifo": 0,
                                   "redelivery_backoff": (1.0, 2.0)}, defaults) == {
        "visibility_timeout": 5, "fifo": 0, "redelivery_backoff": [1.0, 2.0]}


def test_plain_calls_send_each_argument_as_a_frame_of_its_own() -> None:
    core, _ = make_core()
    hello(core)
    report = {"worker": "w", "pid": 1, "handlers": {}}
    reported = ControlCall(ClientAPI.report_worker)
    request = reported.request(core, (report,), {})
    stats = ControlCall(ClientAPI.server_stats)
    asked = stats.request(core, (), {})
    assert [(opcode, [protocol.decode_payload(frame) for frame in payload])
            for opcode, _, payload in sent(core)] == [(Opcode.REPORT, [report]),
                                                      (Opcode.SERVER_STATS, [])]
    with pytest.raises(TypeError):
        reported.request(core, (), {})   # the declared signature binds the arguments
    core.receive(reply(Status.OK, request.request_id), 0.0)
    core.receive(reply(Status.OK, asked.request_id, protocol.encode_payload(
        {"connections": 1})), 0.0)
    assert reported.decode(request.value()) is None
    assert stats.decode(asked.value()) == {"connections": 1}


def test_a_forked_child_refuses_and_leaves_the_connection_to_its_parent() -> None:
    bound = Bound()
    core = ConnectionCore("ipc://test", linger=0.0, batch_messages=10, batch_bytes=1 << 20,
                          bind=bound, pid=100)
    core.check_open()
    assert core.left_to_parent(100) is False and not core.closed
    assert core.left_to_parent(101) is True and core.closed and core.forked
    with pytest.raises(UsedAfterFork, match="100"):
        core.check_open()


def test_a_listener_keeps_the_batches_that_come_before_its_probe() -> None:
    listening = StreamListening("ticks.*")
    early = codec.encode_batch([codec.Record(body=b"m", receipt=1)])
    assert listening.until_live([b"ticks.a", early]) is False
    assert listening.until_live([b"ticks.a"]) is False   # malformed: counted, dropped
    assert listening.until_live([listening.follower.probe, b""]) is True
    assert [[m.body for m in batch] for batch in listening.early] == [[b"m"]]
    assert (listening.received, listening.malformed, listening.gaps) == (1, 1, 0)
