"""Pieces the end-to-end scripts share: stopping their processes, publishing a run."""

from __future__ import annotations

from collections import deque
from typing import Any

BODY = b"x" * 64
PUBLISH_CHUNK = 1000
IN_FLIGHT = 8


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
    ``batch``: ``publish_batch_nowait`` of 1,000 bodies, at most 8 batches in flight.
    """
    from fastfanout.client import connect

    with connect(endpoint, batch_messages=2000) as client:
        if mode == "single":
            for _ in range(count):
                client.publish_nowait(topic, BODY)
            client.flush()
            return
        chunk = [BODY] * PUBLISH_CHUNK
        window: deque[Any] = deque()
        for start in range(0, count, PUBLISH_CHUNK):
            window.append(client.publish_batch_nowait(topic, chunk[: count - start]))
            if len(window) >= IN_FLIGHT:
                window.popleft().result()
        while window:
            window.popleft().result()
