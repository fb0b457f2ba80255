"""Client transports over local channels: the blocking and the asyncio flavour.

Both keep the interface of their socket counterparts in ``fastfanout.transport.sockets``
(``send``/``recv``/``close``), so the clients use either without knowing which: the
channel (``fastfanout.transport.local_channel``) carries every message, the DEALER socket only the
messages too large for a ring, announced by a marker. The broker's process ending is
seen at once, on the channel's bell, and reported as ``PeerLost``. Neither imports
ZeroMQ: the sockets they keep are the transport module's.
"""

from __future__ import annotations

import asyncio
import math
import select
import time
from collections import deque

from fastfanout.errors import PeerGone, PeerLost
from fastfanout.transport.local_channel import LocalChannel
from fastfanout.transport.sockets import AsyncDealerTransport, DealerTransport

__all__ = ["AsyncLocalTransport", "LocalTransport"]


class _ChannelReader:
    """What both flavours share: the queue of messages read from the channel's ring."""

    channel: LocalChannel
    _queue: deque[list[bytes]]

    def _read(self) -> bool:
        """Move what the ring holds to the queue; True when there was anything.

        A marker makes the socket's next message the next one (``awaiting_socket``).
        """
        try:
            messages = self.channel.read(256)
        except ValueError as exc:   # the broker wrote past the ring's bounds
            raise PeerLost(f"a malformed record from the broker: {exc}") from None
        for message in messages:
            if message is None:
                self.channel.awaiting_socket = True
            elif isinstance(message, int):   # only a client's ring has count records
                raise PeerLost("a malformed record from the broker: a count record")
            else:
                self._queue.append(message)
        return bool(messages)


class LocalTransport(_ChannelReader):
    """A client's command connection through a local channel, blocking flavour.

    The same ``send``/``recv``/``close`` as ``DealerTransport``, whose socket it keeps for
    the messages too large for a ring (announced by a marker, see
    ``fastfanout.transport.local_channel``). ``recv`` waits on the channel's bell (``poll``), and on
    the socket only after a marker. A send that finds the ring full waits for the broker
    to make room, up to ``send_timeout`` seconds.

    Raises (``send``, ``recv``):
        PeerLost: the broker's process ended (its bell hung up) or it made no room in
            time; messages it wrote before it went are still returned first.
    """

    def __init__(self, dealer: DealerTransport, channel: LocalChannel,
                 send_timeout: float) -> None:
        self._dealer = dealer
        self.channel = channel
        self._send_timeout = send_timeout
        channel.spill = dealer.send
        self._queue: deque[list[bytes]] = deque()
        self._gone = False
        self._bell = select.poll()
        self._bell.register(channel.bell.fd, select.POLLIN)
        self._waits = self._bell   # recv's poll: the bell, and a wake descriptor
        self._wake: int | None = None
        self.closed = False

    def watch_wake(self, fd: int) -> None:
        """End a ``recv`` wait early (it returns None) once ``fd`` is readable.

        Only ``recv`` watches it (a send waiting for room does not); the socket kept for
        spills must be told too (``DealerTransport.watch_wake``). The caller drains it.
        """
        self._waits = select.poll()
        self._waits.register(self.channel.bell.fd, select.POLLIN)
        self._waits.register(fd, select.POLLIN)
        self._wake = fd

    def send(self, frames: list[bytes]) -> None:
        """Write a request into the ring (waiting for room), or spill it."""
        channel = self.channel
        if channel.try_send(frames):
            return
        channel.full += 1
        deadline = time.monotonic() + self._send_timeout
        while not channel.try_send(frames):
            if self._gone:
                raise PeerLost("the broker closed this local channel (its bell hung up: it ended "
                              "the session, or its process ended)")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerLost("the broker made no room in its ring in "
                               f"{self._send_timeout:.1f} s")
            if self._bell.poll(max(1, math.ceil(min(remaining, 0.1) * 1000))):
                self._ring_heard()

    def _ring_heard(self) -> None:
        try:
            self.channel.bell.drain()
        except PeerGone:
            self._gone = True

    def recv(self, timeout: float) -> list[bytes] | None:
        """The next message, waiting up to ``timeout`` seconds (0: only if one is here).

        After the channel is attached the broker sends nothing over the socket unless a
        marker in the ring announced it, so the socket is read only then.
        """
        if self._queue:
            return self._queue.popleft()
        channel = self.channel
        deadline = time.monotonic() + timeout
        while True:
            if channel.awaiting_socket:
                frames = self._dealer.recv(max(0.0, deadline - time.monotonic()))
                if frames is not None:
                    channel.awaiting_socket = False
                return frames
            if self._read():
                if self._queue:
                    return self._queue.popleft()
                continue   # a marker alone
            if self._gone:
                raise PeerLost("the broker closed this local channel (its bell hung up: it ended "
                              "the session, or its process ended)")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not channel.incoming.sleep():
                continue
            polled = self._waits.poll(max(1, math.ceil(remaining * 1000)))
            if polled:
                self._ring_heard()
                # at most one entry per descriptor: two, or one that is not the bell's
                if self._wake is not None and (len(polled) > 1
                                               or polled[0][0] == self._wake):
                    deadline = 0.0   # woken: read what is here, then return

    def close(self) -> None:
        """Close the channel and the socket."""
        if not self.closed:
            self.closed = True
            self.channel.close()
            self._dealer.close()


