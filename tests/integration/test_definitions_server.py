"""Definitions through a server: topic_settings over the wire (both clients), a topology
copied from one broker server to another, and ``fastfanout definitions``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any as Tracker

import pytest

from fastfanout import NotFound, aio
from fastfanout.definitions import export_definitions, import_definitions
from fastfanout.settings import TopicSettings


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastfanout", *args], capture_output=True,
                          text=True, timeout=30, input=stdin)


def test_topic_settings_over_the_wire(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("jobs.fifo", fifo=True, content_dedup=True, dedup_window=60)
    assert client.topic_settings("jobs.fifo") == TopicSettings(True, True, 60.0)
    with pytest.raises(NotFound):
        client.topic_settings("missing")

    async def main() -> None:
        async with aio.connect(endpoint) as aclient:
            assert await aclient.topic_settings("jobs.fifo") == TopicSettings(True, True, 60)

    asyncio.run(main())


def test_a_topology_copied_from_one_server_to_another(track: Tracker) -> None:
    first = track.client(track.server().endpoint)
    second = track.client(track.server().endpoint)
    first.create_topic("orders")
    first.create_queue("dead")
    first.create_queue("billing", dead_letter_queue="dead", max_receive_count=2)
    first.subscribe("orders", "billing", filter_policy={"kind": ["new"]})
    document = export_definitions(first)
    result = import_definitions(second, document)
    assert result.created == ["topic orders", "queue billing", "queue dead",
                              "subscription orders -> billing"]
    assert export_definitions(second) == document
    # the copy routes as the original does
    second.publish("orders", b"x", attributes={"kind": "new"})
    second.publish("orders", b"y", attributes={"kind": "old"})
    assert [bytes(m.body) for m in second.receive("billing", max_messages=10)] == [b"x"]


def test_the_cli_exports_and_imports(track: Tracker) -> None:
    source = track.server()
    target = track.server()
    client = track.client(source.endpoint)
    client.create_topic("orders")
    client.create_queue("billing", visibility_timeout=7)
    client.subscribe("orders", "billing")
    path = track.tmp_path / "definitions.json"
    done = run_cli("definitions", "export", "-e", source.endpoint, "-o", str(path))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    printed = run_cli("definitions", "export", "-e", source.endpoint)
    assert json.loads(printed.stdout) == json.loads(path.read_text())
    dry = run_cli("definitions", "import", str(path), "-e", target.endpoint, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would create topic orders", "would create queue billing",
        "would create subscription orders -> billing",
        "3 to create, 0 to update, 0 unchanged (a dry run: nothing changed)"]
    other = track.client(target.endpoint)
    assert other.list_queues() == []
    done = run_cli("definitions", "import", "-", "-e", target.endpoint,
                   stdin=path.read_text())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "3 created, 0 updated, 0 unchanged"
    assert other.queue_settings("billing").visibility_timeout == 7
    other.set_queue_settings("billing", visibility_timeout=9)
    conflict = run_cli("definitions", "import", str(path), "-e", target.endpoint)
    assert conflict.returncode == 1 and "Traceback" not in conflict.stderr
    (line,) = conflict.stderr.strip().splitlines()
    assert "[already_exists]" in line and "visibility_timeout" in line and "--update" in line
    done = run_cli("definitions", "import", str(path), "-e", target.endpoint, "--update")
    assert done.stdout.splitlines() == ["updated queue billing: visibility_timeout",
                                        "0 created, 1 updated, 2 unchanged"]
    assert other.queue_settings("billing").visibility_timeout == 7


def test_the_cli_refuses_wrong_input_in_one_line(track: Tracker) -> None:
    server = track.server()
    bad = track.tmp_path / "bad.json"
    bad.write_text('{"fastfanout_definitions": 1, "queues": {"q": {"colour": 1}}}')
    for args, status, words in (
            (["import", str(track.tmp_path / "none.json")], 1, "cannot read"),
            (["import", str(bad)], 1, "unknown field `colour`"),
            (["export", "-o", str(track.tmp_path / "no" / "dir.json")], 1, "cannot write"),
            (["import"], 2, "Missing argument"),
            (["import", str(bad), "--durable", "--not-durable"], None, None)):
        done = run_cli("definitions", *args, "-e", server.endpoint)
        if status is None:   # the last flag wins, as click's do: a run, not an error
            assert "Traceback" not in done.stderr
            continue
        assert done.returncode == status, done
        assert "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert words in line
    assert track.client(server.endpoint).list_queues() == []


def test_serve_imports_definitions_as_it_starts(track: Tracker) -> None:
    document = track.tmp_path / "broker.json"
    document.write_text(json.dumps({
        "fastfanout_definitions": 1, "topics": {"orders": {}},
        "queues": {"billing": {"max_receive_count": 3}},
        "subscriptions": [{"topic": "orders", "queue": "billing"}]}))
    endpoint = track.endpoint()
    track.broker_process(endpoint, "--definitions", str(document))
    client = track.client(endpoint)
    assert client.list_subscriptions() == {1: ("orders", "billing")}
    assert client.queue_settings("billing").max_receive_count == 3
    assert client.publish("orders", b"x").deliveries == 1


def test_serve_refuses_bad_or_conflicting_definitions_in_one_line(track: Tracker) -> None:
    endpoint = track.endpoint()
    data_dir = track.tmp_path / "data"
    bad = track.tmp_path / "bad.json"
    bad.write_text('{"fastfanout_definitions": 1, "queues": {"q": {"max_priority": 300}}}')
    done = run_cli("serve", "--endpoint", endpoint, "--data-dir", str(data_dir),
                   "--definitions", str(bad))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}: definitions: queue 'q': max_priority")
    assert not data_dir.exists()   # refused before anything was made
    # a durable broker that holds the queue with other settings: the start fails
    broker = track.broker_process(endpoint, "--data-dir", str(data_dir))
    track.client(endpoint).create_queue("q", max_priority=3)
    broker.terminate()
    assert broker.wait(30) == 0
    conflicting = track.tmp_path / "conflicting.json"
    conflicting.write_text('{"fastfanout_definitions": 1, "queues": {"q": {}}}')
    done = run_cli("serve", "--endpoint", endpoint, "--data-dir", str(data_dir),
                   "--definitions", str(conflicting), "--log-level", "WARNING")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "[already_exists]" in line and "max_priority" in line
    assert f"{conflicting}: definitions:" in line   # the file named
    assert not Path(endpoint[len("ipc://"):]).exists()
