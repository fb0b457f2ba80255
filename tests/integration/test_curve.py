"""CURVE: encrypted, authenticated connections over tcp://127.0.0.1 with generated keys."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

import fastfanout
from fastfanout.client import connect
from fastfanout.errors import BrokenConnection, TransportError
from fastfanout.server.loop import Server
from fastfanout.transport.sockets import (
    CURVE_ALLOW_ANY,
    client_curve,
    load_curve_keys,
)

Tracker = Any
REFUSED_TIMEOUT = 1.0  # seconds an unadmitted client waits for a HELLO reply


class Keys:
    """Certificates made by zmq.auth in a test's tmp dir: a broker and two clients."""

    def __init__(self, tmp_path: Path) -> None:
        self.directory = tmp_path / "keys"
        self.clients = tmp_path / "clients"
        self.directory.mkdir()
        self.clients.mkdir()
        for name in ("broker", "alice", "mallory"):
            zmq.auth.create_certificates(self.directory, name)
        shutil.copy(self.directory / "alice.key", self.clients)  # alice only is admitted

    def secret(self, name: str) -> str:
        return str(self.directory / f"{name}.key_secret")

    def public(self, name: str) -> str:
        return str(self.directory / f"{name}.key")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def assert_no_answer(endpoint: str, **options: object) -> None:
    started = time.monotonic()
    with pytest.raises(BrokenConnection, match="no reply from the broker"):
        connect(endpoint, timeout=REFUSED_TIMEOUT, **options)
    assert time.monotonic() - started < REFUSED_TIMEOUT + 5.0


def test_admitted_client_works_others_hear_nothing(track: Tracker, keys: Keys) -> None:
    endpoint = track.endpoint("tcp")
    track.server(endpoint, curve=load_curve_keys(keys.secret("broker")),
                 curve_clients=str(keys.clients))
    alice = track.client(endpoint, curve=client_curve(keys.public("broker"),
                                                      keys.secret("alice")))
    alice.create_topic("t")
    alice.create_queue("q")
    alice.subscribe("t", "q")
    listener = alice.listen("t")  # the stream socket is a CURVE server too
    track.closeables.append(listener)
    assert alice.publish("t", b"secret").deliveries == 1
    assert [m.body for m in alice.receive("q")] == [b"secret"]
    streamed = listener.recv_batch(5.0)
    assert streamed is not None and streamed[0].body == b"secret"
    # a client whose key is not in the directory, one that expects another broker key,
    # and one without CURVE: no handshake completes, so no reply ever comes
    assert_no_answer(endpoint, curve=client_curve(keys.public("broker"),
                                                  keys.secret("mallory")))
    assert_no_answer(endpoint, curve=client_curve(keys.public("mallory"),
                                                  keys.secret("alice")))
    assert_no_answer(endpoint)
    assert alice.list_topics() == ["t"]  # the admitted session is unaffected
    alice.close()


def test_allow_any_admits_fresh_keys_but_not_plain_clients(track: Tracker,
                                                           keys: Keys) -> None:
    endpoint = track.endpoint("tcp")
    broker_keys = load_curve_keys(keys.secret("broker"))
    track.server(endpoint, curve=broker_keys, curve_clients=CURVE_ALLOW_ANY)
    client = track.client(endpoint, curve=client_curve(broker_keys.public_key))
    client.create_topic("anyone")
    assert client.list_topics() == ["anyone"]
    assert_no_answer(endpoint)
    client.close()


def test_curve_settings_are_checked(tmp_path: Path, keys: Keys) -> None:
    broker_keys = load_curve_keys(keys.secret("broker"))
    with pytest.raises(fastfanout.InvalidArgument, match="allowed clients"):
        Server("tcp://127.0.0.1:5999", curve=broker_keys)
    with pytest.raises(fastfanout.InvalidArgument, match="allowed clients"):
        Server("tcp://127.0.0.1:5999", curve_clients=CURVE_ALLOW_ANY)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(fastfanout.InvalidArgument, match=r"holds no public certificate"):
        Server("tcp://127.0.0.1:5999", curve=broker_keys, curve_clients=str(empty))
    with pytest.raises(fastfanout.InvalidArgument, match="must be a directory"):
        Server("tcp://127.0.0.1:5999", curve=broker_keys, curve_clients=str(empty / "no"))
    # with keys and a client policy, binding beyond loopback is allowed (not bound here)
    Server("tcp://0.0.0.0:5999", curve=broker_keys, curve_clients=str(keys.clients)
           ).broker.close()
    with pytest.raises(TransportError, match="no secret key"):
        load_curve_keys(keys.public("broker"))
    with pytest.raises(TransportError, match="cannot load"):
        load_curve_keys(str(tmp_path / "missing.key_secret"))
    with pytest.raises(TransportError, match="not a Z85"):
        client_curve("~" * 40)
    public, secret = zmq.curve_keypair()
    assert client_curve(public.decode(), (public, secret)).server_key == public


def wait_for_curve_broker(endpoint: str, process: Any, **options: object) -> None:
    deadline = time.monotonic() + 15.0
    while True:
        if process.poll() is not None:
            raise AssertionError(f"broker exited early with {process.returncode}: "
                                 f"{process.stderr.read()!r}")
        try:
            with connect(endpoint, timeout=0.3, **options):
                return
        except BrokenConnection:
            if time.monotonic() > deadline:
                raise


