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

import math
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Protocol

from fastfanout._ext.message import Message
from fastfanout.errors import InvalidArgument

__all__ = ["MAX_PREFETCH", "BrokerConsumer"]

MAX_PREFETCH = 1_000_000
"""Most unsettled messages one consumer may hold (the store's owner limit)."""
_LONGEST_WAIT = 20.0   # seconds: a receive's own limit (settings.MAX_WAIT)


class _Receiver(Protocol):
    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None, owner: int = 0
                ) -> list[Message]: ...


class _Owners(Protocol):
    def open_owner(self, session: int | None = None, prefetch: int = 0) -> int: ...

    def close_owner(self, owner: int) -> None: ...


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
                or not math.isfinite(timeout) or timeout <= 0):
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

    def next_batch(self, timeout: float | None = None) -> list[Message] | None:
        """The messages visible now, up to the credit left, waiting for one.

        Args:
            timeout: seconds to wait for a message (None: forever).

        Returns:
            The leased messages, or None when none came within ``timeout`` or the
            consumer is cancelled.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        max_messages = min(self.prefetch, 10_000)
        while not self.closed:
            wait = _LONGEST_WAIT if deadline is None else min(
                _LONGEST_WAIT, deadline - time.monotonic())
            if wait <= 0:
                return None
            messages = self._broker.receive(
                self.queue, max_messages=max_messages, wait=wait,
                visibility_timeout=self._visibility_timeout, owner=self._owner)
            if messages:
                return messages
        return None

    def __next__(self) -> Message:
        if not self._messages:
            batch = self.next_batch(self.timeout)
            if batch is None:
                self.cancel()
                raise StopIteration
            self._messages.extend(batch)
        return self._messages.popleft()

    def cancel(self) -> None:
        """Stop consuming; messages already received stay leased until settled.

        The messages taken from the broker and not yet yielded are among them: the
        iteration's buffer is handed back by ``drain()``.
        """
        if not self.closed:
            self.closed = True
            self._owners.close_owner(self._owner)

    def drain(self) -> list[Message]:
        """The messages received and not yet yielded (they are leased); empties the buffer."""
        messages = list(self._messages)
        self._messages.clear()
        return messages

    def __enter__(self) -> BrokerConsumer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.cancel()

