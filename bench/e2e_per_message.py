"""The per-message Python path beside raw pyzmq PUSH->PULL: ``fastfanout bench`` runs.

python bench/e2e_per_message.py [--messages N] [--runs R] [--consumers 1 4]
    [--modes producer single] [--parts remote embedded] [--transport local]
    [--json FILE] [--plot FILE]

Remote (``--parts remote``): the installed harness (``fastfanout.bench``) with 64-byte
messages, one publisher process -> broker process -> C queues subscribed to one topic
(``--consumers``: each count is a topology), one consumer process each, and the loop
users write on both ends:

- ``producer.offer(body)`` per message (``--modes producer``: ``--api offer``) or one
  ``client.publish_nowait(topic, body)`` per message (``single``: ``--api
  publish_nowait``);
- ``for m in client.consume(q): m.ack()`` in each consumer (``--receive each``);

beside raw pyzmq PUSH -> PULL, one hop, one message per send (the ``zmq-push`` peer), the
baseline of every ratio (rates per queue). Every message is numbered and checked. The
same as::

    fastfanout bench fanout -n N --runs R -q 1 -q 4 --api offer --api publish_nowait \\
        --receive each --peers zmq-push --baseline zmq-push

Embedded (``--parts embedded``, one process): ``Broker.publish`` one call per message
against ``queue.Queue.put``, and a producer thread's ``Broker.send`` one message at a
time to a consumer thread's ``Broker.receive(wait=...)`` + ``message.ack()`` against
``queue.Queue.put`` in one thread and a blocking ``get`` in another (plus, as an extra
row, the one-thread send/receive/ack cycle), are pytest-benchmark micro-benchmarks
(bench/test_bench_broker.py, not a harness scenario: no processes, no transport); this
runs them and prints their rates and ratios (bench/report.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from e2e_common import add_harness_arguments, harness, harness_options

HERE = Path(__file__).resolve().parent
API = {"producer": "offer", "single": "publish_nowait"}
"""``--modes`` -> the harness's ``--api``."""
EMBEDDED = ("broker_publish_per_message or queue_queue_put_baseline or "
            "send_then_receive_ack_two_threads or queue_queue_put_get_two_threads_baseline "
            "or single_send_receive_ack_cycle")
"""The micro-benchmarks of the embedded part (bench/test_bench_broker.py)."""


def embedded(runs: int) -> int:
    """Run the embedded micro-benchmarks ``runs`` times, then print their table."""
    with tempfile.TemporaryDirectory(prefix="ffbench-micro-") as directory:
        files = []
        for run in range(runs):
            path = str(Path(directory) / f"micro-{run}.json")
            status = subprocess.call(
                [sys.executable, "-m", "pytest", str(HERE / "test_bench_broker.py"), "-q",
                 "-p", "no:cacheprovider", "-o", "addopts=", "--benchmark-only",
                 "--benchmark-min-rounds=7", "-k", EMBEDDED, f"--benchmark-json={path}"],
                cwd=HERE, stdout=subprocess.DEVNULL)
            if status:
                print(f"the embedded micro-benchmarks failed (status {status})")
                return status
            files.append(path)
        return subprocess.call([sys.executable, str(HERE / "report.py"), *files])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000_000,
                        help="messages per run (5 M: a 1 M run lasts ~0.25 s at 4 M/s, of "
                             "which the harness measures what follows its 0.2 s warm-up)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["remote", "embedded"],
                        choices=["remote", "embedded"])
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["producer", "single"],
                        choices=list(API),
                        help="producer: producer.offer per message; single: "
                             "publish_nowait per message")
    add_harness_arguments(parser, "zmq-push")
    args = parser.parse_args()
    status = 0
    if "remote" in args.parts:
        queues = [option for count in args.consumers for option in ("-q", str(count))]
        apis = [option for mode in args.modes for option in ("--api", API[mode])]
        baseline = ["--baseline", "zmq-push"] if "zmq-push" in args.peers.split(",") else []
        status |= harness(["fanout", "-n", str(args.messages), "--runs", str(args.runs),
                           *queues, "--batch", "1000", *apis, "--receive", "each",
                           *harness_options(args), *baseline])
    if "embedded" in args.parts:
        status |= embedded(args.runs)
    return status


if __name__ == "__main__":
    sys.exit(main())
