"""Pieces the end-to-end scripts share: publishing a run, printing rates.

The broker process, the client that waits for it and the cleanup of child processes are
the installed harness's (``fastfanout.bench.processes``), re-exported here.
"""

from __future__ import annotations

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
