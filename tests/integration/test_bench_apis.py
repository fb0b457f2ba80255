"""fastfanout's API variants of ``fastfanout bench`` (``--api``, ``--receive``), the PUSH->PULL
peer and the durable fsync policies, each in a tiny run: every message arrives once."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fastfanout.bench.adapters import ADAPTERS
from fastfanout.bench.results import load
from fastfanout.bench.runner import run_once
from fastfanout.bench.scenarios import APIS, RECEIVES, Spec

pytest.importorskip("hdrh", reason="hdrhistogram is not installed (the bench extra)")

TINY = Spec(scenario="fanout", size=64, count=1500, duration=None, rate=None, batch=100,
            publishers=1, groups=2, members=1, transport="local", warmup=0.0)

# every --api and every --receive at least once, paired to keep the runs few
PAIRS = [("offer", "each"), ("publish_nowait", "aio-each"), ("publish", "receive"),
         ("numpy", "array"), ("aio-offer", "worker"), ("aio-publish", "worker-batch"),
         ("aio-gather", "batch"), ("aio-nowait", "each")]


def test_the_pairs_cover_every_api_and_receive() -> None:
    assert {api for api, _ in PAIRS} | {"batch"} == set(APIS)
    assert {receive for _, receive in PAIRS} == set(RECEIVES)


@pytest.mark.parametrize(("api", "receive"), PAIRS, ids=[f"{a}-{r}" for a, r in PAIRS])
def test_every_api_delivers_everything_once(api: str, receive: str) -> None:
    spec = replace(TINY, api=api, receive=receive,
                   count=300 if "publish" in api and "nowait" not in api else TINY.count)
    reason = ADAPTERS["fastfanout"].unavailable(spec)
    if reason:
        pytest.skip(reason)
    result = run_once("fastfanout", spec, 0)
    assert result.published == [spec.count]
    assert result.delivered == [spec.count] * spec.groups
    assert result.lost == 0 and result.duplicates == 0 and result.rate > 0


def test_competing_per_message_consumers_share_the_queue_once() -> None:
    spec = replace(TINY, scenario="workqueue", groups=1, members=2, receive="each")
    result = run_once("fastfanout", spec, 0)
    assert result.delivered == [spec.count]
    assert result.lost == 0 and result.duplicates == 0


def test_the_latency_scenario_takes_the_per_message_apis() -> None:
    spec = Spec(scenario="latency", size=64, count=None, duration=0.4, rate=1000.0,
                batch=1, publishers=1, groups=1, members=1, transport="local",
                warmup=0.1, api="offer", receive="each")
    result = run_once("fastfanout", spec, 0)
    assert result.lost == 0 and result.duplicates == 0
    assert result.latency is not None and result.latency["p50"] > 0


@pytest.mark.parametrize("spec", [TINY, replace(TINY, scenario="workqueue", groups=1,
                                                 members=2)], ids=["fanout", "workqueue"])
def test_push_pull_peer_delivers_everything_once(spec: Spec) -> None:
    result = run_once("zmq-push", replace(spec, transport="ipc"), 0)
    assert result.delivered == [spec.count] * spec.groups
    assert result.lost == 0 and result.duplicates == 0


def test_durable_fsync_policies_run_and_show_in_the_table(tmp_path: Path) -> None:
    from fastfanout.bench.adapters import durable_unavailable

    if durable_unavailable():
        pytest.skip(durable_unavailable() or "")
    spec = replace(TINY, scenario="workqueue", groups=1, durable=True, fsync="interval",
                   count=500)
    result = run_once("fastfanout", spec, 0)
    assert result.delivered == [500] and result.lost == 0
    # the journal's bytes, read from the broker after the run (e2e_durable's column)
    assert result.extra["storage_bytes_written"] >= 500 * 64
    path = tmp_path / "durable.json"
    done = subprocess.run(
        [sys.executable, "-m", "fastfanout", "bench", "workqueue", "--durable", "--fsync",
         "never", "-n", "500", "--runs", "1", "--peers", "none", "--json", str(path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (item,) = load(str(path))["measurements"]
    assert item["key"].endswith("/durable-never/64B/fastfanout")
    assert "durable, fsync never" in done.stdout


def test_several_apis_in_one_run_share_their_peer_and_baseline(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "fastfanout", "bench", "fanout", "-n", "1000", "--runs", "1",
         "--batch", "100", "--api", "offer", "--api", "publish_nowait", "--receive", "each",
         "--peers", "zmq-push", "--baseline", "zmq-push", "--transport", "ipc",
         "--json", str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    measurements = load(str(path))["measurements"]
    assert [(m["system"], m["label"]) for m in measurements] == [
        ("fastfanout", "fastfanout offer/each"), ("zmq-push", "pyzmq PUSH->PULL"),
        ("fastfanout", "fastfanout publish_nowait/each")]
    assert len({m["key"] for m in measurements}) == 3   # compare tells them apart
    assert measurements[1]["summary"]["ratio"] == pytest.approx(1.0)
    assert all(m["summary"]["ratio"] > 0 for m in measurements)
    assert "fastfanout offer/each" in done.stdout
    report = subprocess.run([sys.executable, "-m", "fastfanout", "bench", "report", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| fanout 1x1")]
    assert [row.split(" | ")[2] for row in rows] == [
        "fastfanout offer/each", "pyzmq PUSH->PULL", "fastfanout publish_nowait/each"]
    assert rows[1].endswith("| 1.00 |")


def test_the_bridge_system_delivers_everything_once_through_jetstream() -> None:
    spec = replace(TINY, scenario="workqueue", groups=1, members=2, count=600,
                   receive="each")
    reason = ADAPTERS["bridge"].unavailable(spec)
    if reason:
        pytest.skip(reason)
    result = run_once("bridge", spec, 0)
    assert result.delivered == [600]
    assert result.lost == 0 and result.duplicates == 0


def test_the_bridge_runs_only_when_asked_for() -> None:
    from click.testing import CliRunner

    from fastfanout.cli import cli

    # the refusal of a baseline not run names the systems that would run
    result = CliRunner().invoke(cli, ["bench", "fanout", "--baseline", "bridge"])
    assert result.exit_code != 0
    assert "zmq-push" in result.output and "bridge, " not in result.output
    result = CliRunner().invoke(cli, ["bench", "fanout", "--peers", "bridge",
                                      "--baseline", "zmq"])
    assert "(fastfanout, bridge)" in result.output
