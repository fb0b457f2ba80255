"""Large messages in ``fastfanout bench``: every size ``--size`` accepts arrives, and a
refusal by the broker fails the run in one line instead of showing as lost messages."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fastfanout.bench import adapters
from fastfanout.bench.adapters import ADAPTERS
from fastfanout.bench.payload import MAX_SIZE, make_bodies
from fastfanout.bench.runner import run_once
from fastfanout.bench.scenarios import Spec
from fastfanout.cli import cli

pytest.importorskip("hdrh", reason="hdrhistogram is not installed (the bench extra)")

MIB = 1024 * 1024
LARGE = Spec(scenario="fanout", size=2 * MIB, count=3, duration=None, rate=None, batch=1,
             publishers=1, groups=1, members=1, transport="ipc", warmup=0.0)
"""Above the broker's default max_message_size (1 MiB)."""


@pytest.mark.parametrize(("scenario", "batch", "api"), [
    ("fanout", 1, "batch"), ("fanout", 2, "batch"), ("workqueue", 1, "batch"),
    ("workqueue", 3, "publish_nowait"), ("fanout", 1, "offer"), ("stream", 1, "batch")])
def test_messages_above_the_default_message_size_arrive(scenario: str, batch: int,
                                                        api: str) -> None:
    spec = replace(LARGE, scenario=scenario, batch=batch, api=api)
    result = run_once("fastfanout", spec, 0)
    assert result.published == [spec.count]
    assert result.delivered == [spec.count]
    assert result.lost == 0 and result.duplicates == 0


def test_the_largest_size_runs_from_the_command_line_with_a_batch_that_fits(
        tmp_path: Path) -> None:
    # no --batch: the default (1000) is cut to 4 messages of 16 MiB (64 MiB a call), so
    # the 5 messages go as a batch of 4 and a single one
    path = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "fastfanout", "bench", "fanout", "-s", "16MiB", "-n", "5",
         "--runs", "1", "--peers", "none", "-t", "tcp", "--json", str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (item,) = json.loads(path.read_text())["measurements"]
    assert item["size"] == MAX_SIZE and item["spec"]["batch"] == 4
    assert item["skipped"] is None
    (run,) = item["runs"]
    assert run["published"] == [5] and run["delivered"] == [5] and run["lost"] == 0


def _queues_of_one_mebibyte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's queues as they were: 1 MiB at most (the broker refuses LARGE)."""
    monkeypatch.setattr(adapters, "queue_message_size", lambda spec: MIB)


@pytest.mark.parametrize(("batch", "api"), [(1, "batch"), (2, "batch"),
                                            (1, "publish_nowait"), (1, "offer")])
def test_a_refused_message_fails_the_run(monkeypatch: pytest.MonkeyPatch, batch: int,
                                         api: str) -> None:
    _queues_of_one_mebibyte(monkeypatch)
    spec = replace(LARGE, batch=batch, api=api)
    with pytest.raises(RuntimeError, match="MessageTooLarge"):
        run_once("fastfanout", spec, 0)


def test_a_refused_message_is_one_line_and_a_nonzero_status(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _queues_of_one_mebibyte(monkeypatch)
    result = CliRunner().invoke(cli, ["bench", "fanout", "-s", "2MiB", "-n", "2", "-b", "1",
                                      "--runs", "1", "--peers", "none", "-t", "ipc"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("skipped")]
    assert len(failed) == 1 and failed[0].startswith(
        "skipped fastfanout: failed: publisher 0: MessageTooLarge: "), result.output


def test_the_broker_counts_of_refusals_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # whatever a publisher saw, after_run reads the queues' refusals from the broker
    from fastfanout.client import connect
    from fastfanout.errors import MessageTooLarge

    _queues_of_one_mebibyte(monkeypatch)
    adapter = ADAPTERS["fastfanout"]
    with adapter.serve(LARGE) as env:
        assert adapter.after_run(env, LARGE) == {}   # nothing refused yet
        with connect(env["endpoint"], local_channel=False) as client:
            with pytest.raises(MessageTooLarge):
                client.publish("t", make_bodies(0, 0, 1, LARGE.size)[0])
        with pytest.raises(RuntimeError, match="1 over max_message_size"):
            adapter.after_run(env, LARGE)


def test_the_queues_take_the_spec_size(monkeypatch: pytest.MonkeyPatch) -> None:
    spec: Any = replace(LARGE, size=MAX_SIZE)
    assert adapters.queue_message_size(spec) == MAX_SIZE
    assert adapters.queue_message_size(replace(LARGE, size=64)) == MIB
