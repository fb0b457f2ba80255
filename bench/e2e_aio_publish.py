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
import statistics
import sys
import time
from typing import Any

from e2e_common import BODY, broker_process, print_rates


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
    from fastfanout.client import connect

    with broker_process() as (endpoint, _), connect(endpoint) as client:
        client.create_topic("t")
        client.create_queue("q", max_messages=100_000_000)
        client.subscribe("t", "q")
        ways = {"await publish() one by one (baseline)": ("await", args.messages // 4),
                "asyncio.gather of publish()": ("gather", args.messages),
                "publish_nowait() then await the futures": ("nowait", args.messages)}
        rates = {name: statistics.median(asyncio.run(_rate(endpoint, count, how))
                                         for _ in range(args.runs))
                 for name, (how, count) in ways.items()}
    print_rates(rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
