"""Publishing from asyncio: one awaited publish at a time vs many in one loop iteration.

python bench/e2e_aio_publish.py [--messages 20000] [--runs 3]
A broker process (topic -> one queue); this process publishes 64-byte messages with the
asyncio client, three ways in the same run:

- baseline: ``await client.publish(...)`` one after another (a round trip each);
- ``asyncio.gather`` of ``client.publish(...)`` calls (they travel as one request per
  loop iteration and topic);
- ``client.publish_nowait(...)`` for each message, then awaiting the futures.

Reports messages per second (median of the runs) and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from typing import Any

from e2e_common import BODY, connect_when_up, serve_broker, stop_processes


async def _rate(endpoint: str, count: int, how: str) -> float:
    from fastfanout import aio

    async with aio.connect(endpoint) as client:
        started = time.perf_counter()
        if how == "await":
            for _ in range(count):
                await client.publish("t", BODY)
        elif how == "gather":
            await asyncio.gather(*(client.publish("t", BODY) for _ in range(count)))
        else:
            futures: list[Any] = [client.publish_nowait("t", BODY) for _ in range(count)]
            await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    endpoint = f"ipc://{tempfile.mkdtemp()}/ff.sock"
    broker = ctx.Process(target=serve_broker, args=(endpoint,))
    broker.start()
    try:
        with connect_when_up(endpoint, broker) as client:
            client.create_topic("t")
            client.create_queue("q", max_messages=100_000_000)
            client.subscribe("t", "q")
        ways = {"await publish() one by one (baseline)": ("await", args.messages // 4),
                "asyncio.gather of publish()": ("gather", args.messages),
                "publish_nowait() then await the futures": ("nowait", args.messages)}
        rates = {name: statistics.median(asyncio.run(_rate(endpoint, count, how))
                                         for _ in range(args.runs))
                 for name, (how, count) in ways.items()}
    finally:
        broker.terminate()
        stop_processes([broker])
    base = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"{name}: median {rate:,.0f} msg/s, ratio {rate / base:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
