"""A worker's reports to its broker server: what ``fastfanout stats`` shows per handler.

A worker connected to a broker server opens one more connection of its own and sends the
server its handlers' stats on it (REPORT) at once and then every ``REPORT_INTERVAL``
seconds, from a thread of its own: the handlers' paths do no work for it. The server
keeps the last report of each connection while the connection is open (so a worker that
stops or dies leaves the table) and answers WORKERS with them. A worker's processes
(``processes=N``) report through their parent, which sends their combined stats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fastfanout.client import Client
from fastfanout.errors import FastFanoutError
from fastfanout.workers.stats import WorkerStats

__all__ = ["REPORT_INTERVAL", "Reporter", "worker_report"]

log = logging.getLogger("fastfanout.worker")

REPORT_INTERVAL = 1.0
"""Seconds between a worker's reports to its broker server."""


def worker_report(name: str, pid: int, stats: WorkerStats) -> dict[str, Any]:
    """The REPORT payload of a worker: its name, pid and every handler's ``HandlerStats``."""
    return {"worker": name, "pid": pid,
            "handlers": {handler: dataclasses.asdict(entry)
                         for handler, entry in stats.handlers.items()}}


class Reporter:
    """Sends ``report()`` to the broker server every ``interval`` seconds, from a thread.

    Args:
        endpoint: the broker server's endpoint (None: the default one).
        options: client options of the worker's connections.
        interval: seconds between reports.
        report: makes the report to send (called in the reporter's thread).
    """

    def __init__(self, endpoint: str | None, options: dict[str, Any], interval: float,
                 report: Callable[[], dict[str, Any]]) -> None:
        self._endpoint = endpoint
        self._options = options
        self._interval = interval
        self._report = report
        self._stop = threading.Event()
        self._client: Client | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="fastfanout-worker-report")

    def start(self) -> None:
        """Connect and start reporting (the first report goes at once).

        A broker that cannot be reached is logged: the worker runs without reports.
        """
        try:
            self._client = Client(self._endpoint, **self._options)
        except FastFanoutError as error:
            log.warning("worker stats will not reach the broker: %s", error)
            return
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop reporting and close the connection: the server forgets the report.

        Args:
            timeout: seconds to wait at most. The connection is closed from here, which
                ends a report still waiting for its answer at once (a broker that is
                gone would hold it for the client's whole ``timeout``).
        """
        self._stop.set()
        if self._client is None:
            return
        deadline = time.monotonic() + timeout
        with contextlib.suppress(FastFanoutError):
            self._client.close(timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        client = self._client
        assert client is not None
        while not self._stop.is_set():
            try:
                client.report_worker(self._report())
            except FastFanoutError as error:
                if self._stop.is_set():
                    return   # closed by stop()
                log.warning("a worker stats report failed: %s", error)
            if self._stop.wait(self._interval):
                return
