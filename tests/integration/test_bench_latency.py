"""The latency scenario of ``fastfanout bench``: its settings reach the systems measured.

``--prefetch`` (and ``bench/e2e_latency.py --prefetch``, passed on) sets the prefetch of
fastfanout's consumers; the scenario's own settings are the lowest-latency ones a user
would pick.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastfanout.bench.adapters import ADAPTERS, LATENCY_PREFETCH
from fastfanout.bench.scenarios import Spec
from fastfanout.cli import cli

pytest.importorskip("hdrh", reason="hdrhistogram is not installed (the bench extra)")

BENCH = Path(__file__).parents[2] / "bench"
LATENCY = Spec(scenario="latency", size=64, count=None, duration=0.3, rate=2000.0, batch=1,
               publishers=1, groups=1, members=1, transport="local", warmup=0.0)


def _first_push(spec: Spec, waiting: int) -> int:
    """Messages in the first push to a fresh consumer of ``spec`` (``waiting`` queued).

    The broker pushes at most the consumer's prefetch.
    """
    from fastfanout.bench.payload import make_bodies
    from fastfanout.client import connect

    adapter = ADAPTERS["fastfanout"]
    with adapter.serve(spec) as env:
        with connect(env["endpoint"], local_channel=False) as client:
            client.publish_batch("t", make_bodies(0, 0, waiting, spec.size))
        receiver = adapter.receiver(env, spec, 0, 0)
        try:
            return len(receiver.poll(10.0))
        finally:
            receiver.close()


@pytest.mark.parametrize(("prefetch", "expected"), [(None, LATENCY_PREFETCH), (5, 5)])
def test_the_consumer_takes_the_spec_prefetch(prefetch: int | None, expected: int) -> None:
    assert _first_push(replace(LATENCY, prefetch=prefetch), 3 * LATENCY_PREFETCH) == expected


@pytest.mark.parametrize("args", [["latency", "--prefetch", "0"],
                                  ["latency", "--prefetch", "2000000"],
                                  ["stream", "--prefetch", "5"]])   # listeners have none
def test_a_prefetch_out_of_range_is_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error"), result.output


def test_e2e_latency_passes_its_prefetch_to_the_harness(tmp_path: Path) -> None:
    path = tmp_path / "latency.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "e2e_latency.py"), "--rate", "2000", "--seconds", "0.3",
         "--warmup", "0.1", "--runs", "1", "--prefetch", "7", "--peers", "none",
         "--json", str(path)],
        capture_output=True, text=True, timeout=120, cwd=BENCH)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--prefetch 7" in done.stdout.splitlines()[0]   # the command it runs
    (measurement,) = json.loads(path.read_text())["measurements"]
    assert measurement["spec"]["prefetch"] == 7
    assert measurement["key"].endswith("/prefetch7/64B/fastfanout")
    assert measurement["summary"]["lost"] == 0


def test_small_batches_are_checked_without_numpy_with_the_same_counts() -> None:
    """Batches below NUMPY_MIN take the plain loop and count as numpy does.

    At a low rate a receiver gets a message or two per batch: numpy's fixed cost per
    call (tens of µs) would be most of its work.
    """
    from fastfanout._ext.codec import Record, encode_batch
    from fastfanout.bench.payload import NUMPY_MIN, SequenceCheck, frame_headers, make_bodies

    def frame(bodies: list[bytes]) -> bytes:
        return encode_batch([Record(body, id=i + 1, receipt=1000 + i, receive_count=1)
                             for i, body in enumerate(bodies)])

    assert frame_headers(frame(make_bodies(0, 0, NUMPY_MIN - 1, 64))) is None
    assert frame_headers(frame(make_bodies(0, 0, NUMPY_MIN, 64))) is not None
    bodies = make_bodies(0, 0, 40, 64) + make_bodies(1, 0, 3, 64)
    batches = [bodies[i:i + 2] for i in range(0, len(bodies), 2)] + [bodies[:1]]  # a dup
    one_by_one, all_at_once = SequenceCheck(2, 40), SequenceCheck(2, 40)
    for batch in batches:
        one_by_one.record(batch)
    all_at_once.record(bodies + bodies[:1])   # one batch: numpy
    assert one_by_one.received == all_at_once.received == 44
    assert one_by_one.export() == all_at_once.export()


def test_a_buffering_sender_hands_over_when_the_publisher_idles() -> None:
    """fastfanout's sender batches single messages until the open-loop publisher waits.

    ``idle()`` (called by the publisher when the next message is not due yet) sends what
    was published since the last call: on schedule each message leaves at once; behind
    it, the late ones leave together instead of a flush each (50,000 msg/s: one flush
    per message held the publisher to ~32,000 msg/s here, ~670 ms behind by the end).
    """
    import time

    from fastfanout.bench.payload import HEADER, SequenceCheck, make_bodies

    adapter = ADAPTERS["fastfanout"]
    with adapter.serve(LATENCY) as env:
        receiver = adapter.receiver(env, LATENCY, 0, 0)
        sender = adapter.sender(env, LATENCY, 0)
        try:
            for seq in range(5):
                sender.send(make_bodies(0, seq, 1, LATENCY.size))
            sender.idle()   # type: ignore[attr-defined]
            check = SequenceCheck(1, 5)
            deadline = time.monotonic() + 10.0
            while check.received < 5 and time.monotonic() < deadline:
                bodies = receiver.poll(0.5)
                check.record(bodies)
                if bodies and isinstance(bodies, list):
                    assert [HEADER.unpack_from(b)[0] for b in bodies] == [0] * len(bodies)
            assert check.received == 5 and check.export()[0][:10] == b"\x01\x00" * 5
        finally:
            sender.close()
            receiver.close()


@pytest.mark.parametrize("args", [
    ["-r", "500", "-d", "0.3", "--peers", "none", "-t", "tcp"],   # the default 0.5 s warm-up
    ["-r", "500", "-n", "100", "--peers", "none"],                 # 0.2 s by its count
    ["-r", "1000", "-d", "1", "--warmup", "1", "--peers", "none"],
])
def test_a_latency_run_not_longer_than_its_warmup_is_refused(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["bench", "latency", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the latency run lasts ")
    assert "must be longer than the warm-up, --warmup" in lines[0]


@pytest.mark.parametrize(("size", "words"), [
    ("1GiB", "'1GiB' is above the maximum message size, 16 MiB"),
    ("17MiB", "'17MiB' is above the maximum message size, 16 MiB"),
    ("8", "'8' is below the minimum message size, 16 bytes"),
])
def test_a_size_out_of_range_says_which_bound(size: str, words: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "latency", "-s", size])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.output
