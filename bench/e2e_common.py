"""Pieces the end-to-end scripts share: the broker process, publishing a run, cleanup."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BODY = b"x" * 64
PUBLISH_CHUNK = 1000
IN_FLIGHT = 8
START_DEADLINE = 30.0


def serve_broker(endpoint: str) -> None:
    """A broker process's target: serve ``endpoint`` with the default settings."""
    from fastfanout.server import serve

    serve(endpoint)


def connect_when_up(endpoint: str, broker: Any) -> Any:
    """A client of the broker process ``broker`` once it answers (START_DEADLINE at most)."""
    from fastfanout.client import connect
    from fastfanout.errors import FastFanoutError

    deadline = time.monotonic() + START_DEADLINE
    while True:
        if not broker.is_alive():
            raise RuntimeError(f"the broker exited with {broker.exitcode}")
        try:
            return connect(endpoint, timeout=0.5)
        except FastFanoutError:
            if time.monotonic() > deadline:
                raise


def stop_processes(processes: list[Any]) -> None:
    """Join each process (10 s), then terminate, then kill what is still alive."""
    for process in processes:
        process.join(10)
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)


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


@contextmanager
def broker_process() -> Iterator[tuple[str, Any]]:
    """A broker process on a fresh ipc endpoint, serving once it answers: (endpoint, process).

    Terminated (and reaped) on exit, and its temporary directory removed.
    """
    import multiprocessing as mp
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        endpoint = f"ipc://{directory}/ff.sock"
        broker = mp.get_context("spawn").Process(target=serve_broker, args=(endpoint,))
        broker.start()
        try:
            connect_when_up(endpoint, broker).close()
            yield endpoint, broker
        finally:
            broker.terminate()
            stop_processes([broker])


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
