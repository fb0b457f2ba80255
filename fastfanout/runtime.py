"""Where a broker lives on this host: the runtime directory, default endpoints, the lock.

Design
------
Prior art: the XDG base-directory spec (``$XDG_RUNTIME_DIR``: per user, mode 0700,
removed at logout), and how D-Bus, PulseAudio and Wayland put their sockets there;
``fcntl.flock`` lock files as PostgreSQL's ``postmaster.pid`` and systemd units use.

Invariants:

- ``fastfanout serve`` with no option binds ``ipc://<runtime dir>/broker.sock``, and
  ``fastfanout.connect()`` with no option connects there: no configuration needed.
- The runtime directory belongs to the current user and has mode 0700; a directory that
  does not (someone else made it, or its mode is wider) is refused, since anyone able to
  write there could impersonate the broker.
- libzmq silently unlinks and re-binds an existing ipc socket file, so two brokers on one
  endpoint would steal each other's clients. An exclusive ``flock`` on
  ``<socket path>.lock`` (or a per-port lock file for tcp) prevents that; the kernel
  drops the lock when the holder dies, so a crashed broker never blocks the next one.
- ``fastfanout serve`` keeps its data (``Broker(data_dir=...)``) by default in the per-user
  state directory, ``$XDG_STATE_HOME/fastfanout`` else ``~/.local/state/fastfanout``
  (mode 0700, ours), one sub-directory per endpoint, named by ``data_dir_name``: two
  distinct endpoints never share a data directory.
- The lock file is opened with ``O_NOFOLLOW`` relative to its directory, which was
  checked first (ours or root's, and not writable by others unless sticky, as ``/tmp``):
  a planted symbolic link or another user's file there is refused, never written to.
- A lock file is unlinked only by a process that holds its lock: a broker at its clean
  stop, or ``remove_stale_locks`` at a broker's start (the files a killed broker left,
  locked without waiting, so never one a broker holds). A broker that takes the lock
  then checks that the path still names the file it locked, and locks anew if not: a
  lock on an unlinked file would let a second broker lock the new file of that path.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import os
import re
import socket
import stat
import tempfile
from pathlib import Path
from typing import Final

from fastfanout.errors import (
    BrokerRunning,
    InvalidArgument,
    UnsafeDirectory,
    UnsafeLockFile,
)

__all__ = [
    "LOCK_ATTEMPTS",
    "EndpointLock",
    "check_endpoint",
    "data_dir_name",
    "default_data_dir",
    "default_data_dir_made",
    "default_endpoint",
    "ipc_occupant",
    "ipc_problem",
    "missing_ancestor",
    "remove_stale_locks",
    "runtime_dir",
    "state_dir",
    "stream_endpoint_for",
]

SOCKET_NAME: Final = "broker.sock"
"""File name of the default ipc socket inside the runtime directory."""
ENDPOINT_ENV: Final = "FASTFANOUT_ENDPOINT"
"""Environment variable that overrides the default endpoint (clients and server)."""


def runtime_dir() -> Path:
    """The per-user runtime directory, created with mode 0700 if missing.

    ``$XDG_RUNTIME_DIR/fastfanout`` when that variable names a directory, else
    ``<temp dir>/fastfanout-<uid>``.

    Raises:
        UnsafeDirectory: the directory exists but is not this user's or not mode 0700.
    """
    return _private_dir(_runtime_path(), "runtime directory")


def _runtime_path() -> Path:
    """Where the runtime directory is (``runtime_dir``), not made if missing."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "fastfanout"
    return Path(tempfile.gettempdir()) / f"fastfanout-{os.getuid()}"


