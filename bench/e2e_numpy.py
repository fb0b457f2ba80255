"""A numpy pipeline: 1 KiB rows through a broker, ``fastfanout bench fanout --api numpy``.

python bench/e2e_numpy.py [--rows 200000] [--chunk 1000] [--runs 3]
    [--peers zmq-push,mpqueue] [--transport local] [--json FILE] [--plot FILE]

Runs the installed harness (``fastfanout.bench``) with 1 KiB messages, one publisher
process -> broker process -> one queue -> one consumer process:

- fastfanout: each chunk of ``--chunk`` rows is one 2-D ``uint8`` array (a row a message,
  its first 16 bytes the harness's sequence header), published with
  ``publish_batch_nowait(topic, array)`` (encoded natively, 8 in flight; ``--api
  numpy``); the consumer views each pushed batch as one ``(n, 1024)`` array with
  ``batch.as_array`` (a view of the delivery frame), reads every row's header from it
  and acks the batch whole (``--receive array``);
- the peers with their own API (default: raw pyzmq PUSH -> PULL one message per send,
  and ``multiprocessing.Queue``): per message, not per chunk.

Rates are rows (messages) per second (x 1,024 for bytes); the ratio is to the first
peer. The same as::

    fastfanout bench fanout -s 1KiB -n ROWS --batch CHUNK --api numpy --receive array \\
        --peers zmq-push,mpqueue --baseline zmq-push

The old script's float32 chunks through zero-copy pyzmq (one send per chunk) and a
pickled ``multiprocessing.Queue`` per chunk are not harness peers (they keep a message
per body): ``git show 9e811c2:bench/e2e_numpy.py`` is that script.
"""

from __future__ import annotations

import argparse
import os
import sys

from e2e_common import add_harness_arguments, harness, harness_options

# numpy's BLAS threads spin while idle: on a small machine they would take the cores the
# processes of each run need (set before numpy loads, inherited by the children).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    add_harness_arguments(parser, "zmq-push,mpqueue")
    args = parser.parse_args()
    peers = [name for name in args.peers.split(",") if name not in ("", "none", "all")]
    baseline = ["--baseline", peers[0]] if peers else []
    return harness(["fanout", "-s", "1KiB", "-n", str(args.rows), "--batch",
                    str(args.chunk), "--runs", str(args.runs), "--api", "numpy",
                    "--receive", "array", *harness_options(args), *baseline])


if __name__ == "__main__":
    sys.exit(main())
