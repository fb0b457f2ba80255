"""Local channels: a broker and a client on one host talking through shared memory.

Why: over ``ipc://`` every message crosses the kernel twice and wakes four threads (the
sender, its ZeroMQ I/O thread, the receiver's I/O thread, the receiver). A local
channel is one ring per direction in a shared file (``fastfanout._ext.shmring``) plus a
*bell* per side, a FIFO the side polls beside its sockets: a message is copied in and
out once, and a sleeping peer is woken by one byte, only when it sleeps.

How a channel is made (the ``ATTACH`` request, docs/protocol.md): the client makes a
private directory (mode 0700, under ``/dev/shm`` when the host has it) holding the two
rings and the two FIFOs, opens its own bell for reading, and sends ``ATTACH`` with the
directory over its socket. The broker maps the rings, opens its bell for reading and the
client's for writing, and answers; the client opens the broker's bell for writing and
removes the directory (both sides keep their mappings and descriptors). From then on
every message of that connection travels through the rings, in order; one larger than
half a ring travels over the socket, announced by a marker in the ring so that the
reader takes it in its place.

A bell also tells each side that the other is gone: when the last writer of a FIFO
closes (its process exited, crashed or was killed), the reader's poll reports a hang-up
at once, where a socket peer would be noticed only by its missing heartbeats. Each side
opens the other's bell read-write, so ringing a dead peer never raises ``SIGPIPE``.

The client picks the ring size (``ring_bytes``, a power of two, default
``DEFAULT_RING_BYTES``); the broker refuses ``ATTACH`` when its own endpoint is not
``ipc://`` or ``local_channels`` is off, and checks that every file is a regular file
or FIFO of its own user.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections import deque
from collections.abc import Callable

from fastfanout._ext.shmring import (
    FULL,
    MAX_CAPACITY,
    MIN_CAPACITY,
    TOO_LARGE,
    WROTE_WAKE,
    SharedRing,
)
from fastfanout.errors import InvalidArgument

__all__ = [
    "DEFAULT_RING_BYTES", "Bell", "LocalChannel", "PeerGone", "check_channel_options",
    "local_channels_supported", "wants_local_channel",
]

DEFAULT_RING_BYTES = 4 << 20
"""Bytes of each ring of a channel (4 MiB: a push of 8,192 small messages, ~1 MB, fits in
half of one; larger rings measured no faster)."""

TO_BROKER = "to_broker.ring"
TO_CLIENT = "to_client.ring"
BROKER_BELL = "broker.bell"
CLIENT_BELL = "client.bell"


class PeerGone(Exception):
    """The other side of a local channel hung up its bell (its process ended).

    Only a side's own bell tells: ringing the peer's bell never fails (it is opened
    read-write, see ``Bell``).
    """


def local_channels_supported() -> bool:
    """True where FIFOs and shared mappings behave as this module needs (Linux)."""
    return sys.platform.startswith("linux")


def check_channel_options(local_channel: object, ring_bytes: object) -> None:
    """Refuse bad ``local_channel`` / ``ring_bytes`` client options up front.

    Raises:
        InvalidArgument: ``local_channel`` is not None/True/False, or ``ring_bytes`` is
            not a power of two from ``MIN_CAPACITY`` to ``MAX_CAPACITY``.
    """
    if local_channel not in (None, True, False):
        raise InvalidArgument(f"local_channel={local_channel!r} must be None, True or False")
    if (type(ring_bytes) is not int or not MIN_CAPACITY <= ring_bytes <= MAX_CAPACITY
            or ring_bytes & (ring_bytes - 1)):
        raise InvalidArgument(f"ring_bytes={ring_bytes!r} must be a power of two from "
                              f"{MIN_CAPACITY} to {MAX_CAPACITY}")


def wants_local_channel(local_channel: bool | None, info: dict[str, object],
                        endpoint: str) -> bool:
    """Whether a client should attach a channel after HELLO (``info``: its reply).

    True: always try (a refusal is an error); None: when the endpoint is ``ipc://``, the
    broker offers channels and this host supports them; False: never.
    """
    if local_channel is not None:
        return local_channel
    return (bool(info.get("local_channels")) and endpoint.startswith("ipc://")
            and local_channels_supported())


def _directory_root() -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


class Bell:
    """One end of a FIFO: the reading side polls ``fd``; the writing side ``ring``s."""

    def __init__(self, path: str, *, reader: bool) -> None:
        flags = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        # The ringing side opens read-write (Linux): a write then never fails with EPIPE,
        # so a process whose SIGPIPE is SIG_DFL is not killed by ringing a peer that
        # died. The peer's death is seen on this side's own bell instead, whose only
        # writer was the peer: its poll reports the hang-up.
        self.fd = os.open(path, flags | (os.O_RDONLY if reader else os.O_RDWR))
        info = os.fstat(self.fd)
        if not stat.S_ISFIFO(info.st_mode) or info.st_uid != os.geteuid():
            os.close(self.fd)
            raise ValueError(f"{path} is not a FIFO of this user")
        self.closed = False

    def ring(self) -> None:
        """Wake the reader (a full FIFO already will: its pending bytes do).

        Never fails for a peer that is gone: this end is also a reader, so there is no
        ``EPIPE``; the bytes wait in the FIFO until it is closed.
        """
        try:
            os.write(self.fd, b"\x00")
        except BlockingIOError:
            pass

    def drain(self) -> None:
        """Read every pending ring.

        Raises:
            PeerGone: every writer has closed the FIFO (the peer process ended).
        """
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            if not data:
                raise PeerGone("the bell's writer is gone")
            if len(data) < 4096:
                return

    def close(self) -> None:
        """Close this end."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class LocalChannel:
    """One side of a local channel: the ring it writes, the ring it reads, two bells.

    Attributes:
        outgoing: the ring this side writes.
        incoming: the ring this side reads.
        bell: this side's bell (read end), polled beside the sockets.
        peer_bell: the other side's bell (write end); None until ``attached``.
        spill: sends a message over the socket (set by the owner: one too large for
            the ring goes there, announced by a marker).
        backlog: messages waiting for room in ``outgoing`` (in order).
        awaiting_socket: a marker was read; the socket's next message comes next.
        spills: messages sent over the socket because they exceed half a ring.
        full: sends that found the ring full and waited (or queued).
    """

    def __init__(self, outgoing: SharedRing, incoming: SharedRing, bell: Bell,
                 peer_bell: Bell | None, directory: str | None) -> None:
        self.outgoing = outgoing
        self.incoming = incoming
        self.bell = bell
        self.peer_bell = peer_bell
        self.directory = directory
        self.spill: Callable[[list[bytes]], object] | None = None
        self.backlog: deque[list[bytes]] = deque()
        self.backlog_since = 0.0
        self.awaiting_socket = False
        self.spills = 0
        self.full = 0

    @classmethod
    def create(cls, ring_bytes: int = DEFAULT_RING_BYTES) -> LocalChannel:
        """The client's side: make the directory, rings and FIFOs; open its own bell."""
        directory = tempfile.mkdtemp(prefix="fastfanout-", dir=_directory_root())
        try:
            to_broker = SharedRing.create(os.path.join(directory, TO_BROKER), ring_bytes)
            to_client = SharedRing.create(os.path.join(directory, TO_CLIENT), ring_bytes)
            os.mkfifo(os.path.join(directory, BROKER_BELL), 0o600)
            os.mkfifo(os.path.join(directory, CLIENT_BELL), 0o600)
            bell = Bell(os.path.join(directory, CLIENT_BELL), reader=True)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(to_broker, to_client, bell, None, directory)

    @classmethod
    def attach(cls, directory: str) -> LocalChannel:
        """The broker's side: map the client's rings and open both bells.

        Raises:
            ValueError: ``directory`` is not a private directory of this user holding a
                channel (or a file in it is not what it should be).
            OSError: a file cannot be opened or mapped.
        """
        info = os.lstat(directory)
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
                or info.st_mode & 0o077):
            raise ValueError(f"{directory} is not a private directory of this user")
        incoming = SharedRing(os.path.join(directory, TO_BROKER))
        outgoing = SharedRing(os.path.join(directory, TO_CLIENT))
        bell = Bell(os.path.join(directory, BROKER_BELL), reader=True)
        try:
            peer_bell = Bell(os.path.join(directory, CLIENT_BELL), reader=False)
        except BaseException:
            bell.close()
            raise
        return cls(outgoing, incoming, bell, peer_bell, None)

    def attached(self) -> None:
        """The client's side, once the broker answered ATTACH: open the broker's bell.

        The directory is removed: both sides keep their mappings and descriptors.
        """
        assert self.directory is not None
        self.peer_bell = Bell(os.path.join(self.directory, BROKER_BELL), reader=False)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def try_send(self, frames: list[bytes]) -> bool:
        """Write ``frames``; False when the ring is full and nothing was sent.

        A message too large for the ring goes as a marker, then ``spill(frames)`` sends
        it over the socket.
        """
        status = self.outgoing.write(frames)
        if status == TOO_LARGE:
            assert self.spill is not None, "the channel's owner sets spill"
            status = self.outgoing.write_marker()
            if status == FULL:
                return False
            self.spills += 1
            if status == WROTE_WAKE:
                self.ring_peer()
            self.spill(frames)
            return True
        if status == FULL:
            return False
        if status == WROTE_WAKE:
            self.ring_peer()
        return True

    def send_or_queue(self, frames: list[bytes], now: float) -> None:
        """Send now, or queue behind the backlog until the reader makes room (broker)."""
        if not self.backlog and self.try_send(frames):
            return
        if not self.backlog:
            self.backlog_since = now
            self.full += 1
        self.backlog.append(frames)

    def flush_backlog(self, now: float) -> bool:
        """Send what the backlog holds while there is room; True when it is empty."""
        backlog = self.backlog
        while backlog:
            if not self.try_send(backlog[0]):
                return False
            backlog.popleft()
            self.backlog_since = now
        return True

    def ring_peer(self) -> None:
        """Ring the other side's bell."""
        if self.peer_bell is not None:
            self.peer_bell.ring()

    def read(self, max_messages: int) -> list[list[bytes] | None]:
        """Up to ``max_messages`` messages from ``incoming`` (None: a marker).

        A writer that waits for the room this read made is woken.
        """
        messages, wake_writer = self.incoming.read(max_messages)
        if wake_writer:
            self.ring_peer()
        return messages

    def close(self) -> None:
        """Unmap the rings, close the bells, remove the directory if it is still there."""
        self.outgoing.close()
        self.incoming.close()
        self.bell.close()
        if self.peer_bell is not None:
            self.peer_bell.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
