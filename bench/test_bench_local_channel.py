"""Local channel micro-benchmarks beside a ZeroMQ ipc socket pair (same run, same process).

A message is what the clients send: a 12-byte header frame and a 64-byte body frame,
moved 100 at a time (written, then read). ``extra_info["items"]`` is the messages moved
per timed call (``bench/report.py`` turns medians into rates and ratios). The baseline is
what the channel replaces: a PAIR → PAIR hand-off over ``ipc://`` (through the kernel and
both ZeroMQ I/O threads), one ``send_multipart`` / ``recv_multipart`` per message.
"""

import tempfile

import pytest
import zmq

from fastfanout.transport.local_channel import LocalChannel

HEADER = b"FF\x01\x00" + bytes(8)
BODY = b"m" * 64
BATCH = 100
BATCHES_PER_CALL = 100
ITEMS = BATCH * BATCHES_PER_CALL
GROUP = "local channel hand-off, 12 + 64-byte messages, 100 at a time (messages)"


def measure(benchmark, run):
    benchmark.extra_info["items"] = ITEMS
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["messages_per_s"] = ITEMS / stats.stats.median


def no_spill(frames):
    raise AssertionError("a message this small never leaves the ring")


@pytest.mark.benchmark(group=GROUP)
def test_local_channel_write_read(benchmark):
    client = LocalChannel.create()
    broker = LocalChannel.attach(client.attach_request())
    client.attached()
    client.spill = no_spill
    message = [HEADER, BODY]
    send = client.try_send
    read = broker.read
    moved = 0

    def run():
        nonlocal moved
        for _ in range(BATCHES_PER_CALL):
            for _ in range(BATCH):
                send(message)
            moved += len(read(BATCH))

    try:
        measure(benchmark, run)
        assert moved and moved % ITEMS == 0
    finally:
        client.close()
        broker.close()


@pytest.mark.benchmark(group=GROUP)
def test_zmq_ipc_pair_baseline(benchmark):
    context = zmq.Context()
    directory = tempfile.TemporaryDirectory()
    endpoint = f"ipc://{directory.name}/pair"
    receiver = context.socket(zmq.PAIR)
    receiver.bind(endpoint)
    sender = context.socket(zmq.PAIR)
    sender.connect(endpoint)
    message = [HEADER, BODY]
    moved = 0

    def run():
        nonlocal moved
        for _ in range(BATCHES_PER_CALL):
            for _ in range(BATCH):
                sender.send_multipart(message)
            for _ in range(BATCH):
                receiver.recv_multipart()
                moved += 1

    try:
        measure(benchmark, run)
        assert moved and moved % ITEMS == 0
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        context.term()
        directory.cleanup()
