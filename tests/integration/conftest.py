"""Fixtures for server-mode tests: brokers in threads or processes, tracked and cleaned up.

Every broker, client and process a test starts is registered here and closed or killed
at teardown with a deadline; a test that leaves one behind fails naming what leaked.
Endpoints are ipc:// under the test's tmp dir, or tcp://127.0.0.1 on a free port only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from fastfanout.bench.processes import free_tcp_endpoint as bench_free_tcp_endpoint
from fastfanout.client import Client, connect
from fastfanout.errors import FastFanoutError
from fastfanout.server.loop import Server

DEADLINE = 10.0


def free_tcp_endpoint() -> str:
    # command endpoint and its stream endpoint (port + 1), below the ports of outgoing
    # connections (one took a picked stream port before its broker bound it)
    return bench_free_tcp_endpoint()


class Tracker:
    """Everything a test started, for teardown with a deadline."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[Server] = []
        self.clients: list[Client] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.closeables: list[Any] = []
        self._count = 0

    def endpoint(self, kind: str = "ipc") -> str:
        self._count += 1
        if kind == "tcp":
            return free_tcp_endpoint()
        return f"ipc://{self.tmp_path}/broker{self._count}.sock"

    def server(self, endpoint: str | None = None, **options: Any) -> Server:
        server = Server(endpoint or self.endpoint(), **options).start()
        self.servers.append(server)
        return server

    def stop_server(self, server: Server) -> None:
        """Stop ``server`` now (within the deadline) and forget it: a test that starts
        another on its endpoint (a restart) leaves teardown nothing of the first."""
        server.stop(DEADLINE)
        self.servers.remove(server)

    def client(self, endpoint: str, **options: Any) -> Client:
        options.setdefault("timeout", 5.0)
        client = connect(endpoint, **options)
        self.clients.append(client)
        return client

    def process(self, args: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        self.processes.append(process)
        return process

    def broker_process(self, endpoint: str, *extra: str) -> subprocess.Popen[bytes]:
        """``fastfanout serve`` on ``endpoint``: in memory unless ``extra`` names a data dir."""
        storage = [] if "--data-dir" in extra or "--in-memory" in extra else ["--in-memory"]
        process = self.process(["-m", "fastfanout", "serve", "--endpoint", endpoint,
                                "--log-level", "WARNING", *storage, *extra])
        wait_for_broker(endpoint, process)
        return process

    def fanout_client(self, **options: Any) -> Client:
        """A client (``options``) of a new broker process, with topic ``t`` fanning out to
        queue ``q``. The broker is a process of its own: a server thread here would take
        the GIL from the client's callers."""
        endpoint = self.endpoint()
        self.broker_process(endpoint)
        client = self.client(endpoint, **options)
        client.create_topic("t")
        client.create_queue("q")
        client.subscribe("t", "q")
        return client

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE,
                   what: str = "condition") -> None:
        wait_until(predicate, timeout, what)

    def teardown(self) -> list[str]:
        leaked: list[str] = []
        for closeable in self.closeables:
            closeable.close()
        for client in self.clients:
            client.close(timeout=1.0)
        for server in self.servers:
            try:
                server.stop(DEADLINE)
            except TimeoutError:
                leaked.append(f"server on {server.endpoint} did not stop")
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(DEADLINE)
                except subprocess.TimeoutExpired:
                    leaked.append(f"process {process.args} ignored SIGTERM")
                    process.kill()
                    process.wait(DEADLINE)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        # a client closed without waiting (close(0)) lets its threads end on their
        # own: on a busy machine they may still be on their way out here
        deadline = time.monotonic() + DEADLINE
        while True:
            stray = [t.name for t in threading.enumerate()
                     if t.name.startswith("fastfanout") and t.is_alive()]
            if not stray or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if stray:
            leaked.append(f"threads {stray}")
        return leaked


@contextlib.contextmanager
def raw_dealer(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    """A bare DEALER connected to the broker (no client library), closed after."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        yield dealer
    finally:
        dealer.close()
        context.term()


def wait_for_broker(endpoint: str, process: subprocess.Popen[bytes] | None = None,
                    timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"broker exited early with {process.returncode}: "
                               f"{process.stderr.read() if process.stderr else b''!r}")
        try:
            with connect(endpoint, timeout=0.3):
                return
        except FastFanoutError:
            if time.monotonic() > deadline:
                raise


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def process_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid`` (a session a test began)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


@pytest.fixture
def track(tmp_path: Path) -> Iterator[Tracker]:
    tracker = Tracker(tmp_path)
    yield tracker
    leaked = tracker.teardown()
    if leaked:
        pytest.fail(f"leaked (cleaned up now): {', '.join(leaked)}")


@pytest.fixture(params=["ipc", "tcp"])
def endpoint(request: pytest.FixtureRequest, track: Tracker) -> str:
    return track.endpoint(request.param)
