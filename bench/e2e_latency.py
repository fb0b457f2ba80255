"""End-to-end latency at a fixed rate, open loop: ``fastfanout bench latency`` beside zmq.

python bench/e2e_latency.py [--rate 10000] [--seconds 5] [--warmup 0.5] [--runs 3]
    [--prefetch N] [--publish nowait] [--peers zmq] [--transport local] [--json FILE]
    [--plot FILE]

Runs the installed harness (``fastfanout.bench``): one publisher process sends on a
fixed schedule (message i is due at t0 + i / rate) whatever happened to the previous ones
(open loop) and stamps each message with its *intended* send time; the consumer records
``now - intended`` in an HdrHistogram, so a stall anywhere (publisher included) shows up
as latency (no coordinated omission). fastfanout: ``publish_nowait`` + ``flush()`` per
message -> broker process -> ``consume(prefetch=16)``, batches acked; beside it the peers
(default: raw pyzmq, PUSH -> ``zmq.proxy`` in its own process -> PULL). The first
``--warmup`` seconds of every run are not recorded. Prints the harness's table:
percentiles in µs (median over runs), lost, and the ratio of the p50s. The same as::

    fastfanout bench latency -r 10000 -d 5 --warmup 0.5 --peers zmq

``--prefetch N`` is passed on (``fastfanout bench latency --prefetch N``: fastfanout's
``consume(prefetch=N)``); ``--publish batch`` is not a harness option: refused with one
line.
"""

from __future__ import annotations

import argparse
import sys

from e2e_common import add_harness_arguments, harness, harness_options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not recorded")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=None,
                        help="the consumer's prefetch (fastfanout bench --prefetch; "
                             "default: the harness's, 16)")
    parser.add_argument("--publish", choices=["nowait", "batch"], default="nowait",
                        help="nowait: publish_nowait + flush() (the harness's; batch is not)")
    add_harness_arguments(parser, "zmq")
    args = parser.parse_args()
    if args.publish != "nowait":
        print("error: fastfanout bench latency publishes with publish_nowait + flush(); "
              "--publish batch is gone", file=sys.stderr)
        return 2
    prefetch = [] if args.prefetch is None else ["--prefetch", str(args.prefetch)]
    return harness(["latency", "-r", f"{args.rate:g}", "-d", f"{args.seconds:g}",
                    "--warmup", f"{args.warmup:g}", "--runs", str(args.runs), *prefetch,
                    *harness_options(args)])


if __name__ == "__main__":
    sys.exit(main())
