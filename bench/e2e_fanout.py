"""End-to-end fan-out throughput: ``fastfanout bench fanout`` beside raw pyzmq.

python bench/e2e_fanout.py [--messages N] [--runs R] [--consumers 1 4]
    [--modes batch single] [--peers zmq] [--transport local] [--json FILE] [--plot FILE]

Runs the installed harness (``fastfanout.bench``): one publisher process -> broker
process -> C queues subscribed to one topic (``--consumers``: each count is a topology
of that many queues, one consumer process each), push delivery, batches acked; beside
it the peers (default: raw pyzmq, XPUB -> SUB, one hop). Every message carries its
publisher's sequence number and every receiver checks them (lost, duplicates).
``--modes``: ``batch`` publishes ``publish_batch_nowait`` of 1,000 bodies (8 in flight,
``--batch 1000``), ``single`` one ``publish_nowait`` per message (``--batch 1``),
``producer`` one ``producer.offer`` per message (``--batch 1000 --api offer``). Prints
the harness's table:
messages per second each queue receives (median of the runs, min-max) and the ratio to
fastfanout. The same as::

    fastfanout bench fanout -n N --runs R -q 1 -q 4 --batch 1000 --peers zmq
"""

from __future__ import annotations

import argparse
import sys

from e2e_common import add_harness_arguments, harness, harness_options

MODES = {"batch": ["--batch", "1000"], "single": ["--batch", "1"],
         "producer": ["--batch", "1000", "--api", "offer"]}
"""``--modes`` -> the harness's options (messages per publish call, API)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["batch", "single"],
                        choices=["batch", "single", "producer"],
                        help="batch: publish_batch_nowait of 1,000 bodies; single: one "
                             "publish_nowait per message; producer: one producer.offer "
                             "per message")
    add_harness_arguments(parser, "zmq")
    args = parser.parse_args()
    status = 0
    for mode in args.modes:
        queues = [option for count in args.consumers for option in ("-q", str(count))]
        status |= harness(["fanout", "-n", str(args.messages), "--runs", str(args.runs),
                           *queues, *MODES[mode], *harness_options(args)])
    return status


if __name__ == "__main__":
    sys.exit(main())
