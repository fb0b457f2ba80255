"""What the blocking and the asyncio drivers share, and their interfaces as others see them.

``DriverBase`` holds a driver's options, its ``ConnectionCore`` and its producers, and the
steps of moving onto a local channel; ``fastfanout.client.blocking.Connection`` and
``fastfanout.client.asyncio.AsyncConnection`` add how they send, read and wait. Consumers,
producers and futures depend on the protocols ``BlockingDriver`` and ``AsyncDriver``
rather than on the driver modules, so the package has no import cycle.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol, TypeVar

from fastfanout._ext.locks import FastRLock
from fastfanout.client.core import ConnectionCore, ConsumerState, Request
from fastfanout.client.messages import RemotePublishBatch
from fastfanout.errors import BrokenConnection
from fastfanout.transport.local_channel import LocalChannel, wants_local_channel
from fastfanout.transport.sockets import CurveKeys
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode

__all__ = ["AsyncDriver", "BlockingDriver", "DriverBase"]


_Dealer = TypeVar("_Dealer")


def dealer_to_attach(transport: object, socket_type: type[_Dealer]) -> _Dealer | None:
    """The socket a local channel is attached over, right after HELLO.

    None: the handshake met an ended session and a reconnect put its own transport in
    place meanwhile (attached or not), which stays.

    Raises:
        BrokenConnection: the handshake left no transport at all.
    """
    if isinstance(transport, socket_type):
        return transport
    if transport is None:
        raise BrokenConnection("the connection was lost during its handshake")
    return None


class DriverBase:
    """A driver's options, protocol core and producers (see the module's essay).

    Args:
        endpoint: the broker's endpoint.
        curve: client CURVE keys, or None.
        timeout: seconds a call waits for its reply.
        local_channel: use a local channel: None if offered, True insist, False never.
        ring_bytes: bytes of each of a local channel's rings.
        **core: ``ConnectionCore``'s options (``linger``, ``batch_messages``...).

    Attributes:
        core: the connection's protocol state.
        producers: the producers of the connection still open (closed with it).
    """

    def __init__(self, endpoint: str, curve: CurveKeys | None, *, timeout: float,
                 local_channel: bool | None, ring_bytes: int, **core: Any) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.timeout = timeout
        self.local_channel = local_channel
        self.ring_bytes = ring_bytes
        self.core = ConnectionCore(endpoint, pid=os.getpid(), **core)
        self.producers: weakref.WeakSet[Any] = weakref.WeakSet()

    def hello(self, frames: list[bytes]) -> None:
        """Take the HELLO reply of a new connection; its limits become every producer's.

        A reconnect may meet a broker started with other limits (``max_request_bytes``,
        ``max_frame_bytes``): the open producers of the connection follow them from now
        on (``limits_changed``), as the client's own calls do.
        """
        self.core.hello(frames)
        for producer in list(self.producers):
            producer.limits_changed()

    def new_channel(self) -> LocalChannel | None:
        """A local channel to attach after HELLO, or None to stay on the socket.

        Raises:
            BrokenConnection: ``local_channel=True`` and none can be made.
        """
        if not wants_local_channel(self.local_channel, self.core.info, self.endpoint):
            return None
        try:
            return LocalChannel.create(self.ring_bytes)
        except (OSError, ValueError) as exc:
            if self.local_channel:
                raise BrokenConnection(f"cannot make a local channel: {exc}") from None
            return None

    def attach_request(self, channel: LocalChannel) -> Request:
        """Queue the ATTACH of ``channel`` (it counts as a heartbeat: see ``core.start``)."""
        self.core.last_sent_heartbeat = time.monotonic()
        return self.core.request(
            Opcode.ATTACH, [protocol.encode_payload(channel.attach_request())], flush=False)

    def attach_refused(self, channel: LocalChannel, error: Exception) -> None:
        """The broker refused the channel: stay on the socket, unless insisted on.

        Raises:
            BrokenConnection: ``local_channel=True``.
        """
        channel.close()
        if self.local_channel:
            raise BrokenConnection(f"the broker refused a local channel: {error}") from None


class BlockingDriver(Protocol):
    """A blocking connection: a ``ConnectionCore`` with a transport and a lock.

    Attributes:
        core: the protocol state.
        lock: serialises every use of the core and the transport (reentrant).
        close_deadline: while its client closes with a timeout, when that timeout ends
            (``time.monotonic()`` seconds): a producer's flush waits no longer. None
            otherwise.
    """

    core: ConnectionCore
    lock: FastRLock
    close_deadline: float | None

    def held(self) -> AbstractContextManager[None]:
        """The lock for a block of calls, a thread waiting in ``recv`` with it woken first."""

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

    def pump(self, timeout: float, until: Request | None = None,
             consumer: ConsumerState | None = None) -> None:
        """Read and feed broker messages for up to ``timeout`` seconds.

        Less once ``until`` is answered, or ``consumer`` has frames to read.
        """

    def flush(self) -> None:
        """Send the publish batches being filled."""

    def start_ticking(self, source: Any = None, linger: float | None = None) -> float:
        """A frame was opened (by ``source``): sent after ``linger``; returns the time."""

    def defer_settle(self, consumer: ConsumerState, receipts: bytes) -> None:
        """Queue a consumer's pipelined ack."""

    def settle(self, consumer: ConsumerState, now: float | None = None) -> float | None:
        """Send a consumer's queued acks if due; seconds until due, or None."""

    def cancel(self, consumer: ConsumerState) -> None:
        """Cancel a consumer, releasing what it holds unread (``ConnectionCore.cancel``)."""

    def abandon(self, consumer: ConsumerState) -> None:
        """Cancel a consumer nobody can iterate any more, soon (any thread, no lock)."""

    def release_unread(self, receipts: bytes) -> None:
        """Give back pushed messages nobody will read, soon (any thread, no lock)."""


class AsyncDriver(Protocol):
    """An asyncio connection, as its producers see it.

    Attributes:
        core: the protocol state.
    """

    core: ConnectionCore

    def submit(self, make: Callable[..., Request], *args: Any, **kwargs: Any) -> Request:
        """Queue a request made by ``make`` (a core method) and send it."""

    def check_loop(self) -> None:
        """Raise ``WrongEventLoop`` outside the event loop that connected it."""

    async def publish_results(self, request: Request) -> RemotePublishBatch:
        """Wait for a publish request's answer."""

    def deadline(self, extra: float = 0.0) -> AbstractAsyncContextManager[None]:
        """Bound a wait by the client's timeout plus ``extra`` seconds."""
