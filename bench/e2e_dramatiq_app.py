"""dramatiq's side of bench/e2e_workers.py: a no-op actor on a Redis broker.

``BENCH_REDIS_URL`` names the Redis server; ``send(count)`` enqueues ``count`` messages of
a 64-byte body, ``python -m dramatiq e2e_dramatiq_app`` runs the worker.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"))
dramatiq.set_broker(broker)

BODY = "x" * 64


@dramatiq.actor(max_retries=0)
def noop(body: str) -> None:
    """The handler: nothing."""


def send(count: int) -> None:
    """Enqueue ``count`` messages for ``noop``."""
    for _ in range(count):
        noop.send(BODY)
