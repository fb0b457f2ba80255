"""set_queue_settings through a server: both clients, the server's own lease paths (a
client's receive, a push consumer), held publishes, the durable journal, and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any as Tracker

import pytest

from fastfanout import InvalidArgument, QueueFull, aio
from fastfanout.records import ExponentialBackoff


def test_the_blocking_client_changes_settings_and_a_receive_leases_by_them(
        track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_queue("dlq")
    client.create_queue("q", visibility_timeout=600)
    changed = client.set_queue_settings(
        "q", visibility_timeout=0.2, dead_letter_queue="dlq", max_receive_count=5,
        redelivery_backoff=ExponentialBackoff(0.01, 2.0, 1.0))
    assert changed == client.queue_settings("q")
    assert (changed.visibility_timeout, changed.dead_letter_queue) == (0.2, "dlq")
    assert changed.redelivery_backoff == ExponentialBackoff(0.01, 2.0, 1.0)
    client.send("q", b"m")
    (first,) = client.receive("q")
    # the lease is the new 0.2 s (the old one would hide it for ten minutes)
    track.wait_until(lambda: bool(client.receive("q")), what="the message again")
    with pytest.raises(InvalidArgument, match="fifo cannot change"):
        client.set_queue_settings("q", fifo=True)
    with pytest.raises(InvalidArgument, match="not a queue setting"):
        client.set_queue_settings("q", colour="red")
    assert client.queue_settings("q") == changed
    assert first.receive_count == 1


def test_a_push_consumer_leases_by_the_new_visibility_timeout(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q", visibility_timeout=600)
    client.set_queue_settings("q", visibility_timeout=0.2)
    client.send("q", b"m")
    seen = []
    for message in client.consume("q", prefetch=10):
        seen.append(message.receive_count)   # never acked: the lease runs out
        if len(seen) == 2:
            break
    assert seen == [1, 2]


def test_the_asyncio_client_changes_settings(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        async with await aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q")
            changed = await client.set_queue_settings("q", delay=2.5, max_messages=7,
                                                      redelivery_backoff=[1, 2])
            assert (changed.delay, changed.max_messages) == (2.5, 7)
            assert changed.redelivery_backoff == (1, 2)
            assert await client.queue_settings("q") == changed
            with pytest.raises(InvalidArgument, match="max_priority cannot change"):
                await client.set_queue_settings("q", max_priority=2)

    asyncio.run(main())


def test_a_raised_limit_lets_a_held_publish_through_and_reject_ends_the_holds(
        track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q", max_messages=1, overflow="hold")
    client.subscribe("t", "q")
    client.publish("t", b"0")
    publisher = track.client(server.endpoint)
    held = publisher.publish_batch_nowait("t", [b"1"])
    publisher.flush()
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="the publish held")
    client.set_queue_settings("q", max_messages=2)
    assert len(held.result(timeout=5.0)) == 1
    second = publisher.publish_batch_nowait("t", [b"2"])
    publisher.flush()
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="another held")
    client.set_queue_settings("q", overflow="reject")
    with pytest.raises(QueueFull):
        second.result(timeout=5.0)
    assert client.stats().queues["q"].messages == 2


def test_a_durable_server_keeps_the_change_over_a_restart(track: Tracker, tmp_path) -> None:
    endpoint = track.endpoint()
    data_dir = tmp_path / "data"
    broker = track.broker_process(endpoint, "--data-dir", str(data_dir))
    client = track.client(endpoint)
    client.create_queue("dlq")
    client.create_queue("q")
    client.send("q", b"kept")
    expected = client.set_queue_settings("q", visibility_timeout=45, dead_letter_queue="dlq",
                                         max_receive_count=4)
    client.close()
    broker.terminate()
    assert broker.wait(10) == 0
    track.broker_process(endpoint, "--data-dir", str(data_dir))
    client = track.client(endpoint)
    assert client.queue_settings("q") == expected
    assert [m.body for m in client.receive("q")] == [b"kept"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastfanout", *args], capture_output=True,
                          text=True, timeout=20.0)


def test_the_cli_changes_prints_and_refuses_in_one_line(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.broker_process(endpoint)
    client = track.client(endpoint)
    client.create_queue("dlq")
    client.create_queue("q")
    ep = ("--endpoint", endpoint)
    done = _cli("set-queue-settings", "q", "--visibility-timeout", "60", "--max-receive-count",
                "3", "--dead-letter-queue", "dlq", "--redelivery-backoff", "1,5", *ep)
    assert done.returncode == 0, done.stderr
    assert "visibility_timeout=60.0" in done.stdout and "dead_letter_queue='dlq'" in done.stdout
    settings = client.queue_settings("q")
    assert (settings.max_receive_count, settings.redelivery_backoff) == (3, (1.0, 5.0))
    done = _cli("set-queue-settings", "q", "--max-receive-count", "none",
                "--dead-letter-queue", "none", "--redelivery-backoff", "none", *ep)
    assert done.returncode == 0, done.stderr
    settings = client.queue_settings("q")
    assert (settings.max_receive_count, settings.dead_letter_queue,
            settings.redelivery_backoff) == (None, None, None)
    assert settings.visibility_timeout == 60.0
    done = _cli("set-queue-settings", "q", *ep)   # nothing given: printed as they are
    assert done.returncode == 0 and "visibility_timeout=60.0" in done.stdout
    for args, status in ((("--max-messages", "lots"), 2), (("--delay", "-1"), 1),
                         (("--dead-letter-queue", "nope"), 1), (("--overflow", "spill"), 2)):
        done = _cli("set-queue-settings", "q", *args, *ep)
        assert done.returncode == status, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error"), (args, done.stderr)
    done = _cli("set-queue-settings", "nope", "--delay", "1", *ep)
    assert done.returncode == 1 and "not_found" in done.stderr
    assert client.queue_settings("q") == settings
