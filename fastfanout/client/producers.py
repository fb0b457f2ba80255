"""A producer over the client's connection: offers fill a frame, full frames are pipelined.

Design
------
Prior art: the embedded ``fastfanout.broker.producer.Producer`` (whose calls this mirrors) and
the Kafka producer's accumulator with ``max.in.flight.requests.per.connection``.

``Client.publish_nowait`` pays for a lock, a future and a dictionary lookup on every
message (about a microsecond of Python). A ``RemoteProducer`` serves one thread and one
topic and returns nothing per message: ``offer()`` appends the body to a record frame
being built natively (``fastfanout._ext.wire.FrameBuilder``); a frame that reaches
``batch_messages`` or ``batch_bytes`` goes out at once as one PUBLISH request, and up to
``max_in_flight`` frames may be unanswered — past that, ``offer()`` waits for the oldest
answer (back pressure from the broker, e.g. a full ``hold`` queue). A frame that does not
fill leaves ``linger`` seconds after its first message (the client's, 2 ms by default),
sent by the client's background thread, as ``publish_nowait`` batches are. No lock is
taken per message: appending a body and taking the frame are each one native call, atomic
under the GIL, and both threads take *and send* a frame under the client's lock, so frames
leave in order and every body is in exactly one of them.

Invariants:

- Nothing is lost. A frame the broker refuses (``QueueFull`` of a ``reject`` queue,
  ``MessageTooLarge``, a deleted topic, a broken connection) is kept, the error is raised
  to the call that learned of it, and the next ``flush()`` sends the kept frames first,
  oldest first. While frames are kept, ``offer()`` flushes before it appends and raises
  if that fails (the body is not added), as the embedded producer does when its ring is
  full.
- Order: frames leave in offer order. With ``max_in_flight`` above 1, a refused frame is
  published again after frames that were already in flight behind it (Kafka's behaviour
  with several requests in flight); ``max_in_flight=1`` keeps strict offer order even
  across refusals. After a broken connection a kept frame may have been published before
  the connection broke: sending it again is at-least-once (dedup ids make it exactly
  once).
- ``Client.close()`` closes the producers still open first (flushing them) and raises
  a refusal met there, after closing: no message is left unpublished without an error.
- A request of the same client never overtakes the producer's frames: the client sends
  pending ``publish_nowait`` batches before any request, and the producer's frames are
  requests.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Final

from fastfanout._ext.wire import FrameBuilder, count_of
from fastfanout.client.core import Request
from fastfanout.client.driver import BlockingDriver
from fastfanout.client.messages import RemotePublishBatch
from fastfanout.errors import Closed, FastFanoutError, InvalidArgument
from fastfanout.records import Body
from fastfanout.settings import MAX_DELAY, seconds_to_us
from fastfanout.wire.protocol import Opcode

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "RemoteProducer", "producer_limits"]

DEFAULT_MAX_IN_FLIGHT: Final = 8
"""Frames a producer may have sent and not yet seen answered."""


class RemoteProducer:
    """Offers messages to one topic of a broker; made by ``Client.producer(topic)``.

    Use from one producing thread. Other threads may use the same client meanwhile.

    Attributes:
        topic: the topic published to.
        offered: messages offered so far.
        published: messages the broker accepted so far.
    """

    def __init__(self, client: BlockingDriver, topic: str, batch_messages: int, batch_bytes: int,
                 max_in_flight: int, linger: float) -> None:
        self.topic = topic
        self._linger = linger
        self._opened_at = 0.0     # when the open frame got its first message
        self._flushing = False    # the producing thread flushes: no linger sends
        self._client = client
        self._name = topic.encode()
        self._batch_messages = batch_messages
        self._batch_bytes = batch_bytes
        self._max_in_flight = max_in_flight
        self._builder = FrameBuilder()
        self._in_flight: deque[tuple[Request, bytes]] = deque()
        self._kept: deque[bytes] = deque()   # refused frames, oldest first
        self._closed = False
        self._refused = 0           # counted by the producing thread
        self._linger_refused = 0    # counted by the client's background thread
        self.offered = 0
        self.published = 0

    def offer(self, body: Body) -> None:
        """Add a message; it leaves with its frame (when full, or at the next flush).

        Args:
            body: the message body (bytes-like, copied).

        Raises:
            Closed: the producer was closed.
            InvalidArgument: ``body`` is not bytes-like.
            FastFanoutError: the broker refused a frame of this producer (it is kept; see
                the module's invariants). The body was added unless the refusal came from
                the flush of kept frames that precedes it.
        """
        if self._closed:
            raise Closed(f"the producer of topic {self.topic!r} is closed")
        if self._kept:
            self.flush()
        # One native call, atomic under the GIL, as is the background thread's take(): a
        # body lands in the frame it sends or in the next one, never in neither.
        index = self._builder.append_body(body)
        self.offered += 1
        if index == 0:   # a new frame: the client's background thread sends it after linger
            self._opened_at = self._client.start_ticking()   # if it does not fill first
        if index + 1 >= self._batch_messages or self._builder.nbytes >= self._batch_bytes:
            self._send_open()

    def flush(self) -> RemotePublishBatch | None:
        """Send the open frame and wait until every frame is answered.

        Kept (refused) frames are sent again first, oldest first. Returns the results of
        the last frame answered by this call, or None if there was nothing to send.

        Raises:
            FastFanoutError: the first refusal met; the refused frames are kept for the
                next flush.
        """
        self._flushing = True
        try:
            return self._flush()
        finally:
            self._flushing = False

    @property
    def refused_frames(self) -> int:
        """Frames the broker refused (each kept and sent again by a flush)."""
        return self._refused + self._linger_refused

    def _flush(self) -> RemotePublishBatch | None:
        last: RemotePublishBatch | None = None
        error: FastFanoutError | None = None
        client = self._client
        while True:
            answered, refusal = self._drain()   # refusals in flight are kept, in order
            last = answered or last
            error = error or refusal
            with client.lock:   # no linger send between these lines and after them
                if len(self._builder):
                    self._kept.append(self._builder.take())   # sent below, behind them
                if not self._in_flight:
                    break
        if error is not None:
            raise error
        while self._kept:
            frame = self._kept[0]
            results = self._answer(self._client.request(Opcode.PUBLISH, [self._name, frame]))
            self._kept.popleft()
            self.published += len(results)
            last = results
        return last

    @property
    def pending(self) -> int:
        """Messages offered and not yet accepted (open frame, in flight, kept)."""
        return (len(self._builder) + sum(count_of(frame) for _, frame in list(self._in_flight))
                + sum(count_of(frame) for frame in list(self._kept)))

    def _send_open(self) -> None:
        """Pipeline the open frame, first waiting for the oldest answer if too many are out.

        The frame is taken and sent under the client's lock, which the background thread
        holds for its linger sends: frames leave in the order they were taken.
        """
        client = self._client
        if len(self._in_flight) >= self._max_in_flight:
            _, error = self._settle_oldest()
            if error is not None:
                with client.lock:
                    if len(self._builder):
                        self._kept.append(self._builder.take())
                raise error
        with client.lock:
            if not len(self._builder):
                return   # the background thread sent it meanwhile
            error = self._send_taken()
            if error is not None:
                self._refused += 1
                raise error

    def _send_taken(self) -> FastFanoutError | None:
        """Take the open frame and send it (client lock held); a frame not sent is kept."""
        frame = self._builder.take()
        try:
            pending = self._client.request(Opcode.PUBLISH, [self._name, frame])
        except FastFanoutError as exc:
            self._kept.append(frame)
            return exc
        self._in_flight.append((pending, frame))
        return None

    def _answer(self, pending: Request) -> RemotePublishBatch:
        """Wait for one frame's answer (its refusal raises)."""
        try:
            return self._client.publish_results(pending)
        except FastFanoutError:
            self._refused += 1
            raise

    def _settle_oldest(self) -> tuple[RemotePublishBatch | None, FastFanoutError | None]:
        """Wait for the oldest frame in flight: (its results, or its refusal, kept)."""
        pending, frame = self._in_flight.popleft()
        try:
            results = self._answer(pending)
        except FastFanoutError as exc:
            self._kept.append(frame)
            return None, exc
        self.published += len(results)
        return results, None

    def _drain(self) -> tuple[RemotePublishBatch | None, FastFanoutError | None]:
        """Wait for every frame in flight: (last results, first refusal)."""
        last: RemotePublishBatch | None = None
        first: FastFanoutError | None = None
        while self._in_flight:
            results, error = self._settle_oldest()
            last = results or last
            first = first or error
        return last, first

    def linger_send(self, now: float) -> None:
        """Send the open frame if it is ``linger`` old (the client's background thread).

        Called with the client's lock held, so no frame of the producing thread is taken
        or sent meanwhile (it takes and sends under that lock too). Never waits: skipped
        while the producing thread flushes, while refused frames are kept, or while
        ``max_in_flight`` frames are unanswered (answers that have arrived are read
        first). A frame the client cannot send is kept.
        """
        if (self._flushing or self._closed or self._kept or not len(self._builder)
                or now - self._opened_at < self._linger):
            return
        if self._unanswered() >= self._max_in_flight:
            self._client.pump(0)   # dispatch the answers that have arrived
            if self._unanswered() >= self._max_in_flight:
                return
        if self._send_taken() is not None:
            self._linger_refused += 1

    def _unanswered(self) -> int:
        # a snapshot: the producing thread may pop answered frames meanwhile
        return sum(1 for pending, _ in list(self._in_flight) if not pending.done)

    def close(self) -> None:
        """Flush what is left, then refuse further offers."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> RemoteProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def producer_limits(topic: object, batch_messages: int | None, batch_bytes: int | None,
                    max_in_flight: object, linger: float | None,
                    defaults: tuple[int, int, float]) -> tuple[int, int, float]:
    """A producer's (batch_messages, batch_bytes, linger): None takes the client's.

    Raises:
        InvalidArgument: ``topic`` is not a string, a limit is not a positive int, or
            ``linger`` is not a finite number of seconds >= 0.
    """
    if type(topic) is not str:
        raise InvalidArgument(f"topic name {topic!r} must be a string")
    messages = defaults[0] if batch_messages is None else batch_messages
    size = defaults[1] if batch_bytes is None else batch_bytes
    wait = defaults[2] if linger is None else linger
    for name, value in (("batch_messages", messages), ("batch_bytes", size),
                        ("max_in_flight", max_in_flight)):
        if type(value) is not int or value < 1:
            raise InvalidArgument(f"{name}={value!r} must be an int of 1 or more")
    seconds_to_us("linger", wait, maximum=MAX_DELAY)   # finite, 0 to MAX_DELAY seconds
    return messages, size, float(wait)
