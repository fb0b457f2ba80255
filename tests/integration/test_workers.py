"""Workers against a real broker: handlers, failures, batches, leases, stopping, processes."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import Tracker, wait_until

import fastfanout
from fastfanout import Broker, InvalidArgument, NotFound, Worker
from fastfanout.workers.handlers import make_handler

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class Concurrency:
    """Counts calls running at once (the most seen) and the calls made."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.calls = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def _setup(track: Tracker, queue: str = "jobs", **settings: Any) -> tuple[str, Any]:
    server = track.server()
    client = track.client(server.endpoint)
    if "dead_letter_queue" in settings:
        client.create_queue(settings["dead_letter_queue"])
    client.create_queue(queue, **settings)
    return server.endpoint, client


STUCK = 60.0
"""Seconds a stuck handler runs: what a stop that waited for it would take."""


def _worker(track: Tracker, *args: Any, **options: Any) -> Worker:
    worker = Worker(*args, **options)
    track.closeables.append(_Stopper(worker))
    return worker


class _Stopper:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def close(self) -> None:
        self.worker.stop(2.0)


def test_sync_handler_acks_what_returns_with_bounded_concurrency(track: Tracker) -> None:
    endpoint, client = _setup(track)
    seen = Concurrency()
    worker = _worker(track, endpoint, concurrency=3)

    @worker.handler("jobs")
    def handle(message: Any) -> None:
        seen.enter()
        time.sleep(0.05)
        seen.leave()

    client.send_batch("jobs", [b"m%d" % n for n in range(40)])
    worker.start()
    wait_until(lambda: worker.stats().handlers["handle"].processed == 40, what="40 processed")
    assert seen.most == 3   # three threads, and never more
    assert seen.calls == 40
    wait_until(lambda: client.stats().queues["jobs"].acked == 40, what="40 acked")
    stats = worker.stats().handlers["handle"]
    assert (stats.failed, stats.in_flight) == (0, 0)
    assert stats.p50 is not None and stats.p99 is not None and stats.p50 <= stats.p99


def test_failures_retry_with_backoff_then_dead_letter(track: Tracker) -> None:
    endpoint, client = _setup(track, max_receive_count=3, dead_letter_queue="jobs-dlq",
                              redelivery_backoff=(0.1,))
    attempts: dict[bytes, list[float]] = {}
    worker = _worker(track, endpoint, concurrency=2)

    @worker.handler("jobs")
    def fail(message: Any) -> None:
        attempts.setdefault(message.body, []).append(time.monotonic())
        raise RuntimeError("boom")

    client.send_batch("jobs", [b"a", b"b"])
    worker.start()
    wait_until(lambda: client.stats().queues["jobs-dlq"].messages == 2, what="dead letters")
    stats = worker.stats().handlers["fail"]
    assert (stats.failed, stats.retried, stats.dead_lettered, stats.processed) == (6, 4, 2, 0)
    for times in attempts.values():
        assert len(times) == 3
        assert all(later - earlier >= 0.09 for earlier, later in itertools.pairwise(times))
    assert client.stats().queues["jobs"].messages == 0


@pytest.mark.parametrize("is_async", [False, True])
def test_batch_handler_partial_failure(track: Tracker, is_async: bool) -> None:
    endpoint, client = _setup(track)
    sizes: list[int] = []
    handled: list[bytes] = []

    def partial(batch: list[Any]) -> list[Any]:
        sizes.append(len(batch))
        failed = [m for m in batch if int(m.body) % 2 and m.receive_count == 1]
        handled.extend(m.body for m in batch if m not in failed)
        return failed

    async def partial_async(batch: list[Any]) -> list[Any]:
        return partial(batch)

    worker = _worker(track, endpoint, concurrency=1)
    worker.handler("jobs", batch_size=10, batch_window=0.05)(
        partial_async if is_async else partial)
    client.send_batch("jobs", [b"%d" % n for n in range(30)])
    worker.start()
    name = "partial_async" if is_async else "partial"
    wait_until(lambda: worker.stats().handlers[name].processed == 30, what="all processed")
    stats = worker.stats().handlers[name]
    assert (stats.failed, stats.retried) == (15, 15)
    assert sorted(handled) == sorted(b"%d" % n for n in range(30))
    assert max(sizes) == 10 and all(size <= 10 for size in sizes)
    wait_until(lambda: client.stats().queues["jobs"].acked == 30, what="30 acked")


def test_async_handlers_run_on_the_loop_with_bounded_concurrency(track: Tracker) -> None:
    endpoint, client = _setup(track)
    seen = Concurrency()
    threads: set[str] = set()
    worker = _worker(track, endpoint, concurrency=5)

    @worker.handler("jobs")
    async def handle(message: Any) -> None:
        threads.add(threading.current_thread().name)
        seen.enter()
        await asyncio.sleep(0.02)
        seen.leave()

    client.send_batch("jobs", [b"m%d" % n for n in range(30)])
    worker.start()
    wait_until(lambda: worker.stats().handlers["handle"].processed == 30, what="processed")
    assert seen.most == 5
    assert threads == {"fastfanout-worker-loop"}
    wait_until(lambda: client.stats().queues["jobs"].acked == 30, what="acked")


@pytest.mark.parametrize("is_async", [False, True])
def test_a_call_past_its_timeout_is_abandoned_and_nacked(track: Tracker,
                                                         is_async: bool) -> None:
    endpoint, client = _setup(track)
    release = threading.Event()
    first_returned = threading.Event()
    calls: list[int] = []

    def slow(message: Any) -> None:
        calls.append(message.receive_count)
        if message.receive_count == 1:
            release.wait(5.0)
            first_returned.set()

    async def slow_async(message: Any) -> None:
        calls.append(message.receive_count)
        if message.receive_count == 1:
            await asyncio.sleep(5.0)

    worker = _worker(track, endpoint, concurrency=2)
    handler = slow_async if is_async else slow
    worker.handler("jobs", timeout=0.2)(handler)
    client.send("jobs", b"x")
    worker.start()
    name = handler.__name__
    wait_until(lambda: worker.stats().handlers[name].processed == 1, what="second try")
    stats = worker.stats().handlers[name]
    assert (stats.timed_out, stats.failed, stats.retried) == (1, 1, 1)
    assert calls == [1, 2]
    # retried while the abandoned call still ran: the redelivery was not pushed to (and
    # left waiting behind) the hung thread's own connection
    assert not first_returned.is_set()
    release.set()


