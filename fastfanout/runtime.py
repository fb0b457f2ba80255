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
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

from fastfanout.errors import FastFanoutError, InvalidArgument

__all__ = [
    "BrokerRunning",
    "EndpointLock",
    "default_endpoint",
    "runtime_dir",
    "stream_endpoint_for",
]

SOCKET_NAME: Final = "broker.sock"
"""File name of the default ipc socket inside the runtime directory."""
ENDPOINT_ENV: Final = "FASTFANOUT_ENDPOINT"
"""Environment variable that overrides the default endpoint (clients and server)."""


class BrokerRunning(FastFanoutError):
    """Another broker already serves this endpoint (it holds the endpoint's lock)."""

    code = "broker_running"


def runtime_dir() -> Path:
    """The per-user runtime directory, created with mode 0700 if missing.

    ``$XDG_RUNTIME_DIR/fastfanout`` when that variable names a directory, else
    ``<temp dir>/fastfanout-<uid>``.

    Raises:
        FastFanoutError: the directory exists but is not this user's or not mode 0700.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        path = Path(base) / "fastfanout"
    else:
        path = Path(tempfile.gettempdir()) / f"fastfanout-{os.getuid()}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise FastFanoutError(f"runtime directory {path} is not a directory owned by you")
    if stat.S_IMODE(info.st_mode) != 0o700:
        raise FastFanoutError(
            f"runtime directory {path} has mode {stat.S_IMODE(info.st_mode):o}; expected 700")
    return path


def default_endpoint() -> str:
    """``$FASTFANOUT_ENDPOINT`` if set, else ``ipc://<runtime dir>/broker.sock``."""
    override = os.environ.get(ENDPOINT_ENV)
    if override:
        return override
    return f"ipc://{runtime_dir() / SOCKET_NAME}"


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
    raise InvalidArgument(
        f"endpoint {endpoint!r} must be ipc://PATH or tcp://HOST:PORT (with a port number)")


def _lock_path(endpoint: str) -> Path:
    if endpoint.startswith("ipc://"):
        return Path(endpoint[len("ipc://"):] + ".lock")
    safe = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in endpoint)
    return runtime_dir() / f"{safe}.lock"


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

        Raises:
            BrokerRunning: another live process holds it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BrokerRunning(
                f"another broker (pid {holder}) already serves {self.endpoint} "
                f"(it holds {self.path}); stop it or choose another --endpoint") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (and remove the lock file)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
