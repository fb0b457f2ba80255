"""Start/stop cycles soaked for leaks: workers, and a durable broker process.

Two tiers, as the other soak tests: by default each test runs a few cycles (a few
seconds); ``FASTFANOUT_SOAK=1`` runs the full tier (hundreds of cycles). Each asserts
what a leak would grow: open descriptors and threads of this process back to where they
were after the warm-up cycles, the resident size within a bound, the broker's sessions
and consumers back to 0, and (the durable broker) no file left in the runtime directory
and the data directory not growing with the cycles.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import Tracker, wait_for_broker

import fastfanout
from fastfanout import Worker

SOAK = os.environ.get("FASTFANOUT_SOAK") == "1"
"""The full tier (``FASTFANOUT_SOAK=1``)."""
WORKER_CYCLES = 300 if SOAK else 12
BROKER_CYCLES = 100 if SOAK else 6
WARM_UP = 3
RSS_GROWTH = 32 * 1024 * 1024
"""Most the resident size may grow after the warm-up (allocator noise, not a leak's
rate: a leak of one socket or thread a cycle shows in the exact counts first)."""


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _threads() -> list[str]:
    return sorted(thread.name for thread in threading.enumerate())


def _settled(most: int) -> bool:
    gc.collect()   # a stopped worker's objects are freed by the collector (cycles)
    return _fds() <= most


@pytest.mark.timeout(900 if SOAK else 120)
def test_worker_start_stop_cycles_leave_nothing_behind(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("jobs")
    handled: list[bytes] = []
    baseline: tuple[int, list[str], int] | None = None
    for cycle in range(WARM_UP + WORKER_CYCLES):
        worker = Worker(server.endpoint, concurrency=2, report_interval=None)
        # the bodies only: a message kept keeps its connection (and its descriptors)
        worker.handler("jobs")(lambda message: handled.append(message.body))
        worker.start()
        client.send_batch("jobs", [b"%d" % cycle] * 3)
        expected = 3 * (cycle + 1)
        track.wait_until(lambda: len(handled) == expected, timeout=10.0,  # noqa: B023
                         what=f"cycle {cycle}'s messages handled")
        worker.stop(timeout=5.0)
        if cycle == WARM_UP - 1:
            gc.collect()
            baseline = (_fds(), _threads(), _rss())
    assert baseline is not None
    fds, threads, rss = baseline
    # at most as many as after the warm-up (which counted the last worker's, not yet
    # collected then)
    track.wait_until(lambda: _settled(fds), timeout=10.0,
                     what=f"descriptors back to at most {fds}")
    track.wait_until(lambda: set(_threads()) <= set(threads), timeout=10.0,
                     what=f"threads back to {threads}")
    assert _rss() - rss < RSS_GROWTH, (rss, _rss())
    stats = client.server_stats()
    # only the test's own client is left: every worker connection ended with its stop
    track.wait_until(lambda: client.server_stats()["connections"] == 1, timeout=5.0,
                     what="the workers' sessions ended")
    assert (stats["consumers"], stats["held_receipts"]) == (0, 0)


def _broker_files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _files_open(pid: int, under: Path) -> list[str]:
    """The files and directories under ``under`` that process ``pid`` has open."""
    opened = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:   # closed meanwhile
            continue
        if target.startswith(str(under)):
            opened.append(target[len(str(under)):])
    return sorted(opened)


@pytest.mark.timeout(900 if SOAK else 120)
def test_a_durable_broker_started_and_stopped_again_and_again(track: Tracker,
                                                             tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    data = tmp_path / "data"
    endpoint = f"ipc://{runtime}/b.sock"
    fds = _fds()
    sizes: list[int] = []
    first_open: list[str] = []
    for cycle in range(BROKER_CYCLES):
        broker = track.process(["-m", "fastfanout", "serve", "--endpoint", endpoint,
                                "--data-dir", str(data), "--log-level", "WARNING"])
        wait_for_broker(endpoint, broker)
        with fastfanout.connect(endpoint, timeout=10.0) as client:
            if cycle == 0:
                client.create_queue("q", visibility_timeout=30.0)
                client.send("q", b"kept")   # one message kept across every restart
            client.send_batch("q", [b"work"] * 20)
            got = client.receive("q", max_messages=100)
            assert sorted(m.body for m in got) == [b"kept"] + [b"work"] * 20, cycle
            client.ack_batch([m.receipt for m in got if m.body == b"work"])
            # the kept one stays leased: the stop gives it back (journaled), and a
            # restart finds it there
        del client, got   # a message kept keeps its client (and its descriptors)
        opened = _files_open(broker.pid, tmp_path)
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(20) == 0, broker.stderr.read() if broker.stderr else ""
        for stream in (broker.stdout, broker.stderr):
            if stream is not None:
                stream.close()
        track.processes.remove(broker)
        assert _broker_files(runtime) == [], (cycle, _broker_files(runtime))
        sizes.append(_size(data))
        if cycle == 0:
            first_open = opened
        else:   # the same files each time (its journal segment's name aside)
            assert len(opened) == len(first_open), (cycle, first_open, opened)
    # this process: each broker's pipes and each client's descriptors closed
    track.wait_until(lambda: _settled(fds), timeout=10.0,
                     what=f"descriptors back to at most {fds}")
    # the data directory holds what is kept (one message), not a journal growing with
    # each start or each cycle's traffic: until 2026-12-06 each start left a segment
    # behind for as long as the kept message lived
    assert max(sizes[1:]) < 4 * max(sizes[0], 16 * 1024), sizes
    # (and the reserve a full disk would get back: docs/storage.md)
    assert _broker_files(data) == ["journal", _broker_files(data)[1], "lock", "reserve"], \
        _broker_files(data)
