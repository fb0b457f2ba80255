"""The asyncio producer: synchronous offers, awaited ``drain()`` and ``flush()``.

Design
------
Prior art: ``asyncio.StreamWriter`` (``write()`` buffers at once, ``await drain()``
waits for room) and the blocking client's ``fastfanout.client.producers``, whose frames,
limits and refusal rules this follows.

``offer()`` cannot wait in asyncio without making every message a coroutine, so it only
appends the body to a frame being built natively; a full frame is sent at once when
fewer than ``max_in_flight`` frames are unanswered, and queued otherwise (an answer sends
the next); a frame that does not fill leaves ``linger`` seconds after its first message
(0 by default: when the event-loop iteration ends). ``await drain()`` waits until no
frame is queued — call it now and then in a
long loop of offers to bound the memory held — and ``await flush()`` sends the open frame
and waits for every answer.

Invariants:

- Nothing is lost: a refused frame is kept with every frame queued behind it, the
  refusal is raised by the next ``drain()``/``flush()``/``offer()``, and ``flush()`` sends
  the kept frames again, oldest first. While frames are kept, ``offer()`` raises the
  refusal and adds nothing (await ``flush()`` to retry).
- ``await client.close()`` closes the producers still open first (flushing them) and
  raises a refusal met there, after closing.
- Order as in the blocking producer: frames leave in offer order; frames already in
  flight behind a refused one are not held back (``max_in_flight=1`` keeps strict
  order).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from types import TracebackType

from fastfanout._ext.wire import FrameBuilder, count_of
from fastfanout.client.core import Request
from fastfanout.client.driver import AsyncDriver
from fastfanout.client.messages import DONE, Done, RemotePublishBatch
from fastfanout.errors import Closed, FastFanoutError
from fastfanout.records import Body
from fastfanout.wire.protocol import Opcode

__all__ = ["AsyncProducer"]


class AsyncProducer:
    """Offers messages to one topic; made by ``AsyncClient.producer(topic)``.

    ``async with client.producer(topic) as producer:`` closes (so flushes) it at the end.

    Use from one task at a time.

    Attributes:
        topic: the topic published to.
        offered: messages offered so far.
        published: messages the broker accepted so far.
        refused_frames: frames the broker refused (each kept and sent again by a flush).
    """

    def __init__(self, client: AsyncDriver, topic: str, batch_messages: int,
                 batch_bytes: int, max_in_flight: int, linger: float) -> None:
        self.topic = topic
        self._linger = linger
        self._loop = asyncio.get_running_loop()
        self._frames_opened = 0   # names the open frame for its linger timer
        self._client = client
        self._batch_messages = batch_messages
        self._batch_bytes = batch_bytes
        self._max_in_flight = max_in_flight
        self._builder = FrameBuilder()
        self._queued: deque[bytes] = deque()   # full frames waiting for room
        self._in_flight: dict[int, bytes] = {}   # by send order
        self._next = 0
        self._kept: deque[bytes] = deque()     # refused frames and those behind them
        self._refusal: FastFanoutError | None = None   # not raised yet
        self._kept_error: FastFanoutError | None = None   # why the kept frames are kept
        self._answered = asyncio.Event()
        self._last: RemotePublishBatch | None = None
        self._closed = False
        self.offered = 0
        self.published = 0
        self.refused_frames = 0

    def offer(self, body: Body) -> Done:
        """Add a message; it leaves with its frame (when full, or at the next flush).

        A plain call that never waits (``await drain()`` bounds the frames held); it
        returns ``DONE``, so ``await producer.offer(body)`` works as well.

        Raises:
            Closed: the producer was closed.
            InvalidArgument: ``body`` is not bytes or a C-contiguous buffer.
            FastFanoutError: a refused frame is kept (its refusal); nothing was added.
        """
        if self._closed:
            raise Closed(f"the producer of topic {self.topic!r} is closed")
        if self._kept:
            self._refusal = None   # raised now
            assert self._kept_error is not None
            raise self._kept_error
        index = self._builder.append_body(body)
        self.offered += 1
        if index == 0:   # a new frame: it leaves after linger if it does not fill first
            self._frames_opened += 1
            self._loop.call_later(self._linger, self._linger_send, self._frames_opened)
        if index + 1 >= self._batch_messages or self._builder.nbytes >= self._batch_bytes:
            self._close_frame()
        return DONE

    def _linger_send(self, frame_number: int) -> None:
        """The open frame is ``linger`` old (if it is still the one the timer was for)."""
        if frame_number == self._frames_opened and len(self._builder) and not self._closed:
            self._close_frame()

    def _close_frame(self) -> None:
        """Queue the open frame (behind kept frames, if any) and send what can go."""
        (self._kept if self._kept else self._queued).append(self._builder.take())
        self._pump()

    async def drain(self) -> None:
        """Wait until every full frame has been sent (at most ``max_in_flight`` unanswered).

        Raises:
            FastFanoutError: a frame was refused (it is kept for ``flush()``).
        """
        while self._queued and not self._kept:
            await self._wait_answer()
        self._raise_refusal()

    async def flush(self) -> RemotePublishBatch | None:
        """Send the open frame and wait for every answer; kept frames are sent again first.

        Returns the results of the last frame answered since the previous flush, or None.

        Raises:
            FastFanoutError: the first refusal met; refused frames are kept.
        """
        if len(self._builder):
            self._close_frame()
        while self._in_flight or (self._queued and not self._kept):
            await self._wait_answer()
        self._raise_refusal()
        while self._kept:
            try:
                client = self._client
                results = await client.publish_results(client.submit(
                    client.core.publish_frame, Opcode.PUBLISH, self.topic, self._kept[0]))
            except FastFanoutError as exc:
                self.refused_frames += 1
                self._kept_error = exc
                raise
            self._kept.popleft()
            self.published += len(results)
            self._last = results
        last, self._last = self._last, None
        return last

    @property
    def pending(self) -> int:
        """Messages offered and not yet accepted (open, queued, in flight, kept)."""
        frames = [*self._queued, *self._in_flight.values(), *self._kept]
        return len(self._builder) + sum(count_of(frame) for frame in frames)

    def _pump(self) -> None:
        """Send queued frames while there is room (none while frames are kept)."""
        while self._queued and not self._kept and len(self._in_flight) < self._max_in_flight:
            frame = self._queued.popleft()
            key = self._next
            self._next += 1
            self._in_flight[key] = frame
            client = self._client
            try:
                request = client.submit(client.core.publish_frame, Opcode.PUBLISH,
                                        self.topic, frame)
            except FastFanoutError as exc:   # the client is closed or broken
                del self._in_flight[key]
                self._refused(frame, exc)
            else:
                request.watch(functools.partial(self._answer, key, request))

    def _answer(self, key: int, request: Request) -> None:
        frame = self._in_flight.pop(key)
        if request.error is None:
            results = RemotePublishBatch(request.value()[0])
            self.published += len(results)
            self._last = results
        else:
            self._refused(frame, request.error)
        self._answered.set()
        self._pump()

    def _refused(self, frame: bytes, error: FastFanoutError) -> None:
        """Keep a refused frame and, behind it, every frame not yet sent."""
        self.refused_frames += 1
        self._kept.append(frame)
        self._kept.extend(self._queued)
        self._queued.clear()
        self._kept_error = error
        if self._refusal is None:
            self._refusal = error

    async def _wait_answer(self) -> None:
        """Wait for the next answer (the client's timeout, plus the broker's hold_timeout)."""
        client = self._client
        self._answered.clear()
        async with client.deadline(client.core.hold_timeout):
            await self._answered.wait()

    def _raise_refusal(self) -> None:
        """Raise the refusal not raised yet."""
        error, self._refusal = self._refusal, None
        if error is not None:
            raise error

    async def close(self) -> None:
        """Flush what is left, then refuse further offers."""
        if not self._closed:
            await self.flush()
            self._closed = True

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.close()
