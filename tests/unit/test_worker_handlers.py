"""The pure parts of workers: handler registration checks, partial failures, stats."""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from fastfanout import BrokenConnection, InvalidArgument, NotFound, Worker
from fastfanout.workers.handlers import make_handler
from fastfanout.workers.sources import WORKER_RING_BYTES, ring_bytes_for
from fastfanout.workers.stats import HandlerStats, Tally, combine
from fastfanout.workers.threads import RECONNECT_DELAY, ThreadRunner, failed_messages


def one(message: Any) -> None:
    """A handler."""


async def one_async(message: Any) -> None:
    """An async handler."""


def test_a_handler_records_its_options_and_kind() -> None:
    handler = make_handler(one, "jobs", concurrency=3, batch_size=10, batch_window=0.5,
                           timeout=2, processes=2, prefetch=7, visibility_timeout=60)
    assert (handler.name, handler.queue, handler.is_async, handler.batched) == (
        "one", "jobs", False, True)
    assert (handler.concurrency, handler.batch_window, handler.timeout, handler.processes,
            handler.prefetch, handler.visibility_timeout) == (3, 0.5, 2.0, 2, 7, 60.0)
    assert make_handler(one_async, "jobs").is_async
    default = make_handler(one, "jobs").resolved(concurrency=4, processes=1)
    assert (default.concurrency, default.processes, default.prefetch_for(4)) == (4, 1, 8)


@pytest.mark.parametrize("function", [
    lambda: None, lambda a, b: None, lambda *, key: None, 42,
])
def test_a_handler_must_take_one_positional_argument(function: Any) -> None:
    with pytest.raises(InvalidArgument):
        make_handler(function, "jobs")


def test_signatures_that_take_one_argument_are_accepted() -> None:
    make_handler(lambda message, extra=1: None, "jobs")
    make_handler(lambda *messages: None, "jobs")
    make_handler(print, "jobs")


def _logged(function: Any) -> Any:
    """An ordinary sync decorator."""
    @functools.wraps(function)
    def wrapper(message: Any) -> Any:
        return function(message)
    return wrapper


def _yields(message: Any) -> Any:
    yield message


async def _yields_async(message: Any) -> Any:
    yield message


@_logged
async def wrapped_async(message: Any) -> None:
    """An async def under a sync decorator: its calls return a coroutine."""


class _CallYields:
    def __call__(self, message: Any) -> Any:
        yield message


@pytest.mark.parametrize(("function", "refusal"), [
    (_yields, "'_yields' is a generator function"),
    (_yields_async, "'_yields_async' is an async generator function"),
    (_logged(_yields), "'_yields' is a generator function"),
    (_logged(_yields_async), "'_yields_async' is an async generator function"),
    (_CallYields(), "is a generator function"),
    (wrapped_async, "'wrapped_async' is a sync function wrapping the coroutine function "
                    "'wrapped_async' .* make the decorator's wrapper an async def"),
])
def test_a_handler_whose_calls_would_not_run_its_code_is_refused(function: Any,
                                                                 refusal: str) -> None:
    # each was registered, and every message acked with none of its code run
    worker = Worker("ipc:///x")
    with pytest.raises(InvalidArgument, match=refusal):
        worker.handler("jobs")(function)
    with pytest.raises(InvalidArgument, match=refusal):
        worker.handler("jobs", batch_size=10)(function)
    assert worker.handlers == {}


def test_decorated_handlers_that_run_their_code_are_accepted() -> None:
    async def awaits(message: Any) -> None:
        await one_async(message)

    assert not make_handler(_logged(one), "jobs").is_async
    decorated = functools.wraps(one)(awaits)   # an async wrapper of a sync function
    assert make_handler(decorated, "jobs").is_async
    assert make_handler(functools.partial(one_async), "jobs").is_async


@pytest.mark.parametrize(("option", "value"), [
    ("concurrency", 0), ("concurrency", 1025), ("concurrency", 1.5), ("processes", 0),
    ("batch_size", 0), ("batch_size", 10_001), ("batch_window", -0.1),
    ("batch_window", 21), ("batch_window", float("nan")), ("timeout", 0),
    ("timeout", float("inf")), ("prefetch", 0), ("visibility_timeout", True),
])
def test_options_out_of_range_are_refused(option: str, value: Any) -> None:
    with pytest.raises(InvalidArgument, match=option):
        make_handler(one, "jobs", **{option: value})


def test_the_queue_must_be_a_name() -> None:
    for queue in ("", None, 3):
        with pytest.raises(InvalidArgument, match="queue"):
            make_handler(one, queue)


