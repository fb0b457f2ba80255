"""The one module that imports ZeroMQ: sockets of the broker and of its clients.

Design
------
Prior art: pyzmq itself keeps its native backend behind one module and layers friendly
classes on top; fastfanout does the same one level up. Everything else in the package
speaks in lists of ``bytes`` frames and in the small transport exceptions of
``fastfanout.errors``, so the server and
the clients can be read (and tested) without knowing socket options, and a future
transport would replace this file only. ``zmq.asyncio`` lives here too (the
``Async*`` classes), so "only one module imports zmq" holds for the asyncio face as well.

Invariants:

- The broker's ROUTER has ``ROUTER_MANDATORY``: a reply to a peer that is gone raises
  (``Unroutable``) instead of vanishing, so the broker learns of every lost reply.
- The broker never waits to send a reply: each peer has a queue of at most
  ``reply_high_water_mark`` messages (``SNDHWM``), and a send that finds it full fails
  at once (``WouldBlock``); the server then ends that client's session. One client that
  stops reading never stalls the others.
- The broker's ipc socket files are mode 0600 whatever the umask: only this user may
  connect (the umask is narrowed around the ``bind`` that creates them).
- The broker's XPUB has ``XPUB_NODROP`` under the ``wait`` slow-listener policy: when a
  listener's queue is full the send fails (``WouldBlock``) and the server waits, then
  drops and counts. Under ``drop`` it has not: libzmq drops for that listener alone.
- Each (un)subscription the XPUB reads comes with the file descriptor of the connection
  that sent it (libzmq's message metadata), so the server counts prefixes per peer; only
  libzmq's own unsubscriptions for a connection that ended come without one.
- ``MAXMSGSIZE`` is set on the ROUTER: a bigger frame makes libzmq drop that peer's
  connection; the monitor reports the disconnect, which the server counts.
- Each socket is used by one thread at a time; the server's wake-up is a socketpair
  (thread- and signal-safe), never a shared socket.
- With CURVE, a ZAP handler (pyzmq's ``ThreadAuthenticator``) runs in the broker's
  context before any socket binds, so no handshake is ever judged without it: a client
  whose public key is not in the allowed directory (or a client without CURVE) completes
  no handshake and hears nothing. "Allow any client" must be asked for by name
  (``CURVE_ALLOW_ANY``); it still needs the broker's public key and encrypts everything.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import math
import os
import socket as _socket
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from fastfanout.errors import PeerLost, TransportError, Unroutable, WouldBlock

log = logging.getLogger("fastfanout.transport")

__all__ = [
    "CURVE_ALLOW_ANY",
    "DEALER_HIGH_WATER_MARK",
    "MAX_LISTENER_FRAME_BYTES",
    "MAX_SUBSCRIPTION_BYTES",
    "AsyncDealerTransport",
    "AsyncSubTransport",
    "CurveKeys",
    "DealerTransport",
    "Peer",
    "ServerTransport",
    "SubTransport",
    "check_curve_clients",
    "client_curve",
    "curve_keypair",
    "is_ipv6",
    "is_loopback",
    "load_curve_keys",
]

EVENT_DISCONNECTED: Final = zmq.EVENT_DISCONNECTED
"""Monitor event: a peer connection closed (value: its file descriptor)."""
CURVE_ALLOW_ANY: Final = "*"
"""``curve_clients`` value that admits any client knowing the broker's public key."""



# Plain-int flags: pyzmq's send_multipart combines enum flags for every part (a few
# microseconds per message on the hot path); the same frames go out part by part here.
_SNDMORE: Final = int(zmq.SNDMORE)
_NOBLOCK: Final = int(zmq.NOBLOCK)


# pyzmq's Cython socket class: its send skips the Python wrapper of zmq.Socket.send (half
# the cost of a small send); the frames here are always bytes, which it takes as they are.
_base_send: Final[Any] = getattr(zmq.Socket.__mro__[1], "send")  # noqa: B009


def _send_frames(sock: zmq.Socket[Any], frames: list[bytes], flags: int) -> None:
    """Send a multipart message; frames of 64 KiB or more go without a copy."""
    last = len(frames) - 1
    more = _SNDMORE | flags
    for index in range(last):
        _base_send(sock, frames[index], more)
    _base_send(sock, frames[last], flags, copy=len(frames[last]) < 65536)

_POLLIN: Final = int(zmq.POLLIN)
_EVENTS: Final = int(zmq.EVENTS)


