"""The embedded broker's push path: ``Broker.consume`` yields messages as they become visible.

An embedded ``Broker`` has no connection to push over, so its consumer is the receiving
side of one: it leases with ``Broker.receive(wait=..., owner=...)``, which sleeps on the
broker's condition and is woken by every publish, send, nack, ack and timer due time —
no polling loop. The leases carry the consumer's owner tag (``ServerPort.open_owner``,
the broker's internal port, which ``Broker.consume`` hands it), so
the broker counts the unsettled messages it holds however they are settled (the
message's ``ack()``, ``broker.ack(receipt)``, a nack, its lease ending) and never leases
it more than ``prefetch``: the same credit a broker server's push consumer has
(RabbitMQ's ``basic.qos``).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Protocol, cast

from fastfanout._ext.message import Message
from fastfanout.arrays import MessageBatch
from fastfanout.errors import Closed, FastFanoutError, InvalidArgument
from fastfanout.records import Attributes, Body
from fastfanout.settings import MAX_DELAY, check_wait, finite, seconds_to_us

__all__ = ["MAX_PREFETCH", "BrokerBatch", "BrokerConsumer"]

MAX_PREFETCH = 1_000_000
"""Most unsettled messages one consumer may hold (the store's owner limit)."""
_LONGEST_WAIT = 20.0   # seconds: a receive's own limit (settings.MAX_WAIT)


class _Receiver(Protocol):
    @property
    def closed(self) -> bool: ...

    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None, owner: int = 0
                ) -> list[Message]: ...

    def ack(self, receipt: int, *, session: int = 0) -> None: ...

    def nack(self, receipt: int, *, delay: float | None = None, session: int = 0) -> None: ...

    def extend(self, receipt: int, seconds: float, *, session: int = 0) -> None: ...

    def term(self, receipt: int, *, session: int = 0) -> None: ...

    def reply(self, address: str, body: Body, *,
              attributes: Attributes | None = None) -> None: ...


class _Owners(Protocol):
    def open_owner(self, session: int | None = None, prefetch: int = 0) -> int: ...

    def close_owner(self, owner: int) -> None: ...

    def receive_frame(self, queue: str, max_messages: int = 1,
                      visibility_timeout: float | None = None, *, wait: float = 0.0,
                      owner: int = 0) -> tuple[bytes, int]: ...

    def ack_packed(self, receipts: bytes | bytearray | memoryview, *, session: int = 0
                   ) -> int: ...

    def nack_packed(self, receipts: bytes | bytearray | memoryview, delay: float | None, *,
                    session: int = 0) -> int: ...

    def term_packed(self, receipts: bytes | bytearray | memoryview, *, session: int = 0
                    ) -> int: ...


class BrokerBatch(MessageBatch):
    """One batch of an embedded consumer (``BrokerConsumer.next_batch``).

    A sequence of messages built only when indexed or iterated (``RemoteMessage``:
    the fields and settle calls of ``Message``), with numpy views of the delivery frame
    (``ids``, ``receipts``, ``bodies``, ``as_array``: ``fastfanout.arrays``).
    ``ack()`` acks the messages not settled on their own, all or none (raising
    ``StaleReceipt``); ``nack()`` and ``term()`` settle them so instead.

    Args:
        frame: the delivery frame (``ServerPort.receive_frame``).
        broker: the broker the leases are of (its messages settle through it).
        port: the broker's server port (packed acks).
        queue: the queue consumed.
    """

    def __init__(self, frame: bytes, broker: _Receiver, port: _Owners, queue: str) -> None:
        super().__init__(frame, broker, self, queue)
        self._port = port
        self._broker = broker

    def _check_open(self) -> None:
        # before the batch is marked settled: a settle refused because the broker is
        # closed must leave the batch as it was (until 2026-12-05 the refused call marked
        # it settled, and every later ack, nack or term did nothing, raising nothing)
        if self._broker.closed:
            raise Closed("the broker is closed")

    @property
    def closed(self) -> bool:
        """Never: a message's ``ack()`` goes straight to the broker (``Settler``)."""
        return False

    def defer_settle(self, receipts: bytes) -> None:
        """A message's ``ack()`` (``Settler``): done at once, in process."""
        self._port.ack_packed(receipts)

    def ack(self) -> None:
        """Ack every message of the batch not settled on its own: all, or none.

        Raises:
            StaleReceipt: a lease ended before (nothing was acked).
        """
        self._check_open()
        receipts = self._unsettled()
        if receipts is not None:
            self._port.ack_packed(receipts)

    def nack(self, *, delay: float | None = None) -> None:
        """Nack every message of the batch not settled on its own: all, or none.

        Args:
            delay: seconds before redelivery (0 to 31,536,000); None: the queue's
                redelivery backoff (visible at once without one).

        Raises:
            InvalidArgument: ``delay`` is out of range (nothing was settled, the batch
                still may be).
            StaleReceipt: a lease ended before (nothing was nacked).
        """
        if delay is not None:
            seconds_to_us("delay", delay, maximum=MAX_DELAY)
        self._check_open()
        receipts = self._unsettled()
        if receipts is not None:
            self._port.nack_packed(receipts, delay)

    def term(self) -> None:
        """Dead-letter every message of the batch not settled on its own: all, or none.

        Raises:
            StaleReceipt: a lease ended before (nothing was changed).
        """
        self._check_open()
        receipts = self._unsettled()
        if receipts is not None:
            self._port.term_packed(receipts)


