"""Publishing from asyncio: one awaited publish at a time vs many in one loop iteration.

python bench/e2e_aio_publish.py [--messages 20000] [--runs 3]
A broker process (topic -> one queue); this process publishes 64-byte messages with the
asyncio client, four ways in the same run:

- baseline: ``await client.publish(...)`` one after another (a round trip each);
- ``asyncio.gather`` of ``client.publish(...)`` calls (they travel as one request per
  loop iteration and topic);
- ``client.publish_nowait(...)`` for each message, then awaiting the futures;
- ``producer.offer(...)`` for each message (``await client.producer("t")``, frames of
  1,000, ``await producer.drain()`` every 10,000 offers), then ``await producer.flush()``.

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
        elif how == "nowait":
            futures: list[Any] = [client.publish_nowait("t", BODY) for _ in range(count)]
            await asyncio.gather(*futures)
        else:
            producer = await client.producer("t")
            started = time.perf_counter()   # the topic lookup is not a publish
            offer = producer.offer
            for index in range(count):
                offer(BODY)
                if index % 10_000 == 9_999:
                    await producer.drain()
            await producer.flush()
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
                "publish_nowait() then await the futures": ("nowait", args.messages),
                "producer.offer() each, then await flush()": ("producer", args.messages * 5)}
        rates = {name: statistics.median(asyncio.run(_rate(endpoint, count, how))
                                         for _ in range(args.runs))
                 for name, (how, count) in ways.items()}
    print_rates(rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
