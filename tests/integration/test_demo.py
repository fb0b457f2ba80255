"""The main job (`bash ci/demo.sh`): the fan-out demo across processes, and its set-up."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastfanout.demo", *args],
                          capture_output=True, text=True, timeout=90, cwd=ROOT)


def test_the_demo_fans_out_across_processes_on_its_own_broker(track):
    endpoint = track.endpoint()
    done = run_demo("--endpoint", endpoint, "--messages", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "billing" in done.stdout and "acked 300" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_the_demo_refuses_an_endpoint_another_broker_serves(track):
    server = track.server()
    with track.client(server.endpoint) as client:
        client.create_queue("billing")      # what the demo would trip over
    done = run_demo("--endpoint", server.endpoint, "--messages", "10")
    assert done.returncode == 1
    assert "already serves" in done.stdout and "--endpoint" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    with track.client(server.endpoint) as client:
        assert set(client.stats().queues) == {"billing"}   # the demo changed nothing there


@pytest.mark.skipif(pathlib.Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="runs only inside the venv that ci/setup-venv.sh made")
def test_setting_up_again_rebuilds_nothing():
    def set_up() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "ci/setup-venv.sh", "test"], capture_output=True,
                              text=True, timeout=300, cwd=ROOT,
                              env={**os.environ, "FASTFANOUT_VENV": ".venv"})

    set_up()   # builds if a source changed since the last set-up (never in ci/test.sh)
    done = set_up()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(".venv/bin/python")
    assert "building" not in done.stderr, done.stderr