def test_a_worker_refuses_bad_options_and_a_second_handler_per_queue() -> None:
    with pytest.raises(InvalidArgument, match="concurrency"):
        Worker("ipc:///x", concurrency=0)
    with pytest.raises(InvalidArgument, match="shutdown_timeout"):
        Worker("ipc:///x", shutdown_timeout=-1)
    with pytest.raises(InvalidArgument, match="shutdown_timeout"):
        Worker("ipc:///x", shutdown_timeout=1e20)   # stop() overflowed its joins
    with pytest.raises(InvalidArgument, match="endpoint string"):
        Worker(3)   # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="client option"):
        Worker("ipc:///x", timeuot=3)
    worker = Worker("ipc:///x")
    worker.handler("jobs")(one)
    with pytest.raises(InvalidArgument, match="has a handler already"):
        worker.handler("jobs")(one_async)
    with pytest.raises(InvalidArgument, match="no handler"):
        Worker("ipc:///x").start()
    with pytest.raises(InvalidArgument, match="queue"):
        Worker("ipc:///x").subscribe("orders", lambda message: None)


def _messages(count: int) -> list[Any]:
    return [SimpleNamespace(id=100 + n) for n in range(count)]


def test_failed_messages_of_a_batch() -> None:
    batch = _messages(4)
    assert failed_messages(None, batch) == []
    assert failed_messages([], batch) == []
    assert failed_messages([batch[1], batch[3]], batch) == [batch[1], batch[3]]
    assert failed_messages([102], batch) == [batch[2]]   # by message id
    assert failed_messages(7, batch) == batch            # names nothing: all failed


@pytest.mark.parametrize("result", ["ok", b"100", [b"body"], [None], [999], [True],
                                    {"failed": 100}])
def test_a_batch_report_naming_no_message_of_the_batch_fails_them_all(result: Any) -> None:
    # a string or a list of bodies named no message, so every message was acked
    batch = _messages(3)
    assert failed_messages(result, batch) == batch


def test_failures_count_as_retried_or_dead_lettered() -> None:
    tally = Tally()
    tally.failures([1, 2, 3, 3], max_receive_count=3)
    assert (tally.failed, tally.retried, tally.dead_lettered) == (4, 2, 2)
    tally.failures([50], max_receive_count=None)
    assert (tally.failed, tally.retried, tally.dead_lettered) == (5, 3, 2)


def test_stats_sum_tallies_and_read_percentiles() -> None:
    first, second = Tally(), Tally()
    first.processed, second.processed = 3, 4
    first.times.extend(n / 100 for n in range(1, 51))
    second.times.extend(n / 100 for n in range(51, 101))
    stats = HandlerStats.of("jobs", [first, second])
    assert (stats.queue, stats.processed, stats.p50, stats.p99) == ("jobs", 7, 0.51, 1.0)
    assert HandlerStats.of("jobs", []).p50 is None
    merged = combine("jobs", [stats, HandlerStats("jobs", processed=1, p50=2.0, p99=3.0)])
    assert (merged.processed, merged.p50, merged.p99, merged.processes) == (8, 2.0, 3.0, 2)


def test_ring_bytes_follow_the_prefetch() -> None:
    assert ring_bytes_for(1) == WORKER_RING_BYTES
    assert ring_bytes_for(1000) == 1 << 19
    assert ring_bytes_for(1_000_000) == 4 << 20


def test_subscribe_refuses_its_mistakes_when_registered() -> None:
    worker = Worker("ipc:///x")
    with pytest.raises(InvalidArgument, match="queue name"):
        worker.handler("bad name")(one)
    mistakes: list[dict[str, Any]] = [
        {"filter_policy": {"a": "not a list"}}, {"filter_scope": "headers"},
        {"visibility_timeout": -1}, {"queue": "a queue"}, {"max_receive_count": 0},
        {"dead_letter_queue": "dead letters"}, {"redelivery_backoff": "1s"}]
    for mistake in mistakes:
        with pytest.raises(InvalidArgument):
            worker.subscribe("orders", one, **mistake)
    # nothing was registered: queue "one" takes its handler now (a second is refused)
    worker.subscribe("orders", one, filter_policy={"a": ["b"]}, filter_scope="attributes")
    with pytest.raises(InvalidArgument, match="queue 'one' has a handler already"):
        worker.subscribe("orders", one)


def test_the_handler_decorator_without_its_queue_is_refused_at_once() -> None:
    # until 2026-12-05 ``@worker.handler`` with no (queue) took the function for the
    # queue and replaced it with the decorator: no handler, no error until start()
    worker = Worker("ipc:///x")
    with pytest.raises(InvalidArgument, match=r'write @worker.handler\("QUEUE"\) above one'):
        worker.handler(one)   # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="queue name"):
        worker.handler("")
    assert worker.handlers == {}


class _GoneSource:
    """A source whose broker went away: every take fails."""

    def take(self, count: int, wait: float) -> list[Any]:
        raise BrokenConnection("the broker is gone")

    def close(self, timeout: float | None = None) -> None:
        pass


