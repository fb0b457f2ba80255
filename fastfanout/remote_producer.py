"""A producer over the client's connection: offers fill a frame, full frames are pipelined.

Design
------
Prior art: the embedded ``fastfanout.producer.Producer`` (whose calls this mirrors) and
the Kafka producer's accumulator with ``max.in.flight.requests.per.connection``.

``Client.publish_nowait`` pays for a lock, a future and a dictionary lookup on every
message (about a microsecond of Python). A ``RemoteProducer`` serves one thread and one
topic and returns nothing per message: ``offer()`` appends the body to a record frame
being built natively (``fastfanout._ext.wire.FrameBuilder``); a frame that reaches
``batch_messages`` or ``batch_bytes`` goes out at once as one PUBLISH request, and up to
``max_in_flight`` frames may be unanswered — past that, ``offer()`` waits for the oldest
answer (back pressure from the broker, e.g. a full ``hold`` queue). A frame that does not
fill leaves ``linger`` seconds after its first message (the client's, 2 ms by default),
sent by the client's background thread, as ``publish_nowait`` batches do; a plain lock
(uncontended: tens of ns an offer) keeps that thread and the producing one apart.

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

import math
import threading
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Final

from fastfanout._ext.wire import FrameBuilder, count_of
from fastfanout.errors import Closed, FastFanoutError, InvalidArgument
from fastfanout.futures import _Pending
from fastfanout.protocol import Opcode
from fastfanout.remote import RemotePublishBatch

if TYPE_CHECKING:
    from fastfanout.client import Client

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
        refused_frames: frames the broker refused (each kept and sent again by a flush).
    """

    def __init__(self, client: Client, topic: str, batch_messages: int, batch_bytes: int,
                 max_in_flight: int, linger: float) -> None:
        self.topic = topic
        self._linger = linger
        self._lock = threading.Lock()   # the producing thread vs the client's linger sends
        self._opened_at = 0.0           # when the open frame got its first message
        self._client = client
        self._name = topic.encode()
        self._batch_messages = batch_messages
        self._batch_bytes = batch_bytes
        self._max_in_flight = max_in_flight
        self._builder = FrameBuilder()
        self._in_flight: deque[tuple[_Pending, bytes]] = deque()
        self._kept: deque[bytes] = deque()   # refused frames, oldest first
        self._closed = False
        self.offered = 0
        self.published = 0
        self.refused_frames = 0

    def offer(self, body: bytes | bytearray | memoryview) -> None:
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
        with self._lock:
            if self._kept:
                self._flush()
            index = self._builder.append_body(body)
            self.offered += 1
            if index == 0:   # a new frame: the client's background thread sends it after
                self._opened_at = self._client._producing()   # linger if it is not full
            if index + 1 >= self._batch_messages or self._builder.nbytes >= self._batch_bytes:
                self._send(self._builder.take())

    def flush(self) -> RemotePublishBatch | None:
        """Send the open frame and wait until every frame is answered.

        Kept (refused) frames are sent again first, oldest first. Returns the results of
        the last frame answered by this call, or None if there was nothing to send.

        Raises:
            FastFanoutError: the first refusal met; the refused frames are kept for the
                next flush.
        """
        with self._lock:
            return self._flush()

    def _flush(self) -> RemotePublishBatch | None:
        last, error = self._drain()   # refusals of frames in flight are kept, in order
        if len(self._builder):
            self._kept.append(self._builder.take())   # sent below, behind them
        if error is not None:
            raise error
        while self._kept:
            frame = self._kept[0]
            results = self._answer(self._client._request(Opcode.PUBLISH, [self._name, frame]))
            self._kept.popleft()
            self.published += len(results)
            last = results
        return last

    @property
    def pending(self) -> int:
        """Messages offered and not yet accepted (open frame, in flight, kept)."""
        return (len(self._builder) + sum(count_of(frame) for _, frame in self._in_flight)
                + sum(count_of(frame) for frame in self._kept))

    def _send(self, frame: bytes) -> None:
        """Pipeline one frame, first waiting for the oldest answer if too many are out."""
        if len(self._in_flight) >= self._max_in_flight:
            error = self._settle_oldest()
            if error is not None:
                self._kept.append(frame)
                raise error
        try:
            pending = self._client._request(Opcode.PUBLISH, [self._name, frame])
        except FastFanoutError:
            self._kept.append(frame)
            self.refused_frames += 1
            raise
        self._in_flight.append((pending, frame))

    def _answer(self, pending: _Pending) -> RemotePublishBatch:
        """Wait for one frame's answer (its refusal raises)."""
        client = self._client
        try:
            return RemotePublishBatch(
                client._wait(pending, None, extra=client._hold_allowance(None))[0])
        except FastFanoutError:
            self.refused_frames += 1
            raise

    def _settle_oldest(self) -> FastFanoutError | None:
        pending, frame = self._in_flight.popleft()
        try:
            self.published += len(self._answer(pending))
        except FastFanoutError as exc:
            self._kept.append(frame)
            return exc
        return None

    def _drain(self) -> tuple[RemotePublishBatch | None, FastFanoutError | None]:
        """Wait for every frame in flight: (last results, first refusal)."""
        last: RemotePublishBatch | None = None
        first: FastFanoutError | None = None
        while self._in_flight:
            pending, frame = self._in_flight.popleft()
            try:
                last = self._answer(pending)
                self.published += len(last)
            except FastFanoutError as exc:
                self._kept.append(frame)
                first = first or exc
        return last, first

    def _linger_send(self, now: float) -> None:
        """Send the open frame if it is ``linger`` old (the client's background thread).

        Never waits: skipped while the producing thread holds the producer, while
        refused frames are kept (the producing thread deals with those) or while
        ``max_in_flight`` frames are still unanswered (answers that have arrived are read
        first); a frame the client cannot send is kept.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            if not len(self._builder) or now - self._opened_at < self._linger or self._kept:
                return
            if len(self._in_flight) >= self._max_in_flight:
                self._client._pump_once(0)   # dispatch the answers that have arrived
                while self._in_flight and self._in_flight[0][0].done:
                    self._settle_oldest()    # a refusal is kept, raised by the next flush
                if self._kept or len(self._in_flight) >= self._max_in_flight:
                    return
            frame = self._builder.take()
            try:
                pending = self._client._request(Opcode.PUBLISH, [self._name, frame])
            except FastFanoutError:
                self._kept.append(frame)
                self.refused_frames += 1
                return
            self._in_flight.append((pending, frame))
        finally:
            self._lock.release()

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
    if type(wait) not in (int, float) or not math.isfinite(wait) or wait < 0:
        raise InvalidArgument(f"linger={wait!r} must be finite seconds, 0 or more")
    return messages, size, float(wait)
