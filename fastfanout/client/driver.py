"""The blocking driver's interface, as its consumers, producers and futures see it.

``fastfanout.client.blocking.Connection`` implements it; the modules that work through a
connection depend on this protocol rather than on the driver module, so the package has
no import cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from fastfanout.client.core import ConnectionCore, ConsumerState, Request
from fastfanout.client.messages import RemotePublishBatch

__all__ = ["AsyncDriver", "BlockingDriver"]


class BlockingDriver(Protocol):
    """A blocking connection: a ``ConnectionCore`` with a transport and a lock.

    Attributes:
        core: the protocol state.
        lock: serialises every use of the core and the transport (reentrant).
    """

    core: ConnectionCore
    lock: threading.RLock

    def submit(self, make: Callable[..., Request], *args: Any, **kwargs: Any) -> Request:
        """Queue a request made by ``make`` (a core method) and send it."""

    def request(self, opcode: int, payload: list[bytes], *, flush: bool = True) -> Request:
        """Send a request."""

    def wait(self, request: Request, timeout: float | None, *, extra: float = 0.0,
             handshake: bool = False) -> list[bytes]:
        """Wait for a request's answer (seconds; None: the client's timeout)."""

    def publish_results(self, request: Request, timeout: float | None = None
                        ) -> RemotePublishBatch:
        """Wait for a publish request's answer."""

    def pump(self, timeout: float) -> None:
        """Read and feed broker messages for up to ``timeout`` seconds."""

    def flush(self) -> None:
        """Send the publish batches being filled."""

    def start_ticking(self) -> float:
        """A frame was opened: the background thread sends it after linger; the time."""

    def defer_settle(self, consumer: ConsumerState, receipts: bytes) -> None:
        """Queue a consumer's pipelined ack."""

    def settle(self, consumer: ConsumerState, now: float | None = None) -> float | None:
        """Send a consumer's queued acks if due; seconds until due, or None."""

    def cancel(self, consumer: ConsumerState) -> None:
        """Cancel a consumer."""


class AsyncDriver(Protocol):
    """An asyncio connection, as its producers see it.

    Attributes:
        core: the protocol state.
    """

    core: ConnectionCore

    def submit(self, make: Callable[..., Request], *args: Any, **kwargs: Any) -> Request:
        """Queue a request made by ``make`` (a core method) and send it."""

    async def publish_results(self, request: Request) -> RemotePublishBatch:
        """Wait for a publish request's answer."""

    def deadline(self, extra: float = 0.0) -> AbstractAsyncContextManager[None]:
        """Bound a wait by the client's timeout plus ``extra`` seconds."""
