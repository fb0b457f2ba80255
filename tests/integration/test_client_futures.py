"""The blocking client's futures complete by themselves and offer the concurrent.futures face.

A ``publish_nowait`` whose batch fails must fail promptly with nobody calling the client
again (its background thread sends the batch and reads the answer), run its done
callbacks, and answer ``exception()``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any as Tracker

import pytest

from fastfanout import NotFound, PublishResult

QUIET = 30.0
"""Seconds between the broker's heartbeats here, and the clients' call timeout (twice
it): neither may be what completes a future."""
PROMPTLY = 10.0
"""Seconds: far below QUIET, far above a loaded machine's round trip."""


def quiet_server(track: Tracker) -> Tracker:
    return track.server(heartbeat_interval=QUIET, heartbeat_timeout=4 * QUIET)


def quiet_client(track: Tracker, endpoint: str, **options: object) -> Tracker:
    return track.client(endpoint, timeout=2 * QUIET, **options)


@pytest.mark.parametrize("local_channel", [False, None], ids=["socket", "local"])
def test_a_failed_publish_future_completes_promptly(track: Tracker,
                                                    local_channel: bool | None) -> None:
    server = quiet_server(track)
    client = quiet_client(track, server.endpoint, local_channel=local_channel)
    completed = threading.Event()
    seen = []

    def on_done(future: object) -> None:
        seen.append(future)
        completed.set()

    started = time.monotonic()
    future = client.publish_nowait("missing", b"x")
    future.add_done_callback(on_done)
    assert not future.cancel() and not future.cancelled()
    # nobody calls the client from here on
    assert completed.wait(PROMPTLY), "the done callback did not fire"
    assert time.monotonic() - started < PROMPTLY
    assert future.done() and not future.running() and seen == [future]
    error = future.exception(timeout=0)
    assert isinstance(error, NotFound) and "missing" in str(error)
    with pytest.raises(NotFound):
        future.result()
    late: list[object] = []
    future.add_done_callback(late.append)   # done already: runs at once, here
    assert late == [future]


def test_done_flips_without_callbacks_or_calls(track: Tracker) -> None:
    server = quiet_server(track)
    client = quiet_client(track, server.endpoint)
    future = client.send_nowait("missing", b"x")
    deadline = time.monotonic() + PROMPTLY
    while not future.done():
        assert time.monotonic() < deadline, "the future stayed not-done"
        time.sleep(0.001)
    assert isinstance(future.exception(), NotFound)


def test_batch_futures_and_successes_call_back_too(track: Tracker,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    server = quiet_server(track)
    client = quiet_client(track, server.endpoint)
    client.create_queue("q")
    batch_done = threading.Event()
    batch = client.send_batch_nowait("gone", [b"a", b"b"])
    batch.add_done_callback(lambda f: batch_done.set())
    assert batch_done.wait(PROMPTLY)
    assert isinstance(batch.exception(), NotFound)

    results: list[PublishResult] = []
    all_done = threading.Event()

    def collect(future: object) -> None:
        results.append(future.result())  # type: ignore[attr-defined]
        if len(results) == 3:
            all_done.set()

    def broken_callback(future: object) -> None:
        raise RuntimeError("a callback that fails")

    futures = [client.send_nowait("q", b"%d" % i) for i in range(3)]
    futures[0].add_done_callback(broken_callback)   # logged; the others still run
    for future in futures:
        future.add_done_callback(collect)
    with caplog.at_level(logging.ERROR, logger="fastfanout.client.futures"):
        assert all_done.wait(PROMPTLY)
    assert sorted(r.message_id for r in results) == [f.result().message_id for f in futures]
    assert all(f.exception() is None for f in futures)
    assert "a callback that fails" in caplog.text


def test_an_idle_clients_batch_future_completes_by_itself(track: Tracker) -> None:
    # Asleep with nothing in flight, the background thread looked for replies only at
    # its next heartbeat: a batch future of a client idle since its last request
    # completed (and called back) a whole heartbeat interval late.
    server = quiet_server(track)
    client = quiet_client(track, server.endpoint)
    client.create_queue("q")
    client.list_queues()   # nothing in flight from here on: the thread sleeps
    for _ in range(3):
        done = threading.Event()
        started = time.monotonic()
        future = client.send_batch_nowait("q", [b"a", b"b"])
        future.add_done_callback(lambda f, done=done: done.set())
        assert done.wait(PROMPTLY)
        assert time.monotonic() - started < PROMPTLY
        assert len(future.result()) == 2
