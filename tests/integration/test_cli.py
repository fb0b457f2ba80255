"""The command line against a live server (click's runner, in process)."""

from __future__ import annotations

import json
from typing import Any as Tracker

from click.testing import CliRunner

from fastfanout.cli import cli


def test_cli_round_trip(track: Tracker) -> None:
    server = track.server()
    runner = CliRunner()
    ep = ["--endpoint", server.endpoint]
    for command in ([*["create-queue", "q", "--max-receive-count", "3"], *ep],
                    ["create-topic", "t", *ep], ["subscribe", "t", "q", *ep]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["pub", "t", "hello", "--attr", "n=1", *ep])
    assert result.exit_code == 0 and "1 deliveries" in result.output
    result = runner.invoke(cli, ["receive", "q", "--ack", *ep])
    assert result.exit_code == 0 and "b'hello'" in result.output and "{'n': 1}" in result.output
    result = runner.invoke(cli, ["stats", "--json", *ep])
    assert json.loads(result.output)["broker"]["queues"]["q"]["acked"] == 1
    assert runner.invoke(cli, ["stats", *ep]).exit_code == 0
    result = runner.invoke(cli, ["receive", "missing", *ep])
    assert result.exit_code == 1 and "not_found" in result.output
    for command in ("serve", "pub", "sub", "receive", "stats", "create-topic", "create-queue",
                    "subscribe", "demo"):
        assert runner.invoke(cli, [command, "--help"]).exit_code == 0


def test_cli_admin_commands(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("dlq")
    client.create_queue("q", max_receive_count=1, dead_letter_queue="dlq")
    client.create_queue("other")
    client.create_topic("t")
    sid = client.subscribe("t", "q")
    client.send_batch("q", [b"a", b"b", b"c"])
    for message in client.receive("q", max_messages=3):
        message.term()  # all three into the DLQ
    runner = CliRunner()
    ep = ["--endpoint", server.endpoint]

    result = runner.invoke(cli, ["redrive", "dlq", "--to", "other", "-n", "1", *ep])
    assert result.exit_code == 0 and "redrove 1 messages from dlq to other" in result.output
    result = runner.invoke(cli, ["redrive", "dlq", *ep])
    assert result.exit_code == 0 and "redrove 2 messages from dlq" in result.output
    assert client.stats().queues["q"].visible == 2
    assert client.stats().queues["other"].visible == 1

    result = runner.invoke(cli, ["purge", "q", *ep], input="n\n")
    assert result.exit_code == 1 and client.stats().queues["q"].visible == 2  # declined
    result = runner.invoke(cli, ["purge", "q", "--yes", *ep])
    assert result.exit_code == 0 and "purged 2 messages from q" in result.output
    assert client.stats().queues["q"].visible == 0

    result = runner.invoke(cli, ["unsubscribe", str(sid), *ep])
    assert result.exit_code == 0 and client.list_subscriptions() == {}
    result = runner.invoke(cli, ["unsubscribe", str(sid), *ep])
    assert result.exit_code == 1 and "error [not_found]" in result.output
    result = runner.invoke(cli, ["unsubscribe", "not-a-number", *ep])
    assert result.exit_code == 2

    result = runner.invoke(cli, ["delete-queue", "dlq", "-y", *ep])
    assert result.exit_code == 1 and "error [invalid_argument]" in result.output  # q uses it
    result = runner.invoke(cli, ["delete-queue", "other", *ep], input="y\n")
    assert result.exit_code == 0 and "deleted queue other" in result.output
    result = runner.invoke(cli, ["delete-topic", "t", *ep])
    assert result.exit_code == 0 and "deleted topic t" in result.output
    assert client.list_topics() == [] and client.list_queues() == ["dlq", "q"]
    result = runner.invoke(cli, ["delete-topic", "t", *ep])
    assert result.exit_code == 1 and "error [not_found]" in result.output
    client.close()


def test_cli_admin_commands_have_help() -> None:
    runner = CliRunner()
    for command in ("unsubscribe", "purge", "redrive", "delete-queue", "delete-topic"):
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_cli_hold_queue_and_hold_timeout(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    runner = CliRunner()
    result = runner.invoke(cli, ["create-queue", "h", "--max-messages", "1", "--overflow",
                                 "hold", "--endpoint", server.endpoint])
    assert result.exit_code == 0, result.output
    assert client.queue_settings("h").overflow == "hold"
    result = runner.invoke(cli, ["serve", "--hold-timeout", "-1"])
    assert result.exit_code == 2 and "--hold-timeout" in result.output
