"""Pieces the end-to-end scripts share: publishing a run, printing rates, the harness.

The broker process, the client that waits for it and the cleanup of child processes are
the installed harness's (``fastfanout.bench.processes``), re-exported here. The scripts
whose scenario the harness has (e2e_fanout.py, e2e_stream.py, e2e_latency.py) run it
(``harness``): their options become ``fastfanout bench`` options.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from typing import Any

from fastfanout.bench.processes import (  # noqa: F401
    START_DEADLINE,
    broker_process,
    connect_when_up,
    serve_broker,
    stop_processes,
)

BODY = b"x" * 64
PUBLISH_CHUNK = 1000
IN_FLIGHT = 8


def publish_run(endpoint: str, count: int, mode: str, topic: str = "t") -> None:
    """Publish ``count`` 64-byte messages to ``topic``.

    ``single``: one ``publish_nowait`` per message (the client batches on the wire);
    ``producer``: one ``offer`` per message to ``client.producer(topic)`` (frames of
    1,000, at most 8 in flight, no future per message);
    ``batch``: ``publish_batch_nowait`` of 1,000 bodies, at most 8 batches in flight.
    """
    from fastfanout import keep_freed_memory
    from fastfanout.client import connect

    keep_freed_memory()   # frames of up to 128 KB: reuse freed memory (see allocator.py)
    with connect(endpoint, batch_messages=2000) as client:
        if mode == "single":
            for _ in range(count):
                client.publish_nowait(topic, BODY)
            client.flush()
            return
        if mode == "producer":
            with client.producer(topic, batch_messages=PUBLISH_CHUNK,
                                 max_in_flight=IN_FLIGHT) as producer:
                offer = producer.offer
                for _ in range(count):
                    offer(BODY)
            return
        chunk = [BODY] * PUBLISH_CHUNK
        window: deque[Any] = deque()
        for start in range(0, count, PUBLISH_CHUNK):
            window.append(client.publish_batch_nowait(topic, chunk[: count - start]))
            if len(window) >= IN_FLIGHT:
                window.popleft().result()
        while window:
            window.popleft().result()


def add_modes_argument(parser: Any) -> None:
    """The ``--modes`` option of the fan-out scripts (see ``publish_run``)."""
    parser.add_argument("--modes", nargs="+", default=["batch", "single", "producer"],
                        choices=["batch", "single", "producer"],
                        help="batch: publish_batch_nowait of 1,000 bodies; single: one "
                             "publish_nowait per message; producer: one offer per message "
                             "to client.producer()")


def print_rates(rates: dict[str, float]) -> None:
    """Print each rate (msg/s) and its ratio to the first one, the baseline."""
    base = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"{name}: median {rate:,.0f} msg/s, ratio {rate / base:.1f}x")


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


def _pull(endpoint: str, count: int, out: Any) -> None:
    import time

    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.bind(endpoint)
    out.put("ready")
    sock.recv()
    started = time.perf_counter()
    for _ in range(count - 1):
        sock.recv()
    out.put(count / (time.perf_counter() - started))
    sock.close()
    context.term()


def _push(endpoint: str, count: int) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.connect(endpoint)
    for _ in range(count):
        sock.send(BODY)
    sock.close(linger=-1)
    context.term()


def push_pull_baseline(count: int) -> float:
    """Raw pyzmq PUSH -> PULL over ipc, one 64-byte message per send: msg/s received."""
    import multiprocessing as mp
    import tempfile

    ctx = mp.get_context("spawn")
    endpoint = f"ipc://{tempfile.mkdtemp()}/pp"
    out = ctx.Queue()
    pull = ctx.Process(target=_pull, args=(endpoint, count, out))
    pull.start()
    out.get(timeout=30)
    push = ctx.Process(target=_push, args=(endpoint, count))
    push.start()
    rate = out.get(timeout=120)
    push.join(30)
    pull.join(30)
    return float(rate)
