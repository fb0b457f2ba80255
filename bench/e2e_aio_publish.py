"""Publishing from asyncio: ``fastfanout bench fanout --api aio-...``, four ways.

python bench/e2e_aio_publish.py [--messages 20000] [--runs 3] [--transport local]
    [--json FILE] [--plot FILE]

Runs the installed harness (``fastfanout.bench``): one publisher process with the
asyncio client -> broker process -> topic -> one queue -> one consumer process (batches
acked), 64-byte messages, each numbered and checked, published four ways in the same
run (``--api``, batches of 1,000 bodies), the first the baseline of the ratios:

- ``aio-publish``: ``await client.publish(...)`` one after another (a round trip each);
- ``aio-gather``: ``asyncio.gather`` of ``client.publish(...)`` per batch (they travel
  as one request per loop iteration and topic);
- ``aio-nowait``: ``client.publish_nowait(...)`` for each message, then the batch's
  futures awaited;
- ``aio-offer``: ``producer.offer(...)`` for each message (``await
  client.producer("t")``, frames of 1,000, 8 in flight), ``await producer.drain()`` per
  batch, ``await producer.close()`` at the end.

The same as::

    fastfanout bench fanout -n N --runs R --api aio-publish --api aio-gather \\
        --api aio-nowait --api aio-offer --peers none
"""

from __future__ import annotations

import argparse
import sys

from e2e_common import add_harness_arguments, harness, harness_options

APIS = ("aio-publish", "aio-gather", "aio-nowait", "aio-offer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    add_harness_arguments(parser, "none")
    args = parser.parse_args()
    apis = [option for name in APIS for option in ("--api", name)]
    return harness(["fanout", "-n", str(args.messages), "--runs", str(args.runs), *apis,
                    *harness_options(args)])


if __name__ == "__main__":
    sys.exit(main())
