"""Producers over a client's connection: offers fill a frame, full frames are pipelined.

Design
------
Prior art: the embedded ``fastfanout.producer.Producer`` (whose calls this mirrors), the
Kafka producer's accumulator with ``max.in.flight.requests.per.connection``, and
``asyncio.StreamWriter`` (``write()`` buffers, ``await drain()`` waits for room).

``publish_nowait`` pays for a future and a dictionary lookup per message; a producer
serves one thread (or task) and one topic and returns nothing per message: ``offer()``
appends the body to a record frame built natively (``FrameBuilder``); a frame that reaches
``batch_messages`` or ``batch_bytes`` leaves as one PUBLISH request, and up to
``max_in_flight`` frames may be unanswered. A frame that does not fill leaves ``linger``
seconds after its first message. ``ProducerCore`` holds the rules with no I/O (the open
frame, frames in flight, refused frames kept, counters); ``RemoteProducer`` (blocking)
and ``AsyncProducer`` drive it:

- Blocking: past ``max_in_flight``, ``offer()`` waits for the oldest answer; a lingering
  frame is sent by the client's background thread. Appending a body and taking the frame
  are each one native call, atomic under the GIL, and both threads take *and send* a frame
  under the client's lock, so frames leave in order and each body is in exactly one.
  While frames are kept, ``offer()`` flushes before it appends and raises if that fails.
- Asyncio: ``offer()`` never waits; a full frame past ``max_in_flight`` is queued (an
  answer sends the next), ``await drain()`` waits until none is queued, ``linger``
  defaults to 0 (the frame leaves when the event-loop iteration ends). A refusal keeps
  the frame and every frame queued behind it; ``offer()`` then raises it and adds nothing.

Invariants: nothing is lost (a refused frame is kept, its error raised to the call that
learns of it, and the next ``flush()`` sends kept frames again, oldest first) but a frame
refused for its size (``MessageTooLarge``: a message over a queue's ``max_message_size``;
``RequestTooLarge``: the frame over the broker's request limits), which can never be
published as it is: its error is raised once, to the call that learns of it, and the frame
is dropped (``dropped_frames``) so the producer goes on; frames
leave in offer order, a refused one published again after frames already in flight behind
it (``max_in_flight=1`` keeps strict order; after a broken connection a kept frame may be
published twice: dedup ids make it once); the client's ``close()`` closes its open
producers first and raises a refusal met there; a request of the client never overtakes a
producer's frames (they are requests, and batches leave before any request).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

from fastfanout._ext.offers import OfferGate
from fastfanout._ext.wire import FrameBuilder, count_of
from fastfanout.client.core import Request
from fastfanout.client.driver import AsyncDriver, BlockingDriver
from fastfanout.client.messages import DONE, Done, RemotePublishBatch
from fastfanout.errors import (
    BlockingOnly,
    BrokenConnection,
    CallTimeout,
    Closed,
    FastFanoutError,
    InvalidArgument,
    MessageTooLarge,
    RequestTooLarge,
)
from fastfanout.records import Body
from fastfanout.settings import (
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_DELAY,
    check_count,
    name_type_error,
    seconds_to_us,
)
from fastfanout.wire.protocol import Opcode, body_size_error

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "AsyncProducer", "ProducerCore", "RemoteProducer",
           "never_publishable", "producer_limits"]

DEFAULT_MAX_IN_FLIGHT: Final = 8
"""Frames a producer may have sent and not yet seen answered."""


def never_publishable(error: BaseException) -> bool:
    """True for a refusal of a frame that sending it again cannot change: its size.

    ``MessageTooLarge`` (a message over a queue's ``max_message_size``) and
    ``RequestTooLarge`` (the frame over the broker's ``max_request_bytes``); a broken
    connection, a full queue or a closed client are worth a retry.
    """
    return isinstance(error, (MessageTooLarge, RequestTooLarge))


def producer_limits(topic: object, batch_messages: int | None, batch_bytes: int | None,
                    max_in_flight: object, linger: float | None,
                    defaults: tuple[int, int, float]) -> tuple[int, int, float]:
    """A producer's (batch_messages, batch_bytes, linger): None takes the client's.

    Raises:
        InvalidArgument: ``topic`` is not a string, ``batch_messages`` is not an int from
            1 to ``MAX_BATCH_MESSAGES``, ``batch_bytes`` not one from 1 to
            ``MAX_BATCH_BYTES``, ``max_in_flight`` not a positive int, or ``linger`` is
            not a finite number of seconds >= 0.
    """
    if type(topic) is not str:
        raise name_type_error("topic", topic)
    messages = defaults[0] if batch_messages is None else batch_messages
    size = defaults[1] if batch_bytes is None else batch_bytes
    wait = defaults[2] if linger is None else linger
    check_count("batch_messages", messages, maximum=MAX_BATCH_MESSAGES)
    check_count("batch_bytes", size, maximum=MAX_BATCH_BYTES)
    if type(max_in_flight) is not int or max_in_flight < 1:
        raise InvalidArgument(f"max_in_flight={max_in_flight!r} must be an int of 1 or more")
    seconds_to_us("linger", wait, maximum=MAX_DELAY)   # finite, 0 to MAX_DELAY seconds
    return messages, size, float(wait)


class ProducerCore:
    """A producer's state with no I/O: the open frame, frames in flight and kept.

    Args:
        topic: the topic published to.
        batch_messages: messages per frame.
        batch_bytes: body bytes per frame.
        max_in_flight: frames sent and not yet answered at most.
        linger: seconds a frame that is not full waits before it is sent.
        group_id: the FIFO group every message gets, or None.

    Attributes:
        builder: the open frame (its records get ``group_id``).
        in_flight: frames sent, by their request, oldest first.
        queued: full frames waiting for room (asyncio only).
        kept: refused frames (asyncio: and those queued behind them), oldest first.
        published: messages the broker accepted so far.
        refused_frames: frames the broker refused (each kept and sent again by a flush,
            but those refused for their size).
        dropped_frames: frames refused for their size (``never_publishable``) and dropped.
        discarded: messages dropped by ``discard()`` (offered, never published).
    """

    __slots__ = ("batch_bytes", "batch_messages", "builder", "closed", "discarded",
                 "dropped_frames",
                 "in_flight", "kept", "linger", "max_in_flight", "published", "queued",
                 "refused_frames", "topic")

    def __init__(self, topic: str, batch_messages: int, batch_bytes: int,
                 max_in_flight: int, linger: float, group_id: str | None = None) -> None:
        self.topic = topic
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self.max_in_flight = max_in_flight
        self.linger = linger
        self.builder = FrameBuilder(group_id)   # InvalidArgument for a bad group_id
        self.in_flight: dict[Request, bytes] = {}
        self.queued: deque[bytes] = deque()
        self.kept: deque[bytes] = deque()
        self.closed = False
        self.published = self.refused_frames = self.dropped_frames = self.discarded = 0

    def check_open(self) -> None:
        """Raise ``Closed`` once the producer is closed.

        A driver's ``offer()`` (one native call, ``fastfanout._ext.offers.OfferGate``)
        calls it only when ``closed`` or ``kept`` is set; it then appends to ``builder``
        (atomic under the GIL, as is ``take()``: a body lands in exactly one frame even
        while another thread takes the open frame), counts the offer and sends the frame
        once it holds ``batch_messages`` bodies or ``batch_bytes`` bytes.
        """
        if self.closed:
            raise Closed(f"the producer of topic {self.topic!r} is closed")

    def sent(self, request: Request, frame: bytes) -> None:
        """A frame left as ``request``."""
        self.in_flight[request] = frame

    def answered(self, request: Request) -> RemotePublishBatch | FastFanoutError:
        """A frame in flight was answered: its results, or its refusal (the frame kept).

        Two threads may wait for the same oldest answer (the producer's own, and a
        ``Client.close`` flushing it): the second gets the same outcome, counted and kept
        once (it raised ``KeyError``).
        """
        frame = self.in_flight.pop(request, None)
        if request.error is not None:
            if frame is not None:
                self.refused(frame, request.error)
            return request.error
        results = RemotePublishBatch(request.value()[0])
        if frame is not None:
            self.published += len(results)
        return results

    def refused(self, frame: bytes, error: FastFanoutError) -> bool:
        """Keep a frame that was refused (or could not be sent); True if it was kept.

        A frame refused for its size (``never_publishable``) is dropped instead.
        """
        self.refused_frames += 1
        if never_publishable(error):
            self.dropped_frames += 1
            return False
        self.kept.append(frame)
        return True

    def send_kept(self, send: Callable[[bytes], Request]) -> Request:
        """Send the oldest kept frame again (``send``): it is in flight, no longer kept.

        If it cannot be sent for its size (``never_publishable``) it is dropped and the
        error raised; any other error leaves it kept, first.
        """
        try:
            request = send(self.kept[0])
        except FastFanoutError as exc:
            if never_publishable(exc):
                self.kept.popleft()
                self.refused_frames += 1
                self.dropped_frames += 1
            raise
        self.kept.popleft()
        return request

    def discard(self) -> int:
        """Drop the open frame and the frames queued and kept; returns their messages.

        Frames in flight are not touched: the driver waits for their answers first.
        """
        frames = [*self.queued, *self.kept]
        count = len(self.builder) + sum(count_of(frame) for frame in frames)
        if len(self.builder):
            self.builder.take()
        self.queued.clear()
        self.kept.clear()
        self.discarded += count
        return count

    def unanswered(self) -> int:
        """Frames in flight whose answer has not arrived (a snapshot)."""
        return sum(1 for request in list(self.in_flight) if not request.done)

    @property
    def pending(self) -> int:
        """Messages offered and not yet accepted (open, queued, in flight, kept)."""
        frames = [*list(self.in_flight.values()), *list(self.queued), *list(self.kept)]
        return len(self.builder) + sum(count_of(frame) for frame in frames)


class ProducerFace:
    """What both producers show of their ``ProducerCore``.

    Attributes:
        core: the producer's state.
        topic: the topic published to.
        group_id: the FIFO group of every message offered, or None.
    """

    _gate: OfferGate   # the driver's offer(), in C: it counts the offers
    # the driver's hooks (its gate's too): before an offer while closed or keeping
    # refused frames, when a body opens a frame, when the frame is full
    _blocked: Callable[[], None]
    _opened: Callable[[], None]
    _full: Callable[[], None]

    def __init__(self, connection: BlockingDriver | AsyncDriver, core: ProducerCore) -> None:
        self.core = core
        self.topic = core.topic
        self.group_id = core.builder.group_id
        self._rows_offered = 0   # offered by offer_batch (the gate counts offer())
        self._submit = connection.submit
        self._publish_frame = connection.core.publish_frame
        # the connection's state: its limits are those of the broker's latest HELLO
        self._connection_core = connection.core

    def _limit_bodies(self) -> None:
        """Have the gate refuse a body no broker limit lets through, before any copy."""
        self._gate.too_large = self._too_large
        self.limits_changed()

    def limits_changed(self) -> None:
        """Follow the limits of the connection's broker (told at each HELLO).

        The driver calls it after every handshake: a reconnect may meet a broker started
        with other ``max_request_bytes`` / ``max_frame_bytes``, and from then on a body
        is refused (or let through) by those.
        """
        self._gate.max_body = self._connection_core.max_body
        self._gate.max_frame = self._connection_core.frame_room

    def _too_large(self, size: int) -> None:
        """The gate's ``too_large``: a body of ``size`` bytes can never be published."""
        raise body_size_error(size, self._connection_core.limits)

    @property
    def offered(self) -> int:
        """Messages offered so far."""
        return self._gate.offered + self._rows_offered

    @property
    def published(self) -> int:
        """Messages the broker accepted so far."""
        return self.core.published

    @property
    def refused_frames(self) -> int:
        """Frames the broker refused (kept and sent again by a flush; see dropped_frames)."""
        return self.core.refused_frames

    @property
    def dropped_frames(self) -> int:
        """Frames refused for their size and dropped (their error was raised once).

        ``MessageTooLarge`` or ``RequestTooLarge``: their messages are not published.
        """
        return self.core.dropped_frames

    @property
    def pending(self) -> int:
        """Messages offered and not yet accepted (open, queued, in flight, kept)."""
        return self.core.pending

    @property
    def discarded(self) -> int:
        """Messages dropped by ``discard()``: offered, never published."""
        return self.core.discarded

    def _send(self, frame: bytes) -> Request:
        """Send a frame (raising if it cannot be): it is in flight until answered."""
        request = self._submit(self._publish_frame, Opcode.PUBLISH, self.topic, frame)
        self.core.sent(request, frame)
        return request

    def _extend(self, bodies: Any) -> None:
        """``offer_batch``: every row of an array batch, frame by frame, as ``offer``."""
        core = self.core
        if core.kept or core.closed:
            self._blocked()
        builder = core.builder
        start, total = 0, 1
        while start < total:
            opened = not len(builder)
            done, total = builder.extend_rows(bodies, start, core.batch_messages,
                                              core.batch_bytes,
                                              self._connection_core.frame_room)
            self._rows_offered += done - start
            cut = done < total   # the next row would take the frame past the limits
            start = done
            if opened and len(builder):
                self._opened()
            if (cut or len(builder) >= core.batch_messages
                    or builder.nbytes >= core.batch_bytes):
                self._full()


class RemoteProducer(BlockingOnly, ProducerFace,
                     what="a RemoteProducer (what a blocking client's producer() returns)",
                     await_instead="use it as it is, or in 'with client.producer(topic) as "
                                   "producer:'"):
    """Offers messages to one topic of a broker; made by ``Client.producer(topic)``.

    Use from one producing thread; other threads may use the same client meanwhile.
    """

    def __init__(self, connection: BlockingDriver, core: ProducerCore) -> None:
        super().__init__(connection, core)
        self._connection = connection
        self._opened_at = 0.0     # when the open frame got its first message
        self._flushing = False    # the producing thread flushes: no linger sends
        # offer() is one native call, back in Python only at a frame's edges
        self._gate = OfferGate(core.builder, core.batch_messages, core.batch_bytes,
                               core.kept, self._blocked, self._opened, self._full)
        self._limit_bodies()
        self.offer = self._gate.offer   # type: ignore[method-assign]

    def offer(self, body: Body) -> None:
        """Add a message; it leaves with its frame (when full, or at the next flush).

        Raises:
            Closed: the producer was closed.
            InvalidArgument: ``body`` is not bytes-like.
            MessageTooLarge: ``body`` is over 256 MiB, more than any queue takes; it was
                not added (nor copied).
            RequestTooLarge: ``body`` is over the broker's ``max_request_bytes`` (or
                ``max_frame_bytes``); it was not added (nor copied).
            FastFanoutError: the broker refused a frame of this producer (it is kept). The
                body was added unless the refusal came from the flush of kept frames
                that precedes it.
        """
        self._gate.offer(body)   # what the instance's ``offer`` is: one native call

    def _blocked(self) -> None:
        """Before an offer while the producer is closed (raises) or keeps refused frames."""
        self.core.check_open()
        self.flush()

    def _opened(self) -> None:
        """A body opened a new frame: the background thread sends it after linger."""
        self._opened_at = self._connection.start_ticking(self, self.core.linger)

    def offer_batch(self, bodies: Any) -> None:
        """Add every row of an array batch; full frames leave as ``offer`` fills them.

        Args:
            bodies: a 2-D (``uint8``, or any C-contiguous rows) or structured numpy array
                (one row = one body), or a ``(buffer, offsets)`` pair (body ``i`` is
                ``buffer[offsets[i]:offsets[i + 1]]``); copied natively into frames of
                ``batch_messages`` / ``batch_bytes``, no Python object per message.

        Raises:
            Closed: the producer was closed.
            InvalidArgument: ``bodies`` cannot be read as an array batch (nothing added).
            FastFanoutError: the broker refused a frame of this producer (as ``offer``).
        """
        self._extend(bodies)

    def _full(self) -> None:
        """Pipeline the open frame, first waiting for the oldest answer if too many are out."""
        core, connection = self.core, self._connection
        if len(core.in_flight) >= core.max_in_flight:
            answer = self._wait_oldest()
            if isinstance(answer, FastFanoutError):
                with connection.held():
                    if len(core.builder):
                        core.kept.append(core.builder.take())
                raise answer
        with connection.held():
            if len(core.builder):   # else the background thread sent it meanwhile
                error = self._send_taken()
                if error is not None:
                    raise error

    def _send_taken(self) -> FastFanoutError | None:
        """Take the open frame and send it (client lock held); a frame not sent is kept."""
        frame = self.core.builder.take()
        try:
            self._send(frame)
        except FastFanoutError as exc:
            self.core.refused(frame, exc)
            return exc
        return None

    def _wait_oldest(self) -> RemotePublishBatch | FastFanoutError:
        """Wait for the oldest frame in flight: its results, or its refusal (kept)."""
        connection = self._connection
        # list() copies the keys in one step: the connection's linger thread may send a
        # frame (adding to in_flight) between an iter() and its next()
        request = list(self.core.in_flight)[0]  # noqa: RUF015 (atomic copy, see above)
        deadline = connection.close_deadline   # its client closes: wait no longer
        try:
            if deadline is None:
                connection.publish_results(request)
            else:
                connection.publish_results(request, max(0.0, deadline - time.monotonic()))
        except CallTimeout:   # only with a deadline: the close's timeout has ended
            if not request.done:
                request.fail(BrokenConnection(
                    "the broker did not answer the producer's frames within close's "
                    "timeout; their messages may not be published"))
        except FastFanoutError as exc:
            if not request.done:
                request.fail(exc)
        with connection.held():
            return self.core.answered(request)

    def flush(self) -> RemotePublishBatch | None:
        """Send the open frame and wait until every frame is answered.

        Kept (refused) frames are sent again first, oldest first. Returns the results of
        the last frame answered by this call, or None if there was nothing to send.

        Raises:
            Closed: the producer (or its client) was closed.
            FastFanoutError: the first refusal met; the refused frames are kept.
        """
        core, connection = self.core, self._connection
        core.check_open()
        last: RemotePublishBatch | None = None
        error: FastFanoutError | None = None
        self._flushing = True
        try:
            while True:
                while core.in_flight:
                    answer = self._wait_oldest()
                    if isinstance(answer, FastFanoutError):
                        error = error or answer
                    else:
                        last = answer
                with connection.held():   # no linger send between these lines and after
                    if len(core.builder):
                        core.kept.append(core.builder.take())   # sent below, behind them
                    if not core.in_flight:
                        break
            if error is not None:
                raise error
            while core.kept:
                core.send_kept(self._send)
                answer = self._wait_oldest()
                if isinstance(answer, FastFanoutError):
                    if not never_publishable(answer):
                        core.kept.rotate(1)   # the refused frame stays first
                    raise answer
                last = answer
            return last
        finally:
            self._flushing = False

    def linger_send(self, now: float) -> None:
        """Send the open frame if it is ``linger`` old (the client's background thread).

        Called with the client's lock held. Never waits: skipped while the producing
        thread flushes, while refused frames are kept, or while ``max_in_flight`` frames
        are unanswered (answers that have arrived are read first).
        """
        core = self.core
        if (self._flushing or core.closed or core.kept or not len(core.builder)
                or now - self._opened_at < core.linger):
            return
        if core.unanswered() >= core.max_in_flight:
            self._connection.pump(0)   # dispatch the answers that have arrived
            if core.unanswered() >= core.max_in_flight:
                return
        self._send_taken()

    def can_leave(self) -> bool:
        """The open frame could leave now: fewer than ``max_in_flight`` are unanswered.

        Else its own thread sends it once an answer comes. Read without the lock: a hint.
        """
        return self.core.unanswered() < self.core.max_in_flight

    def linger_due(self) -> float | None:
        """When the open frame must leave by ``linger`` (``time.monotonic()`` seconds).

        None when ``linger_send`` has nothing to send (for the client's background thread).
        """
        core = self.core
        if self._flushing or core.closed or core.kept or not len(core.builder):
            return None
        return self._opened_at + core.linger

    def close(self) -> None:
        """Flush what is left, then refuse further offers.

        Raises:
            FastFanoutError: the flush was refused (as ``flush``); the producer stays
                open with its kept frames, for a later ``close()`` — or ``discard()``
                them first when they can never be published (their topic was deleted).
        """
        if not self.core.closed:
            self.flush()
            self.core.closed = self._gate.closed = True

    def discard(self) -> int:
        """Drop every message offered and not yet accepted; returns how many.

        The way out when a flush is refused for good (the topic was deleted, and the
        producer cannot close): the answers of the frames in flight are waited for
        first (accepted ones are published; refused ones are dropped with the rest),
        then the open frame and the refused frames are dropped, counted in
        ``discarded``, and not published. Offers made after it are sent as usual.
        """
        core, connection = self.core, self._connection
        self._flushing = True
        try:
            while core.in_flight:
                self._wait_oldest()
            with connection.held():
                return core.discard()
        finally:
            self._flushing = False

    def __enter__(self) -> RemoteProducer:
        self.core.check_open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()



class AsyncProducer(ProducerFace):
    """Offers messages to one topic; made by ``AsyncClient.producer(topic)``.

    ``async with client.producer(topic) as producer:`` closes (so flushes) it at the end.
    Use from one task at a time.
    """

    def __init__(self, connection: AsyncDriver, core: ProducerCore) -> None:
        super().__init__(connection, core)
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self._frames_opened = 0   # names the open frame for its linger timer
        self._refusal: FastFanoutError | None = None      # not raised yet
        self._kept_error: FastFanoutError | None = None   # why the kept frames are kept
        self._answered = asyncio.Event()
        self._last: RemotePublishBatch | None = None
        # offer() is one native call, back in Python only at a frame's edges
        self._gate = OfferGate(core.builder, core.batch_messages, core.batch_bytes,
                               core.kept, self._blocked, self._opened, self._full,
                               DONE)
        self._limit_bodies()
        self._gate.home(connection.check_loop)   # an offer from another thread: refused
        self.offer = self._gate.offer   # type: ignore[method-assign]

    def offer(self, body: Body) -> Done:
        """Add a message; it leaves with its frame (when full, or at the next flush).

        A plain call that never waits (``await drain()`` bounds the frames held); it
        returns ``DONE``, so ``await producer.offer(body)`` works as well.

        Raises:
            Closed: the producer was closed.
            InvalidArgument: ``body`` is not bytes or a C-contiguous buffer.
            MessageTooLarge: ``body`` is over 256 MiB (any queue's limit); not added.
            RequestTooLarge: ``body`` is over the broker's request limits; not added.
            FastFanoutError: a refused frame is kept (its refusal); nothing was added.
            WrongEventLoop: called from another thread than its event loop's; nothing
                was added.
        """
        result: Done = self._gate.offer(body)   # what the instance's ``offer`` is
        return result

    def _blocked(self) -> None:
        """Before an offer while the producer is closed or keeps refused frames: raise."""
        self.core.check_open()
        self._refusal = None   # raised now
        assert self._kept_error is not None
        raise self._kept_error

    def _opened(self) -> None:
        """A body opened a new frame: it leaves after linger if it does not fill first."""
        self._frames_opened += 1
        self._loop.call_later(self.core.linger, self._linger_send, self._frames_opened)

    def offer_batch(self, bodies: Any) -> Done:
        """Add every row of an array batch; full frames leave as ``offer`` fills them.

        Args:
            bodies: a 2-D (``uint8``, or any C-contiguous rows) or structured numpy array
                (one row = one body), or a ``(buffer, offsets)`` pair (body ``i`` is
                ``buffer[offsets[i]:offsets[i + 1]]``); copied natively into frames, no
                Python object per message.

        Returns:
            ``DONE`` (a plain call; awaiting it works too).

        Raises:
            Closed: the producer was closed.
            InvalidArgument: ``bodies`` cannot be read as an array batch (nothing added).
            FastFanoutError: a refused frame is kept (its refusal); nothing was added.
            WrongEventLoop: called from another thread than its event loop's.
        """
        self._gate.check_home()
        self._extend(bodies)
        return DONE

    def _linger_send(self, frame_number: int) -> None:
        """The open frame is ``linger`` old (if it is still the one the timer was for)."""
        if frame_number == self._frames_opened and len(self.core.builder):
            self._full()

    def _full(self) -> None:
        """Queue the open frame (behind kept frames, if any) and send what can go."""
        core = self.core
        (core.kept if core.kept else core.queued).append(core.builder.take())
        self._pump()

    def _pump(self) -> None:
        """Send queued frames while there is room (none while frames are kept)."""
        core = self.core
        while core.queued and not core.kept and len(core.in_flight) < core.max_in_flight:
            frame = core.queued.popleft()
            try:
                request = self._send(frame)
            except FastFanoutError as exc:   # the client is closed or broken, or too large
                if core.refused(frame, exc):
                    self._keep_queued(exc)
                elif self._refusal is None:
                    self._refusal = exc   # dropped: raised once, by drain() or flush()
            else:
                request.watch(functools.partial(self._answer, request))

    def _answer(self, request: Request) -> None:
        answer = self.core.answered(request)
        if isinstance(answer, FastFanoutError):
            if not never_publishable(answer):
                self._keep_queued(answer)
            elif self._refusal is None:
                self._refusal = answer   # dropped: raised once, by drain() or flush()
        else:
            self._last = answer
        self._answered.set()
        self._pump()

    def _keep_queued(self, error: FastFanoutError) -> None:
        """A frame was refused (and kept): keep every frame not yet sent behind it."""
        core = self.core
        core.kept.extend(core.queued)
        core.queued.clear()
        self._kept_error = error
        if self._refusal is None:
            self._refusal = error

    async def _wait_answer(self) -> None:
        """Wait for the next answer (the client's timeout, plus the broker's hold_timeout)."""
        connection = self._connection
        self._answered.clear()
        async with connection.deadline(connection.core.hold_timeout):
            await self._answered.wait()

    def _raise_refusal(self) -> None:
        error, self._refusal = self._refusal, None
        if error is not None:
            raise error

    async def drain(self) -> None:
        """Wait until every full frame has been sent (at most ``max_in_flight`` unanswered).

        Raises:
            FastFanoutError: a frame was refused (it is kept for ``flush()``).
            WrongEventLoop: called from another event loop than its client's.
        """
        self._connection.check_loop()
        while self.core.queued and not self.core.kept:
            await self._wait_answer()
        self._raise_refusal()

    async def flush(self) -> RemotePublishBatch | None:
        """Send the open frame and wait for every answer; kept frames are sent again first.

        Returns the results of the last frame answered since the previous flush, or None.

        Raises:
            Closed: the producer (or its client) was closed.
            FastFanoutError: the first refusal met; refused frames are kept.
            WrongEventLoop: called from another event loop than its client's (nothing
                is sent: until 2026-12-05 the open frame was, refused, and kept).
        """
        core, connection = self.core, self._connection
        core.check_open()
        connection.check_loop()
        if len(core.builder):
            self._full()
        while core.in_flight or (core.queued and not core.kept):
            await self._wait_answer()
        self._raise_refusal()
        while core.kept:
            request = core.send_kept(self._send)
            try:
                await connection.publish_results(request)
            except FastFanoutError as exc:
                if not request.done:   # timed out: count it as refused
                    request.fail(exc)
            except BaseException:
                # cancelled (asyncio.timeout, a cancelled task): the answer still settles
                # the frame, as _pump's frames are. Until 2026-12-05 it stayed in flight
                # for good: the next flush() or close() waited for it until the client's
                # timeout, and a refusal of it was never raised nor the frame kept.
                request.watch(functools.partial(self._answer_kept, request))
                raise
            answer = self._kept_answer(request)
            if isinstance(answer, FastFanoutError):
                raise answer
        last, self._last = self._last, None
        return last

    def _kept_answer(self, request: Request) -> RemotePublishBatch | FastFanoutError:
        """A kept frame sent again was answered: kept first again if refused."""
        answer = self.core.answered(request)
        if isinstance(answer, FastFanoutError):
            if not never_publishable(answer):
                self.core.kept.rotate(1)   # the refused frame stays first
                self._kept_error = answer
        else:
            self._last = answer
        return answer

    def _answer_kept(self, request: Request) -> None:
        """The answer to a kept frame whose flush() was cancelled: raised by the next."""
        answer = self._kept_answer(request)
        if isinstance(answer, FastFanoutError) and self._refusal is None:
            self._refusal = answer
        self._answered.set()

    async def close(self) -> None:
        """Flush what is left, then refuse further offers.

        Raises:
            FastFanoutError: the flush was refused (as ``flush``); the producer stays
                open with its kept frames, for a later ``close()`` — or ``discard()``
                them first when they can never be published (their topic was deleted).
        """
        if not self.core.closed:
            await self.flush()
            self.core.closed = self._gate.closed = True

    async def discard(self) -> int:
        """Drop every message offered and not yet accepted; returns how many.

        As the blocking producer's ``discard``: the frames not sent yet are dropped at
        once, the answers of those in flight are waited for (accepted ones are
        published; refused ones are dropped with the rest), and the messages dropped
        are counted in ``discarded`` and not published.

        Raises:
            WrongEventLoop: called from another event loop than its client's.
        """
        core = self.core
        self._connection.check_loop()
        dropped = core.discard()   # nothing queued is sent while the answers come
        while core.in_flight:
            await self._wait_answer()
        self._refusal = self._kept_error = None
        return dropped + core.discard()

    async def __aenter__(self) -> AsyncProducer:
        self.core.check_open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.close()
