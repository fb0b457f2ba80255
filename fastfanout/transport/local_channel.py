"""Local channels: a broker and a client on one host talking through shared memory.

Why: over ``ipc://`` every message crosses the kernel twice and wakes four threads (the
sender, its ZeroMQ I/O thread, the receiver's I/O thread, the receiver). A local
channel is one ring per direction in a shared file (``fastfanout._ext.shmring``) plus a
*bell* per side, a FIFO the side polls beside its sockets: a message is copied in and
out once, and a sleeping peer is woken by one byte, only when it sleeps.

How a channel is made (the ``ATTACH`` request, docs/protocol.md): nothing of it has a
name in any file system. The client makes the two rings as sealed anonymous memory
files (``SharedRing.create``: ``memfd_create``, sized, pages reserved, sealed so their
size never changes) and the two bells as pipes, and sends ``ATTACH`` with its pid and
the four descriptor numbers over its socket. The broker opens each through
``/proc/PID/fd/N`` (only a process of the same user may), checks what it got (sealed
memory files of its user for the rings, pipes for the bells), maps the rings, opens
its bell for reading and the client's for writing, and answers; the client then closes
its own copy of its bell's write end. Both sides keep their mappings and descriptors;
when both are gone, so is the channel — a process killed at any point leaves nothing
behind. From then on every message of that connection travels through the rings, in
order; one larger than half a ring travels over the socket, announced by a marker in
the ring so that the reader takes it in its place.

Unannounced spills (the client's side only). A client whose ring the broker keeps full
with frames it still uses (``PINNED``: it has read every record) and that finds no
room even for a marker sends the message over the socket with none: nothing unread is
left for it to overtake. Its next record in the ring is then a *count* of every message
it has sent so (``SharedRing.write_count``), and the broker, which counts the socket
messages of the session that came with no marker (``unannounced``), reads that ring on
only once it has taken that many (``stopped``). Until 2026-12-07 such a send waited for
room, and the session ended after ``send_timeout``: a consumer that kept a view of a
batch delivered by reference for good ended its producer's session. The broker never
sends so (a client reads its socket only after a marker): it queues, and ends a client
too slow to make room (``send_or_queue``).

Why sealed: a process that maps a file dies of ``SIGBUS`` when it touches a page past
the file's end, so a client (or anything of the same user) that could shrink a ring
could kill the broker. A ring's size is sealed before the broker ever sees it, and the
broker refuses a ring without ``F_SEAL_SHRINK``.

A bell also tells each side that the other is gone: when the last writer of a pipe
closes (its process exited, crashed or was killed), the reader's poll reports a hang-up
at once, where a socket peer would be noticed only by its missing heartbeats. A pipe has
a writer from the moment it is made, so this holds from ``ATTACH`` on, whatever the
client does next. The broker also watches the client's process itself (a ``pidfd``
where the kernel has them): a child that inherited the bell's write end does not keep
a session of a process that has ended. Each side can never get ``EPIPE`` when it rings:
the broker opens the client's bell read-write, and the client keeps the read end of the
broker's bell open beside its write end.

The client picks the ring size (``ring_bytes``, a power of two, default
``DEFAULT_RING_BYTES``); the broker refuses ``ATTACH`` when its own endpoint is not
``ipc://`` or ``local_channels`` is off. A broker's queue of messages waiting for room
in a ring is bounded in bytes (``send_or_queue``'s ``max_backlog_bytes``).

The client reads large frames in place (``HOLD_MIN_BYTES``): a delivery frame of that
size or more is a ``RingFrame``, a read-only view of the ring, and its record stays in
the ring — the broker cannot reuse that room — until the frame and every view made of
it (a batch, its numpy arrays) are gone. The reader holds a frame only while the span
of the ring it pins stays within ``SharedRing.max_held`` (``DEFAULT_HELD_SHARE`` of the
ring); past it a frame is copied as before and counted (``hold_refusals``).
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections import deque
from collections.abc import Callable

from fastfanout._ext.shmring import (
    FULL,
    MAX_CAPACITY,
    MIN_CAPACITY,
    PINNED,
    TOO_LARGE,
    WROTE_WAKE,
    SharedRing,
)
from fastfanout.errors import InvalidArgument, MalformedFrame, PeerGone

log = logging.getLogger(__name__)

__all__ = [
    "ATTACH_FIELDS", "DEFAULT_HELD_SHARE", "DEFAULT_RING_BYTES", "HOLD_MIN_BYTES", "Bell",
    "LocalChannel",
    "check_channel_options", "local_channels_supported", "pinned_hint", "wants_local_channel",
]

DEFAULT_RING_BYTES = 4 << 20
"""Bytes of each ring of a channel (4 MiB: a push of 8,192 small messages, ~1 MB, fits in
a quarter of one, the most a push takes; larger rings measured no faster)."""

HOLD_MIN_BYTES = 64 << 10
"""Frames of this many bytes or more are read in place (a ``RingFrame``) by a client;
smaller ones are copied (a copy of a small frame costs less than tracking it)."""

DEFAULT_HELD_SHARE = 2
"""A client's ring pins at most 1/this of itself in held frames (``max_held``)."""

