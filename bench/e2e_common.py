"""Pieces the end-to-end scripts share: running the harness, the broker process.

Most scripts run the installed harness (``harness``): their options become
``fastfanout bench`` options. The broker process, the client that waits for it and the
cleanup of child processes are the harness's (``fastfanout.bench.processes``),
re-exported here for the code of their own some keep (e2e_workers.py's dramatiq part).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from fastfanout.bench.processes import (  # noqa: F401
    START_DEADLINE,
    broker_process,
    connect_when_up,
    serve_broker,
    stop_processes,
)

BODY = b"x" * 64


def cpu_seconds(pid: int) -> float:
    """CPU seconds every thread of process ``pid`` has run so far (the scheduler's
    nanoseconds, ``/proc/PID/task/*/schedstat``: finer than ``stat``'s clock ticks).

    Raises:
        OSError: no such process, or no ``/proc`` (not Linux).
    """
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{thread}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except FileNotFoundError:   # a thread that ended meanwhile
            continue
    return total / 1e9


def harness(args: list[str]) -> int:
    """Run ``fastfanout bench ARGS`` (the installed harness), printing what it prints.

    Returns its exit status (0: every run went through).
    """
    print("$ fastfanout bench " + " ".join(args), flush=True)
    return subprocess.call([sys.executable, "-m", "fastfanout", "bench", *args])


def add_harness_arguments(parser: Any, peers: str) -> None:
    """``--peers`` (default ``peers``), ``--transport``, ``--json`` and ``--plot``, passed on."""
    parser.add_argument("--peers", default=peers,
                        help=f"peers beside fastfanout (fastfanout bench --peers; default "
                             f"{peers})")
    parser.add_argument("--transport", default="local", choices=["local", "ipc", "tcp"],
                        help="fastfanout's transport (default local: a local channel)")
    parser.add_argument("--json", help="write the harness's JSON result file")
    parser.add_argument("--plot", help="write the harness's PNG figure")


def harness_options(args: Any) -> list[str]:
    """The ``fastfanout bench`` options of ``add_harness_arguments``' arguments."""
    options = ["--peers", args.peers, "--transport", args.transport]
    if args.json:
        options += ["--json", args.json]
    if args.plot:
        options += ["--plot", args.plot]
    return options
