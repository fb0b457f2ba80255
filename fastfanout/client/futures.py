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
``publish_nowait``, from a free list, kept off the cycle collector until it gets a
callback.

Completion is per request, not per future: the reply (or the error) is read by whichever
thread pumps the client, its background thread included, which looks for replies every
``REPLY_POLL`` seconds while requests are in flight, so a future completes (and its done
callbacks run) without the client being called again. Callbacks run in the thread that
read the reply, with the connection's lock held (which also orders them against
completion): keep them short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Final, Self

from fastfanout._ext.offers import PublishFuture, bind_futures
from fastfanout.client.core import Request
from fastfanout.client.driver import BlockingDriver
from fastfanout.client.messages import RemotePublishBatch
from fastfanout.errors import FastFanoutError

__all__ = ["REPLY_POLL", "PublishBatchFuture", "PublishFuture", "bind"]

REPLY_POLL: Final = 0.005
"""Seconds between the blocking client's background looks for replies while requests are
in flight: a pipelined publish's future completes within about this long of its reply."""

log = logging.getLogger(__name__)


def _run_callback(future: Any, callback: Callable[[Any], object]) -> None:
    try:
        callback(future)
    except Exception:
        # as concurrent.futures does: a callback's failure is logged, not raised
        log.exception("exception calling callback for %r", future)


def bind(futures: list[PublishFuture], request: Request) -> None:
    """Tie the futures of a batch to the request that carries it (the batch was sent).

    Callbacks added while the futures waited in their batch move to the request (or run
    now if it is done already). Called with the connection's lock held. One C loop
    (``fastfanout._ext.offers.bind_futures``).
    """
    bind_futures(futures, request)


class _PublishFutureBase:
    """A batch's one request and its results, read once (a batch's future).

    The single publish's native ``PublishFuture`` has the same methods.

    Args:
        client: the blocking driver.
        request: the request carrying the batch, or None while the batch is being filled
            (``bind`` sets it when the batch is sent).
    """

    __slots__ = ("_batch_results", "_callbacks", "_client", "_request")

    def __init__(self, client: BlockingDriver, request: Request | None) -> None:
        self._client = client
        self._request = request
        self._batch_results: list[RemotePublishBatch | None] | None = (
            None if request is None else [None])
        self._callbacks: list[Callable[[Any], object]] | None = None

    def _results(self, timeout: float | None) -> RemotePublishBatch:
        """Wait for the batch's answer (flushing the batch if needed): its results."""
        if self._request is None:
            self._client.flush()
        assert self._request is not None and self._batch_results is not None
        results = self._batch_results[0]
        if results is None:
            results = self._batch_results[0] = self._client.publish_results(
                self._request, timeout)
        return results

    def done(self) -> bool:
        """True once the broker answered (or the request failed)."""
        return self._request is not None and self._request.done

    def running(self) -> bool:
        """True while the request is on its way or being answered."""
        return self._request is not None and not self._request.done

    def cancel(self) -> bool:
        """Always False: a publish cannot be taken back (``concurrent.futures`` face)."""
        return False

    def cancelled(self) -> bool:
        """Always False (see ``cancel``)."""
        return False

    def exception(self, timeout: float | None = None) -> FastFanoutError | None:
        """Wait for the answer like ``result`` and return its error (None: it succeeded).

        Args:
            timeout: seconds to wait at most (default: the client's timeout); past it the
                connection counts as broken and ``BrokenConnection`` is returned.
        """
        try:
            self._results(timeout)
        except FastFanoutError as error:
            return error
        return None

    def add_done_callback(self, callback: Callable[[Self], object]) -> None:
        """Call ``callback(self)`` once the broker answered its batch (at once if it has).

        It runs in the thread that reads the answer (usually the client's background
        thread) with the client's lock held; an exception it raises is logged. Adding
        one does not send the batch early.
        """
        with self._client.lock:
            request = self._request
            if request is None:   # still in its batch: ``bind`` moves it to the request
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
            request.watch(partial(_run_callback, self, callback))


class PublishBatchFuture(_PublishFutureBase):
    """The eventual results of ``publish_batch_nowait`` / ``send_batch_nowait``.

    It offers the ``concurrent.futures.Future`` methods (see ``PublishFuture``).
    """

    __slots__ = ()

    def result(self, timeout: float | None = None) -> RemotePublishBatch:
        """Wait for the broker's answer and return the batch's results.

        Args:
            timeout: seconds to wait at most (default: the client's timeout).

        Raises:
            FastFanoutError: the error of the batch (nothing of it was enqueued).
        """
        return self._results(timeout)
