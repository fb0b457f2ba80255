"""An embedded broker's inbox: where the replies to its own requests arrive.

``Broker.request`` opens a number in the inbox, publishes, and waits on it;
``Broker.reply`` (or a server handing on a client's reply) delivers a reply frame to
that number. The first reply wins; one for a number nobody waits on any more (its
request timed out, or was answered) is dropped and counted, as in NATS. The inbox has
its own lock and condition: a requester waits without holding the broker's lock.
See ``fastfanout.semantics.replies`` for the addresses and the frames.
"""

from __future__ import annotations

import threading
import time

from fastfanout.errors import Closed
from fastfanout.semantics.replies import new_inbox
from fastfanout.stats import ReplyStats

__all__ = ["Inbox"]

_WAITING = b""   # a number opened and not answered yet (a reply frame is never empty)


class Inbox:
    """The replies to one embedded broker's requests.

    Attributes:
        name: the inbox's name (``_INBOX.`` and 16 random hex digits).
    """

    def __init__(self) -> None:
        self.name = new_inbox()
        self._condition = threading.Condition(threading.Lock())
        self._waiting: dict[int, bytes] = {}
        self._next = 1
        self._closed = False
        self._requests = self._replies = self._dropped = 0

    def open(self) -> int:
        """A new request number, waited on from now (until ``take`` or ``forget``)."""
        with self._condition:
            if self._closed:
                raise Closed("the broker is closed")
            number = self._next
            self._next += 1
            self._waiting[number] = _WAITING
            return number

    def published(self) -> None:
        """Count a request published (whether it reached a queue or not)."""
        with self._condition:
            self._requests += 1

    def take(self, number: int, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` seconds for the reply to ``number``; None if none came.

        The number is forgotten either way: a later reply to it is dropped.

        Raises:
            Closed: the broker was closed while waiting.
        """
        deadline = time.monotonic() + timeout
        with self._condition:
            try:
                while not self._waiting.get(number):
                    if self._closed:
                        raise Closed("the broker was closed while a request waited")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._condition.wait(left)
                return self._waiting[number]
            finally:
                self._waiting.pop(number, None)

    def forget(self, number: int) -> None:
        """Stop waiting on ``number`` (its request failed before it was sent)."""
        with self._condition:
            self._waiting.pop(number, None)

    def deliver(self, number: int, frame: bytes) -> bool:
        """Hand a reply frame to the request waiting on ``number``.

        False (counted as dropped) when none waits or it has its reply already.
        """
        with self._condition:
            if self._waiting.get(number) != _WAITING:
                self._dropped += 1
                return False
            self._waiting[number] = frame
            self._replies += 1
            self._condition.notify_all()
            return True

    def drop(self) -> None:
        """Count a reply this broker could not hand to anyone (another inbox's)."""
        with self._condition:
            self._dropped += 1

    def close(self) -> None:
        """Wake every waiting request: it raises ``Closed``."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def stats(self) -> ReplyStats:
        """Its counters."""
        with self._condition:
            return ReplyStats(requests=self._requests, replies=self._replies,
                              replies_dropped=self._dropped)
