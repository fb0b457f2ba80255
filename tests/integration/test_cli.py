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
