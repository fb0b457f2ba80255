"""The README's code samples run as written."""

import pathlib
import re

import pytest

import fastfanout

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_the_samples():
    assert len(python_blocks()) >= 2


def test_quick_start_runs_as_written(capsys):
    exec(compile(python_blocks()[0], "README quick start", "exec"), {})
    printed = capsys.readouterr().out
    assert "order 2" in printed and "acked=3" in printed


@pytest.fixture
def billing(short_dir, monkeypatch):
    """A server on the default endpoint (under a short temp dir) with the README's topic
    and queue; yields a function returning the billing queue's stats."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    server = fastfanout.Server()
    server.start()
    try:
        with fastfanout.connect() as client:
            client.create_queue("billing")
            client.create_topic("orders")
            client.subscribe("orders", "billing")

        def stats():
            with fastfanout.connect() as client:
                return client.stats().queues["billing"]

        yield stats
    finally:
        server.stop()


def test_server_sample_runs_against_the_default_endpoint(billing):
    exec(compile(python_blocks()[1], "README server sample", "exec"), {})
    stats = billing()
    assert stats.enqueued == 2 + 1000 and stats.acked == 1   # publish, nowait, producer


@pytest.mark.parametrize("command", ["bash ci/demo.sh", "bash ci/test.sh"])
def test_the_two_commands_are_documented(command):
    assert command in README.read_text()


def test_ci_runs_the_readme_test_command():
    commands = [line.strip() for line in (README.parent / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "exec bash ci/test.sh"   # the README's test command, as it is
    assert "bash ci/test.sh" in README.read_text()


def test_asyncio_sample_runs_against_the_default_endpoint(billing, capsys):
    exec(compile(python_blocks()[2], "README asyncio sample", "exec"), {})
    ids = [int(n) for n in re.findall(r"\d+", capsys.readouterr().out)]
    assert len(ids) == 3 and ids == sorted(ids)
    stats = billing()
    assert stats.enqueued == 3 and stats.acked == 1


def test_worker_sample_runs_against_the_default_endpoint(billing, capsys):
    import time

    with fastfanout.connect() as client:
        client.create_queue("thumbnails")
    namespace: dict[str, object] = {}
    exec(compile(python_blocks()[3], "README worker sample", "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, fastfanout.Worker)
    app.start()
    try:
        with fastfanout.connect() as client:
            client.publish("orders", b"order for the worker")
            client.send("thumbnails", b"")            # fails: comes back for a retry
            client.send("thumbnails", b"picture")
        deadline = time.monotonic() + 10.0
        while billing().acked < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        app.stop(timeout=5.0)
    assert billing().acked == 1
    assert "order for the worker" in capsys.readouterr().out