def _recv_ready(sock: zmq.Socket[Any], ask: bool = True) -> list[bytes] | None:
    """A message if one is queued, else None.

    ``ask``: ask the socket first. A receive that finds nothing raises ``zmq.Again``,
    whose construction costs pyzmq more than the question, and the loops that drain a
    socket end with such a miss each time they run. After a poll that saw the socket
    readable, the question is skipped.
    """
    if ask and not int(sock.getsockopt(_EVENTS)) & _POLLIN:
        return None
    try:
        frames: list[bytes] = sock.recv_multipart(_NOBLOCK)
    except zmq.Again:   # the message went away between the question and the receive
        return None
    return frames


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CURVE key material, Z85-encoded (40 bytes each).

    Attributes:
        public_key: this side's public key.
        secret_key: this side's secret key.
        server_key: the broker's public key (clients only).
    """

    public_key: bytes
    secret_key: bytes
    server_key: bytes | None = None


def curve_keypair() -> tuple[bytes, bytes]:
    """Make a new CURVE key pair ``(public, secret)``, Z85-encoded."""
    public, secret = zmq.curve_keypair()
    return public, secret


def load_curve_keys(secret_file: str, server_public_file: str | None = None) -> CurveKeys:
    """Load keys from ``zmq.auth`` certificate files.

    Args:
        secret_file: a ``.key_secret`` certificate (public and secret key).
        server_public_file: the broker's ``.key`` certificate (clients only).

    Raises:
        TransportError: a file is missing or is not a certificate, or the secret
            certificate holds no secret key.
    """
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot load CURVE keys from {secret_file}: {exc}") from None
    if secret is None:
        raise TransportError(
            f"{secret_file} holds no secret key (give the .key_secret certificate)")
    server_key = None
    if server_public_file is not None:
        server_key = _load_public_key(server_public_file)
    return CurveKeys(public, secret, server_key)


def _load_public_key(value: bytes | str | os.PathLike[str]) -> bytes:
    """A Z85 public key given as 40 bytes / characters, or as a certificate file."""
    if isinstance(value, bytes | str) and len(value) == 40 and not os.path.exists(value):
        key = value.encode("ascii") if isinstance(value, str) else value
        try:
            z85.decode(key)
        except (ValueError, KeyError):
            raise TransportError(f"{value!r} is not a Z85-encoded CURVE key") from None
        return key
    path = os.fsdecode(value)
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot load a CURVE public key from {path}: {exc}") from None
    return public


def client_curve(server_key: bytes | str | os.PathLike[str],
                 keys: CurveKeys | tuple[bytes, bytes] | str | os.PathLike[str] | None = None
                 ) -> CurveKeys:
    """The CURVE material a client needs to talk to a CURVE broker.

    Args:
        server_key: the broker's public key: Z85 (40 characters) or its ``.key``
            certificate file.
        keys: this client's key pair: ``(public, secret)`` in Z85, a ``.key_secret``
            certificate file (``zmq.auth.create_certificates``), ``CurveKeys``, or None
            for a fresh pair (enough for a broker that allows any client).

    Raises:
        TransportError: a key or certificate cannot be read.
    """
    server = _load_public_key(server_key)
    if keys is None:
        public, secret = curve_keypair()
    elif isinstance(keys, CurveKeys):
        public, secret = keys.public_key, keys.secret_key
    elif isinstance(keys, tuple):
        public, secret = keys
    else:
        loaded = load_curve_keys(os.fsdecode(keys))
        public, secret = loaded.public_key, loaded.secret_key
    return CurveKeys(public, secret, server)


def check_curve_clients(curve_clients: str | os.PathLike[str]) -> str:
    """Validate a ``curve_clients`` setting; returns it as a string.

    Args:
        curve_clients: ``CURVE_ALLOW_ANY`` or a directory of allowed clients' public
            certificates (``*.key`` files as ``zmq.auth.create_certificates`` writes).

    Raises:
        TransportError: the directory does not exist or holds no ``*.key`` file.
    """
    location = os.fsdecode(curve_clients)
    if location == CURVE_ALLOW_ANY:
        return location
    directory = Path(location)
    if not directory.is_dir():
        raise TransportError(
            f"curve_clients {location!r} must be a directory of client public "
            f"certificates (*.key) or {CURVE_ALLOW_ANY!r} to allow any client")
    if not any(directory.glob("*.key")):
        raise TransportError(
            f"curve_clients directory {location} holds no public certificate (*.key): "
            f"no client could connect")
    return location


def is_loopback(endpoint: str) -> bool:
    """True for ``ipc://`` / ``inproc://`` and for ``tcp://`` on a loopback address."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: not provably loopback


def _raise_from(exc: zmq.ZMQError, what: str) -> TransportError:
    if exc.errno == zmq.EAGAIN:
        return WouldBlock(what)
    if exc.errno == zmq.EHOSTUNREACH:
        return Unroutable(what)
    return TransportError(f"{what}: {exc}")


MAX_SUBSCRIPTION_BYTES: Final = 256
"""Longest prefix a stream listener may subscribe (bytes); no prefix that can match a
topic name (256 characters at most) or a probe (64 bytes) is longer. libzmq keeps some
20 KiB per subscription of that length (measured with libzmq 4.3.5), so with
``max_stream_subscriptions`` a listener connection holds about 22 MB at most. The
broker ends the connection of a listener that subscribes a longer one (see
``fastfanout.server.streams``)."""
MAX_LISTENER_FRAME_BYTES: Final = 4096
"""``ZMQ_MAXMSGSIZE`` of the XPUB: the longest frame a stream listener may send (bytes);
libzmq disconnects one that sends a longer one (counted in SERVER_STATS
``stream_disconnects``, with every other lost listener connection). Room for a CURVE
handshake's INITIATE (~300 bytes, its metadata with it) and a subscription of
``MAX_SUBSCRIPTION_BYTES``; without it one subscription of 10 MB (libzmq keeps a trie
node per byte of a prefix) stalled the broker for seconds."""

Peer = tuple[int, str, str]
"""A stream peer's connection, as the XPUB tells it: (file descriptor, peer address, CURVE
user id or ""). The descriptor alone may be reused by a new connection as soon as one
ends; over ipc the address names the peer's process (``host:uid:gid:pid``)."""


def _property(message: Any, name: str) -> str:
    """A metadata property of a received message, or "" when it has none."""
    try:
        return str(message.get(name))
    except zmq.ZMQError:
        return ""