def test_a_thread_that_cannot_reconnect_says_so_once_not_every_second(
        caplog: pytest.LogCaptureFixture) -> None:
    # until 2026-12-05 each thread logged "cannot reconnect yet" at every attempt, one
    # line a second per thread for as long as the broker was away
    attempts: list[float] = []

    def open_source() -> Any:
        if not attempts:
            attempts.append(time.monotonic())
            return _GoneSource()
        attempts.append(time.monotonic())
        raise BrokenConnection("no broker there")

    stopping = threading.Event()
    runner = ThreadRunner(make_handler(one, "jobs", concurrency=1), open_source, None,
                          stopping)
    with caplog.at_level(logging.WARNING, logger="fastfanout.worker"):
        runner.start()
        try:
            deadline = time.monotonic() + 30 * RECONNECT_DELAY
            while len(attempts) < 5:   # four reconnect attempts
                assert time.monotonic() < deadline, "the thread stopped reconnecting"
                time.sleep(0.01)
        finally:
            stopping.set()
            assert not runner.join(time.monotonic() + 10, threading.Event())
    lines = [r.getMessage() for r in caplog.records if "reconnect" in r.getMessage()]
    assert len(lines) == 2, lines   # the source lost, and the first failed attempt
    assert "cannot reconnect yet: no broker there (trying every 1 s)" in lines[1]


class _ClosedUnderTake:
    """A source closed by the worker's stop while its thread waits in take."""

    def __init__(self) -> None:
        self.taking = threading.Event()
        self.closed = threading.Event()

    def take(self, count: int, wait: float) -> list[Any]:
        self.taking.set()
        if self.closed.wait(wait):
            raise BrokenConnection("the client is closed")
        return []

    def close(self, timeout: float | None = None) -> None:
        self.closed.set()


def test_a_source_closed_by_the_stop_is_not_told_as_a_reconnect(
        caplog: pytest.LogCaptureFixture) -> None:
    # a stop past its deadline (or stop_now) closes the sources of threads still in a
    # take: each logged "lost its source (the client is closed); reconnecting in 1 s"
    # just before "worker stopped"
    source = _ClosedUnderTake()
    opened: list[Any] = []

    def open_source() -> Any:
        opened.append(source)
        return source

    stopping = threading.Event()
    runner = ThreadRunner(make_handler(one, "jobs", concurrency=1), open_source, None,
                          stopping)
    with caplog.at_level(logging.INFO, logger="fastfanout.worker"):
        runner.start()
        try:
            assert source.taking.wait(10), "the thread never took"
            stopping.set()   # as Worker.stop: the stop flag, then the sources closed
            source.close()
        finally:
            stopping.set()
            assert not runner.join(time.monotonic() + 10, threading.Event())
    assert [r.getMessage() for r in caplog.records] == []
    assert opened == [source]   # not reopened


class _DeletedQueue:
    """A source of a queue deleted under the worker: it opens, and its take fails; until
    ``restored`` is set, then it takes nothing, quietly."""

    def __init__(self, restored: threading.Event) -> None:
        self.restored = restored

    def take(self, count: int, wait: float) -> list[Any]:
        if not self.restored.is_set():
            raise NotFound("queue 'jobs' does not exist")
        self.restored.wait(wait)
        return []

    def close(self, timeout: float | None = None) -> None:
        pass


def test_a_deleted_queue_is_told_once_per_handler_not_each_second_per_thread(
        caplog: pytest.LogCaptureFixture) -> None:
    # each thread reconnected (the consume opened) and lost its source again at once,
    # each logging "worker thread of jobs lost its source (queue 'jobs' does not
    # exist); reconnecting in 1 s": 48 lines in 12 s from 4 threads
    restored = threading.Event()
    opened: list[float] = []

    def open_source() -> Any:
        opened.append(time.monotonic())
        return _DeletedQueue(restored)

    stopping = threading.Event()
    runner = ThreadRunner(make_handler(one, "jobs", concurrency=4), open_source, None,
                          stopping)

    def told() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "fastfanout.worker"]

    with caplog.at_level(logging.WARNING, logger="fastfanout.worker"):
        runner.start()
        try:
            deadline = time.monotonic() + 60 * RECONNECT_DELAY
            while len(opened) < 4 * 4:   # three reconnects of each thread
                assert time.monotonic() < deadline, "the threads stopped reconnecting"
                time.sleep(0.01)
            assert told() == [
                "handler one lost its source (queue 'jobs' does not exist); reconnecting "
                "every 1 s",
                "handler one cannot reconnect yet: queue 'jobs' does not exist (trying "
                "every 1 s)"]
            restored.set()
            while len(told()) < 3:
                assert time.monotonic() < deadline, "never told it consumes again"
                time.sleep(0.01)
        finally:
            stopping.set()
            assert not runner.join(time.monotonic() + 10, threading.Event())
    assert len(told()) == 3
    assert re.fullmatch(r"handler one consumes again after \d+ s", told()[2])
