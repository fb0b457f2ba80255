"""The stop signals (SIGTERM, SIGINT, SIGHUP) end every long-running command cleanly.

Until 2026-12-06 ``fastfanout receive --wait`` had no handler (SIGTERM: exit 143, its
connection never closed: the broker found the client gone by its own checks), ``sub``
and ``worker`` died of a SIGHUP (the terminal closing), and ``fastfanout serve`` died
of a SIGTERM in its first half second, before its handler was set (exit -15), because
importing the command line took that long. Now the entry point blocks the three
signals on its first line (``fastfanout.entry``); each command then handles them: exit
0, the client closed (a BYE: the broker sees no vanished peer), no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Tracker, wait_until

from fastfanout.server.loop import Server

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STOPS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
EXIT_WAIT = 15.0
"""Seconds a stopped command may take to exit (a loaded machine's close, far below)."""


def command(track: Tracker, *args: str) -> subprocess.Popen[bytes]:
    """``python -m fastfanout ARGS`` (the entry point the console script uses too)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    process = subprocess.Popen([sys.executable, "-m", "fastfanout", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    track.processes.append(process)
    return process


def stopped(process: subprocess.Popen[bytes], signum: int) -> tuple[int, str]:
    """Send ``signum``; the exit status and stderr once it ended."""
    process.send_signal(signum)
    _, err = process.communicate(timeout=EXIT_WAIT)
    return process.returncode, err.decode()


GONE = ("local_peer_gone", "sessions_expired", "ended_session_requests")
"""The server's counters of clients found gone without a BYE, or heard from after it."""


def vanished(server: Server) -> int:
    """Clients the broker found gone without a BYE, or heard from after it."""
    return sum(int(server.counters[key]) for key in GONE)


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
def test_receive_wait_stops_cleanly(track: Tracker, signum: int) -> None:
    server = track.server()
    with track.client(server.endpoint) as client:
        client.create_queue("q")
    process = command(track, "receive", "q", "--wait", "20", "-e", server.endpoint)
    wait_until(lambda: server.next_wait()[1], timeout=EXIT_WAIT, what="a parked receive")
    begun = time.monotonic()
    status, err = stopped(process, signum)
    assert status == 0, err
    assert "Traceback" not in err and "aborted" not in err
    assert time.monotonic() - begun < EXIT_WAIT
    wait_until(lambda: not server.next_wait()[1], what="the receive ended")
    assert vanished(server) == 0, {key: server.counters[key] for key in GONE}


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
def test_sub_stops_cleanly(track: Tracker, signum: int) -> None:
    server = track.server()
    with track.client(server.endpoint) as client:
        client.create_topic("t")
    process = command(track, "sub", "t", "-e", server.endpoint)
    wait_until(lambda: server.counters["stream_probes"] >= 1, timeout=EXIT_WAIT,
               what="the listener subscribed")
    status, err = stopped(process, signum)
    assert status == 0, err
    assert "Traceback" not in err and "aborted" not in err
    wait_until(lambda: server.counters["stream_disconnects"] >= 1, what="its stream closed")
    assert vanished(server) == 0, {key: server.counters[key] for key in GONE}


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("args", [["metrics", "--listen", "127.0.0.1:0"],
                                  ["top", "--interval", "0.1"]], ids=lambda a: a[0])
def test_metrics_and_top_stop_cleanly(track: Tracker, signum: int, args: list[str]) -> None:
    server = track.server()
    process = command(track, *args, "-e", server.endpoint)
    assert process.stdout is not None
    assert process.stdout.readline()   # serving, or a first screen
    status, err = stopped(process, signum)
    assert status == 0, err
    assert "Traceback" not in err and "aborted" not in err
    with track.client(server.endpoint) as client:   # its session ended by its BYE
        wait_until(lambda: client.server_stats()["connections"] == 1,
                   what="the command's session ended")
    assert vanished(server) == 0, {key: server.counters[key] for key in GONE}


def test_worker_stops_cleanly_on_sighup(track: Tracker) -> None:
    server = track.server()
    with track.client(server.endpoint) as client:
        client.create_queue("jobs")
        process = command(track, "worker", "worker_app:app", "--endpoint", server.endpoint,
                          "--log-level", "WARNING")
        wait_until(lambda: client.server_stats()["consumers"] >= 1, timeout=30,
                   what="the worker consuming")
        status, err = stopped(process, signal.SIGHUP)
    assert status == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_as_a_client_command_starts_stops_it_cleanly(track: Tracker,
                                                              signum: int) -> None:
    server = track.server()
    process = command(track, "receive", "q", "--wait", "20", "-e", server.endpoint)
    wait_until(lambda: held(process.pid, signum), timeout=EXIT_WAIT,
               what="the stop signals held")
    status, err = stopped(process, signum)   # while it imports: handled once it can
    assert status == 0, err
    assert "Traceback" not in err


def held(pid: int, signum: int) -> bool:
    """True once process ``pid`` blocks or catches ``signum`` (``/proc/PID/status``).

    Python catches SIGINT itself from its start (before any code of ours): for SIGINT
    only its being blocked counts.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    bit = 1 << (signum - 1)
    caught = int(fields["SigCgt"], 16) if signum != signal.SIGINT else 0
    return bool((int(fields["SigBlk"], 16) | caught) & bit)


def loaded(pid: int, what: str) -> bool:
    """True if process ``pid`` has mapped a file whose path contains ``what``."""
    try:
        return what in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_serve_stops_cleanly_on_a_sigterm_as_it_starts(track: Tracker) -> None:
    for round_ in range(5):
        endpoint = track.endpoint()
        process = command(track, "serve", "--in-memory", "--endpoint", endpoint,
                          "--log-level", "WARNING")
        # as soon as the signal is held: long before the native core or libzmq load
        wait_until(lambda p=process: held(p.pid, signal.SIGTERM), timeout=EXIT_WAIT,
                   what="SIGTERM held")
        assert not loaded(process.pid, "libzmq"), "SIGTERM held only after zmq loaded"
        status, err = stopped(process, signal.SIGTERM)
        assert status == 0, f"round {round_}: {status} {err}"
        assert "Traceback" not in err
        socket_file = Path(endpoint.removeprefix("ipc://"))
        assert not socket_file.exists() and not Path(f"{socket_file}.stream").exists()


def test_serve_stops_cleanly_on_a_sigterm_at_any_moment_of_its_start(track: Tracker) -> None:
    # from the moment the signal is held to when the broker serves, at spread moments
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        endpoint = track.endpoint()
        process = command(track, "serve", "--in-memory", "--endpoint", endpoint,
                          "--log-level", "WARNING")
        wait_until(lambda p=process: held(p.pid, signal.SIGTERM), timeout=EXIT_WAIT,
                   what="SIGTERM held")
        time.sleep(delay)   # the moment in its start, not a wait for a condition
        status, err = stopped(process, signal.SIGTERM)
        assert status == 0, f"after {delay} s: {status} {err}"
        assert "Traceback" not in err


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs /proc/PID/wchan")
def test_receive_stopped_while_printing_is_aborted_not_hung(track: Tracker) -> None:
    # its stdout a pipe nobody reads: the printing blocks, and a stop signal must still
    # end it (not held off until the printing is done: never, here)
    server = track.server()
    with track.client(server.endpoint) as client:
        client.create_queue("q")
        client.send_batch("q", [b"x" * 4096 for _ in range(100)])   # 400 KB of output
        process = command(track, "receive", "q", "-n", "100", "--ack", "-e",
                          server.endpoint)
        wait_until(lambda: "pipe_write" in Path(f"/proc/{process.pid}/wchan").read_text(),
                   timeout=EXIT_WAIT, what="blocked writing its output")
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_WAIT) == 1
        assert process.stderr is not None
        err = process.stderr.read().decode()
        assert "aborted" in err and "Traceback" not in err
        wait_until(lambda: client.stats().queues["q"].leased == 0, what="leases ended")
        queue = client.stats().queues["q"]
        assert queue.acked == 0 and queue.visible == 100   # nothing settled: all back


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_after_a_command_is_done_keeps_its_status(track: Tracker, tmp_path: Path,
                                                         signum: int) -> None:
    """A stop signal that came once ``pub`` had published and printed its result, as
    the interpreter shut down, met Python's default handler (restored at shutdown) and
    killed the process: exit 143 (130, 129) for a command that had done its work. Here
    the signal is sent by an exit hook, after ``main`` returned: at that moment, always."""
    server = track.server()
    track.client(server.endpoint).create_topic("t")
    script = tmp_path / "late.py"
    script.write_text(
        "import atexit, os, signal, sys\n"
        f"atexit.register(lambda: os.kill(os.getpid(), {int(signum)}))\n"
        "from fastfanout.entry import main\n"
        f"sys.argv = ['fastfanout', 'pub', '--endpoint', {server.endpoint!r}, 't', 'x']\n"
        "main()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert b"1 delivery" in done.stdout or b"0 deliveries" in done.stdout, done.stdout
    assert b"Traceback" not in done.stderr


def test_the_apps_own_endpoint_wins_over_the_environments(track: Tracker,
                                                          tmp_path: Path) -> None:
    """`fastfanout worker` gave $FASTFANOUT_ENDPOINT (a default for every command) to
    configure(): a module's Worker(ENDPOINT) was silently pointed elsewhere."""
    server = track.server()
    with track.client(server.endpoint) as client:
        client.create_queue("jobs")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
               "WORKER_TEST_ENDPOINT": server.endpoint,
               "FASTFANOUT_ENDPOINT": f"ipc://{tmp_path}/nobody.sock"}
        process = subprocess.Popen([sys.executable, "-m", "fastfanout", "worker",
                                    "worker_app:app", "--log-level", "WARNING"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        track.processes.append(process)
        client.send("jobs", f"{tmp_path}|0".encode())
        wait_until(lambda: any(tmp_path.glob("*-*")) or process.poll() is not None,
                   timeout=30, what="the worker's handler ran")
        assert process.poll() is None, process.communicate(timeout=5)[1].decode()
        status, err = stopped(process, signal.SIGTERM)
    assert status == 0, err