class ServerTransport:
    """The broker's sockets: ROUTER (commands), XPUB (streams), a monitor and a waker.

    Args:
        endpoint: where the ROUTER binds.
        stream_endpoint: where the XPUB binds.
        max_frame_bytes: ``ZMQ_MAXMSGSIZE`` (bytes): a bigger frame drops the peer.
        curve: the broker's CURVE keys, or None for no encryption.
        curve_clients: with ``curve``: a directory of allowed clients' public
            certificates, or ``CURVE_ALLOW_ANY``.
        reply_high_water_mark: messages (replies and pushes) queued for one client
            before a reply to it fails with ``WouldBlock`` (the client does not read).
        stream_high_water_mark: stream messages queued per listener before libzmq drops
            for it (or, with ``stream_no_drop``, refuses the send).
        stream_no_drop: set ``XPUB_NODROP``: a send that a full listener queue cannot take
            fails (``WouldBlock``) for everyone instead of being dropped for that listener.
    """

    def __init__(self, endpoint: str, stream_endpoint: str, *, max_frame_bytes: int,
                 curve: CurveKeys | None = None, curve_clients: str | None = None,
                 reply_high_water_mark: int = 10_000,
                 stream_high_water_mark: int = 10_000, stream_no_drop: bool = True) -> None:
        self._authenticator: ThreadAuthenticator | None = None
        if curve is not None:
            if curve_clients is None:
                raise TransportError(
                    f"CURVE needs curve_clients: a directory of allowed client public "
                    f"certificates, or {CURVE_ALLOW_ANY!r} to allow any client")
            location = check_curve_clients(curve_clients)
        self._context = zmq.Context()
        if curve is not None:
            # the ZAP handler must run before the first bind: a handshake that finds no
            # handler is let through by libzmq
            self._authenticator = ThreadAuthenticator(
                self._context, log=logging.getLogger("fastfanout.auth"))
            self._authenticator.start()
            self._authenticator.configure_curve(domain="*", location=location)
        self.router = self._context.socket(zmq.ROUTER)
        self.xpub = self._context.socket(zmq.XPUB)
        self._sockets: list[zmq.Socket[Any]] = [self.router, self.xpub]
        try:
            for sock in self._sockets:
                sock.setsockopt(zmq.LINGER, 2000)
                if curve is not None:
                    sock.setsockopt(zmq.CURVE_SERVER, 1)
                    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.router.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
            self.router.setsockopt(zmq.SNDHWM, reply_high_water_mark)
            self.router.setsockopt(zmq.RCVHWM, 100_000)
            self.xpub.setsockopt(zmq.XPUB_NODROP, int(stream_no_drop))
            self.xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
            self.xpub.setsockopt(zmq.SNDHWM, stream_high_water_mark)
            self.xpub.setsockopt(zmq.MAXMSGSIZE, MAX_LISTENER_FRAME_BYTES)
            _bind_private(self.router, endpoint)
            _bind_private(self.xpub, stream_endpoint)
            self._monitor = self.router.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED)
            self._sockets.append(self._monitor)
            # what getsockname() says of a connection to the stream endpoint: its path
            # (ipc) or port (tcp), for cut_stream_peer
            stream_bound = str(self.xpub.getsockopt_string(zmq.LAST_ENDPOINT))
            self._stream_local: str | int = (
                stream_bound[6:].replace("@", "\0", 1) if stream_bound.startswith("ipc://@")
                else stream_bound[6:] if stream_bound.startswith("ipc://")
                else int(stream_bound.rsplit(":", 1)[1]))
            self._stream_monitor = self.xpub.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED)
            self._sockets.append(self._stream_monitor)
            # the ipc listeners (libzmq aborts when their accept() meets EMFILE), by the
            # endpoint each was bound to: pause_accepting() unbinds them
            self._listeners = [path for path in map(_socket_file, (self.router, self.xpub))
                               if path]
            self._parked: list[str] = []
        except zmq.ZMQError as exc:
            self.close(linger=0)
            raise TransportError(f"cannot bind {endpoint} / {stream_endpoint}: {exc}") from None
        self._wake_reader, self._wake_writer = _socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._poller = zmq.Poller()
        self._poller.register(self.router, zmq.POLLIN)
        self._poller.register(self.xpub, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poller.register(self._stream_monitor, zmq.POLLIN)
        self._poller.register(self._wake_reader.fileno(), zmq.POLLIN)
        self._watched: set[int] = set()
        self.accepting = True
        """Whether the ipc listeners take new connections (see ``pause_accepting``)."""
        self.closed = False

    def wait(self, timeout: float) -> tuple[bool, bool, bool, list[int]]:
        """Block up to ``timeout`` seconds.

        Returns (requests waiting, subscriptions waiting, monitor events waiting, the
        watched descriptors that are readable or hung up).
        """
        try:
            # whole milliseconds, rounded up: a timer due in 0.4 ms is not polled for in a
            # busy loop of 0 ms waits
            events = dict(self._poller.poll(max(0, math.ceil(timeout * 1000))))
        except zmq.ZMQError as exc:
            if exc.errno == errno.EINTR:
                return False, False, False, []
            raise
        wake = self._wake_reader.fileno()
        if wake in events:
            try:
                self._wake_reader.recv(4096)
            except BlockingIOError:
                pass
        ready = [fd for fd in events if type(fd) is int and fd != wake] if self._watched else []
        return (self.router in events, self.xpub in events,
                self._monitor in events or self._stream_monitor in events, ready)

    def watch(self, fd: int) -> None:
        """Also wake ``wait`` when ``fd`` is readable or hung up (a local channel's bell)."""
        self._poller.register(fd, zmq.POLLIN)
        self._watched.add(fd)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed)."""
        if fd in self._watched:
            self._watched.discard(fd)
            self._poller.unregister(fd)

    def admit_curve_client(self, public_key: bytes) -> None:
        """Admit one more CURVE client key, in memory only (nothing is written to disk).

        The ZAP handler checks its allowed set on every handshake, so the key is admitted
        from the next connection on, for as long as this transport lives. A no-op when
        any client is admitted (``CURVE_ALLOW_ANY``).

        Args:
            public_key: the client's public key, Z85-encoded (40 bytes).

        Raises:
            TransportError: this transport has no CURVE, or the key is not Z85.
        """
        if self._authenticator is None:
            raise TransportError("this broker has no CURVE: there is no key to admit")
        if len(public_key) != 40:
            raise TransportError(f"{public_key!r} is not a Z85-encoded CURVE public key "
                                 f"(40 bytes)")
        if not self._authenticator.allow_any:
            # pyzmq's handler looks keys up in certs[domain] (Z85 bytes -> truthy); one
            # dict store, atomic under the GIL, while its thread reads the dict
            self._authenticator.certs.setdefault("*", {})[public_key] = True

    def wake_fileno(self) -> int:
        """The descriptor whose write ends a ``wait`` (non-blocking; closed by ``close``).

        ``serve()`` hands it to ``signal.set_wakeup_fd``: a signal then ends the wait
        whatever thread the kernel delivered it to.
        """
        return self._wake_writer.fileno()

    def wake(self) -> None:
        """Make a ``wait`` in another thread return now (thread- and signal-safe)."""
        try:
            self._wake_writer.send(b"\x00")
        except (BlockingIOError, OSError):
            pass

    def recv_request(self, polled: bool = False) -> list[bytes] | None:
        """One request ``[routing_id, header, *payload]``, or None when none is queued.

        ``polled``: a poll just saw requests waiting (the socket is not asked again).
        """
        return _recv_ready(self.router, not polled)

    def send_reply(self, frames: list[bytes]) -> None:
        """Send ``[routing_id, header, *payload]`` without waiting.

        Only the routing frame can fail (libzmq checks the peer's queue there), so a
        message is sent whole or not at all.

        Raises:
            Unroutable: the client is gone.
            WouldBlock: the client's queue holds ``reply_high_water_mark`` messages.
        """
        try:
            _send_frames(self.router, frames, _NOBLOCK)
        except zmq.ZMQError as exc:
            raise _raise_from(exc, "reply") from None

    def publish_stream(self, frames: list[bytes]) -> None:
        """Send one stream message ``[topic, records]`` to every matching listener.

        Raises:
            WouldBlock: some listener's queue is full (nothing was sent to anyone).
        """
        try:
            _send_frames(self.xpub, frames, _NOBLOCK)
        except zmq.ZMQError as exc:
            raise _raise_from(exc, "stream") from None

    def recv_subscription(self) -> tuple[bool | None, bytes, Peer | None] | None:
        """The next frame a listener sent, or None when none is waiting.

        Returns ``(subscribe, prefix, peer)``: ``subscribe`` True for a subscription
        (``0x01`` + prefix), False for an unsubscription (``0x00`` + prefix), None for any
        other frame (``prefix`` is then the whole frame); ``peer`` names the connection it
        came from (see ``Peer``), or is None for libzmq's own unsubscriptions of a
        connection that ended (and on transports without metadata).
        """
        try:
            message = self.xpub.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        frame = message.bytes
        try:
            peer: Peer | None = (int(message.get(zmq.SRCFD)),
                                 _property(message, "Peer-Address"),
                                 _property(message, "User-Id"))
        except zmq.ZMQError:
            peer = None
        if not frame or frame[0] > 1:
            return None, frame, peer
        return frame[0] == 1, frame[1:], peer

    def cut_stream_peer(self, peer: Peer) -> bool:
        """End one listener's connection to the XPUB (it broke a limit); True if cut.

        libzmq has no call that drops one peer of a socket, so this shuts the
        connection's socket down (``shutdown``, never ``close``: the descriptor stays
        libzmq's, which then sees the end of the stream, drops the connection and sends
        its own unsubscriptions of every prefix the peer held). Only a descriptor that
        is still a connection to the stream endpoint, from the same peer (over ipc, the
        same process; over tcp, the same address), is shut: one that libzmq closed and
        the system gave to another socket since is left alone (False).
        """
        fd, address, _user = peer
        try:
            duplicate = os.dup(fd)
        except OSError:
            return False
        try:
            connection = _socket.socket(fileno=duplicate)
        except OSError:   # no socket any more (a file or pipe took the number)
            os.close(duplicate)
            return False
        with connection:
            try:
                local = connection.getsockname()
                if connection.family == _socket.AF_UNIX:
                    if isinstance(local, bytes):   # an abstract socket's name
                        local = local.decode(errors="replace")
                    pid = struct.unpack("3i", connection.getsockopt(
                        _socket.SOL_SOCKET, _socket.SO_PEERCRED, 12))[0]
                    same = (local == self._stream_local
                            and address.rsplit(":", 1)[-1] == str(pid))
                else:
                    same = (local[1] == self._stream_local
                            and connection.getpeername()[0] == address)
                if not same:
                    return False
                connection.shutdown(_socket.SHUT_RDWR)
            except OSError:
                return False
        return True

    def monitor_events(self) -> tuple[int, int, int]:
        """Read every waiting monitor event.

        Returns:
            (connections the ROUTER lost, connections either listener accepted,
            connections the XPUB lost).
        """
        lost = accepted = stream_lost = 0
        for monitor in (self._monitor, self._stream_monitor):
            while True:
                try:
                    frames = monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if struct.unpack_from("<H", frames[0])[0] == zmq.EVENT_ACCEPTED:
                    accepted += 1
                elif monitor is self._monitor:
                    lost += 1
                else:
                    stream_lost += 1
        return lost, accepted, stream_lost

    def pause_accepting(self) -> bool:
        """Stop new connections to the ipc endpoints: their socket files are moved aside.

        libzmq (4.3.5) aborts the process when an ipc listener's ``accept()`` fails with
        ``EMFILE``, so a broker about to run out of descriptors stops being reachable
        instead. The listeners stay bound and every connection made stays (unbinding
        would close them all): a client connecting finds no socket file, as if no broker
        ran there, and retries; connections already in the listen backlog are still
        accepted. Each file is renamed to a hidden name in its directory and linked back
        by ``resume_accepting``. tcp listeners are left alone (their ``accept()``
        survives ``EMFILE``), and so are abstract ones (they have no file).

        Returns:
            True if listening was paused now; False if it already was, or there is no
            socket file to move.
        """
        if not self.accepting or not self._listeners:
            return False
        for path in self._listeners:
            try:
                os.rename(path, _parked(path))
            except OSError as exc:
                log.warning("cannot move the socket file %s aside: %s", path, exc)
                continue
            self._parked.append(path)
        if not self._parked:
            return False
        self.accepting = False
        return True

    def resume_accepting(self) -> bool:
        """Put back the socket files ``pause_accepting`` moved aside.

        A file is linked back (never over something that took its place meanwhile) and
        its hidden name removed.

        Returns:
            True once every file is back; False if one could not be (tried again on the
            next call).
        """
        while self._parked:
            path = self._parked[0]
            try:
                os.link(_parked(path), path)
            except FileExistsError:
                log.warning("%s was taken while this broker paused: it stays unreachable "
                            "there", path)
            except OSError as exc:
                log.warning("cannot put the socket file %s back yet: %s", path, exc)
                return False
            try:
                os.unlink(_parked(path))
            except OSError:
                pass
            self._parked.pop(0)
        self.accepting = True
        return True

    def close(self, linger: float = 2.0) -> None:
        """Close every socket (waiting up to ``linger`` seconds for replies) and the context."""
        if getattr(self, "closed", False):
            return
        self.closed = True
        if getattr(self, "_parked", None):
            self.resume_accepting()   # libzmq unlinks the file by its name as it closes
        for monitored in (self.router, self.xpub):
            try:
                monitored.disable_monitor()
            except zmq.ZMQError:
                pass
        for sock in self._sockets:
            sock.close(linger=int(linger * 1000))
        for end in (getattr(self, "_wake_reader", None), getattr(self, "_wake_writer", None)):
            if end is not None:
                end.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()


PRIVATE_SOCKET_UMASK: Final = 0o177
"""The umask of the ``bind`` that creates an ipc socket file: mode 0600 (this user)."""


def is_ipv6(endpoint: str) -> bool:
    """True for a ``tcp://`` endpoint on an IPv6 address (``tcp://[::1]:5555``).

    libzmq's tcp sockets are IPv4 only until ``ZMQ_IPV6`` is set: such an endpoint then
    fails to bind ("No such device") or to connect, as if the address were not there.
    """
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    return host.startswith("[") and host.endswith("]")


def _ipc_file(endpoint: str) -> str:
    """The socket file of an ipc endpoint ("" for tcp, an abstract name, the wildcard)."""
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else ""
    return "" if path.startswith("@") or path == "*" else path


def _socket_file(sock: zmq.Socket[Any]) -> str:
    """The socket file of the ipc endpoint ``sock`` was bound to (``_ipc_file``)."""
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return _ipc_file(value.decode() if isinstance(value, bytes) else str(value))


def _parked(path: str) -> str:
    """Where ``pause_accepting`` moves the socket file ``path``: a hidden name beside it."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.paused")