@pytest.mark.parametrize("via", ["config", "options"])
def test_serve_with_curve(track: Tracker, keys: Keys, tmp_path: Path, via: str) -> None:
    endpoint = track.endpoint("tcp")
    if via == "config":
        config = tmp_path / "broker.toml"
        config.write_text(f'curve_secret_key = "{keys.secret("broker")}"\n'
                          f'curve_clients = "{keys.clients}"\n')
        extra = ["--config", str(config)]
    else:
        extra = ["--curve-secret-key", keys.secret("broker"), "--curve-clients",
                 str(keys.clients)]
    broker = track.process(["-m", "fastfanout", "serve", "--endpoint", endpoint,
                            "--log-level", "WARNING", "--in-memory", *extra])
    alice = client_curve(keys.public("broker"), keys.secret("alice"))
    wait_for_curve_broker(endpoint, broker, curve=alice)
    client = track.client(endpoint, curve=alice)
    client.create_queue("q")
    assert client.list_queues() == ["q"]
    assert_no_answer(endpoint, curve=client_curve(keys.public("broker"),
                                                  keys.secret("mallory")))
    client.close()
    broker.terminate()
    assert broker.wait(10) == 0


def test_serve_refuses_a_public_certificate_as_secret(track: Tracker, keys: Keys) -> None:
    broker = track.process(["-m", "fastfanout", "serve", "--in-memory",
                            "--endpoint", track.endpoint("tcp"),
                            "--curve-secret-key", keys.public("broker"),
                            "--curve-clients", CURVE_ALLOW_ANY])
    _, stderr = broker.communicate(timeout=15)
    assert broker.returncode == 2 and b"holds no secret key" in stderr


def test_a_companion_key_is_admitted_in_memory_only(track: Tracker, keys: Keys) -> None:
    endpoint = track.endpoint("tcp")
    server = track.server(endpoint, curve=load_curve_keys(keys.secret("broker")),
                          curve_clients=str(keys.clients))
    companion = server.companion_curve()
    assert companion is not None and companion.server_key is not None
    client = track.client(endpoint, curve=companion)
    client.create_topic("t")
    assert client.list_topics() == ["t"]
    # only the key pair handed out is admitted, and nothing was written to the directory
    assert_no_answer(endpoint, curve=client_curve(keys.public("broker")))
    assert sorted(p.name for p in keys.clients.iterdir()) == ["alice.key"]
    assert track.server(track.endpoint()).companion_curve() is None   # no CURVE: no key
    # a broker that admits any client admits the companion's key as it is
    open_endpoint = track.endpoint("tcp")
    open_server = track.server(open_endpoint, curve=load_curve_keys(keys.secret("broker")),
                               curve_clients=CURVE_ALLOW_ANY)
    assert track.client(open_endpoint, curve=open_server.companion_curve()).list_topics() == []


def test_the_command_line_talks_to_a_curve_broker(track: Tracker, keys: Keys) -> None:
    """No admin command could reach a CURVE broker (none took client keys): each timed
    out as if no broker ran there."""
    from click.testing import CliRunner

    from fastfanout.cli import cli

    endpoint = track.endpoint("tcp")
    track.server(endpoint, curve=load_curve_keys(keys.secret("broker")),
                 curve_clients=str(keys.clients))
    runner = CliRunner()
    alice = ["--endpoint", endpoint, "--curve-broker-key", keys.public("broker"),
             "--curve-client-key", keys.secret("alice")]
    result = runner.invoke(cli, ["create-queue", "q", *alice])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["list-queues", "--endpoint", endpoint],
                           env={"FASTFANOUT_CURVE_BROKER_KEY": keys.public("broker"),
                                "FASTFANOUT_CURVE_CLIENT_KEY": keys.secret("alice")})
    assert (result.exit_code, result.output) == (0, "q\n")
    client = track.client(endpoint, curve=client_curve(keys.public("broker"),
                                                       keys.secret("alice")))
    assert client.list_queues() == ["q"]
    # a client key the broker does not admit: no handshake, a broken connection
    result = runner.invoke(cli, ["list-queues", "--endpoint", endpoint, "--curve-broker-key",
                                 keys.public("broker"), "--curve-client-key",
                                 keys.secret("mallory")])
    assert result.exit_code == 1 and result.output.startswith("error [broken]")
    # a client key alone is a usage error, before anything connects
    result = runner.invoke(cli, ["list-queues", "--endpoint", endpoint,
                                 "--curve-client-key", keys.secret("alice")])
    assert result.exit_code == 2 and "needs --curve-broker-key" in result.output


def test_the_worker_command_talks_to_a_curve_broker(track: Tracker, keys: Keys,
                                                    tmp_path: Path) -> None:
    """fastfanout worker took no client keys: against a CURVE broker it could never
    connect, and said the broker was gone."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import wait_until

    here = Path(__file__).resolve().parent
    endpoint = track.endpoint("tcp")
    track.server(endpoint, curve=load_curve_keys(keys.secret("broker")),
                 curve_clients=str(keys.clients))
    client = track.client(endpoint, curve=client_curve(keys.public("broker"),
                                                       keys.secret("alice")))
    client.create_queue("jobs")
    done = tmp_path / "done"
    done.mkdir()
    client.send("jobs", f"{done}|0".encode())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parents[1]), str(here)])}
    env.pop("WORKER_TEST_ENDPOINT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "fastfanout", "worker", "worker_app:app", "--endpoint",
         endpoint, "--curve-broker-key", keys.public("broker"), "--curve-client-key",
         keys.secret("alice"), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    track.processes.append(process)
    wait_until(lambda: any(done.iterdir()) or process.poll() is not None, timeout=30,
               what="the worker's call")
    assert process.poll() is None, process.stderr.read() if process.stderr else b""
    wait_until(lambda: client.stats().queues["jobs"].acked == 1, timeout=10, what="the ack")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
