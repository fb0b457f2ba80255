"""Every end-to-end script in bench/ starts: its imports resolve and its options parse.

The scripts share helpers (bench/e2e_common.py) and some run the harness; a helper moved
or renamed must not leave a script that fails at import, unseen until someone runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"
SCRIPTS = sorted(path.name for path in BENCH.glob("e2e_*.py")
                 if path.name not in ("e2e_common.py", "e2e_dramatiq_app.py"))


def test_the_scripts_are_found() -> None:
    assert "e2e_fanout.py" in SCRIPTS and "e2e_per_message.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_script_starts_and_prints_its_help(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"],
                          capture_output=True, text=True, timeout=60, cwd=BENCH)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_the_numpy_pipeline_runs_its_window_through_every_path() -> None:
    # A short run (one of each path): every row arrives and the three checksums agree
    # (the script raises otherwise), with the window given on the command line.
    done = subprocess.run([sys.executable, str(BENCH / "e2e_numpy.py"), "--rows", "20000",
                           "--runs", "1", "--in-flight", "3", "--prefetch", "3072",
                           "--queue-bound", "4096", "--ring-mib", "8"],
                          capture_output=True, text=True, timeout=240, cwd=BENCH)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 batches in flight, prefetch 3072, queue bound 4096, 8 MiB rings" in done.stdout
    assert "fastfanout / pyzmq zero-copy:" in done.stdout
    costs = next(line for line in done.stdout.splitlines()
                 if line.startswith("fastfanout CPU a row"))
    assert "producer" in costs and "consumer" in costs and "ns" in costs


def test_the_request_reply_script_runs_fastfanout_beside_pyzmq() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "e2e_request_reply.py"),
                           "--requests", "200", "--runs", "1", "--peers", "zmq"],
                          capture_output=True, text=True, timeout=240, cwd=BENCH)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines()
            if line.startswith("| fastfanout") or line.startswith("| zmq")}
    assert set(rows) == {"fastfanout", "zmq"}
    assert "fastfanout / zmq:" in done.stdout


def test_the_request_reply_script_refuses_an_unknown_peer_in_one_line() -> None:
    done = subprocess.run([sys.executable, str(BENCH / "e2e_request_reply.py"),
                           "--peers", "rabbit"], capture_output=True, text=True, timeout=60,
                          cwd=BENCH)
    assert done.returncode == 2
    assert "unknown peer(s) rabbit" in done.stderr and "Traceback" not in done.stderr