def _bind_private(sock: zmq.Socket[Any], endpoint: str) -> None:
    """Bind; an ipc socket file is created with mode 0600 whatever the process umask.

    libzmq's ``bind`` creates the file in this thread with the process umask, which may
    let other users connect (0777 under umask 000). A ``chmod`` after the bind would
    leave a window in which they could; the umask is narrowed for the ``bind`` instead
    (process-wide for that moment: a file another thread creates meanwhile only gets a
    narrower mode).
    """
    if not _ipc_file(endpoint):   # tcp, abstract, wildcard
        if is_ipv6(endpoint):
            sock.setsockopt(zmq.IPV6, 1)
        sock.bind(endpoint)
        return
    previous = os.umask(PRIVATE_SOCKET_UMASK)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(previous)


def _connect_client(context: zmq.Context[Any], kind: int, options: list[tuple[int, Any]],
                    curve: CurveKeys | None, endpoint: str, what: str,
                    before_connect: Callable[[Any], None] | None = None) -> Any:
    """A client socket of ``kind`` with ``options`` (and CURVE), connected to ``endpoint``.

    ``before_connect(socket)`` runs before the connect (a monitor attached later can
    miss the connection's first events: libzmq's I/O thread may finish the handshake
    before the caller's next line). On failure the context is destroyed and
    ``TransportError`` says what could not be done.
    """
    try:
        sock: Any = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            if curve.server_key is None:
                sock.close()
                raise TransportError("CURVE client keys need the broker's public key")
            sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
        for option, value in options:
            sock.setsockopt(option, value)
        if is_ipv6(endpoint):
            sock.setsockopt(zmq.IPV6, 1)
        if before_connect is not None:
            before_connect(sock)
        sock.connect(endpoint)
    except (zmq.ZMQError, TransportError) as exc:
        context.destroy(linger=0)
        raise TransportError(f"cannot {what} {endpoint}: {exc}") from None
    return sock


