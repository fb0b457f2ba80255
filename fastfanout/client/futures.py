"""The blocking client's futures: pipelined publishes and batches waiting for their answer.

A pipelined publish (``publish_nowait``) joins the batch of its target
(``fastfanout.client.core.PendingBatch``: records written straight into a native frame
builder) and returns a future; when the batch is sent it becomes one request in flight
(``fastfanout.client.core.Request``) shared by all its futures, which read their own
result out of the batch's one reply.

These futures offer the interface of ``concurrent.futures.Future`` (``result``,
``exception``, ``done``, ``add_done_callback``, ``cancel``...) without being one: that
class makes a condition variable per future, and a pipelined publish makes a future per
message. ``PublishFuture`` is native (``fastfanout._ext.offers``, with the same methods
as ``PublishBatchFuture``): the client's ``NowaitGate`` makes one in C per
``publish_nowait`` (or hands one out again that its caller dropped), kept off the cycle
collector until it gets a callback. A future is its batch's ``BatchAnswer`` and its index
there: the batch lists no futures, and sending it gives the one answer its request.

Completion is per request, not per future: the reply (or the error) is read by whichever
thread pumps the client, its background thread included, which looks for replies every
``REPLY_POLL`` seconds while requests are in flight, so a future completes (and its done
callbacks run) without the client being called again. Callbacks run in the thread that
read the reply, with the connection's lock held (which also orders them against
completion): keep them short.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final, Self

from fastfanout._ext.offers import PublishFuture, future_exception, run_callback
from fastfanout.client.core import Request
from fastfanout.client.driver import BlockingDriver
from fastfanout.client.messages import RemotePublishBatch
from fastfanout.errors import FastFanoutError, blocking_misused
from fastfanout.settings import check_wait

__all__ = ["REPLY_POLL", "PublishBatchFuture", "PublishFuture"]

REPLY_POLL: Final = 0.005
"""Seconds between the blocking client's background looks for replies while requests are
in flight: a pipelined publish's future completes within about this long of its reply."""


class PublishBatchFuture:
    """The eventual results of ``publish_batch_nowait`` / ``send_batch_nowait``.

    It offers the ``concurrent.futures.Future`` methods, as the single publish's native
    ``PublishFuture`` does.

    Args:
        client: the blocking driver.
        request: the request carrying the batch (sent).
    """

    __slots__ = ("_client", "_request", "_results")

    def __init__(self, client: BlockingDriver, request: Request) -> None:
        self._client = client
        self._request = request
        self._results: RemotePublishBatch | None = None

    def result(self, timeout: float | None = None) -> RemotePublishBatch:
        """Wait for the broker's answer and return the batch's results.

        Args:
            timeout: seconds to wait at most (default: the client's timeout, past which
                the connection counts as broken).

        Raises:
            InvalidArgument: ``timeout`` is not seconds (an int or float that is not NaN)
                or None; nothing is waited for.
            CallTimeout: ``timeout`` passed unanswered; the future and the connection
                are left alone (it may still complete: wait again).
            FastFanoutError: the error of the batch (nothing of it was enqueued).
        """
        check_wait("timeout", timeout)
        if self._results is None:
            self._results = self._client.publish_results(self._request, timeout)
        return self._results

    def done(self) -> bool:
        """True once the broker answered (or the request failed)."""
        return self._request.done

    if not TYPE_CHECKING:   # type checkers keep reporting the await themselves
        def __await__(self):
            raise blocking_misused(
                "a PublishBatchFuture (what the blocking client's publish_batch_nowait "
                "or send_batch_nowait returns)", "awaited", "call its .result()")

    def running(self) -> bool:
        """True while the request is on its way or being answered."""
        return not self._request.done

    def cancel(self) -> bool:
        """Always False: a publish cannot be taken back (``concurrent.futures`` face)."""
        return False

    def cancelled(self) -> bool:
        """Always False (see ``cancel``)."""
        return False

    def exception(self, timeout: float | None = None) -> FastFanoutError | None:
        """Wait for the answer like ``result`` and return its error (None: it succeeded).

        Args:
            timeout: seconds to wait at most (default: the client's timeout, past which
                the connection counts as broken and ``BrokenConnection`` is returned).

        Raises:
            InvalidArgument: ``timeout`` is not seconds (an int or float that is not NaN)
                or None (raised, not returned: it is not the publish's error).
            CallTimeout: ``timeout`` passed unanswered (raised, as ``result``'s).
        """
        error: FastFanoutError | None = future_exception(self, timeout)
        return error

    def add_done_callback(self, callback: Callable[[Self], object]) -> None:
        """Call ``callback(self)`` once the broker answered its batch (at once if it has).

        It runs in the thread that reads the answer (usually the client's background
        thread) with the client's lock held; an exception it raises is logged.
        """
        with self._client.held():
            self._request.watch(partial(run_callback, self, callback))