def test_a_slow_handler_keeps_its_lease(track: Tracker) -> None:
    endpoint, client = _setup(track, visibility_timeout=1.0)
    calls: list[int] = []
    worker = _worker(track, endpoint, concurrency=2)

    @worker.handler("jobs")
    def slow(message: Any) -> None:   # 2.5 leases long
        calls.append(message.receive_count)
        time.sleep(2.5)

    client.send("jobs", b"x")
    worker.start()
    wait_until(lambda: worker.stats().handlers["slow"].processed == 1, what="processed")
    assert calls == [1]   # the lease never ran out: no second delivery
    assert worker.stats().handlers["slow"].extended >= 2
    assert client.stats().queues["jobs"].redelivered == 0


@pytest.mark.parametrize("embedded", [False, True], ids=["remote", "embedded"])
def test_handlers_slower_than_a_lease_handle_each_message_once(track: Tracker,
                                                               embedded: bool) -> None:
    """A sync handler slower than the queue's lease: the message handled before it (its
    ack deferred, ACK_LINGER) and the pushes that came meanwhile (waiting in the client's
    consumer) were not extended: their leases ran out, they came back and ran again, and
    their late acks were stale (5 messages: 7 calls, 1 ack, 39 deliveries)."""
    if embedded:
        broker = fastfanout.Broker()
        track.closeables.append(broker)
        broker.create_queue("jobs", visibility_timeout=1.0)
        client: Any = broker
        target: Any = broker
    else:
        target, client = _setup(track, visibility_timeout=1.0)
    client.send_batch("jobs", [b"%d" % n for n in range(3)])
    calls: list[tuple[bytes, int]] = []
    worker = _worker(track, target, report_interval=None)

    @worker.handler("jobs", concurrency=1)
    def slow(message: Any) -> None:   # 1.5 leases long (a second's lease: a loaded
        calls.append((message.body, message.receive_count))   # machine's keeper is late)
        time.sleep(1.5)

    worker.start()
    wait_until(lambda: client.stats().queues["jobs"].acked == 3, timeout=60,
               what="every message acked")
    worker.stop(5.0)
    assert sorted(calls) == [(b"%d" % n, 1) for n in range(3)]
    queue = client.stats().queues["jobs"]
    assert (queue.delivered, queue.redelivered) == (3, 0)
    assert worker.stats().handlers["slow"].processed == 3


def test_a_stop_from_a_handler_takes_no_more_messages_at_once(track: Tracker) -> None:
    """``stop()`` in a sync handler handed the stop to a thread of its own, and the
    worker's other threads went on taking messages until that thread set the stop: 20
    to 170 calls started after ``stop()`` had returned."""
    target, client = _setup(track)
    client.send_batch("jobs", [b"x"] * 2000)
    worker = _worker(track, target, report_interval=None)
    calls: list[float] = []
    stopped_at: list[float] = []

    @worker.handler("jobs", concurrency=4)
    def stopping(message: Any) -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            worker.stop(5.0)
            stopped_at.append(time.monotonic())
            time.sleep(0.3)

    worker.start()
    wait_until(lambda: bool(stopped_at), timeout=30, what="the handler's stop")
    wait_until(lambda: client.server_stats()["consumers"] == 0, timeout=30,
               what="the worker's consumers closed (its stop done)")
    assert [t for t in calls if t > stopped_at[0]] == []


@pytest.mark.parametrize("is_async", [False, True])
def test_stop_finishes_in_flight_and_gives_back_the_rest_at_once(
        track: Tracker, is_async: bool) -> None:
    endpoint, client = _setup(track)
    started = threading.Event()
    release = threading.Event()
    done: list[bytes] = []

    def blocking(message: Any) -> None:
        started.set()
        release.wait(5.0)
        done.append(message.body)

    async def blocking_async(message: Any) -> None:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        done.append(message.body)

    worker = _worker(track, endpoint, concurrency=1)
    worker.handler("jobs", prefetch=5)(blocking_async if is_async else blocking)
    client.send_batch("jobs", [b"m%d" % n for n in range(5)])
    worker.start()
    assert started.wait(5.0)
    threading.Timer(0.2, release.set).start()
    worker.stop(3.0)   # the running call finishes in time: acked; the rest given back
    assert done == [b"m0"]
    queue = client.stats().queues["jobs"]
    assert (queue.acked, queue.leased, queue.visible) == (1, 0, 4)


@pytest.mark.parametrize("is_async", [False, True])
def test_stopping_mid_stream_loses_nothing(track: Tracker, is_async: bool) -> None:
    endpoint, client = _setup(track)
    handled: list[bytes] = []
    lock = threading.Lock()

    def handle(message: Any) -> None:
        time.sleep(0.005)
        with lock:
            handled.append(message.body)

    async def handle_async(message: Any) -> None:
        await asyncio.sleep(0.005)
        handled.append(message.body)

    worker = _worker(track, endpoint, concurrency=4)
    worker.handler("jobs")(handle_async if is_async else handle)
    client.send_batch("jobs", [b"%d" % n for n in range(300)])
    worker.start()
    wait_until(lambda: len(handled) >= 40, what="some handled")
    worker.stop(5.0)
    queue = client.stats().queues["jobs"]
    assert len(set(handled)) == len(handled) < 300      # each handled once, and not all
    assert queue.acked == len(handled)                  # acked exactly what was handled
    assert (queue.leased, queue.visible) == (0, 300 - len(handled))   # the rest is back


@pytest.mark.parametrize("is_async", [False, True])
def test_stop_past_the_deadline_nacks_the_running_call(track: Tracker, is_async: bool
                                                       ) -> None:
    endpoint, client = _setup(track)
    started = threading.Event()
    release = threading.Event()
    worker = _worker(track, endpoint, concurrency=1)

    def stuck(message: Any) -> None:
        started.set()
        release.wait(STUCK)

    async def stuck_async(message: Any) -> None:
        started.set()
        await asyncio.sleep(STUCK)

    worker.handler("jobs")(stuck_async if is_async else stuck)

    client.send("jobs", b"x")
    worker.start()
    assert started.wait(5.0)
    begun = time.monotonic()
    worker.stop(0.2)
    assert time.monotonic() - begun < 10.0   # not the call's end (STUCK)
    queue = client.stats().queues["jobs"]
    assert (queue.acked, queue.leased, queue.visible) == (0, 0, 1)   # back at once
    release.set()
    assert worker.stats().handlers["stuck_async" if is_async else "stuck"].processed == 0