def _close_owned(sock: Any, monitor: Any, context: Any, pid: int) -> None:
    """Close a client socket, its monitor (if any) and their context, in that order.

    Nothing in a forked child (``pid`` is the creator's): they are the parent's, and
    pyzmq's own close and term do nothing there either.
    """
    if os.getpid() != pid:
        return
    if monitor is not None:
        _close_monitor(sock, monitor)
    sock.close(linger=0)
    context.term()


class _OwnedSocket:
    """A socket with a context of its own, closed together.

    A transport dropped unclosed (a client nobody closed, garbage once its event loop
    ended) is closed when it is collected. Until 2026-12-05 the garbage collector found
    the context and its sockets in one cycle: pyzmq's weak list of the context's sockets
    was already cleared when the context's finalizer ended it, so ``term()`` waited for
    sockets nothing would close, and the process hung in whichever thread collected.
    The finalizer holds the socket, its monitor and the context (so they are never
    garbage before it runs) and is the one way they are closed.
    """

    _socket: Any
    _context: Any
    _monitor: Any = None   # a DEALER's link monitor (``_attach_monitor``)
    closed: bool
    _closer: weakref.finalize[..., _OwnedSocket]

    def _attach_monitor(self, sock: Any) -> None:
        """Watch ``sock``'s link (``_Link``): its ``before_connect``, for the monitored."""
        self._monitor = sock.get_monitor_socket(_LINK_EVENTS)

    def _close_when_dropped(self) -> None:
        """Arm the finalizer that closes the socket, its monitor and the context."""
        self._closer = weakref.finalize(self, _close_owned, self._socket, self._monitor,
                                        self._context, os.getpid())
        self._closer.atexit = False   # at exit pyzmq leaves contexts alone; so do we

    def close(self) -> None:
        """Close the socket and its context (pending messages are dropped)."""
        if not self.closed:
            self.closed = True
            self._closer()