ATTACH_FIELDS = ("pid", "to_broker", "to_client", "broker_bell", "client_bell")
"""The ``ATTACH`` payload's keys: the client's pid and, in that process, the descriptors
of the ring it writes, the ring it reads, the read end of the broker's bell and the
write end of its own bell."""

_PIPE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


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


class Bell:
    """One end of a pipe: the reading side polls ``fd``; the writing side ``ring``s.

    Args:
        fd: the descriptor (non-blocking), owned from now on.
        keep: another descriptor closed with this one: a ringing side keeps a read end
            of its peer's bell open, so a write never fails with ``EPIPE`` (and a
            process whose ``SIGPIPE`` is ``SIG_DFL`` is not killed by ringing a peer
            that died). The peer's death is seen on this side's own bell instead,
            whose only writer was the peer: its poll reports the hang-up.
    """

    def __init__(self, fd: int, *, keep: int | None = None) -> None:
        self.fd = fd
        self.keep = keep
        self.closed = False

    @classmethod
    def open(cls, path: str, *, reader: bool) -> Bell:
        """Open the pipe at ``path`` (the broker: ``/proc/PID/fd/N`` of the client's).

        The ringing side (``reader=False``) opens it read-write: it never gets ``EPIPE``.

        Raises:
            ValueError: ``path`` is not a pipe of this user.
            OSError: it cannot be opened.
        """
        fd = os.open(path, _OPEN_FLAGS | (os.O_RDONLY if reader else os.O_RDWR))
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode) or info.st_uid != os.geteuid():
            os.close(fd)
            raise ValueError(f"{path} is not a pipe of this user")
        return cls(fd)

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
        """Close this end (and the kept one)."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)
            if self.keep is not None:
                os.close(self.keep)


def pinned_hint(transport: object) -> str:
    """Why a broker may have gone silent to a client on a local channel, or "".

    A client that keeps views of the frames it read in place (arrays or memoryviews of
    batches, kept for good) holds its own ring's tail: once what it holds passes half
    the ring and the rest has gone to markers, the broker can write nothing more into it,
    not even a heartbeat, and the client's wait ends in silence. Said in the error then
    (until 2026-12-07 it asked whether the broker was running: found by a bug hunt).
    """
    channel = getattr(transport, "channel", None)
    if not isinstance(channel, LocalChannel):
        return ""
    ring = channel.incoming
    held: int = ring.held_bytes
    if held * 2 < ring.capacity:
        return ""
    return (f"this client holds {ring.held} frames in place that pin {held} bytes of its "
            f"{ring.capacity}-byte ring (arrays or memoryviews of batches it kept): the "
            f"broker could not write to it. Copy what you keep (np.array(table)); see "
            f"docs/arrays.md")


class LocalChannel:
    """One side of a local channel: the ring it writes, the ring it reads, two bells.

    Attributes:
        outgoing: the ring this side writes.
        incoming: the ring this side reads.
        bell: this side's bell (read end), polled beside the sockets.
        peer_bell: the other side's bell (write end).
        process_fd: the broker's side: a ``pidfd`` of the client's process, readable
            once it has ended (None where the kernel has none, and on the client's side).
        spill: sends a message over the socket (set by the owner: one too large for
            the ring goes there, announced by a marker).
        backlog: messages waiting for room in ``outgoing`` (in order).
        backlog_bytes: bytes those messages take in the ring (``record_size``).
        overflowed: a message was dropped because the backlog had reached its bound
            (the owner ends the session).
        awaiting_socket: a marker was read; the socket's next message comes next.
        unannounced: the client's side: messages sent over the socket with no marker
            (``PINNED``, and no room for one); the broker's side: socket messages of the
            session taken that no marker announced.
        owes_count: the client's side: a count record is due before the next record.
        count_wanted: the broker's side: the last count record read (the ring is read
            on once ``unannounced`` reaches it: ``stopped``).
        spills_unannounced: this side may send unannounced (the client's).
        pins_when_asked: the broker's side: the frames its reader pinned by reference
            when it was last asked for them (``fastfanout.server.local_sessions``), or 0.
        spills: messages sent over the socket because they exceed half a ring.
        pinned_spills: messages sent over the socket because the reader slept with
            every record read while the frames it still held pinned the room they
            needed (``shmring.PINNED``; they are counted in ``spills`` too).
        full: sends that found the ring full and waited (or queued).
        warn_too_large: log a warning at the first message too large for the ring (the
            client's side: a batch over half its ring silently taking the slower road
            would look like a slow broker); cleared once it has warned.
        hold_min: frames of this many bytes or more are read in place (0: none, the
            broker's side; ``HOLD_MIN_BYTES`` on a client's).
    """

    def __init__(self, outgoing: SharedRing, incoming: SharedRing, bell: Bell,
                 peer_bell: Bell, *, process_fd: int | None = None,
                 handover: tuple[int, ...] = ()) -> None:
        self.outgoing = outgoing
        self.incoming = incoming
        self.bell = bell
        self.peer_bell = peer_bell
        self.process_fd = process_fd
        self._handover = handover   # the client's: closed once the broker has them
        self.spill: Callable[[list[bytes]], object] | None = None
        self.backlog: deque[list[bytes]] = deque()
        self.backlog_bytes = 0
        self.backlog_since = 0.0
        self.overflowed = False
        self.awaiting_socket = False
        self.unannounced = 0
        self.owes_count = False
        self.count_wanted = 0
        self.spills_unannounced = False
        self.pins_when_asked = 0
        self.spills = 0
        self.pinned_spills = 0
        self.full = 0
        self.warn_too_large = False
        self.hold_min = 0

    @classmethod
    def create(cls, ring_bytes: int = DEFAULT_RING_BYTES) -> LocalChannel:
        """The client's side: two sealed rings, two pipes; nothing named anywhere.

        Raises:
            ValueError: a bad ``ring_bytes``.
            OSError: no memory for the rings, or no descriptors.
        """
        opened: list[int] = []
        rings: list[SharedRing] = []
        try:
            rings.append(SharedRing.create(ring_bytes, "fastfanout-to-broker"))
            rings.append(SharedRing.create(ring_bytes, "fastfanout-to-client"))
            broker_read, broker_write = os.pipe2(_PIPE_FLAGS)
            opened += (broker_read, broker_write)
            client_read, client_write = os.pipe2(_PIPE_FLAGS)
            opened += (client_read, client_write)
        except BaseException:
            for ring in rings:
                ring.close()
            for fd in opened:
                os.close(fd)
            raise
        channel = cls(rings[0], rings[1], Bell(client_read),
                      Bell(broker_write, keep=broker_read), handover=(client_write,))
        channel.hold_min = HOLD_MIN_BYTES
        channel.warn_too_large = True
        channel.spills_unannounced = True
        channel.incoming.max_held = ring_bytes // DEFAULT_HELD_SHARE
        # a frame let go (a batch dropped) when the broker waits for room: ring it now
        channel.incoming.on_room = channel.ring_peer
        return channel

    def attach_request(self) -> dict[str, int]:
        """The client's ``ATTACH`` payload (``ATTACH_FIELDS``): its pid, descriptors."""
        assert self._handover, "only the client's side, before attached()"
        assert self.peer_bell.keep is not None
        return {"pid": os.getpid(), "to_broker": self.outgoing.fileno(),
                "to_client": self.incoming.fileno(), "broker_bell": self.peer_bell.keep,
                "client_bell": self._handover[0]}

    @classmethod
    def attach(cls, request: object) -> LocalChannel:
        """The broker's side: open the client's rings and bells named by ``request``.

        Args:
            request: the ``ATTACH`` payload, a map of ``ATTACH_FIELDS`` to ints.

        Raises:
            MalformedFrame: ``request`` is not such a map.
            ValueError: a descriptor is not what it should be (the rings sealed memory
                files of this user, the bells pipes of this user), or no such process.
            OSError: a descriptor cannot be opened or mapped (another user's process,
                or none).
        """
        if (not isinstance(request, dict) or set(request) != set(ATTACH_FIELDS)
                or any(type(request[key]) is not int or request[key] < 0
                       for key in ATTACH_FIELDS) or request["pid"] == 0):
            raise MalformedFrame(
                f"attach payload must be a map of {', '.join(ATTACH_FIELDS)} to ints >= 0 "
                "(pid > 0)")
        pid = request["pid"]

        def path(key: str, kind: str) -> str:
            link = f"/proc/{pid}/fd/{request[key]}"
            # look before opening: the broker opens nothing but what it expects (no
            # device, no named file); what it did open is checked again after
            if not os.readlink(link).startswith(kind):
                raise ValueError(f"{key}: descriptor {request[key]} of process {pid} is "
                                 f"not a {kind.strip('/:')}")
            return link

        process_fd = _process_fd(pid)
        closers: list[Callable[[], None]] = []
        try:
            incoming = SharedRing(path("to_broker", "/memfd:"))
            closers.append(incoming.close)
            outgoing = SharedRing(path("to_client", "/memfd:"))
            closers.append(outgoing.close)
            bell = Bell.open(path("broker_bell", "pipe:"), reader=True)
            closers.append(bell.close)
            peer_bell = Bell.open(path("client_bell", "pipe:"), reader=False)
            closers.append(peer_bell.close)
            # One ring for both directions would feed the broker its own replies as
            # requests, and they answer each other for good (until 2026-12-05 one ATTACH
            # kept a broker core busy); one pipe for both bells would wake it itself.
            if os.path.samestat(os.fstat(incoming.fileno()), os.fstat(outgoing.fileno())):
                raise ValueError("to_broker and to_client are the same ring: a channel "
                                 "has one ring per direction")
            if os.path.samestat(os.fstat(bell.fd), os.fstat(peer_bell.fd)):
                raise ValueError("broker_bell and client_bell are the same pipe: a "
                                 "channel has one bell per side")
        except BaseException:
            for close in reversed(closers):
                close()
            if process_fd is not None:
                os.close(process_fd)
            raise
        return cls(outgoing, incoming, bell, peer_bell, process_fd=process_fd)

    def attached(self) -> None:
        """The client's side, once the broker answered ATTACH.

        The client closes its copy of its own bell's write end: the broker's is then
        the only one, and its closing (the broker's process ended) hangs the bell up.
        """
        for fd in self._handover:
            os.close(fd)
        self._handover = ()

    @property
    def stopped(self) -> bool:
        """The broker's side: the ring waits for socket messages.

        After a marker, or at a count record that the unannounced ones taken have not
        reached yet.
        """
        return self.awaiting_socket or self.count_wanted > self.unannounced

    def try_send(self, frames: list[bytes]) -> bool:
        """Write ``frames``; False when the ring is full and nothing was sent.

        A message too large for the ring, or one the reader's held frames keep out of
        it while the reader waits (``PINNED``: waiting could be forever), goes as a
        marker, then ``spill(frames)`` sends it over the socket; with no room for the
        marker either while the reader sleeps having read everything, the client's side
        sends it unannounced (the module's essay).
        """
        if self.owes_count:
            status = self.outgoing.write_count(self.unannounced)
            if status == FULL or status == PINNED:
                return self._no_room_for_control(status, frames)
            self.owes_count = False
            if status == WROTE_WAKE:   # its commit took the reader's sleeping flag
                self.ring_peer()
        status = self.outgoing.write(frames)
        if status == TOO_LARGE or status == PINNED:
            assert self.spill is not None, "the channel's owner sets spill"
            pinned = status == PINNED
            status = self.outgoing.write_marker()
            if status == FULL or status == PINNED:
                return self._no_room_for_control(status, frames)
            self.spills += 1
            self.pinned_spills += pinned
            if not pinned and self.warn_too_large:
                self._warn_too_large(frames)
            if status == WROTE_WAKE:
                self.ring_peer()
            self.spill(frames)
            return True
        if status == FULL:
            self._wake_reader_if_asked()
            return False
        if status == WROTE_WAKE:
            self.ring_peer()
        return True

    def _no_room_for_control(self, status: int, frames: list[bytes]) -> bool:
        """No room for a marker or a count record: send the message some other way.

        Unannounced when the reader has read everything (``PINNED``, the client's side);
        else it is not sent (False: the caller waits for room).
        """
        if status == PINNED and self.spills_unannounced:
            return self._spill_unannounced(frames)
        self._wake_reader_if_asked()
        return False

    def _spill_unannounced(self, frames: list[bytes]) -> bool:
        assert self.spill is not None, "the channel's owner sets spill"
        self.unannounced += 1
        self.owes_count = True
        self.spills += 1
        self.pinned_spills += 1
        self.spill(frames)
        return True

    def _warn_too_large(self, frames: list[bytes]) -> None:
        self.warn_too_large = False
        size = self.outgoing.record_size(frames)
        ring = self.outgoing.capacity
        fits = 1 << (2 * size - 1).bit_length()   # the power of two whose half holds it
        hint = (f"connect(ring_bytes={fits}) keeps such requests in shared memory"
                if fits <= MAX_CAPACITY else "no ring is that large")
        log.warning(
            "a request of %d bytes (one frame: a batch of messages counts whole) is larger "
            "than half this client's %d-byte local channel ring: it, and every request as "
            "large, goes over the socket instead (copied through the kernel: slower; "
            "counted in the channel's spills); %s",
            size, ring, hint)

    def _wake_reader_if_asked(self) -> None:
        # the reader sleeps holding frames it evacuates when asked (shmring's essay)
        if self.outgoing.take_reader_wake():
            self.ring_peer()

    def send_or_queue(self, frames: list[bytes], now: float, max_backlog_bytes: int) -> bool:
        """Send now, or queue behind the backlog until the reader makes room (broker).

        Args:
            frames: the message.
            now: the monotonic clock (seconds), noted when a backlog starts.
            max_backlog_bytes: most bytes the backlog may hold (ring record sizes).

        Returns:
            False when the message would take the backlog past ``max_backlog_bytes``:
            it is dropped, and so is every later one (``overflowed``: the reader is too
            slow; its session is to be ended).
        """
        if self.overflowed:
            return False
        if not self.backlog and self.try_send(frames):
            return True
        size = self.outgoing.record_size(frames)
        if self.backlog_bytes + size > max_backlog_bytes:
            self.overflowed = True
            return False
        if not self.backlog:
            self.backlog_since = now
            self.full += 1
        self.backlog.append(frames)
        self.backlog_bytes += size
        return True

    def flush_backlog(self, now: float) -> bool:
        """Send what the backlog holds while there is room; True when it is empty."""
        backlog = self.backlog
        while backlog:
            if not self.try_send(backlog[0]):
                return False
            self.backlog_bytes -= self.outgoing.record_size(backlog.popleft())
            self.backlog_since = now
        return True

    def ring_peer(self) -> None:
        """Ring the other side's bell."""
        self.peer_bell.ring()

    def read(self, max_messages: int) -> list[list[bytes] | int | None]:
        """Up to ``max_messages`` messages from ``incoming``.

        None stands for a marker, an int for a count record (see the module's essay). A
        frame of ``hold_min`` bytes or more may be a ``RingFrame`` (a read-only buffer in
        the ring, see the module essay). A writer that waits for the room this read
        (or a release of held frames) made is woken.
        """
        messages, wake_writer = self.incoming.read(max_messages, self.hold_min)
        if wake_writer:
            self.ring_peer()
        return messages

    @property
    def hold_refusals(self) -> int:
        """Frames copied out because holding them would pin more than ``max_held``."""
        refusals: int = self.incoming.hold_refusals
        return refusals

    def heard(self, fd: int) -> None:
        """A poll saw ``fd`` (the bell, or the client's process) ready: drain the bell.

        Raises:
            PeerGone: the bell hung up, or ``fd`` is the ended process's ``pidfd``.
        """
        if fd == self.process_fd:
            raise PeerGone("the client's process ended")
        self.bell.drain()

    def close(self, *, keep_outgoing: bool = False) -> None:
        """Unmap the rings, close the bells and descriptors.

        The channel itself is gone once the other side has done so too. With
        ``keep_outgoing`` the ring this side writes stays open: the broker keeps a
        consumer's ring while frames its references pin are still viewed there
        (``fastfanout.server.local_sessions``), and closes it itself.
        """
        if not keep_outgoing:
            self.outgoing.close()
        self.incoming.on_room = None   # the ring may outlive the channel (held frames)
        self.incoming.close()
        self.bell.close()
        self.peer_bell.close()
        self.attached()   # the client's: a channel never attached closes all
        if self.process_fd is not None:
            os.close(self.process_fd)
            self.process_fd = None


def _process_fd(pid: int) -> int | None:
    """A ``pidfd`` of process ``pid`` (readable once it ends), None where unsupported.

    Raises:
        ValueError: there is no process ``pid``.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except (ProcessLookupError, OverflowError):   # past a pid_t: no process either
        raise ValueError(f"there is no process {pid}") from None
    except OSError:   # a kernel without pidfds (before 5.3), or a restricted one
        return None
    return fd   # close-on-exec, as every pidfd
