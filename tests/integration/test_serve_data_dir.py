"""``fastfanout serve`` and its data directory: the default, the options, the lock."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Tracker, wait_for_broker
from test_cli import assert_one_line_error, config_file, run

from fastfanout.errors import InvalidArgument, UnsafeDirectory
from fastfanout.runtime import data_dir_name, default_data_dir, state_dir
from fastfanout.server.config import load_config


def test_state_dir_follows_xdg_state_home(private_state_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    assert state_dir() == private_state_dir / "fastfanout"
    assert stat.S_IMODE((private_state_dir / "fastfanout").stat().st_mode) == 0o700
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")   # the spec ignores it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "fastfanout"
    assert stat.S_IMODE((tmp_path / "home" / ".local").stat().st_mode) == 0o700


def test_a_state_dir_others_may_read_is_refused(private_state_dir: Path) -> None:
    (private_state_dir / "fastfanout").mkdir(mode=0o755)
    (private_state_dir / "fastfanout").chmod(0o755)
    with pytest.raises(UnsafeDirectory, match="mode 755; expected 700"):
        state_dir()
    done = subprocess.run([sys.executable, "-m", "fastfanout", "serve", "--endpoint",
                           f"ipc://{private_state_dir}/b.sock"], capture_output=True,
                          text=True, timeout=20,
                          env={**os.environ, "XDG_STATE_HOME": str(private_state_dir)})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error [unsafe_directory]:"), done.stderr


def test_each_endpoint_has_its_own_data_dir(private_state_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    endpoints = [f"ipc://{tmp_path}/a/broker.sock", f"ipc://{tmp_path}/b/broker.sock",
                 "tcp://127.0.0.1:7300", "tcp://127.0.0.1:7301", "tcp://localhost:7300",
                 "ipc://relative.sock", "ipc://../relative.sock", "ipc:///", "ipc://x y/.z"]
    names = [data_dir_name(endpoint) for endpoint in endpoints]
    assert len(set(names)) == len(endpoints)
    for name in names:
        assert "/" not in name and not name.startswith(".") and len(name) < 100
    assert names[0].startswith("ipc-broker.sock-") and names[2].startswith("tcp-127.0.0.1_7300-")
    assert data_dir_name(endpoints[0]) == names[0]   # stable: a restart finds it again
    monkeypatch.chdir(tmp_path)
    assert data_dir_name("ipc://relative.sock") == data_dir_name(f"ipc://{tmp_path}/relative.sock")
    path = default_data_dir(endpoints[0])
    assert path == private_state_dir / "fastfanout" / names[0]
    assert path.is_dir() and stat.S_IMODE(path.stat().st_mode) == 0o700


def test_storage_keys_and_options(tmp_path: Path) -> None:
    config = load_config(None, {})
    assert (config.data_dir, config.in_memory, config.fsync, config.fsync_interval,
            config.max_disk_bytes) == (None, False, "always", 1.0, None)
    path = config_file(tmp_path, "d.toml", "data_dir = 'here'\nfsync = 'interval'\n"
                                           "fsync_interval = 0.5\nmax_disk_bytes = 65536\n")
    config = load_config(path, {})
    assert (config.data_dir, config.fsync, config.fsync_interval, config.max_disk_bytes) == (
        "here", "interval", 0.5, 65536)
    # one choice: the command line wins over the file, both in one place is an error
    assert load_config(path, {"in_memory": True}).data_dir is None
    memory = config_file(tmp_path, "m.toml", "in_memory = true\n")
    assert load_config(memory, {"data_dir": "there"}).in_memory is False
    with pytest.raises(InvalidArgument, match="--in-memory and --data-dir"):
        load_config(None, {"in_memory": True, "data_dir": "x"})
    both = config_file(tmp_path, "both.toml", "in_memory = true\ndata_dir = 'x'\n")
    with pytest.raises(InvalidArgument,
                       match=r"both\.toml: in_memory = true and data_dir = 'x' exclude"):
        load_config(both, {})
    for key, value in (("fsync", "sometimes"), ("fsync_interval", 0), ("max_disk_bytes", 65535),
                       ("in_memory", "yes")):
        with pytest.raises(InvalidArgument, match=f"--{key.replace('_', '-')}: {key} = "):
            load_config(None, {key: value})


def test_in_memory_and_data_dir_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    # a malformed command line: exit 2 and the way to the help, in one clean line (it
    # was exit 1 with "--in-memory and --data-dir: in_memory = true and data_dir: ...")
    done = run(["serve", "--endpoint", f"ipc://{tmp_path}/x.sock", "--in-memory",
                "--data-dir", str(tmp_path / "d")])
    assert_one_line_error(done.stderr, done.returncode)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: --in-memory and --data-dir exclude each other: a broker keeps its data "
        "either in memory or in a data directory (see: fastfanout serve --help)\n")
    assert not (tmp_path / "d").exists()
    # both in the file is the file's error (exit 1), naming the file and both keys
    both = config_file(tmp_path, "both.toml", "in_memory = true\ndata_dir = 'x'\n")
    done = run(["serve", "--endpoint", f"ipc://{tmp_path}/x.sock", "--config", both])
    assert_one_line_error(done.stderr, done.returncode)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(
        f"error: {both}: in_memory = true and data_dir = 'x' exclude each other: "), done.stderr


def test_serve_storage_options_fail_in_one_line(tmp_path: Path) -> None:
    for args, expected in (
            (["--in-memory", "--data-dir", str(tmp_path / "d")], "--in-memory and --data-dir"),
            (["--fsync", "sometimes"], "--fsync"),
            (["--fsync-interval", "0"], "--fsync-interval"),
            (["--max-disk-bytes", "65535"], "--max-disk-bytes")):
        done = run(["serve", "--endpoint", f"ipc://{tmp_path}/x.sock", *args])
        assert_one_line_error(done.stderr, done.returncode, " ".join(args))
        assert expected in done.stderr, (args, done.stderr)


def durable_broker() -> bool:
    import inspect

    from fastfanout import Broker
    return "data_dir" in inspect.signature(Broker).parameters


requires_durable = pytest.mark.skipif(not durable_broker(),
                                      reason="the durable broker has not landed yet")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    assert process.wait(15) == 0


@requires_durable
def test_serve_keeps_its_state_in_the_endpoints_data_dir(track: Tracker,
                                                         private_state_dir: Path) -> None:
    endpoint = track.endpoint()
    serve = ["-m", "fastfanout", "serve", "--endpoint", endpoint, "--log-level", "WARNING"]
    broker = track.process(serve)
    wait_for_broker(endpoint, broker)
    with track.client(endpoint) as client:
        client.create_topic("t")
        client.create_queue("q")
        client.subscribe("t", "q")
        client.publish("t", b"kept")
    stop(broker)
    data_dir = private_state_dir / "fastfanout" / data_dir_name(endpoint)
    assert data_dir.is_dir() and stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    broker = track.process(serve)
    wait_for_broker(endpoint, broker)
    with track.client(endpoint) as client:
        assert client.list_topics() == ["t"] and client.list_queues() == ["q"]
        assert [m.body for m in client.receive("q", max_messages=10, wait=2.0)] == [b"kept"]
    stop(broker)
    broker = track.broker_process(endpoint)   # --in-memory: nothing
    with track.client(endpoint) as client:
        assert client.list_queues() == []
    stop(broker)


@requires_durable
def test_a_data_dir_in_use_is_refused_in_one_line(track: Tracker, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = track.broker_process(track.endpoint(), "--data-dir", str(data_dir))
    done = run(["serve", "--endpoint", track.endpoint(), "--data-dir", str(data_dir)])
    assert_one_line_error(done.stderr, done.returncode, "data dir in use")
    assert str(data_dir) in done.stderr and str(first.pid) in done.stderr
    stop(first)


@requires_durable
def test_a_data_dir_the_broker_cannot_use_is_refused_in_one_line(tmp_path: Path) -> None:
    # until 2026-12-05 the OS error blamed the endpoint ("cannot serve ipc://...: No such
    # device or address"), and an embedded broker raised it untyped
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as blocker:   # a lock that cannot be opened
        blocker.bind(str(data_dir / "lock"))
        done = run(["serve", "--endpoint", f"ipc://{tmp_path}/x.sock",
                    "--data-dir", str(data_dir)])
    assert_one_line_error(done.stderr, done.returncode, "unusable data dir")
    assert "[store_failed]" in done.stderr and "cannot serve" not in done.stderr
    assert f"cannot use the data directory {data_dir}: {data_dir / 'lock'}" in done.stderr


def test_in_memory_serve_writes_nothing(track: Tracker, private_state_dir: Path) -> None:
    endpoint = track.endpoint()
    broker = track.broker_process(endpoint, "--in-memory")
    with track.client(endpoint) as client:
        client.create_queue("q")
    stop(broker)
    assert not (private_state_dir / "fastfanout").exists()


def test_demo_runs_twice_in_a_row(tmp_path: Path) -> None:
    """The demo's broker keeps its data in a temporary dir: a second run starts afresh."""
    endpoint = f"ipc://{tmp_path}/demo.sock"
    temp = tmp_path / "temp"
    temp.mkdir()
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "fastfanout.demo", "--messages", "300",
                               "--endpoint", endpoint], capture_output=True, text=True,
                              timeout=90, env={**os.environ, "TMPDIR": str(temp)})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "AlreadyExists" not in done.stdout + done.stderr
    assert not list(temp.iterdir())   # its data directory removed
    assert not list(Path(os.environ["XDG_STATE_HOME"]).iterdir())


def test_server_refuses_a_broker_and_a_data_dir(tmp_path: Path) -> None:
    from fastfanout import Broker
    from fastfanout.server.loop import Server

    with Broker() as broker, pytest.raises(InvalidArgument, match="not both"):
        Server(f"ipc://{tmp_path}/s.sock", broker=broker, data_dir=tmp_path / "d")


@requires_durable
def test_server_makes_a_durable_broker_of_its_data_dir(track: Tracker, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    endpoint = track.endpoint()
    server = track.server(endpoint, data_dir=data_dir, fsync="interval", fsync_interval=0.05)
    client = track.client(endpoint)
    client.create_queue("q")
    client.send("q", b"kept")
    client.close()
    server.stop(10.0)
    server = track.server(endpoint, data_dir=data_dir)
    client = track.client(endpoint)
    assert [m.body for m in client.receive("q", max_messages=5, wait=2.0)] == [b"kept"]