class _ClientSocket(_OwnedSocket):
    """A connected client socket (DEALER or SUB) with its own context and poller."""

    def __init__(self, endpoint: str, kind: int, options: list[tuple[int, Any]],
                 curve: CurveKeys | None, what: str,
                 before_connect: Callable[[Any], None] | None = None) -> None:
        self._context = zmq.Context()
        self._socket = _connect_client(self._context, kind, options, curve, endpoint, what,
                                       before_connect)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._woken_only = False   # a wake descriptor is watched (``watch_wake``)
        self.closed = False
        self._close_when_dropped()

    def watch_wake(self, fd: int) -> None:
        """End a ``recv`` wait early (it returns None) once ``fd`` is readable.

        The blocking client's callers so wake a thread that waits in ``recv`` with the
        client's lock held; the caller drains ``fd``.
        """
        self._poller.register(fd, zmq.POLLIN)
        self._woken_only = True

    def recv(self, timeout: float) -> list[bytes] | None:
        """The next message, waiting up to ``timeout`` seconds (0: only if one is here).

        None also when the wake descriptor (``watch_wake``) ended the wait first.
        """
        if timeout > 0:
            events = self._poller.poll(int(timeout * 1000) or 1)
            if not events:
                return None
            if self._woken_only and all(item is not self._socket for item, _ in events):
                return None
            return _recv_ready(self._socket, ask=False)
        return _recv_ready(self._socket)


