"""``Worker.stop()`` returns within its ``shutdown_timeout`` whatever the broker's state.

It took 5 s after the broker stopped with an async handler (the source's consumer,
ended by the broker, was cancelled on a new connection whose handshake nobody answered),
7 to 10 s with the stats reporter too (its report waited for the client's timeout), and
2 to 5 s more when the broker was gone without a goodbye (the sources' BYE).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from conftest import Tracker

from fastfanout import Worker, connect

SHUTDOWN_TIMEOUT = 0.5
MARGIN = 0.5


def _running_worker(endpoint: str, track: Tracker, is_async: bool = True) -> Worker:
    with connect(endpoint, timeout=5.0) as client:
        client.create_queue("jobs")
    # a plain socket (no local channel): the broker's end is not seen at once
    worker = Worker(endpoint, shutdown_timeout=SHUTDOWN_TIMEOUT, report_interval=1.0,
                    local_channel=False, timeout=5.0)
    track.closeables.append(_Stopper(worker))

    async def handle_async(message: Any) -> None:
        pass

    def handle(message: Any) -> None:
        pass

    worker.handler("jobs")(handle_async if is_async else handle)
    worker.start()
    return worker


class _Stopper:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def close(self) -> None:
        self.worker.stop(0.0)


def _timed_stop(worker: Worker) -> float:
    started = time.monotonic()
    worker.stop()
    return time.monotonic() - started


def test_stop_after_the_broker_stopped_is_within_shutdown_timeout(track: Tracker) -> None:
    server = track.server()
    worker = _running_worker(server.endpoint, track)
    server.stop()
    assert _timed_stop(worker) < SHUTDOWN_TIMEOUT + MARGIN


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stop_after_the_broker_process_ended_is_within_shutdown_timeout(
        track: Tracker, how: signal.Signals, is_async: bool) -> None:
    endpoint = track.endpoint()
    process = track.broker_process(endpoint)
    worker = _running_worker(endpoint, track, is_async)
    process.send_signal(how)
    process.wait(10.0)
    assert _timed_stop(worker) < SHUTDOWN_TIMEOUT + MARGIN
