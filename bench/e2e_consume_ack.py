"""Consuming and acking message by message: ``fastfanout bench workqueue --receive ...``.

python bench/e2e_consume_ack.py [--messages 50000] [--runs 3] [--transport local]
    [--json FILE] [--plot FILE]

Runs the installed harness (``fastfanout.bench``): one publisher process
(``publish_batch_nowait`` of 1,000) -> broker process -> one queue -> one consumer
process, 64-byte messages, each numbered and checked, the consumer taking and acking
them four ways in the same run (``--receive``), the first the baseline of the ratios:

- ``receive``: ``client.receive(max_messages=1000)`` and ``message.ack()`` for each
  message, a round trip per ack (what ``message.ack()`` of a pushed message cost before
  it was pipelined);
- ``each``: ``for message in client.consume(q): message.ack()`` with the blocking client
  (acks queued with the consumer's settles);
- ``aio-each``: the same with the asyncio client (one SETTLE per event-loop iteration);
- ``batch``: ``DeliveryBatch.ack()`` per pushed batch, for reference.

The publisher runs at the same time (the old script filled the queue first): the rate
is the consumer's as long as it is the slower end. The same as::

    fastfanout bench workqueue -n N --runs R --receive receive --receive each \\
        --receive aio-each --receive batch --peers none
"""

from __future__ import annotations

import argparse
import sys

from e2e_common import add_harness_arguments, harness, harness_options

RECEIVES = ("receive", "each", "aio-each", "batch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    add_harness_arguments(parser, "none")
    args = parser.parse_args()
    receives = [option for name in RECEIVES for option in ("--receive", name)]
    return harness(["workqueue", "-n", str(args.messages), "--runs", str(args.runs),
                    *receives, *harness_options(args)])


if __name__ == "__main__":
    sys.exit(main())