# A client's DEALER is watched by a monitor: libzmq reconnects a lost connection by
# itself and says nothing, so a client whose broker was killed (kill -9: no GOODBYE)
# waited for replies that could never come (a reply to a connection that is gone is
# dropped by the broker's ROUTER). The monitor reports the disconnect at once. Only a
# connection that completed its handshake counts as lost: libzmq also reports a
# disconnect for a handshake that failed (say, CURVE keys the broker does not admit),
# which the client's own timeout handles as before. The monitor is attached before the
# connect: attached after, it missed the handshake when libzmq finished it first (a
# loaded machine, 1 close in 75), and then took the disconnect for a failed handshake.
_LINK_EVENTS: Final = int(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
_HANDSHAKE_SUCCEEDED: Final = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_DISCONNECTED: Final = int(zmq.EVENT_DISCONNECTED)


class _Link:
    """Whether a DEALER's connection to the broker was made, then lost (monitor events)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.made = False

    def lost(self, frames: list[bytes]) -> PeerLost | None:
        """The error when this monitor event ends a connection that was made, else None."""
        event = struct.unpack_from("<H", frames[0])[0]   # u16 event, then u32 value
        if event == _HANDSHAKE_SUCCEEDED:
            self.made = True
        elif event == _DISCONNECTED and self.made:
            self.made = False
            return PeerLost(f"the connection to the broker at {self.endpoint} was closed (its "
                            f"process ended, or it dropped this client)")
        return None


def _close_monitor(sock: Any, monitor: Any) -> None:
    """Stop a socket's monitor and close its socket (before the context is ended)."""
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(linger=0)


def _heartbeat_options(heartbeat: tuple[float, float] | None) -> list[tuple[int, Any]]:
    """The options of libzmq's own heartbeats for a socket.

    A PING every ``heartbeat[0]`` seconds, and the connection dropped (a monitored
    disconnect) after ``heartbeat[1]`` seconds of silence. None: none (a peer's process
    that ends is still seen at once).
    """
    if heartbeat is None:
        return []
    interval, timeout = heartbeat
    return [(zmq.HEARTBEAT_IVL, max(1, int(interval * 1000))),
            (zmq.HEARTBEAT_TIMEOUT, max(1, int(timeout * 1000)))]


class _WatchedSocket(_ClientSocket):
    """A client socket whose connection is watched by a monitor (see ``_Link``).

    ``recv`` raises ``PeerLost`` once the connection it had is closed: messages that
    came before are read first.
    """

    def __init__(self, endpoint: str, kind: int, options: list[tuple[int, Any]],
                 curve: CurveKeys | None, what: str) -> None:
        self._link = _Link(endpoint)
        super().__init__(endpoint, kind, options, curve, what, self._attach_monitor)
        self._poller.register(self._monitor, zmq.POLLIN)

    def recv(self, timeout: float) -> list[bytes] | None:
        """The next message, waiting up to ``timeout`` seconds (0: only if one is here).

        Raises:
            PeerLost: the connection was lost (and no message is waiting).
        """
        if timeout > 0:
            ready = dict(self._poller.poll(int(timeout * 1000) or 1))
            if self._socket in ready:
                return _recv_ready(self._socket, ask=False)
            if self._monitor in ready:
                self._read_link()
            return None
        return _recv_ready(self._socket)

    def _read_link(self) -> None:
        """Read the monitor's events; raise ``PeerLost`` if the connection was lost."""
        while (frames := _recv_ready(self._monitor)) is not None:
            error = self._link.lost(frames)
            if error is not None:
                raise error


DEALER_HIGH_WATER_MARK: Final = 100_000
"""Requests (and replies) a client's DEALER socket queues; a send beyond waits for room."""


class DealerTransport(_WatchedSocket):
    """A client's command connection (DEALER), blocking flavour.

    ``recv`` raises ``PeerLost`` once the connection it had is closed (the broker's
    process ended, or the broker dropped it): messages that came before are read first.

    Args:
        endpoint: the broker's ROUTER endpoint.
        curve: client keys (with ``server_key``) when the broker uses CURVE.
    """

    def __init__(self, endpoint: str, curve: CurveKeys | None = None,
                 send_timeout: float | None = None) -> None:
        super().__init__(endpoint, zmq.DEALER,
                         [(zmq.SNDHWM, DEALER_HIGH_WATER_MARK),
                          (zmq.RCVHWM, DEALER_HIGH_WATER_MARK)], curve, "connect to")
        self._endpoint = endpoint
        self._send_timeout = send_timeout

    def send(self, frames: list[bytes]) -> None:
        """Queue a request (libzmq sends it in the background).

        When libzmq has no room for it — ``DEALER_HIGH_WATER_MARK`` requests queued, or no
        connection left to queue it on (libzmq ends one whose handshake failed for good:
        the endpoint is not a broker's, say its stream endpoint) — it waits up to
        ``send_timeout`` seconds for room (None: as long as it takes).

        Raises:
            PeerLost: no room came within ``send_timeout``; nothing was sent.
        """
        try:
            _send_frames(self._socket, frames, _NOBLOCK)
        except zmq.Again:
            self._send_when_room(frames)

    def _send_when_room(self, frames: list[bytes]) -> None:
        timeout = self._send_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = -1 if deadline is None else max(
                0, math.ceil((deadline - time.monotonic()) * 1000))
            if self._socket.poll(wait, zmq.POLLOUT):
                try:
                    _send_frames(self._socket, frames, _NOBLOCK)
                    return
                except zmq.Again:   # the room went between the poll and the send
                    pass
            if deadline is not None and time.monotonic() >= deadline:
                raise PeerLost(
                    f"{self._endpoint} took no request within {timeout:.1f} s: libzmq had "
                    "no room for it (no connection made to queue it on, or "
                    f"{DEALER_HIGH_WATER_MARK:,} requests queued)")


class SubTransport(_WatchedSocket):
    """A stream listener's SUB socket, blocking flavour.

    ``recv`` raises ``PeerLost`` once the connection it had is closed: the broker's
    process ended, or (with ``heartbeat``) it answered no PING for ``heartbeat[1]``
    seconds. Stream messages that came before are read first.

    Args:
        endpoint: the broker's stream (XPUB) endpoint.
        prefixes: topic-name prefixes to subscribe to (b"" for all), in this order.
        curve: client keys when the broker uses CURVE.
        high_water_mark: stream messages queued here before the broker drops for this
            listener.
        heartbeat: (seconds between PINGs, seconds of silence that drop the connection),
            or None: no heartbeats.
    """

    def __init__(self, endpoint: str, prefixes: list[bytes], curve: CurveKeys | None = None,
                 high_water_mark: int = 100_000,
                 heartbeat: tuple[float, float] | None = None) -> None:
        super().__init__(endpoint, zmq.SUB,
                         [(zmq.RCVHWM, high_water_mark), *_heartbeat_options(heartbeat),
                          *((zmq.SUBSCRIBE, p) for p in prefixes)],
                         curve, "listen on")

    def unsubscribe(self, prefix: bytes) -> None:
        """Drop one of the subscribed prefixes."""
        self._socket.setsockopt(zmq.UNSUBSCRIBE, prefix)


class _AsyncClientSocket(_OwnedSocket):
    """A connected client socket on ``zmq.asyncio``, with its own context."""

    def __init__(self, endpoint: str, kind: int, options: list[tuple[int, Any]],
                 curve: CurveKeys | None, what: str,
                 before_connect: Callable[[Any], None] | None = None) -> None:
        self._context = zmq.asyncio.Context()
        self._socket = _connect_client(self._context, kind, options, curve, endpoint, what,
                                       before_connect)
        self.closed = False
        self._close_when_dropped()

    async def recv(self) -> list[bytes]:
        """The next message (waits as long as it takes; cancel to stop)."""
        frames: list[bytes] = await self._socket.recv_multipart()
        return frames


def _retrieve(future: Any) -> None:
    if not future.cancelled():
        future.exception()


class AsyncDealerTransport(_AsyncClientSocket):
    """A client's command connection (DEALER) on ``zmq.asyncio``.

    Args:
        endpoint: the broker's ROUTER endpoint.
        curve: client keys when the broker uses CURVE.
    """

    def __init__(self, endpoint: str, curve: CurveKeys | None = None) -> None:
        self._link = _Link(endpoint)
        super().__init__(endpoint, zmq.DEALER,
                         [(zmq.SNDHWM, DEALER_HIGH_WATER_MARK),
                          (zmq.RCVHWM, DEALER_HIGH_WATER_MARK)], curve, "connect to",
                         self._attach_monitor)

    async def lost(self) -> PeerLost | None:
        """Wait until the connection, once made, is lost; the error that says so.

        Lost: the broker's process ended, or it dropped this client. None once this
        transport is closed. Cancel to stop watching.
        """
        try:
            while True:
                error = self._link.lost(await self._monitor.recv_multipart())
                if error is not None:
                    return error
        except zmq.ZMQError:   # closed under the wait
            return None

    def send_nowait(self, frames: list[bytes]) -> None:
        """Queue a request without awaiting (no task per request).

        libzmq takes it at once unless the socket's queue is full; then ``zmq.asyncio``
        sends it, in order, when there is room. A failure is dropped here (the client
        learns of a dead connection from its missing replies).
        """
        if type(frames[-1]) is not bytes:
            # zmq.asyncio may send it later: a frame that writes itself from the
            # caller's array (``RowsFrame``) is built now
            frames = [frame if type(frame) is bytes else bytes(frame) for frame in frames]
        sent = self._socket.send_multipart(frames)
        if sent.done():
            sent.exception()   # retrieved, so never logged as unretrieved
        else:
            sent.add_done_callback(_retrieve)


class AsyncSubTransport(_AsyncClientSocket):
    """A stream listener's SUB socket on ``zmq.asyncio``; ``recv`` gives [topic, records].

    ``recv`` raises ``PeerLost`` once the connection it had is closed, as
    ``SubTransport``'s does.

    Args:
        endpoint: the broker's stream endpoint.
        prefixes: topic-name prefixes to subscribe to, in this order.
        curve: client keys when the broker uses CURVE.
        high_water_mark: stream messages queued here before the broker drops for this
            listener.
        heartbeat: as ``SubTransport``'s.
    """

    def __init__(self, endpoint: str, prefixes: list[bytes], curve: CurveKeys | None = None,
                 high_water_mark: int = 100_000,
                 heartbeat: tuple[float, float] | None = None) -> None:
        self._link = _Link(endpoint)
        self._lost: PeerLost | None = None
        super().__init__(endpoint, zmq.SUB,
                         [(zmq.RCVHWM, high_water_mark), *_heartbeat_options(heartbeat),
                          *((zmq.SUBSCRIBE, p) for p in prefixes)],
                         curve, "listen on", self._attach_monitor)
        self._poller = zmq.asyncio.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    async def recv(self) -> list[bytes]:
        """The next message (waits as long as it takes; cancel to stop).

        Raises:
            PeerLost: the connection was lost (and no message is waiting).
        """
        sock = self._socket
        while True:
            # a waiting message is taken without a poll (a busy stream's common case),
            # and those that came before a loss are read before it is told
            with contextlib.suppress(zmq.Again):
                frames: list[bytes] = await sock.recv_multipart(zmq.NOBLOCK)
                return frames
            if self._lost is not None:
                raise self._lost
            ready = dict(await self._poller.poll())
            if self._monitor in ready:
                while self._lost is None:
                    try:
                        event = await self._monitor.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._lost = self._link.lost(event)

    def unsubscribe(self, prefix: bytes) -> None:
        """Drop one of the subscribed prefixes."""
        self._socket.setsockopt(zmq.UNSUBSCRIBE, prefix)


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (used by the runtime lock's messages)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
