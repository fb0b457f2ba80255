"""What a client's requests wait on: requests in flight and the futures of pipelined publishes.

A pipelined publish (``publish_nowait``) joins the batch of its target (``PendingBatch``:
records written straight into a native frame builder; the asyncio client fills the same
kind) and returns a future; when the batch is sent it becomes one request in flight
(``_Pending``) shared by all its futures, which read their own result out of the
batch's one reply.

The blocking client's futures offer the interface of ``concurrent.futures.Future``
(``result``, ``exception``, ``done``, ``add_done_callback``, ``cancel``...) without being
one: that class makes a condition variable per future, and a pipelined publish makes a
future per message. Completion is per request instead: the reply (or the error) is read
by whichever thread pumps the client, its background thread included, which looks for
replies every ``REPLY_POLL`` seconds while requests are in flight, so a future completes
(and its done callbacks run) without the client being called again. Callbacks run in
the thread that read the reply, with the client's lock held: keep them short.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from fastfanout._ext.wire import FrameBuilder
from fastfanout.errors import FastFanoutError
from fastfanout.records import PublishResult
from fastfanout.remote import RemotePublishBatch

if TYPE_CHECKING:
    from fastfanout.client import Client

__all__ = ["REPLY_POLL", "PendingBatch", "PublishBatchFuture", "PublishFuture", "bind"]

F = TypeVar("F")

REPLY_POLL: Final = 0.005
"""Seconds between the blocking client's background looks for replies while requests are
in flight: a pipelined publish's future completes within about this long of its reply."""

log = logging.getLogger(__name__)

# Orders a future's callbacks against its completion (held for a few list operations).
_completion = threading.Lock()


class _Pending:
    """One request in flight; ``answer`` or ``fail`` completes it once."""

    __slots__ = ("error", "frames", "request_id", "watchers")

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self.frames: list[bytes] | None = None
        self.error: FastFanoutError | None = None
        self.watchers: list[Callable[[], None]] | None = None

    @property
    def done(self) -> bool:
        return self.frames is not None or self.error is not None

    def answer(self, frames: list[bytes]) -> None:
        """The broker answered: complete with its payload frames."""
        self.frames = frames
        if self.watchers is not None:
            self._notify()

    def fail(self, error: FastFanoutError) -> None:
        """The request failed (error reply, broken connection): complete with ``error``."""
        self.error = error
        if self.watchers is not None:
            self._notify()

    def _notify(self) -> None:
        with _completion:
            watchers, self.watchers = self.watchers, None
        for watcher in watchers or ():
            watcher()

    def watch(self, watcher: Callable[[], None]) -> bool:
        """Call ``watcher()`` once done; False (not kept) when done already."""
        with _completion:
            if self.done:
                return False
            if self.watchers is None:
                self.watchers = []
            self.watchers.append(watcher)
            return True


def _run_callback(future: Any, callback: Callable[[Any], object]) -> None:
    try:
        callback(future)
    except Exception:
        # as concurrent.futures does: a callback's failure is logged, not raised
        log.exception("exception calling callback for %r", future)


def bind(futures: list[PublishFuture], pending: _Pending) -> None:
    """Tie the futures of a batch to the request that carries it (the batch was sent).

    Callbacks added while the futures waited in their batch move to the request (or run
    now if it is done already).
    """
    results: list[RemotePublishBatch | None] = [None]
    due: list[tuple[PublishFuture, Callable[[Any], object]]] = []
    with _completion:
        for future in futures:
            future._pending = pending
            future._batch_results = results
            if future._callbacks is not None:
                callbacks, future._callbacks = future._callbacks, None
                if pending.done:
                    due.extend((future, callback) for callback in callbacks)
                else:
                    if pending.watchers is None:
                        pending.watchers = []
                    pending.watchers.extend(
                        partial(_run_callback, future, callback) for callback in callbacks)
    for future, callback in due:
        _run_callback(future, callback)


