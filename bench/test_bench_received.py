"""The per-message consumer loop in C, in-process (issue 15; docs/benchmarks.md).

``for m in cursor: m.body; m.ack()`` over delivery frames of 4,000 64-byte messages, the
acks queued in an ``AckBuffer`` whose state keeps ``closed`` in a ``__slots__`` slot (as
a blocking consumer's does), and the same loop without reading the body.
``extra_info["items"]`` is the messages per timed call: time per call / items is the
cost of one message of the loop users write, without the transport.
"""

import pytest

from fastfanout._ext.codec import Record, encode_batch
from fastfanout._ext.received import AckBuffer, MessageCursor

FRAME_MESSAGES = 4000
FRAMES = 10
ITEMS = FRAME_MESSAGES * FRAMES
FRAME = encode_batch([Record(b"x" * 64, id=n, receipt=(7 << 32) | n, receive_count=1,
                             timestamp_us=2_000_000) for n in range(FRAME_MESSAGES)])


class _State:
    """A consumer's state: ``closed`` is a slot, as the client's ``ConsumerState``."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False


def _cursor():
    acks = AckBuffer(_State(), ITEMS + 1)
    frames = [FRAME] * FRAMES

    def refill():
        return frames.pop() if frames else None

    return MessageCursor(None, acks, "q", refill)


def measure(benchmark, run):
    benchmark.extra_info["items"] = ITEMS
    benchmark.pedantic(run, setup=lambda: ((_cursor(),), {}), rounds=15)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["messages_per_s"] = ITEMS / stats.stats.median


@pytest.mark.benchmark(group="consumer loop, 64-byte messages (messages)")
def test_cursor_body_and_ack(benchmark):
    def run(cursor):
        for message in cursor:
            body = message.body   # made on first access: read, as users do
            message.ack()
        assert len(body) == 64

    measure(benchmark, run)


@pytest.mark.benchmark(group="consumer loop, 64-byte messages (messages)")
def test_cursor_ack_only(benchmark):
    def run(cursor):
        for message in cursor:
            message.ack()

    measure(benchmark, run)