def test_stop_now_cuts_a_graceful_stop_short(track: Tracker) -> None:
    endpoint, client = _setup(track)
    started = threading.Event()
    worker = _worker(track, endpoint, concurrency=1)

    @worker.handler("jobs")
    async def stuck(message: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    client.send("jobs", b"x")
    worker.start()
    assert started.wait(5.0)
    stopper = threading.Thread(target=worker.stop, args=(60.0,))
    stopper.start()
    wait_until(lambda: stopper.is_alive() and worker.stats().handlers["stuck"].in_flight == 1,
               what="a stop in progress")
    begun = time.monotonic()
    worker.stop_now()
    stopper.join(10.0)
    assert not stopper.is_alive() and time.monotonic() - begun < 5.0
    queue = client.stats().queues["jobs"]
    assert (queue.acked, queue.leased, queue.visible) == (0, 0, 1)


def test_embedded_worker_sync_and_async() -> None:
    with Broker() as broker:
        broker.create_queue("sync-jobs")
        broker.create_queue("async-jobs")
        got: list[bytes] = []
        worker = Worker(broker, concurrency=2)

        @worker.handler("sync-jobs")
        def on_sync(message: Any) -> None:
            got.append(message.body)

        @worker.handler("async-jobs", batch_size=5)
        async def on_async(batch: list[Any]) -> None:
            got.extend(m.body for m in batch)

        with worker:
            broker.send_batch("sync-jobs", [b"s%d" % n for n in range(10)])
            broker.send_batch("async-jobs", [b"a%d" % n for n in range(10)])
            wait_until(lambda: len(got) == 20, what="20 handled")
            wait_until(lambda: broker.stats().queues["async-jobs"].acked == 10, what="acked")
        assert broker.stats().queues["sync-jobs"].acked == 10
        with pytest.raises(InvalidArgument, match="processes"):
            Worker(broker, processes=2)


@pytest.mark.parametrize("timeout", ["5", float("nan"), -1, 1e20, True])
def test_stop_with_a_bad_timeout_is_refused_and_stops_nothing(timeout: Any) -> None:
    # until 2026-12-05 stop("5") raised a TypeError after marking the worker stopped: its
    # threads ran on and a later stop() returned at once; stop(1e20) raised OverflowError
    with Broker() as broker:
        broker.create_queue("jobs")
        got: list[bytes] = []
        worker = Worker(broker, concurrency=1)

        @worker.handler("jobs")
        def on_job(message: Any) -> None:
            got.append(message.body)

        worker.start()
        try:
            with pytest.raises(InvalidArgument, match="timeout"):
                worker.stop(timeout)
            broker.send("jobs", b"after the refused stop")
            wait_until(lambda: got == [b"after the refused stop"], what="still running")
        finally:
            worker.stop(5.0)
        assert broker.waiting_receivers == 0   # its consumer ended with the real stop
        broker.send("jobs", b"after the stop")
        assert broker.stats().queues["jobs"].visible == 1 and len(got) == 1


def test_subscribe_creates_the_queue_its_dead_letter_queue_and_filter(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("orders")
    got: list[bytes] = []
    worker = _worker(track, server.endpoint)

    def billing(message: Any) -> None:
        got.append(message.body)

    worker.subscribe("orders", billing, filter_policy={"kind": ["new"]})
    worker.start()
    client.publish("orders", b"new", attributes={"kind": "new"})
    client.publish("orders", b"old", attributes={"kind": "old"})
    wait_until(lambda: got == [b"new"], what="the filtered message")
    settings = client.queue_settings("billing")
    assert (settings.dead_letter_queue, settings.max_receive_count) == ("billing-dlq", 3)
    assert "billing-dlq" in client.list_queues()
    worker.stop()
    again = _worker(track, server.endpoint)   # a second start reuses all of it
    again.subscribe("orders", billing, filter_policy={"kind": ["new"]})
    again.start()
    assert len(client.list_subscriptions()) == 1


def test_bad_handlers_and_unknown_queues_are_refused(track: Tracker) -> None:
    worker = Worker("ipc:///nowhere")
    with pytest.raises(InvalidArgument, match="one positional argument"):
        worker.handler("jobs")(lambda a, b: None)
    with pytest.raises(InvalidArgument, match="one positional argument"):
        worker.handler("jobs")(lambda: None)
    with pytest.raises(InvalidArgument, match="not callable"):
        make_handler(3, "jobs")
    with pytest.raises(InvalidArgument, match="concurrency"):
        worker.handler("jobs", concurrency=0)(print)
    with pytest.raises(InvalidArgument, match="batch_window"):
        worker.handler("jobs", batch_window=-1)(print)
    worker.handler("jobs")(print)
    with pytest.raises(InvalidArgument, match="has a handler already"):
        worker.handler("jobs")(repr)
    assert list(worker.handlers) == ["print"]

    endpoint, client = _setup(track)
    unknown = _worker(track, endpoint)
    unknown.handler("nope")(print)
    with pytest.raises(NotFound, match="queue 'nope' of handler print does not exist"):
        unknown.start()
    # until 2026-12-05 a topic's name was "queue 'jobs-topic' does not exist; create it
    # first": a queue made so shares the topic's name and gets none of its messages
    client.create_topic("jobs-topic")
    topical = _worker(track, endpoint)
    topical.handler("jobs-topic")(print)
    with pytest.raises(NotFound, match=r"'jobs-topic' of handler print is a topic, not a "
                       r"queue: .* Worker.subscribe\('jobs-topic', print\)"):
        topical.start()


def test_processes_spread_a_handler_over_processes(track: Tracker, tmp_path: Path) -> None:
    import worker_app

    endpoint, client = _setup(track)
    worker = _worker(track, endpoint, shutdown_timeout=5.0)
    worker.handler("jobs", processes=2, concurrency=1, prefetch=1)(worker_app.record)
    worker.start()
    wait_until(lambda: client.server_stats()["consumers"] == 2, timeout=30,
               what="both processes consuming")
    client.send_batch("jobs", [f"{tmp_path}|0.05".encode() for _ in range(20)])
    wait_until(lambda: len(list(tmp_path.glob("*-*"))) == 20, timeout=30, what="20 files")
    pids = {int(path.name.split("-")[0]) for path in tmp_path.glob("*-*")}
    assert len(pids) == 2 and os.getpid() not in pids
    assert set(worker.pids) == pids
    wait_until(lambda: worker.stats().handlers["record"].processed == 20, what="stats")
    assert worker.stats().handlers["record"].processes == 2
    # the parent reports its children's combined stats; the children report nothing
    wait_until(lambda: [r["handlers"]["record"]["processed"]
                        for r in client.worker_stats()] == [20], what="the parent's report")
    [report] = client.worker_stats()
    assert report["pid"] == os.getpid() and report["handlers"]["record"]["processes"] == 2
    killed = worker.pids[0]
    os.kill(killed, signal.SIGKILL)   # a dead worker process is started again
    wait_until(lambda: worker.stats().restarts == 1 and killed not in worker.pids,
               timeout=30, what="a new process")
    wait_until(lambda: client.server_stats()["consumers"] == 2, timeout=30,
               what="the new process consuming")
    client.send("jobs", f"{tmp_path}|0".encode())
    wait_until(lambda: len(list(tmp_path.glob("*-*"))) == 21, timeout=30, what="one more")
    wait_until(lambda: worker.stats().handlers["record"].processed == 21,   # dead one's kept
               what="stats of 21")
    stopped = worker.pids[0]
    os.kill(stopped, signal.SIGTERM)   # stopped on a signal (Ctrl-C to the group): stays so
    wait_until(lambda: stopped not in worker.pids, timeout=30, what="the stopped one gone")
    assert worker.stats().restarts == 1 and worker.stats().handlers["record"].processes == 1
    assert worker.stats().handlers["record"].processed == 21
    wait_until(lambda: client.server_stats()["consumers"] == 1, timeout=30,
               what="one process consuming")
    worker.stop()
    assert client.stats().queues["jobs"].acked == 21


def _cli_worker(track: Tracker, endpoint: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    process = subprocess.Popen(
        [sys.executable, "-m", "fastfanout", "worker", "worker_app:app", "--endpoint",
         endpoint, "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    track.processes.append(process)
    return process


def test_cli_worker_stops_on_sigterm_losing_nothing(track: Tracker, tmp_path: Path) -> None:
    endpoint, client = _setup(track)
    client.send_batch("jobs", [f"{tmp_path}|0.3".encode() for _ in range(10)])
    process = _cli_worker(track, endpoint, "--concurrency", "2", "--shutdown-timeout", "5")
    wait_until(lambda: len(list(tmp_path.glob("*-*"))) >= 2, timeout=20, what="a call")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0, process.stderr.read() if process.stderr else b""
    queue = client.stats().queues["jobs"]
    handled = len(list(tmp_path.glob("*-*")))
    assert queue.acked == handled   # everything handled was acked, nothing else
    assert queue.leased == 0 and queue.visible == 10 - handled   # the rest back at once


def test_a_second_sigterm_stops_without_waiting(track: Tracker, tmp_path: Path) -> None:
    endpoint, client = _setup(track)
    client.send("jobs", f"{tmp_path}|30".encode())   # a call of 30 s
    process = _cli_worker(track, endpoint, "--concurrency", "1", "--shutdown-timeout", "60")
    wait_until(lambda: client.stats().queues["jobs"].leased == 1, timeout=20, what="leased")
    process.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(0.5)   # the first one waits for the running call
    begun = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert time.monotonic() - begun < 5.0
    queue = client.stats().queues["jobs"]
    assert (queue.acked, queue.leased, queue.visible) == (0, 0, 1)   # back at once


def test_a_killed_worker_process_gets_its_messages_redelivered(track: Tracker,
                                                               tmp_path: Path) -> None:
    endpoint, client = _setup(track)
    client.send("jobs", f"{tmp_path}|30".encode())
    process = _cli_worker(track, endpoint, "--concurrency", "1")
    wait_until(lambda: client.stats().queues["jobs"].leased == 1, timeout=20, what="leased")
    process.kill()
    process.wait(10)
    wait_until(lambda: client.stats().queues["jobs"].visible == 1, timeout=10,
               what="redelivery")


@pytest.mark.parametrize(("target", "expected"), [
    ("worker_app", "is not MODULE:ATTRIBUTE"),
    ("no_such_module:app", "cannot import 'no_such_module'"),
    ("worker_app:nothing", "has no attribute 'nothing'"),
    ("worker_app:record", "is a function, not a fastfanout.Worker"),
])
def test_cli_worker_refuses_a_bad_target_in_one_line(track: Tracker, target: str,
                                                     expected: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    result = subprocess.run([sys.executable, "-m", "fastfanout", "worker", target],
                            capture_output=True, env=env, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_cli_worker_imports_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("raise ValueError('no config')\n")
    (tmp_path / "handlerless.py").write_text("import fastfanout\napp = fastfanout.Worker()\n")
    # until 2026-12-05 a module calling sys.exit() on import ended the command silently,
    # with the module's status
    (tmp_path / "exiting_app.py").write_text("import sys\nsys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for target, expected, status in (
            ("broken_app:app", "importing 'broken_app' raised ValueError: no config", 2),
            ("exiting_app:app", "importing 'exiting_app' called sys.exit(3)", 2),
            ("handlerless:app", "the worker has no handler", 1)):
        result = subprocess.run([sys.executable, "-m", "fastfanout", "worker", target],
                                capture_output=True, env=env, timeout=30, cwd=tmp_path)
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode == status, lines
        assert len(lines) == 1 and expected in lines[0], lines


def test_worker_is_exported() -> None:
    assert fastfanout.Worker is Worker


@pytest.mark.parametrize("is_async", [False, True])
def test_a_worker_reconnects_when_its_broker_comes_back(track: Tracker,
                                                        is_async: bool) -> None:
    server = track.server()
    endpoint = server.endpoint
    client = track.client(endpoint)
    client.create_queue("jobs")
    got: list[bytes] = []

    def handle(message: Any) -> None:
        got.append(message.body)

    async def handle_async(message: Any) -> None:
        got.append(message.body)

    worker = _worker(track, endpoint, concurrency=1)
    worker.handler("jobs")(handle_async if is_async else handle)
    worker.start()
    client.send("jobs", b"before")
    wait_until(lambda: got == [b"before"], what="the first message")
    track.stop_server(server)
    again = track.server(endpoint)   # an empty broker on the same endpoint
    admin = track.client(endpoint)
    admin.create_queue("jobs")
    admin.send("jobs", b"after")
    wait_until(lambda: got == [b"before", b"after"], timeout=20, what="after the restart")
    assert again.endpoint == endpoint


def _stats_json(endpoint: str) -> dict[str, Any]:
    import json

    done = subprocess.run([sys.executable, "-m", "fastfanout", "stats", "--endpoint",
                           endpoint, "--json"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def _workers_row(data: dict[str, Any], worker: str, handler: str) -> dict[str, Any] | None:
    for report in data["workers"]:
        if report["worker"] == worker and handler in report["handlers"]:
            entry: dict[str, Any] = report["handlers"][handler]
            return entry
    return None


@pytest.mark.parametrize("is_async", [False, True])
def test_fastfanout_stats_shows_each_handler_of_the_workers_connected(
        track: Tracker, is_async: bool) -> None:
    endpoint, client = _setup(track, max_receive_count=2, dead_letter_queue="jobs-dlq")
    client.create_queue("other")
    worker = _worker(track, endpoint, concurrency=2, name="billing-app", report_interval=0.05)

    if is_async:
        @worker.handler("jobs")
        async def bill(message: Any) -> None:
            if message.body.startswith(b"bad"):
                raise RuntimeError("boom")
    else:
        @worker.handler("jobs")
        def bill(message: Any) -> None:
            if message.body.startswith(b"bad"):
                raise RuntimeError("boom")

    @worker.handler("other")
    def idle(message: Any) -> None:
        pass

    client.send_batch("jobs", [b"ok-%d" % i for i in range(5)] + [b"bad-1"])
    worker.start()
    wait_until(lambda: client.stats().queues["jobs-dlq"].messages == 1, what="a dead letter")
    # processed 5, the bad one failed twice: once retried, then dead-lettered
    want = {"processed": 5, "failed": 2, "retried": 1, "dead_lettered": 1, "in_flight": 0}

    def reported() -> bool:
        entry = _workers_row(_stats_json(endpoint), "billing-app", "bill")
        return entry is not None and all(entry[k] == v for k, v in want.items())

    wait_until(reported, what="the worker's report")
    data = _stats_json(endpoint)
    entry = _workers_row(data, "billing-app", "bill")
    assert entry is not None and entry["queue"] == "jobs" and entry["processes"] == 1
    assert 0 <= entry["p50"] <= entry["p99"] < 5
    idle_entry = _workers_row(data, "billing-app", "idle")
    assert idle_entry is not None and idle_entry["processed"] == 0
    assert idle_entry["p50"] is None
    [report] = data["workers"]
    assert report["pid"] == os.getpid()
    assert data["server"]["worker_reports"] >= 1
    text = subprocess.run([sys.executable, "-m", "fastfanout", "stats", "--endpoint",
                           endpoint], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "COLUMNS": "200"})
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    header = next(line for line in lines if line.startswith("worker/handler"))
    assert header.split() == ["worker/handler", "queue", "processes", "processed", "failed",
                              "retried", "dead_lettered", "in_flight", "p50_ms", "p99_ms"]
    row = next(line for line in lines if line.startswith("billing-app/bill "))
    assert row.split()[1:8] == ["jobs", "1", "5", "2", "1", "1", "0"]
    # a worker that stops leaves the table with its connection
    worker.stop()
    wait_until(lambda: _stats_json(endpoint)["workers"] == [], what="the report to go")


def test_a_bad_worker_report_is_refused_and_counted(track: Tracker) -> None:
    _, client = _setup(track)
    good = {"worker": "w", "pid": 7, "handlers": {"h": {"queue": "jobs", "processed": 3}}}
    for bad in ([1, 2], {"pid": 1, "handlers": {}}, {**good, "pid": -1},
                {**good, "handlers": {"h": {"queue": "jobs", "failed": "many"}}},
                {**good, "handlers": {"h": {"queue": "jobs", "p99": -1.0}}},
                {**good, "handlers": {f"h{i}": {"queue": "q"} for i in range(1025)}}):
        with pytest.raises(InvalidArgument, match="report"):
            client.report_worker(bad)   # type: ignore[arg-type]
    assert client.worker_stats() == []
    assert client.server_stats()["worker_reports_refused"] == 6
    client.report_worker(good)
    [report] = client.worker_stats()
    assert report["handlers"]["h"]["processed"] == 3 and report["handlers"]["h"]["p50"] is None
    assert report["handlers"]["h"]["failed"] == 0


def test_cli_worker_fails_at_once_without_a_socket_file(track: Tracker, tmp_path: Path
                                                        ) -> None:
    process = _cli_worker(track, f"ipc://{tmp_path}/none.sock")
    assert process.wait(10) == 1
    assert process.stderr is not None
    error = process.stderr.read().decode()
    assert "no such socket file" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert error.count("fastfanout serve") == 1, error   # its advice once, not twice


def test_stop_from_another_thread_ends_run_quietly(track: Tracker,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    endpoint, client = _setup(track)
    worker = _worker(track, endpoint, concurrency=1)
    handled = threading.Event()

    @worker.handler("jobs")
    def job(message: Any) -> None:
        handled.set()

    client.send("jobs", b"x")
    runner = threading.Thread(target=worker.run)
    runner.start()
    assert handled.wait(10.0)
    worker.stop()
    runner.join(10.0)
    assert not runner.is_alive()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert client.stats().queues["jobs"].acked == 1


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_timeout_error_raised_by_an_async_handler_is_its_failure(
        timeout: float | None, caplog: pytest.LogCaptureFixture) -> None:
    # it was counted timed_out, and logged "passed its timeout of None s" (a logging
    # error) when the handler had no timeout
    with Broker() as broker:
        broker.create_queue("jobs", max_receive_count=1)
        worker = Worker(broker, concurrency=1)

        @worker.handler("jobs", timeout=timeout)
        async def upstream(message: Any) -> None:
            raise TimeoutError("the upstream service did not answer")

        with caplog.at_level("WARNING", logger="fastfanout.worker"), worker:
            broker.send("jobs", b"x")
            wait_until(lambda: worker.stats().handlers["upstream"].failed == 1,
                       what="one failure")
        stats = worker.stats().handlers["upstream"]
        assert (stats.failed, stats.dead_lettered, stats.timed_out) == (1, 1, 0)
        assert [r.getMessage() for r in caplog.records] == [
            "handler upstream failed on 1 message(s)"]


@pytest.mark.parametrize("is_async", [False, True])
def test_a_handler_may_stop_its_worker(is_async: bool) -> None:
    # stop() in a handler raised RuntimeError (a thread cannot join itself)
    with Broker() as broker:
        broker.create_queue("jobs")
        worker = Worker(broker, concurrency=1)
        errors: list[BaseException] = []
        returned = threading.Event()

        def stop_here(message: Any) -> None:
            try:
                worker.stop()
            except BaseException as exc:
                errors.append(exc)
            returned.set()

        async def stop_here_async(message: Any) -> None:
            stop_here(message)

        handler = stop_here_async if is_async else stop_here
        worker.handler("jobs")(handler)
        before = set(threading.enumerate())
        worker.start()
        broker.send("jobs", b"stop")
        assert returned.wait(5.0)
        assert errors == []
        wait_until(lambda: not set(threading.enumerate()) - before, what="the stop")
        assert worker.stats().handlers[handler.__name__].processed == 1
        assert broker.stats().queues["jobs"].acked == 1
        worker.stop()   # done already: a no-op


@pytest.mark.parametrize("is_async", [False, True])
def test_a_handler_raising_system_exit_fails_its_message(is_async: bool) -> None:
    # SystemExit ended the handler's thread (or the event loop) silently, and the lease
    # keeper extended the message's lease for ever: never redelivered
    with Broker() as broker:
        broker.create_queue("jobs", visibility_timeout=30.0)
        worker = Worker(broker, concurrency=1)
        calls: list[int] = []

        def leave(message: Any) -> None:
            calls.append(message.receive_count)
            if message.receive_count == 1:
                sys.exit(3)

        async def leave_async(message: Any) -> None:
            leave(message)

        handler = leave_async if is_async else leave
        worker.handler("jobs")(handler)
        with worker:
            broker.send("jobs", b"x")
            wait_until(lambda: broker.stats().queues["jobs"].acked == 1, what="the retry")
        stats = worker.stats().handlers[handler.__name__]
        assert (stats.failed, stats.processed, calls) == (1, 1, [1, 2])


def test_a_cancelled_error_raised_by_an_async_handler_is_its_failure() -> None:
    # it was taken for the worker's stop: redelivered at once, past the queue's backoff,
    # thousands of times a second and never counted failed
    with Broker() as broker:
        broker.create_queue("jobs-dlq")
        broker.create_queue("jobs", max_receive_count=2, dead_letter_queue="jobs-dlq",
                            redelivery_backoff=fastfanout.ExponentialBackoff(60.0))
        worker = Worker(broker, concurrency=1)
        calls: list[int] = []

        @worker.handler("jobs")
        async def gives_up(message: Any) -> None:
            calls.append(message.receive_count)
            raise asyncio.CancelledError

        with worker:
            broker.send("jobs", b"x")
            wait_until(lambda: worker.stats().handlers["gives_up"].failed == 1,
                       what="one failure")
            queue = broker.stats().queues["jobs"]
            assert (calls, queue.delayed, queue.visible) == ([1], 1, 0)   # backing off


def test_a_worker_stopped_before_it_started_refuses_to_start() -> None:
    # it started, and its threads ran on: every later stop() was a no-op
    with Broker() as broker:
        broker.create_queue("jobs")
        worker = Worker(broker, concurrency=1)
        worker.handler("jobs")(lambda message: None)
        before = set(threading.enumerate())
        worker.stop()
        with pytest.raises(InvalidArgument, match="stopped before it started"):
            worker.start()
        with pytest.raises(InvalidArgument, match="stopped before it started"):
            worker.run()
        assert set(threading.enumerate()) == before


def test_a_slow_batch_keeps_the_leases_of_the_rest_of_its_push() -> None:
    # the rest of a push beyond the batch waited in the thread's source without lease
    # keeping: a batch slower than the lease got those messages delivered twice
    with Broker() as broker:
        # a lease of 1.5 s: the keeper extends it every 0.5 s, which a loaded machine
        # keeps up with (0.3 s leases were missed there: redelivered under load)
        broker.create_queue("jobs", visibility_timeout=1.5)
        worker = Worker(broker, concurrency=1)
        seen: list[tuple[bytes, int]] = []

        @worker.handler("jobs", batch_size=2)
        def slow_first(batch: list[Any]) -> None:
            seen.extend((message.body, message.receive_count) for message in batch)
            if len(seen) == 2:
                time.sleep(3.5)   # the work outlasts two leases (not a synchronisation)

        broker.send_batch("jobs", [b"1", b"2", b"3", b"4"])
        with worker:
            wait_until(lambda: broker.stats().queues["jobs"].acked == 4, what="all acked")
        assert sorted(seen) == [(b"1", 1), (b"2", 1), (b"3", 1), (b"4", 1)]
        assert broker.stats().queues["jobs"].redelivered == 0


def test_a_worker_process_failing_at_start_is_restarted_with_a_delay(
        caplog: pytest.LogCaptureFixture) -> None:
    # a child that could not start (its broker gone) was started again at once, again and
    # again: a restart storm, each with a traceback
    import worker_app

    from fastfanout.workers.processes import RESTART_DELAY, ProcessGroup

    handler = make_handler(worker_app.record, "jobs", processes=2)
    group = ProcessGroup(handler, None, {}, 1.0, worker_app.fail_at_start)
    with caplog.at_level("WARNING", logger="fastfanout.worker"):
        group.start()
        try:
            wait_until(lambda: len(caplog.records) >= 2, timeout=30, what="both exits")
            delays = sorted(record.getMessage().rsplit(" in ", 1)[1]
                            for record in caplog.records[:2])
            assert delays == [f"{RESTART_DELAY:g} s", f"{2 * RESTART_DELAY:g} s"]
        finally:
            group.stop(1.0)


def test_an_embedded_thread_past_its_timeout_gets_a_new_consumer() -> None:
    # its consumer is cancelled under the abandoned call; when the call returns the
    # thread consumes again on a new one
    with Broker() as broker:
        broker.create_queue("jobs")
        worker = Worker(broker, concurrency=1)
        release = threading.Event()
        calls: list[int] = []

        @worker.handler("jobs", timeout=0.1)
        def hangs_once(message: Any) -> None:
            calls.append(message.receive_count)
            if message.receive_count == 1:
                release.wait(5.0)

        with worker:
            broker.send("jobs", b"x")
            wait_until(lambda: worker.stats().handlers["hangs_once"].timed_out == 1,
                       what="the timeout")
            release.set()   # the call returns; the thread opens a new consumer
            wait_until(lambda: broker.stats().queues["jobs"].acked == 1, what="the retry")
        assert calls == [1, 2]


@pytest.mark.parametrize("how", ["stop", "stop_now"])
def test_an_async_handler_that_ignores_its_cancellation_does_not_hold_the_stop(
        track: Tracker, how: str) -> None:
    # until 2026-12-05 stop() waited for the call to end however long it took (the
    # cancelled task was awaited, then asyncio.run awaited it again), and the call's
    # return then acked the message the log said was nacked
    endpoint, client = _setup(track)
    started = threading.Event()
    release = threading.Event()
    worker = _worker(track, endpoint, concurrency=1)

    @worker.handler("jobs")
    async def stubborn(message: Any) -> None:
        started.set()
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass   # ignored: the call goes on

    client.send("jobs", b"x")
    worker.start()
    assert started.wait(5.0)
    begun = time.monotonic()
    if how == "stop":
        worker.stop(0.2)
    else:
        worker.stop_now()
    assert time.monotonic() - begun < 10.0   # not the call's end (never, until released)
    queue = client.stats().queues["jobs"]
    assert (queue.acked, queue.leased, queue.visible) == (0, 0, 1)   # back at once
    release.set()   # the call ends now: its result is ignored
    wait_until(lambda: not any(thread.name == "fastfanout-worker-loop"
                               for thread in threading.enumerate()),
               what="the worker's event loop to end with the call")
    queue = client.stats().queues["jobs"]
    assert (queue.acked, queue.leased, queue.visible) == (0, 0, 1)
    assert worker.stats().handlers["stubborn"].processed == 0


def test_an_async_call_that_swallows_its_timeout_is_still_timed_out(track: Tracker) -> None:
    # until 2026-12-05 a call that caught the CancelledError of its timeout and returned
    # was counted processed and its message acked, as if it had finished in time
    endpoint, client = _setup(track)
    calls: list[int] = []

    async def swallows(message: Any) -> None:
        calls.append(message.receive_count)
        if message.receive_count == 1:
            try:
                await asyncio.sleep(STUCK)
            except asyncio.CancelledError:
                return   # its timeout: ignored, and a normal return

    worker = _worker(track, endpoint, concurrency=1)
    worker.handler("jobs", timeout=0.2)(swallows)
    client.send("jobs", b"x")
    worker.start()
    wait_until(lambda: worker.stats().handlers["swallows"].processed == 1,
               what="the second try")
    stats = worker.stats().handlers["swallows"]
    assert (stats.timed_out, stats.failed, stats.retried, stats.processed) == (1, 1, 1, 1)
    assert calls == [1, 2]
    wait_until(lambda: client.stats().queues["jobs"].acked == 1, what="the second ack")


def test_an_async_call_that_ignores_its_timeout_gives_its_message_back(
        track: Tracker) -> None:
    # until 2026-12-05 the message stayed with the call for as long as it ran on (its
    # lease extended every third of a lease): never retried, never counted timed out
    endpoint, client = _setup(track)
    release = threading.Event()
    calls: list[int] = []

    async def stubborn(message: Any) -> None:
        calls.append(message.receive_count)
        if message.receive_count == 1:
            while not release.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    pass   # its timeout: ignored, and the call goes on

    worker = _worker(track, endpoint, concurrency=2)
    worker.handler("jobs", timeout=0.2)(stubborn)
    client.send("jobs", b"x")
    worker.start()
    try:
        wait_until(lambda: worker.stats().handlers["stubborn"].processed == 1,
                   what="the retry while the first call still runs")
        stats = worker.stats().handlers["stubborn"]
        assert (stats.timed_out, stats.failed, stats.retried) == (1, 1, 1)
        assert calls == [1, 2]
    finally:
        release.set()
    wait_until(lambda: worker.stats().handlers["stubborn"].in_flight == 0,
               what="the first call to end")
    stats = worker.stats().handlers["stubborn"]
    assert (stats.processed, stats.timed_out, stats.failed) == (1, 1, 1)   # ignored
    queue = client.stats().queues["jobs"]
    assert (queue.acked, queue.leased, queue.visible) == (1, 0, 0)


def test_worker_processes_of_a_killed_parent_stop_quietly(track: Tracker, tmp_path: Path
                                                          ) -> None:
    # until 2026-12-05 each of them stopped on a BrokenPipeError, printing two tracebacks
    endpoint, client = _setup(track)
    process = _cli_worker(track, endpoint, "--processes", "2", "--concurrency", "1",
                          "--shutdown-timeout", "5")
    wait_until(lambda: client.server_stats()["consumers"] == 2, timeout=30,
               what="both processes consuming")
    client.send("jobs", f"{tmp_path}|1".encode())   # a call running when the parent dies
    wait_until(lambda: client.stats().queues["jobs"].leased == 1, timeout=20, what="leased")
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    process.kill()
    process.wait(10)
    wait_until(lambda: client.server_stats()["consumers"] == 0, timeout=30,
               what="the orphans stopped")

    def running(pid: str) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    wait_until(lambda: not any(running(pid) for pid in children), timeout=30,
               what="the orphans gone")
    assert client.stats().queues["jobs"].acked == 1   # the running call finished, acked
    assert process.stderr is not None
    told = process.stderr.read().decode()
    assert "Traceback" not in told and "its parent process is gone" in told


def test_an_async_handler_blocking_the_event_loop_is_named(
        track: Tracker, caplog: pytest.LogCaptureFixture) -> None:
    # until 2026-12-05 nothing said why: a handler calling time.sleep in an async def
    # stopped the connection's heartbeats with the loop, the broker ended the session, and
    # the message was run again and again, never acked (only "it missed its heartbeats")
    endpoint, client = _setup(track)
    worker = _worker(track, endpoint, shutdown_timeout=10.0)
    blocked = threading.Event()

    @worker.handler("jobs", concurrency=1)
    async def stubborn(message: Any) -> None:
        time.sleep(1.6)   # blocks the worker's event loop
        blocked.set()

    with caplog.at_level(logging.WARNING, logger="fastfanout.worker"):
        worker.start()
        client.send("jobs", b"x")
        wait_until(lambda: "ran again" in caplog.text, timeout=20, what="the warnings")
        worker.stop()
    assert blocked.is_set()
    assert ("handler stubborn blocked the worker's event loop for over 1 s" in caplog.text
            and "asyncio.to_thread" in caplog.text)


def test_a_worker_process_killed_by_a_signal_is_named_so(
        track: Tracker, caplog: pytest.LogCaptureFixture) -> None:
    # until 2026-12-05 the log said "exited with -11": a segfault had to be guessed
    import worker_app

    endpoint, client = _setup(track)
    worker = _worker(track, endpoint, shutdown_timeout=5.0)
    worker.handler("jobs", processes=2, concurrency=1, prefetch=1)(worker_app.crash)
    with caplog.at_level(logging.WARNING, logger="fastfanout.worker"):
        worker.start()
        wait_until(lambda: client.server_stats()["consumers"] == 2, timeout=30,
                   what="both processes consuming")
        client.send("jobs", b"crash")
        wait_until(lambda: "was killed by SIGSEGV (a crash in native code)" in caplog.text,
                   timeout=30, what="the crash named")
        client.purge("jobs")   # the message would crash every process it reaches
        worker.stop()


def test_a_handler_returning_code_it_did_not_run_fails_its_message(
        caplog: pytest.LogCaptureFixture) -> None:
    # a sync function returning a coroutine (or a generator) had its message acked, its
    # code never run: only Python's "coroutine ... was never awaited" on stderr
    ran: list[str] = []

    async def body(message: Any) -> None:
        ran.append("body")

    def sneaky(message: Any) -> Any:   # a decorator without functools.wraps
        return body(message)

    def lazy_batch(batch: list[Any]) -> Any:
        return (ran.append("batch") for _ in batch)

    async def unawaited(message: Any) -> Any:
        return body(message)   # the await forgotten

    with Broker() as broker:
        for queue in ("one", "batch", "async"):
            broker.create_queue(queue, redelivery_backoff=fastfanout.ExponentialBackoff(60.0))
        worker = Worker(broker, concurrency=1)
        worker.handler("one")(sneaky)
        worker.handler("batch", batch_size=2)(lazy_batch)
        worker.handler("async")(unawaited)
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(
                logging.ERROR, logger="fastfanout.worker"):
            warnings.simplefilter("always")
            with worker:
                broker.send("one", b"1")
                broker.send_batch("batch", [b"2", b"3"])
                broker.send("async", b"4")
                wait_until(lambda: sum(s.failed for s in worker.stats().handlers.values())
                           == 4, what="four failures")
            gc.collect()
        stats = worker.stats().handlers
        assert [(stats[name].failed, stats[name].processed) for name in
                ("sneaky", "lazy_batch", "unawaited")] == [(1, 0), (2, 0), (1, 0)]
        queues = broker.stats().queues
        assert [(queues[q].acked, queues[q].delayed) for q in ("one", "batch", "async")] == [
            (0, 1), (0, 2), (0, 1)]   # nacked, backing off
    assert ran == []
    lines = [r.getMessage() for r in caplog.records if "its code never ran" in r.getMessage()]
    assert sorted(line.split(",")[0] for line in lines) == [
        "handler lazy_batch returned a generator", "handler sneaky returned a coroutine",
        "handler unawaited returned a coroutine"]
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_one_function_may_serve_two_queues() -> None:
    # the second registration was refused: "a handler named 'seen' is registered already"
    # (two lambdas on two queues alike)
    with Broker() as broker:
        for queue in ("a", "b", "c", "d"):
            broker.create_queue(queue)
        worker = Worker(broker, concurrency=1)
        got: list[tuple[str, bytes]] = []

        def seen(message: Any) -> None:
            got.append((message.queue, message.body))

        worker.handler("a")(seen)
        worker.handler("b")(seen)
        worker.handler("c")(lambda message: None)
        worker.handler("d")(lambda message: None)
        with pytest.raises(InvalidArgument, match="has a handler already"):
            worker.handler("b")(seen)
        assert {name: h.queue for name, h in worker.handlers.items()} == {
            "seen": "a", "seen@b": "b", "<lambda>": "c", "<lambda>@d": "d"}
        with worker:
            for queue in ("a", "b", "c", "d"):
                broker.send(queue, queue.encode())
            wait_until(lambda: sum(q.acked for q in broker.stats().queues.values()) == 4,
                       what="every message acked")
        stats = worker.stats().handlers
        assert {name: (s.queue, s.processed) for name, s in stats.items()} == {
            "seen": ("a", 1), "seen@b": ("b", 1), "<lambda>": ("c", 1),
            "<lambda>@d": ("d", 1)}
        assert sorted(got) == [("a", b"a"), ("b", b"b")]


def test_a_call_holding_the_gil_past_the_heartbeat_timeout_is_named(
        track: Tracker, caplog: pytest.LogCaptureFixture) -> None:
    # a sync call holding the GIL (a regex, a C extension) stops its connection's
    # heartbeats: the broker ended the session and released the call's message, which
    # came back, and the worker said only "lost its source (... missed its heartbeats)"
    endpoint = track.endpoint()
    config = track.tmp_path / "heartbeats.toml"
    config.write_text("heartbeat_interval = 0.1\nheartbeat_timeout = 0.5\n")
    track.broker_process(endpoint, "--config", str(config))
    track.client(endpoint).create_queue("jobs")
    hold_gil = ctypes.PyDLL(None).usleep   # a C call that keeps the GIL (PyDLL)
    calls: list[int] = []

    def crunch(message: Any) -> None:
        calls.append(message.receive_count)
        if message.receive_count == 1:
            hold_gil(1_500_000)   # 1.5 s: three heartbeat timeouts

    worker = _worker(track, endpoint, concurrency=1, report_interval=None)
    worker.handler("jobs")(crunch)
    sender = track.client(endpoint)
    with caplog.at_level(logging.WARNING, logger="fastfanout.worker"):
        worker.start()
        sender.send("jobs", b"x")
        wait_until(lambda: calls == [1, 2], timeout=30, what="the message back, and done")
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("handler crunch: a call ran")]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert re.match(r"handler crunch: a call ran 1\.\d s and the broker ended its "
                    r"connection's session meanwhile \(it missed its heartbeats\): a call "
                    r"that holds the GIL .* heartbeat_timeout \(0\.5 s\) .* run that work "
                    r"outside the worker's process .* or raise the broker's "
                    r"heartbeat_timeout above the call's length", lines[0])
