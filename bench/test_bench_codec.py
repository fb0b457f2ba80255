"""Batch codec micro-benchmarks beside msgspec.msgpack (same run, same process).

One round encodes or decodes a batch of 100 records with 64-byte bodies;
``extra_info["items"]`` is the records per timed call. The baseline is msgspec's
MessagePack encoder/decoder on the same fields as a list of tuples, which is about as
fast as a general-purpose Python serialiser gets.
"""

import msgspec
import pytest

from fastfanout._ext.codec import Record, decode_batch, encode_batch

BATCH = 100
BATCHES_PER_CALL = 20
ITEMS = BATCH * BATCHES_PER_CALL
BODY = b"b" * 64


def measure(benchmark, run, items=ITEMS):
    benchmark.extra_info["items"] = items
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["records_per_s"] = items / stats.stats.median


def sample_records():
    return [
        Record(BODY, id=n + 1, timestamp_us=1_700_000_000_000_000 + n, name="orders")
        for n in range(BATCH)
    ]


def sample_tuples():
    return [
        (
            r.id,
            r.timestamp_us,
            r.body,
            r.attributes,
            r.name,
            r.group_id,
            r.dedup_id,
            r.priority,
            r.deliver_at_us,
            r.receipt,
            r.receive_count,
        )
        for r in sample_records()
    ]


@pytest.mark.benchmark(group="encode 100 records of 64 bytes (records)")
def test_codec_encode_batch(benchmark):
    records = sample_records()

    def run():
        for _ in range(BATCHES_PER_CALL):
            encode_batch(records)

    measure(benchmark, run)


@pytest.mark.benchmark(group="encode 100 records of 64 bytes (records)")
def test_msgspec_msgpack_encode_baseline(benchmark):
    tuples = sample_tuples()
    encode = msgspec.msgpack.Encoder().encode

    def run():
        for _ in range(BATCHES_PER_CALL):
            encode(tuples)

    measure(benchmark, run)


@pytest.mark.benchmark(group="decode 100 records of 64 bytes (records)")
def test_codec_decode_batch(benchmark):
    frame = encode_batch(sample_records())

    def run():
        for _ in range(BATCHES_PER_CALL):
            decode_batch(frame)

    measure(benchmark, run)
    assert decode_batch(frame) == sample_records()


@pytest.mark.benchmark(group="decode 100 records of 64 bytes (records)")
def test_msgspec_msgpack_decode_baseline(benchmark):
    packed = msgspec.msgpack.encode(sample_tuples())
    decode = msgspec.msgpack.Decoder().decode

    def run():
        for _ in range(BATCHES_PER_CALL):
            decode(packed)

    measure(benchmark, run)
    assert len(decode(packed)) == BATCH
