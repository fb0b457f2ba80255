"""Clients and ``fork()``: a child process must not use the connection its parent made.

Prior art: redis-py's connection pool remembers the process id that made it and compares
it on use (``_checkpid``); ``os.register_at_fork`` (CPython 3.7) is how the standard
library's own locks and queues learn they are in a child.

A forked child inherits a copy of the client object, but not its connection: the
ZeroMQ socket's I/O threads did not survive the fork, the local channel's rings are the
very memory the parent reads and writes, and the client lock may have been held by a
parent thread that does not exist in the child (a sure hang). So each client watches for
the fork: in the child, ``after_in_child`` runs every watcher before any other code of
the child, and the watcher marks its client and replaces its lock; the client's next
call raises ``UsedAfterFork`` instead of touching the parent's connection. A fork that
bypasses ``os.fork`` (C code calling fork(2) itself) is still caught per request by the
process id, as redis-py does.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

from fastfanout.errors import UsedAfterFork

__all__ = ["check_process", "used_after_fork", "watch"]

_watchers: list[weakref.WeakMethod[Callable[[], None]]] = []


def watch(on_fork_in_child: Callable[[], None]) -> None:
    """Call the bound method ``on_fork_in_child()`` in the child after each ``fork()``.

    Only a weak reference is kept: a client that is gone is not called.
    """
    _watchers[:] = [ref for ref in _watchers if ref() is not None]
    _watchers.append(weakref.WeakMethod(on_fork_in_child))


def _after_fork_in_child() -> None:
    for ref in list(_watchers):
        method = ref()
        if method is not None:
            method()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def used_after_fork(what: str, parent_pid: int) -> UsedAfterFork:
    """The error for a ``what`` (e.g. ``"client"``) made by process ``parent_pid``."""
    return UsedAfterFork(
        f"this {what} was connected in process {parent_pid}, and this is process "
        f"{os.getpid()}, a fork() of it: a connection cannot be shared across fork(); "
        f"connect a new {what} in this process")


def check_process(what: str, pid: int) -> None:
    """Raise ``UsedAfterFork`` unless this is process ``pid``, which made the ``what``."""
    if os.getpid() != pid:
        raise used_after_fork(what, pid)