class PendingBatch(Generic[F]):
    """A publish batch being filled: records go into a native frame builder.

    A future per record (the blocking client's ``PublishFuture``, the asyncio client's
    ``asyncio.Future``) waits for the batch's one reply.
    """

    __slots__ = ("builder", "futures")

    def __init__(self) -> None:
        self.builder = FrameBuilder()
        self.futures: list[F] = []


class _FutureFace:
    """The ``concurrent.futures.Future`` methods both publish futures share."""

    __slots__ = ()

    _pending: _Pending | None

    def result(self, timeout: float | None = None) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def done(self) -> bool:
        """True once the broker answered (or the request failed)."""
        return self._pending is not None and self._pending.done

    def running(self) -> bool:
        """True while the request is on its way or being answered."""
        return self._pending is not None and not self._pending.done

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
            self.result(timeout)
        except FastFanoutError as error:
            return error
        return None


class PublishBatchFuture(_FutureFace):
    """The eventual results of ``publish_batch_nowait`` / ``send_batch_nowait``.

    It offers the ``concurrent.futures.Future`` methods (see ``PublishFuture``).
    """

    __slots__ = ("_client", "_pending", "_results")

    def __init__(self, client: Client, pending: _Pending) -> None:
        self._client = client
        self._pending: _Pending = pending
        self._results: RemotePublishBatch | None = None

    def result(self, timeout: float | None = None) -> RemotePublishBatch:
        """Wait for the broker's answer and return the batch's results.

        Args:
            timeout: seconds to wait at most (default: the client's timeout).

        Raises:
            FastFanoutError: the error of the batch (nothing of it was enqueued).
        """
        if self._results is None:
            self._results = self._client._publish_results(self._pending, timeout)
        return self._results

    def add_done_callback(self, callback: Callable[[PublishBatchFuture], object]) -> None:
        """Call ``callback(self)`` once the broker answered (at once if it has).

        It runs in the thread that reads the answer (usually the client's background
        thread) with the client's lock held; an exception it raises is logged.
        """
        if not self._pending.watch(partial(_run_callback, self, callback)):
            _run_callback(self, callback)


class PublishFuture(_FutureFace):
    """The eventual result of ``publish_nowait`` / ``send_nowait``.

    It offers the methods of ``concurrent.futures.Future``: ``result``, ``exception``,
    ``done``, ``add_done_callback``, ``running``, ``cancel`` and ``cancelled`` (a publish
    cannot be cancelled). It completes without further calls to the client: the
    client's background thread sends its batch after ``linger`` and reads the answer.
    """

    __slots__ = ("_batch_results", "_callbacks", "_client", "_index", "_pending")

    def __init__(self, client: Client, index: int) -> None:
        self._client = client
        self._index = index
        self._pending: _Pending | None = None
        self._batch_results: list[RemotePublishBatch | None] | None = None
        self._callbacks: list[Callable[[Any], object]] | None = None

    def result(self, timeout: float | None = None) -> PublishResult:
        """Wait for the broker's answer (flushing the batch if needed) and return it.

        Args:
            timeout: seconds to wait at most (default: the client's timeout).

        Raises:
            FastFanoutError: the error of the whole batch this publish travelled in.
        """
        if self._pending is None:
            self._client.flush()
        assert self._pending is not None and self._batch_results is not None
        results = self._batch_results[0]
        if results is None:
            results = self._batch_results[0] = self._client._publish_results(
                self._pending, timeout)
        return results[self._index]

    def add_done_callback(self, callback: Callable[[PublishFuture], object]) -> None:
        """Call ``callback(self)`` once the broker answered its batch (at once if it has).

        It runs in the thread that reads the answer (usually the client's background
        thread) with the client's lock held; an exception it raises is logged. Adding
        one does not send the batch early.
        """
        with _completion:
            pending = self._pending
            if pending is None:   # still in its batch: ``bind`` moves it to the request
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
            if not pending.done:
                if pending.watchers is None:
                    pending.watchers = []
                pending.watchers.append(partial(_run_callback, self, callback))
                return
        _run_callback(self, callback)
