"""Consuming and acking message by message: pipelined acks vs a round trip per ack.

python bench/e2e_consume_ack.py [--messages 100000] [--runs 3]
A broker process holds a queue of 64-byte messages; this process consumes them with
``prefetch=1000`` and acks each one on its own, four ways in the same run:

- baseline: ``receive(max_messages=1000)`` and ``message.ack()`` for each message, which
  for a received message waits for its answer (a round trip per ack: what ``message.ack()``
  of a pushed message cost before it was pipelined);
- ``message.ack()`` with the blocking client (queued with the consumer's settles);
- ``message.ack()`` with the asyncio client (one SETTLE per event-loop iteration);
- ``DeliveryBatch.ack()`` per pushed batch, for reference.

Reports messages per second (median of the runs) and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from e2e_common import BODY, broker_process, print_rates

PREFETCH = 1000


def _fill(client: Any, count: int) -> None:
    client.create_queue("q", max_messages=10_000_000)
    for start in range(0, count, 10_000):
        client.send_batch("q", [BODY] * min(10_000, count - start))


def _blocking(endpoint: str, count: int, how: str) -> float:
    from fastfanout.client import connect

    with connect(endpoint) as client:
        _fill(client, count)
        started = time.perf_counter()
        got = 0
        if how == "receive":
            while got < count:
                for message in client.receive("q", max_messages=PREFETCH):
                    message.ack()
                    got += 1
        consumer = client.consume("q", prefetch=PREFETCH)
        while got < count:
            batch = consumer.next_batch(30.0)
            if batch is None:
                raise RuntimeError(f"only {got} of {count} messages arrived")
            if how == "batch":
                batch.ack()
            else:
                for message in batch:
                    message.ack()
            got += len(batch)
        consumer.cancel()   # sends what is queued
        while client.stats().queues["q"].acked < count:
            time.sleep(0.001)
        elapsed = time.perf_counter() - started
        client.delete_queue("q")
    return count / elapsed


def _asyncio(endpoint: str, count: int) -> float:
    from fastfanout import aio

    async def main() -> float:
        async with aio.connect(endpoint) as client:
            await client.create_queue("q", max_messages=10_000_000)
            for start in range(0, count, 10_000):
                await client.send_batch("q", [BODY] * min(10_000, count - start))
            started = time.perf_counter()
            got = 0
            async for message in client.consume("q", prefetch=PREFETCH):
                message.ack()
                got += 1
                if got == count:
                    break
            while (await client.stats()).queues["q"].acked < count:
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - started
            await client.delete_queue("q")
        return count / elapsed

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with broker_process() as (endpoint, _):
        ways: dict[str, Callable[[], float]] = {
            "receive() + message.ack() per message (baseline)":
                lambda: _blocking(endpoint, args.messages // 10, "receive"),
            "message.ack(), blocking client": lambda: _blocking(endpoint, args.messages,
                                                               "message"),
            "message.ack(), asyncio client": lambda: _asyncio(endpoint, args.messages),
            "DeliveryBatch.ack()": lambda: _blocking(endpoint, args.messages, "batch"),
        }
        rates = {name: statistics.median(way() for _ in range(args.runs))
                 for name, way in ways.items()}
    print_rates(rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
