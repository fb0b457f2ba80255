"""What a worker runs: a handler's function and its options, checked once.

A ``Handler`` is the registration record ``Worker.handler`` and ``Worker.subscribe``
make: the function, the queue it consumes and how (concurrency, batches, timeout,
processes, prefetch, lease). Everything is checked here, when the handler is registered,
so that a bad signature or option fails at import time with a clear ``InvalidArgument``,
never in the middle of a run.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fastfanout.errors import InvalidArgument
from fastfanout.settings import check_count, check_name, finite

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_BATCH_WINDOW",
    "MAX_CONCURRENCY",
    "MAX_PROCESSES",
    "Handler",
    "check_seconds",
    "make_handler",
]

MAX_CONCURRENCY = 1024
"""Most handler calls one handler may run at once in one process."""
MAX_PROCESSES = 256
"""Most worker processes one handler may be spread over."""
MAX_BATCH_SIZE = 10_000
"""Most messages in one call of a batch handler (a receive's own limit)."""
MAX_BATCH_WINDOW = 20.0
"""Longest wait, in seconds, for a batch to fill (a long poll's own limit)."""


def check_seconds(name: str, value: object, *, maximum: float = math.inf,
                  allow_zero: bool = False) -> float:
    """``value`` as finite seconds > 0 (>= 0 with ``allow_zero``) up to ``maximum``."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not finite(value) or value < 0 or (value == 0 and not allow_zero)
            or value > maximum):
        low = ">= 0" if allow_zero else "> 0"
        high = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise InvalidArgument(f"{name}={value!r:.40} must be finite seconds {low}{high}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Handler:
    """One registered handler (made by ``Worker.handler`` and ``Worker.subscribe``).

    Attributes:
        function: the function called per message (or per batch).
        queue: the queue it consumes.
        name: the handler's name in stats and logs (the function's ``__name__``;
            ``NAME@QUEUE`` when a worker has a handler of that name already).
        is_async: True for a coroutine function (run on the event loop), else it runs on
            a thread.
        concurrency: most calls running at once per process (None: the worker's).
        batch_size: messages per call; 1 calls the function with one message, more
            with a list of up to that many.
        batch_window: seconds to wait for a batch to fill after its first message.
        timeout: seconds a call may run before it is abandoned and its messages nacked
            (None: no limit).
        processes: worker processes the handler is spread over (None: the worker's).
        prefetch: most unsettled messages each connection holds (None: twice the
            concurrency times the batch size, as dramatiq's ``worker_threads * 2``).
        visibility_timeout: seconds of each lease, renewed while the call runs (None:
            the queue's).
    """

    function: Callable[..., Any]
    queue: str
    name: str
    is_async: bool
    concurrency: int | None = None
    batch_size: int = 1
    batch_window: float = 0.0
    timeout: float | None = None
    processes: int | None = None
    prefetch: int | None = None
    visibility_timeout: float | None = None

    @property
    def batched(self) -> bool:
        """True when the function takes a list of messages (``batch_size`` > 1)."""
        return self.batch_size > 1

    def resolved(self, concurrency: int, processes: int) -> Handler:
        """The handler with the worker's defaults filled in."""
        return replace(self, concurrency=self.concurrency or concurrency,
                       processes=self.processes or processes)

    def prefetch_for(self, slots: int) -> int:
        """Prefetch of one connection feeding ``slots`` concurrent calls."""
        return self.prefetch or min(1_000_000, 2 * slots * self.batch_size)


def _check_signature(function: Callable[..., Any]) -> None:
    """The function must accept exactly one positional argument (a message or a batch)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return   # a builtin without a signature: trust it
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    required_keywords = [p.name for p in signature.parameters.values()
                         if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if required_keywords or len(required) > 1 or (not positional and not varargs):
        raise InvalidArgument(
            f"handler {getattr(function, '__qualname__', function)!r} has the signature "
            f"{signature}; a handler takes one positional argument (the message, or the "
            f"list of messages of a batch handler)")


def _name_of(function: object) -> str:
    return str(getattr(function, "__qualname__", None) or function)


def _check_kind(function: Callable[..., Any]) -> bool:
    """Refuse a function whose call would not run its code; True for a coroutine function.

    A generator or async generator function (it yields), or a sync function wrapping a
    coroutine function (an ``async def`` under a sync decorator, ``functools.wraps``),
    returns an object its caller must iterate or await: called as a handler, its body
    never ran and its message was acked (until 2026-12-07).
    """
    is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        type(function).__call__)
    try:
        inner = inspect.unwrap(function)
    except ValueError:   # a cycle of __wrapped__
        inner = function
    targets: list[Any] = [function]
    if not inspect.isroutine(function) and not isinstance(function, functools.partial):
        targets.append(type(function).__call__)   # a callable object
    if not is_async:   # a sync wrapper is judged by what it wraps (an async one awaits it)
        targets.append(inner)
    name = _name_of(function)
    for target in targets:
        if inspect.isasyncgenfunction(target):
            raise InvalidArgument(
                f"handler {name!r} is an async generator function (an async def that "
                f"yields): a call returns an async generator and runs none of its code; "
                f"a handler returns (or raises) when it is done: drop the yield")
        if inspect.isgeneratorfunction(target):
            raise InvalidArgument(
                f"handler {name!r} is a generator function (it yields): a call returns a "
                f"generator and runs none of its code; a handler returns (or raises) when "
                f"it is done: drop the yield (a batch handler returns the list of the "
                f"messages that failed)")
    if not is_async and inner is not function and inspect.iscoroutinefunction(inner):
        raise InvalidArgument(
            f"handler {name!r} is a sync function wrapping the coroutine function "
            f"{_name_of(inner)!r} (a sync decorator on an async def): a call returns a "
            f"coroutine that the worker would not await; make the decorator's wrapper an "
            f"async def that awaits the function")
    return is_async


def make_handler(function: object, queue: object, *, concurrency: int | None = None,
                 batch_size: int = 1, batch_window: float = 0.0,
                 timeout: float | None = None, processes: int | None = None,
                 prefetch: int | None = None, visibility_timeout: float | None = None
                 ) -> Handler:
    """A checked ``Handler`` (see its attributes for the arguments).

    Raises:
        InvalidArgument: the function is not callable or does not take one positional
            argument, it is a generator or async generator function, or a sync function
            wrapping a coroutine function (its calls would not run its code), the queue
            is not a non-empty string, or an option is out of range.
    """
    if not callable(function):
        raise InvalidArgument(f"handler {function!r} is not callable")
    queue = check_name("queue", queue)
    _check_signature(function)
    is_async = _check_kind(function)
    if concurrency is not None:
        check_count("concurrency", concurrency, maximum=MAX_CONCURRENCY)
    if processes is not None:
        check_count("processes", processes, maximum=MAX_PROCESSES)
    if prefetch is not None:
        check_count("prefetch", prefetch, maximum=1_000_000)
    check_count("batch_size", batch_size, maximum=MAX_BATCH_SIZE)
    window = check_seconds("batch_window", batch_window, maximum=MAX_BATCH_WINDOW,
                           allow_zero=True)
    seconds = None if timeout is None else check_seconds("timeout", timeout)
    lease = None if visibility_timeout is None else check_seconds(
        "visibility_timeout", visibility_timeout, maximum=43_200.0)
    name = str(getattr(function, "__name__", None) or type(function).__name__)
    return Handler(function, queue, name, is_async, concurrency, batch_size, window, seconds,
                   processes, prefetch, lease)
