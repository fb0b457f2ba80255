"""Producer and consumer processes of the kill -9 test (tests/integration/test_durability.py).

Each logs what it did to a file of its own with one unbuffered ``write`` per line (an
``O_APPEND`` file descriptor), so a line written before the process is killed is in the
file. The test kills the broker, then these processes, at random moments.

- ``produce ENDPOINT TOPIC PRODUCER FIRST SEED LOG [--no-local-channel]``: publishes
  batches of 1 to 20 messages, the body of message ``seq`` being ``body(PRODUCER, seq)``,
  with sequences from FIRST up. Before a batch it logs ``A PRODUCER FIRST LAST``
  (attempted), after ``publish_batch`` returned ``C PRODUCER FIRST LAST`` (confirmed).
- ``consume ENDPOINT QUEUE LOG``: receives up to 100 messages at a time and acks them:
  before ``ack_batch`` it logs ``R KEY KEY ...`` (keys as ``PRODUCER:SEQ``), after it
  returned ``K KEY KEY ...`` (an ``R`` line without its ``K`` is an ack in flight when
  the process was killed), and ``X KEY`` for a body that is not the one published.

Either runs until it is killed, or until the broker is gone (then it exits 3). With
``--go PATH`` it first waits (up to a minute) until PATH exists: the test starts the
workers while the broker recovers, and lets them go once it checked what was recovered.
"""

from __future__ import annotations

import os
import random
import sys
import time

from fastfanout.client import connect
from fastfanout.errors import FastFanoutError


def body(producer: int, seq: int) -> bytes:
    """The body of message ``seq`` of ``producer``: its key, ``|``, then some padding."""
    return b"%d:%d|" % (producer, seq) + b"x" * (seq % 97)


def key(message_body: bytes) -> str:
    """``PRODUCER:SEQ`` of a body (the part before ``|``)."""
    return message_body.split(b"|", 1)[0].decode()


def _log(fd: int, line: str) -> None:
    os.write(fd, line.encode() + b"\n")


def produce(endpoint: str, topic: str, producer: int, first: int, seed: int, log: str,
            local_channel: bool) -> None:
    """Publish batches forever (see the module docstring)."""
    rng = random.Random(seed)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    seq = first
    with connect(endpoint, timeout=30.0, local_channel=local_channel) as client:
        while True:
            size = rng.randint(1, 20)
            _log(fd, f"A {producer} {seq} {seq + size - 1}")
            client.publish_batch(topic, [body(producer, n) for n in range(seq, seq + size)])
            _log(fd, f"C {producer} {seq} {seq + size - 1}")
            seq += size


def consume(endpoint: str, queue: str, log: str) -> None:
    """Receive and ack forever (see the module docstring)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with connect(endpoint, timeout=30.0) as client:
        while True:
            messages = client.receive(queue, max_messages=100, wait=0.2,
                                      visibility_timeout=60.0)
            if not messages:
                continue
            keys = [key(bytes(message.body)) for message in messages]
            _log(fd, "R " + " ".join(keys))
            client.ack_batch([message.receipt for message in messages])
            _log(fd, "K " + " ".join(keys))
            for name, message in zip(keys, messages, strict=True):
                producer, seq = map(int, name.split(":"))
                if bytes(message.body) != body(producer, seq):
                    _log(fd, f"X {name}")   # a body that is not what was published


def main(argv: list[str]) -> int:
    """Run ``produce`` or ``consume`` with the command line's arguments."""
    if "--go" in argv:
        go = argv[argv.index("--go") + 1]
        deadline = time.monotonic() + 60.0
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                return 4
            time.sleep(0.005)
    try:
        if argv[0] == "produce":
            produce(argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]), argv[6],
                    "--no-local-channel" not in argv)
        elif argv[0] == "consume":
            consume(argv[1], argv[2], argv[3])
        else:
            raise SystemExit(f"unknown command {argv[0]!r}")
    except FastFanoutError:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
