"""What a client's requests wait on: requests in flight and the futures of pipelined publishes.

A pipelined publish (``publish_nowait``) joins the batch of its target (``PendingBatch``:
records written straight into a native frame builder; the asyncio client fills the same
kind) and returns a future; when the batch is sent it becomes one request in flight
(``_Pending``) shared by all its futures, which read their own result out of the
batch's one reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from fastfanout._ext.wire import FrameBuilder
from fastfanout.errors import FastFanoutError
from fastfanout.records import PublishResult
from fastfanout.remote import RemotePublishBatch

if TYPE_CHECKING:
    from fastfanout.client import Client

__all__ = ["PendingBatch", "PublishBatchFuture", "PublishFuture"]

F = TypeVar("F")


class _Pending:
    """One request in flight."""

    __slots__ = ("error", "frames", "request_id")

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self.frames: list[bytes] | None = None
        self.error: FastFanoutError | None = None

    @property
    def done(self) -> bool:
        return self.frames is not None or self.error is not None


class PendingBatch(Generic[F]):
    """A publish batch being filled: records go into a native frame builder.

    A future per record (the blocking client's ``PublishFuture``, the asyncio client's
    ``asyncio.Future``) waits for the batch's one reply.
    """

    __slots__ = ("builder", "futures")

    def __init__(self) -> None:
        self.builder = FrameBuilder()
        self.futures: list[F] = []


class PublishBatchFuture:
    """The eventual results of ``publish_batch_nowait`` / ``send_batch_nowait``."""

    __slots__ = ("_client", "_pending", "_results")

    def __init__(self, client: Client, pending: _Pending) -> None:
        self._client = client
        self._pending = pending
        self._results: RemotePublishBatch | None = None

    def done(self) -> bool:
        """True once the broker answered."""
        return self._pending.done

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


class PublishFuture:
    """The eventual result of ``publish_nowait`` / ``send_nowait``."""

    __slots__ = ("_batch_results", "_client", "_index", "_pending")

    def __init__(self, client: Client, index: int) -> None:
        self._client = client
        self._index = index
        self._pending: _Pending | None = None
        self._batch_results: list[RemotePublishBatch | None] | None = None

    def done(self) -> bool:
        """True once the broker answered (or the batch failed)."""
        return self._pending is not None and self._pending.done

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