def _private_dir(path: Path, what: str) -> Path:
    """Create ``path`` (mode 0700) if missing; refuse one not ours or wider than 0700."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UnsafeDirectory(f"{what} {path} is not a directory owned by you")
    if stat.S_IMODE(info.st_mode) != 0o700:
        raise UnsafeDirectory(
            f"{what} {path} has mode {stat.S_IMODE(info.st_mode):o}; expected 700 "
            f"(chmod 700 {path})")
    return path


def state_dir() -> Path:
    """The per-user state directory of fastfanout, created with mode 0700 if missing.

    ``$XDG_STATE_HOME/fastfanout`` when that variable is set to an absolute path (the
    XDG base-directory spec ignores a relative one), else ``~/.local/state/fastfanout``;
    missing parents are created with mode 0700, as the spec asks.

    Raises:
        UnsafeDirectory: the directory exists but is not this user's or not mode 0700.
    """
    root = _state_home()
    missing = []
    parent = root
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
    return _private_dir(root / "fastfanout", "state directory")


def _state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME", "")
    return Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"


def missing_ancestor(path: str | os.PathLike[str] | None) -> str | None:
    """The outermost directory of ``path`` (itself included) that does not exist yet.

    What making ``path`` creates; None when ``path`` is None or exists.
    """
    if path is None:
        return None
    missing = None
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        missing = current
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return missing


def data_dir_name(endpoint: str) -> str:
    """The name of ``endpoint``'s data directory inside ``state_dir()``.

    ``<scheme>-<readable part>-<hash>``: the scheme (``ipc`` or ``tcp``), the socket's
    file name (ipc) or ``HOST_PORT`` (tcp) with every character but letters, digits,
    ``.``, ``-`` and ``_`` replaced by ``_`` (at most 48 of them), and the first 16 hex
    digits of the SHA-256 of the whole endpoint, an ipc path made absolute first. The
    hash tells apart endpoints whose readable parts agree (``/a/broker.sock`` and
    ``/b/broker.sock``), so distinct endpoints never share a directory; the same
    endpoint always finds its own again. Two spellings of one address
    (``tcp://localhost:5000``, ``tcp://127.0.0.1:5000``) are distinct endpoints here.

    Example: ``ipc:///run/user/1000/fastfanout/broker.sock`` ->
    ``ipc-broker.sock-<16 hex digits>``.
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, rest = "endpoint", endpoint
    if scheme == "ipc":
        rest = os.path.abspath(rest)
        readable = os.path.basename(rest) or "root"
    else:
        readable = rest.replace(":", "_")
    endpoint = f"{scheme}://{rest}"
    readable = "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in readable)[:48]
    digest = hashlib.sha256(endpoint.encode()).hexdigest()[:16]
    return f"{scheme}-{readable.lstrip('.') or '_'}-{digest}"


def default_data_dir(endpoint: str) -> Path:
    """The data directory ``fastfanout serve`` uses for ``endpoint`` without --data-dir.

    ``state_dir() / data_dir_name(endpoint)``, created with mode 0700 if missing.

    Raises:
        UnsafeDirectory: the state directory or the data directory exists but is not
            this user's, or its mode is not 0700.
    """
    return _private_dir(state_dir() / data_dir_name(endpoint), "data directory")


def default_data_dir_made(endpoint: str) -> tuple[Path, str | None]:
    """``default_data_dir(endpoint)``, and the outermost directory it created (or None).

    What a start that fails removes again, so it leaves nothing behind.
    """
    made = missing_ancestor(_state_home() / "fastfanout" / data_dir_name(endpoint))
    return default_data_dir(endpoint), made


def default_endpoint() -> str:
    """``$FASTFANOUT_ENDPOINT`` if set, else ``ipc://<runtime dir>/broker.sock``."""
    override = os.environ.get(ENDPOINT_ENV)
    if override:
        return override
    return f"ipc://{runtime_dir() / SOCKET_NAME}"


_FILE_KINDS: Final = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                      (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                      (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def ipc_occupant(endpoint: str) -> str | None:
    """What other than a socket lies at an ``ipc://`` endpoint's path, or None.

    None: nothing there, a socket (live or stale), or not an ipc file endpoint. libzmq's
    bind unlinks whatever file has the path before it binds; a broker must not delete a
    user's file (or the target's link) because an endpoint was mistyped.
    """
    if not endpoint.startswith("ipc://") or endpoint[len("ipc://"):].startswith("@"):
        return None
    try:
        mode = os.lstat(endpoint[len("ipc://"):]).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a socket")


def ipc_problem(endpoint: str) -> str | None:
    """Why nobody can be listening at an ``ipc://`` endpoint, or None when someone may.

    ZeroMQ retries a refused ipc connection silently until the client's timeout; a plain
    connect tells a missing or stale socket file at once. None for other endpoints.
    ``ipc://@NAME`` is a Linux abstract socket (libzmq's form): no file, only a listener.
    """
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    abstract = path.startswith("@")
    if not abstract and not os.path.exists(path):
        return "no such socket file"
    occupant = ipc_occupant(endpoint)
    if occupant is not None:
        return f"{path} is {occupant}, not a broker's socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect("\0" + path[1:] if abstract else path)
    except ConnectionRefusedError:
        return ("nothing listens on that abstract socket name" if abstract
                else "its socket file is stale: nothing listens on it")
    except OSError:
        return None   # not ours to judge (permissions, ...): the client will say
    finally:
        probe.close()
    return None


_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
"""One label of a DNS host name (RFC 1123): letters, digits and inner hyphens, 1 to 63."""


def host_problem(host: str) -> str | None:
    """What is wrong with the HOST of ``tcp://HOST:PORT``, or None when it is one.

    A host is ``*`` (every interface, to bind), an IPv4 address, an IPv6 address in
    brackets (``[::1]``, ``[fe80::1%eth0]``, as libzmq takes it) or a DNS host name
    (an interface name too): labels of letters, digits and hyphens, at most 63
    characters each and 253 in all. A dotted all-numeric host (``999.1.1.1``) is an
    IPv4 address or nothing, never a name. Until 2026-12 any host passed: an invalid one
    was refused later as "beyond loopback" (serve) or went unanswered (a client).
    """
    if host == "*":
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"host {host!r} is not a valid IPv6 address"
        return None
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"host {host!r} is neither an IP address nor a host name"
        return f"host {host!r}: an IPv6 address goes in brackets (tcp://[{host}]:PORT)"
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if all(label.isdigit() for label in labels):   # numbers only: an IPv4 address or none
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"host {host!r} is not a valid IPv4 address"
        return None
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return (f"host {host!r} is neither an IP address nor a valid host name (letters, "
                f"digits, hyphens and dots; at most 63 characters between dots, 253 in all)")
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with the form of ``endpoint``, or None when it is well formed.

    Well formed is ``ipc://PATH`` with a path, or ``tcp://HOST:PORT`` with a host
    (``host_problem``: ``*``, an IP address, ``[IPv6]`` or a host name) and a port from 1
    to 65535. Whether it can be bound or reached is not checked.
    """
    if endpoint.startswith("ipc://"):
        return None if endpoint[len("ipc://"):] else "ipc:// needs a socket path"
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://"):].rpartition(":")
        if not sep or not host:
            return "tcp:// needs HOST:PORT"
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            return f"port {port!r} is not a number from 1 to 65535"
        return host_problem(host)
    return "it must be ipc://PATH or tcp://HOST:PORT"


def check_endpoint(value: object, argument: str = "endpoint", *,
                   none: str | None = None) -> None:
    """Refuse ``value`` unless it is a well-formed endpoint string (or None).

    Args:
        value: what was given.
        argument: its name, for the message.
        none: what None means, when None is allowed (say, "the default endpoint").

    Raises:
        InvalidArgument: not a str (nor an allowed None), or ``endpoint_problem`` finds
            its form wrong.
    """
    if value is None and none is not None:
        return
    if type(value) is not str:
        allowed = "" if none is None else f" or None ({none})"
        raise InvalidArgument(f"{argument}={value!r:.200} must be a str (ipc://PATH or "
                              f"tcp://HOST:PORT){allowed}")
    problem = endpoint_problem(value)
    if problem is not None:
        raise InvalidArgument(f"{argument}={value!r:.200}: {problem}")


def stream_endpoint_for(endpoint: str) -> str:
    """The stream (XPUB) endpoint paired with a command endpoint.

    ``ipc://PATH`` -> ``ipc://PATH.stream``; ``tcp://HOST:PORT`` -> ``tcp://HOST:PORT+1``.

    Raises:
        InvalidArgument: the endpoint is neither ipc nor tcp with a numeric port.
    """
    if endpoint.startswith("ipc://"):
        return endpoint + ".stream"
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if port.isdigit() and 0 < int(port) < 65535:
            return f"tcp://{host}:{int(port) + 1}"
        if port.isdigit() and int(port) == 65535:
            raise InvalidArgument(
                f"endpoint {endpoint!r}: the stream endpoint takes the next port, and 65535 "
                f"is the last one: choose a port from 1 to 65534")
    raise InvalidArgument(
        f"endpoint {endpoint!r} must be ipc://PATH or tcp://HOST:PORT (with a port number)")


def _lock_path(endpoint: str) -> Path:
    # beside an ipc socket file; a tcp port's or an abstract ipc name's (``ipc://@NAME``:
    # no file, no directory of its own) in the runtime directory, never the working one
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        return Path(endpoint[len("ipc://"):] + ".lock")
    safe = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in endpoint)
    return runtime_dir() / f"{safe}.lock"


def _open_lock_file(path: Path) -> int:
    """Open (or create, mode 0600) the lock file at ``path`` safely; returns its fd.

    The directory is opened and checked first, then the file is opened relative to that
    very directory without following a link, and checked to be this user's regular file.

    Raises:
        UnsafeLockFile: see ``EndpointLock.acquire``.
        OSError: the directory or the file cannot be opened (missing, no permission).
    """
    directory = path.parent
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        info = os.fstat(dir_fd)
        if info.st_uid not in (os.getuid(), 0):
            raise UnsafeLockFile(
                f"the directory {directory} of the lock file belongs to another user "
                f"(uid {info.st_uid}); choose an endpoint in a directory of yours")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            raise UnsafeLockFile(
                f"the directory {directory} of the lock file is writable by other users "
                f"(mode {stat.S_IMODE(info.st_mode):o}, no sticky bit); choose an endpoint "
                f"in a directory only you may write to")
        try:
            fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeLockFile(
                    f"the lock file {path} is a symbolic link; refusing to follow it "
                    f"(remove it if it is not meant to be there)") from None
            # opened relative to its directory: name the whole path (until 2026-12-05
            # "Permission denied: b.sock.lock", of no directory)
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise UnsafeLockFile(
            f"the lock file {path} is not a regular file of yours (uid {info.st_uid}, "
            f"mode {info.st_mode:o}); refusing to write to it")
    return fd


LOCK_ATTEMPTS: Final = 100
"""Times ``EndpointLock.acquire`` locks a lock file that was removed before it gives up."""


def _names(path: Path | str, fd: int, dir_fd: int | None = None) -> bool:
    """True if ``path`` (a link is not followed) is the very file open as ``fd``."""
    try:
        named = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def remove_stale_locks() -> list[str]:
    """Remove the lock files in the runtime directory that no broker holds.

    A broker killed (``kill -9``) leaves its lock file (a tcp endpoint's, the default
    endpoint's) behind; ``fastfanout serve`` calls this at start so they do not pile up.
    A file is removed only while this process holds its lock (taken without waiting:
    one a broker holds is left alone) and only if its name still is that file; a broker
    that opened it meanwhile then finds it gone once it has the lock, and opens a new one
    (``EndpointLock.acquire``). A missing runtime directory is not made.

    Returns:
        The names of the files removed.
    """
    directory = _runtime_path()
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
    except OSError:
        return []   # no runtime directory (or not ours to read): nothing to remove
    removed: list[str] = []
    try:
        if os.fstat(dir_fd).st_uid != os.getuid():
            return removed
        for name in os.listdir(dir_fd):
            if name.endswith(".lock") and _remove_if_stale(name, dir_fd):
                removed.append(name)
    finally:
        os.close(dir_fd)
    return removed


def _remove_if_stale(name: str, dir_fd: int) -> bool:
    """Remove the lock file ``name`` of the directory ``dir_fd`` if nobody holds it."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False   # gone meanwhile, a link, or not ours
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False   # a live broker holds it
        if not _names(name, fd, dir_fd):
            return False   # replaced meanwhile: the new file is someone else's
        os.unlink(name, dir_fd=dir_fd)
        return True
    finally:
        os.close(fd)   # drops the lock, after the unlink


class EndpointLock:
    """An exclusive lock on an endpoint, held while a broker serves it.

    Args:
        endpoint: the command endpoint.
    """

    def __init__(self, endpoint: str) -> None:
        self.path = _lock_path(endpoint)
        self.endpoint = endpoint
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process id into the lock file.

        A lock file may be removed by whoever holds its lock (a broker at its clean stop,
        ``remove_stale_locks``): a lock taken on a file that its path no longer names
        locks nothing, so the file is opened and locked again.

        Raises:
            BrokerRunning: another live process holds it.
            UnsafeLockFile: the lock file is a symbolic link or not this user's regular
                file, or its directory may be written to by other users; or it was
                removed under each of ``LOCK_ATTEMPTS`` attempts to lock it.
        """
        for _ in range(LOCK_ATTEMPTS):
            fd = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise BrokerRunning(
                    f"another broker (pid {holder}) already serves {self.endpoint} "
                    f"(it holds {self.path}); stop it or choose another --endpoint"
                    ) from None
            if _names(self.path, fd):
                break
            os.close(fd)   # removed (or replaced) between the open and the lock
        else:
            raise UnsafeLockFile(
                f"the lock file {self.path} was removed each of {LOCK_ATTEMPTS} times it "
                f"was locked (another process keeps removing it); try again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (and remove the lock file, if the name still is that file)."""
        if self._fd is None:
            return
        try:
            # unlinked while still locked: a broker that opened the file meanwhile finds
            # its path gone once it has the lock (``acquire``), and opens a new one
            if _names(self.path, self._fd):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