class AsyncLocalTransport(_ChannelReader):
    """A client's command connection through a local channel, on asyncio.

    The asyncio face of ``LocalTransport``: the channel's bell is watched with
    ``loop.add_reader`` (no thread, no polling), ``recv`` awaits the next message,
    ``send_nowait`` writes a request into the ring at once — or, when the ring is full,
    queues it (in order, behind any queued before) for a task that writes it when the
    broker has made room.

    Raises (``recv``, ``send_nowait``):
        PeerLost: the broker's process ended (its bell hung up), or it made no room in
            ``send_timeout`` seconds; messages it wrote before it went come first.
    """

    def __init__(self, dealer: AsyncDealerTransport, channel: LocalChannel,
                 send_timeout: float) -> None:
        self._dealer = dealer
        self.channel = channel
        self._send_timeout = send_timeout
        self._queue: deque[list[bytes]] = deque()
        self._backlog: deque[list[bytes]] = deque()
        self._flusher: asyncio.Future[None] | None = None
        self._gone = False
        self._data = asyncio.Event()   # the bell rang: a message, or room
        self._room = asyncio.Event()
        channel.spill = dealer.send_nowait
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(channel.bell.fd, self._rang)
        self.closed = False

    def _rang(self) -> None:
        try:
            self.channel.bell.drain()
        except PeerGone:
            self._gone = True
            self._loop.remove_reader(self.channel.bell.fd)  # a hung-up pipe stays readable
        self._data.set()
        self._room.set()

    def send_nowait(self, frames: list[bytes]) -> None:
        """Write a request into the ring now, or queue it until the broker makes room."""
        if self._gone:
            raise PeerLost("the broker closed this local channel (its bell hung up: it ended "
                              "the session, or its process ended)")
        if not self._backlog and self.channel.try_send(frames):
            return
        # written later: a frame that writes itself from the caller's array is built now
        self._backlog.append(frames if type(frames[-1]) is bytes else _built(frames))
        if self._flusher is None:
            self.channel.full += 1
            self._flusher = asyncio.ensure_future(self._flush())
            self._flusher.add_done_callback(self._flushed)

    def _flushed(self, flusher: asyncio.Future[None]) -> None:
        self._flusher = None
        if not flusher.cancelled() and flusher.exception() is not None:
            self._gone = True   # no room in time: the connection is broken
            self._data.set()    # recv raises now

    async def _flush(self) -> None:
        backlog = self._backlog
        while backlog:
            self._room.clear()
            if self.channel.try_send(backlog[0]):
                backlog.popleft()
                continue
            if self._gone:
                raise PeerLost("the broker closed this local channel (its bell hung up: it ended "
                              "the session, or its process ended)")
            async with asyncio.timeout(self._send_timeout):
                await self._room.wait()

    async def recv(self) -> list[bytes]:
        """The next message (waits as long as it takes; cancel to stop)."""
        channel = self.channel
        while True:
            if self._queue:
                return self._queue.popleft()
            if channel.awaiting_socket:
                frames = await self._dealer.recv()
                channel.awaiting_socket = False
                return frames
            self._data.clear()
            if self._read():
                continue
            if self._gone:
                raise PeerLost("the broker closed this local channel (its bell hung up: it ended "
                              "the session, or its process ended)")
            if channel.incoming.sleep():
                await self._data.wait()

    def close(self) -> None:
        """Stop watching the bell; close the channel and the socket."""
        if not self.closed:
            self.closed = True
            if not self._gone:
                self._loop.remove_reader(self.channel.bell.fd)
            if self._flusher is not None:
                self._flusher.cancel()
            self.channel.close()
            self._dealer.close()


def _built(frames: list[bytes]) -> list[bytes]:
    """``frames`` as bytes: a frame that writes itself (``RowsFrame``) is built now."""
    return [frame if type(frame) is bytes else bytes(frame) for frame in frames]
