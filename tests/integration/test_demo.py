"""The main job (`bash ci/demo.sh`): the fan-out demo across processes, and its set-up."""

from __future__ import annotations

import contextlib
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


def _command_lines(pids) -> list[bytes]:
    """The command lines of the processes ``pids`` still running (for a failure's text)."""
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(pathlib.Path(f"/proc/{pid}/cmdline").read_bytes())
    return lines


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signalled_demo_stops_its_broker_and_children(track, tmp_path, signame):
    """SIGTERM killed the demo alone: its broker (on the user's endpoint) and its
    children ran on, orphaned, with its data directory."""
    import signal
    import time

    from conftest import process_group

    endpoint = track.endpoint()
    with (tmp_path / "err").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastfanout.demo", "--endpoint", endpoint, "--messages",
             "50000000"], stdout=err, stderr=err, cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONFAULTHANDLER": "1"},
            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # the broker, the consumers and the producer (and multiprocessing's tracker)
        while len(process_group(process.pid)) < 6:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(getattr(signal, signame))
        try:
            status = process.wait(30)
        except subprocess.TimeoutExpired:
            # where it hangs: SIGABRT makes faulthandler print every thread's stack
            process.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            pytest.fail(f"the demo did not end within 30 s of {signame}; left: "
                        f"{_command_lines(process_group(process.pid))}\n"
                        f"{(tmp_path / 'err').read_text()}")
        assert status == 1
        deadline = time.monotonic() + 15
        while process_group(process.pid):
            assert time.monotonic() < deadline, (
                _command_lines(process_group(process.pid)), (tmp_path / "err").read_text())
            time.sleep(0.05)
        assert not list(tmp_path.glob("fastfanout-demo-*"))
        socket_path = endpoint[len("ipc://"):]
        assert not os.path.exists(socket_path) and not os.path.exists(socket_path + ".lock")
        errors = (tmp_path / "err").read_text()
        # (a child is started whole before the signal is acted on: no child's traceback)
        assert "aborted" in errors.splitlines() and "Traceback" not in errors, errors
    finally:
        if process_group(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