class BrokerConsumer(Iterator[Message]):
    """Messages of one queue of an embedded broker, as they become visible.

    Made by ``Broker.consume``; iterate it for messages, or call ``next_batch()``.

    Attributes:
        queue: the queue consumed.
        prefetch: most unsettled messages the consumer holds.
        timeout: seconds the iteration waits for a message before it ends (and the
            consumer is cancelled); None: forever.
    """

    def __init__(self, broker: _Receiver, owners: _Owners, queue: str, prefetch: int,
                 visibility_timeout: float | None, timeout: float | None) -> None:
        if type(prefetch) is not int or not 1 <= prefetch <= MAX_PREFETCH:
            raise InvalidArgument(f"prefetch={prefetch!r} must be an int from 1 to "
                                  f"{MAX_PREFETCH:,}")
        if timeout is not None and (
                not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                or not finite(timeout) or timeout <= 0):
            raise InvalidArgument(f"timeout={timeout!r} must be finite seconds > 0, or None")
        self.queue = queue
        self.prefetch = prefetch
        self.timeout = None if timeout is None else float(timeout)
        self._broker = broker
        self._owners = owners
        self._visibility_timeout = visibility_timeout
        self._owner = owners.open_owner(None, prefetch)
        self._messages: deque[Message] = deque()
        self.closed = False

    def next_batch(self, timeout: float | None = None) -> BrokerBatch | None:
        """The messages visible now, up to the credit left, waiting for one.

        Args:
            timeout: seconds to wait for a message (None: forever).

        Returns:
            The leased messages as a ``BrokerBatch`` (a sequence of messages with numpy
            views of its frame), or None when none came within ``timeout`` or the
            consumer is cancelled.

        Raises:
            InvalidArgument: ``timeout`` is not a number of seconds (or None).
        """
        taken = self._take(timeout, True)
        if taken is None:
            return None
        return BrokerBatch(cast("tuple[bytes, int]", taken)[0], self._broker, self._owners,
                           self.queue)

    def next_messages(self, timeout: float | None = None) -> list[Message] | None:
        """``next_batch`` as a list of ``Message`` (made natively, as ``receive`` does).

        Returns:
            The leased messages, or None when none came within ``timeout`` or the
            consumer is cancelled.
        """
        return cast("list[Message] | None", self._take(timeout, False))

    def _take(self, timeout: float | None, frame: bool
              ) -> tuple[bytes, int] | list[Message] | None:
        """Lease what is visible (a frame, or messages), waiting up to ``timeout``."""
        check_wait("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        max_messages = min(self.prefetch, 10_000)
        while not self.closed:
            wait = _LONGEST_WAIT if deadline is None else min(
                _LONGEST_WAIT, deadline - time.monotonic())
            if wait <= 0:
                return None
            if frame:
                taken = self._owners.receive_frame(
                    self.queue, max_messages, self._visibility_timeout, wait=wait,
                    owner=self._owner)
                if taken[1]:
                    return taken
                continue
            messages = self._broker.receive(
                self.queue, max_messages=max_messages, wait=wait,
                visibility_timeout=self._visibility_timeout, owner=self._owner)
            if messages:
                return messages
        return None

    def __next__(self) -> Message:
        if not self._messages:
            batch = self.next_messages(self.timeout)
            if batch is None:
                self.cancel()
                raise StopIteration
            self._messages.extend(batch)
        return self._messages.popleft()

    def cancel(self) -> None:
        """Stop consuming; what was leased and not yet yielded goes back to the queue.

        Messages already yielded (or in a batch from ``next_batch``) stay leased until
        settled. Those the iteration took from the broker and had not yielded yet are
        released (nack, no delay: visible again at once, the delivery counted in their
        ``receive_count``), as the clients' consumers do (docs/semantics.md); take them
        with ``drain()`` first to keep them. A consumer dropped uncancelled (a ``for``
        loop left by ``break``) is cancelled so.
        """
        if self.closed:
            return
        self.closed = True
        try:
            while self._messages:
                message = self._messages.popleft()
                with contextlib.suppress(FastFanoutError):   # its lease ended meanwhile
                    message.nack()
        finally:
            self._owners.close_owner(self._owner)

    def drain(self) -> list[Message]:
        """The messages received and not yet yielded (they are leased); empties the buffer.

        They are then the caller's to settle (``cancel`` would release them).
        """
        messages = list(self._messages)
        self._messages.clear()
        return messages

    def __del__(self) -> None:
        if getattr(self, "closed", True):
            return
        with contextlib.suppress(FastFanoutError):   # a broker closed meanwhile
            self.cancel()

    def __enter__(self) -> BrokerConsumer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.cancel()

