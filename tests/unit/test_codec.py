"""The batch record codec: exact layout, round trips, and refusal of malformed frames."""

import pickle
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastfanout._ext.codec import (
    BATCH_HEADER_SIZE,
    BATCH_MAGIC,
    RECORD_HEADER_SIZE,
    Record,
    count_records,
    count_ring_batch,
    decode_batch,
    encode_batch,
    pack_ring_batch,
    unpack_ring_batch,
)
from fastfanout.errors import InvalidArgument

HEADER = struct.Struct("<IBBHHHIII QqqQ")
assert HEADER.size == RECORD_HEADER_SIZE == 56


def build_record(
    *,
    flags=0,
    priority=0,
    name=b"",
    group=b"",
    dedup=b"",
    attrs=b"",
    body=b"",
    receive_count=0,
    message_id=0,
    timestamp_us=0,
    deliver_at_us=0,
    receipt=0,
    record_len=None,
    padding=None,
):
    """A record built by hand with struct.pack (the reference for the layout)."""
    parts = name + group + dedup + attrs + body
    used = 56 + len(parts)
    if padding is None:
        padding = b"\0" * (-used % 8)
    if record_len is None:
        record_len = used + len(padding)
    header = HEADER.pack(
        record_len,
        flags,
        priority,
        len(group),
        len(dedup),
        len(name),
        len(attrs),
        len(body),
        receive_count,
        message_id,
        timestamp_us,
        deliver_at_us,
        receipt,
    )
    return header + parts + padding


def frame_of(*records, count=None):
    return (
        BATCH_MAGIC
        + struct.pack("<I", len(records) if count is None else count)
        + b"".join(records)
    )


# ---------------------------------------------------------------- exact layout


def test_known_record_matches_hand_built_layout():
    record = Record(
        b"hello body",
        id=0x0102030405060708,
        timestamp_us=-5,
        attributes=b"\x81\xa1k\xa1v",
        name="orders",
        group_id="g1",
        dedup_id="d-42",
        priority=7,
        deliver_at_us=1_700_000_000_000_000,
        receipt=0xFFFFFFFFFFFFFFFF,
        receive_count=3,
    )
    expected = frame_of(
        build_record(
            flags=0b0111,
            priority=7,
            name=b"orders",
            group=b"g1",
            dedup=b"d-42",
            attrs=b"\x81\xa1k\xa1v",
            body=b"hello body",
            receive_count=3,
            message_id=0x0102030405060708,
            timestamp_us=-5,
            deliver_at_us=1_700_000_000_000_000,
            receipt=0xFFFFFFFFFFFFFFFF,
        )
    )
    encoded = encode_batch([record])
    assert encoded == expected
    assert len(encoded) == BATCH_HEADER_SIZE + 88  # 56 + 27 bytes of parts -> 83 -> 88
    assert decode_batch(encoded) == [record]


def test_empty_record_is_header_only_and_optional_fields_are_none():
    encoded = encode_batch([Record()])
    assert encoded == frame_of(build_record())
    (decoded,) = decode_batch(encoded)
    assert decoded.name is None and decoded.group_id is None and decoded.dedup_id is None
    assert decoded.priority is None and decoded.deliver_at_us is None
    assert decoded.receipt is None
    assert decoded.body == b"" and decoded.attributes == b""


def test_empty_batch():
    assert encode_batch([]) == b"FFB1\0\0\0\0"
    assert decode_batch(b"FFB1\0\0\0\0") == []
    assert count_records(b"FFB1\0\0\0\0") == 0


def test_flag_bits_follow_the_optional_fields():
    (only_deliver,) = decode_batch(encode_batch([Record(deliver_at_us=0)]))
    assert only_deliver.deliver_at_us == 0 and only_deliver.priority is None
    frame = encode_batch([Record(priority=0), Record(receipt=0), Record(deliver_at_us=-1)])
    assert [frame[8 + 4], frame[8 + 56 + 4], frame[8 + 112 + 4]] == [0b010, 0b100, 0b001]


def test_reserved_dead_letter_flag_is_accepted():
    frame = frame_of(build_record(flags=0b1000, body=b"x"))
    (record,) = decode_batch(frame)
    assert record.body == b"x"


def test_bytes_like_inputs():
    frame = encode_batch([Record(bytearray(b"ab"), attributes=memoryview(b"cd"))])
    for view in (bytearray(frame), memoryview(frame)):
        (record,) = decode_batch(view)
        assert record.body == b"ab" and record.attributes == b"cd"
        assert count_records(view) == 1


def test_utf8_names():
    record = Record(b"", name="caf\u00e9.\U0001f600", group_id="\u00fc", dedup_id="z")
    assert decode_batch(encode_batch([record])) == [record]


def test_record_equality_hash_repr_and_pickle():
    a = Record(b"x", id=1, name="n")
    b = Record(b"x", id=1, name="n")
    assert a == b and hash(a) == hash(b)
    assert a != Record(b"x", id=2, name="n")
    assert a != (b"x",)
    assert "name='n'" in repr(a)
    assert pickle.loads(pickle.dumps(a)) == a


# ---------------------------------------------------------------- Record validation


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"id": -1}, "id must be in"),
        ({"id": 1 << 64}, "id must be in"),
        ({"id": 1.0}, "id must be an int"),
        ({"id": True}, "id must be an int"),
        ({"timestamp_us": 1 << 63}, "timestamp_us must be in"),
        ({"priority": 256}, "priority must be in"),
        ({"priority": -1}, "priority must be in"),
        ({"receipt": -1}, "receipt must be in"),
        ({"deliver_at_us": "soon"}, "deliver_at_us must be an int"),
        ({"receive_count": 1 << 32}, "receive_count must be in"),
        ({"name": ""}, "non-empty"),
        ({"name": b"topic"}, "name must be a str"),
        ({"group_id": "x" * 65536}, "limit is 65535"),
        ({"dedup_id": "\ud800"}, "not encodable as UTF-8"),
        ({"attributes": "text"}, "attributes must be bytes-like"),
    ],
)
def test_record_refuses_bad_fields(kwargs, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        Record(b"", **kwargs)


def test_record_is_immutable_and_takes_str_subclasses():
    class Name(str):
        pass

    record = Record(b"x", name=Name("topic"))
    assert type(record.name) is str and record.name == "topic"
    with pytest.raises(AttributeError):
        record.body = b"y"  # type: ignore[misc]
    with pytest.raises(InvalidArgument, match="immutable"):
        record.__init__(b"y")  # type: ignore[misc]
    assert record.body == b"x"


def test_record_refuses_non_bytes_body():
    with pytest.raises(InvalidArgument, match="body must be bytes-like"):
        Record("text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="body must be bytes-like"):
        Record(object())  # type: ignore[arg-type]


def test_encode_refuses_non_records():
    with pytest.raises(InvalidArgument, match=r"records\[1\] must be a Record"):
        encode_batch([Record(), (b"x",)])  # type: ignore[list-item]


def test_name_at_limit_round_trips():
    record = Record(b"", name="n" * 65535)
    assert decode_batch(encode_batch([record])) == [record]


# ---------------------------------------------------------------- malformations

VALID = build_record(body=b"abc", name=b"t")  # 56 + 4 -> 64 bytes


@pytest.mark.parametrize(
    "frame, fragment, offset",
    [
        (b"FFB", "shorter than the 8-byte batch header", 0),
        (b"FFB2\0\0\0\0", "bad magic", 0),
        (frame_of(VALID, count=2), "record count", 8),
        (frame_of(VALID, count=0), "record count", 8),
        (frame_of(VALID, VALID, count=1), "record count", 72),
        (frame_of(VALID, VALID, VALID[:40], count=3), "truncated record header", 136),
        (frame_of(VALID, VALID[:60], count=2), "runs past the end", 72),
        (frame_of(VALID[:-8]), "runs past the end", 8),
        (frame_of(build_record(priority=1)), "non-zero without its flag", 8),
        (frame_of(build_record(deliver_at_us=-1)), "non-zero without its flag", 8),
        (frame_of(build_record(receipt=5)), "non-zero without its flag", 8),
        (frame_of(build_record(record_len=60, padding=b"\0" * 4)), "multiple of 8", 8),
        (frame_of(build_record(record_len=48) + b"\0" * 16), "multiple of 8", 8),
        (frame_of(build_record(body=b"x" * 9, record_len=64, padding=b"")), "exceed", 8),
        (frame_of(build_record(body=b"x", padding=b"\0" * 15)), "padding", 8),
        (frame_of(build_record(body=b"x", padding=b"\0" * 6 + b"\1")), "padding", 8),
        (frame_of(build_record(flags=0x40)), "delay .ttl. flag without deliver_at", 8),
        (frame_of(build_record(flags=0x80)), "delay .ttl. flag without deliver_at", 8),
        (frame_of(build_record(flags=0x28)), "dead letter and topic", 8),
        (frame_of(build_record(name=b"\xff\xfe")), "name is not valid UTF-8", 8),
        (frame_of(build_record(group=b"\xc3")), "group_id is not valid UTF-8", 8),
        (frame_of(VALID, build_record(dedup=b"\x80")), "dedup_id is not valid UTF-8", 72),
    ],
)
def test_malformed_frames_name_fault_and_offset(frame, fragment, offset):
    with pytest.raises(InvalidArgument, match=fragment) as raised:
        decode_batch(frame)
    if "UTF-8" not in fragment:
        assert f"byte offset {offset}" in str(raised.value)
        with pytest.raises(InvalidArgument, match=fragment):
            count_records(frame)
    else:
        assert count_records(frame) >= 1  # structure is valid; only the text is bad


def test_parts_whose_u32_sum_overflows_are_refused():
    header = HEADER.pack(64, 0, 0, 0, 0, 0, 0xFFFFFFFF, 9, 0, 0, 0, 0, 0)
    with pytest.raises(InvalidArgument, match="exceed"):
        decode_batch(frame_of(header + b"\0" * 8))


def test_huge_declared_count_is_refused_before_reading():
    with pytest.raises(InvalidArgument, match="record count"):
        decode_batch(BATCH_MAGIC + struct.pack("<I", 0xFFFFFFFF) + VALID)


def test_non_buffer_frame_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="bytes-like"):
        decode_batch("FFB1")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="bytes-like"):
        count_records(12)  # type: ignore[arg-type]


# ---------------------------------------------------------------- properties

texts = st.one_of(st.none(), st.text(min_size=1, max_size=20))
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
records = st.builds(
    Record,
    st.binary(max_size=80),
    id=u64,
    timestamp_us=i64,
    attributes=st.binary(max_size=20),
    name=texts,
    group_id=texts,
    dedup_id=texts,
    priority=st.one_of(st.none(), st.integers(0, 255)),
    deliver_at_us=st.one_of(st.none(), i64),
    receipt=st.one_of(st.none(), u64),
    receive_count=st.integers(0, 2**32 - 1),
)


@given(st.lists(records, max_size=12))
def test_round_trip(batch):
    frame = encode_batch(batch)
    assert len(frame) % 8 == 0
    assert count_records(frame) == len(batch)
    assert decode_batch(frame) == batch
    assert encode_batch(decode_batch(frame)) == frame  # one encoding per record


def _decode_or_refuse(data):
    try:
        decoded = decode_batch(data)
    except InvalidArgument:
        return None
    # A frame that decodes is canonical: it re-encodes to the same bytes.
    assert encode_batch(decoded) == bytes(data)
    assert count_records(data) == len(decoded)
    return decoded


@settings(max_examples=300)
@given(st.lists(records, min_size=1, max_size=4), st.data())
def test_truncations_and_corruptions_never_crash(batch, data):
    frame = encode_batch(batch)
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert _decode_or_refuse(frame[:cut]) is None  # every strict prefix is refused
    position = data.draw(st.integers(0, len(frame) - 1))
    value = data.draw(st.integers(0, 255))
    corrupted = bytearray(frame)
    corrupted[position] = value
    _decode_or_refuse(corrupted)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(noise):
    _decode_or_refuse(noise)
    _decode_or_refuse(b"FFB1" + noise)
    _decode_or_refuse(b"FFB1\1\0\0\0" + noise)


# ---------------------------------------------------------------- ring batch form


def test_ring_batch_layout():
    packed = pack_ring_batch([b"ab", b"", bytearray(b"xyz")])
    assert packed == b"\2\0\0\0ab" + b"\0\0\0\0" + b"\3\0\0\0xyz"
    assert unpack_ring_batch(packed) == [b"ab", b"", b"xyz"]
    assert count_ring_batch(packed) == 3 and count_ring_batch(b"") == 0
    assert pack_ring_batch([]) == b"" and unpack_ring_batch(b"") == []


@pytest.mark.parametrize(
    "packed, fragment, offset",
    [
        (b"\1\0\0", "truncated u32 length prefix", 0),
        (b"\1\0\0\0a\5\0\0\0abcd", "runs past the end", 5),
        (b"\0\0\0\0\0", "truncated", 4),
    ],
)
def test_malformed_ring_batch(packed, fragment, offset):
    with pytest.raises(InvalidArgument, match=f"{fragment}.*byte offset {offset}"):
        unpack_ring_batch(packed)
    with pytest.raises(InvalidArgument, match=f"{fragment}.*byte offset {offset}"):
        count_ring_batch(packed)


def test_pack_ring_batch_refuses_non_bytes():
    with pytest.raises(InvalidArgument, match=r"records\[0\] must be bytes-like"):
        pack_ring_batch(["text"])  # type: ignore[list-item]


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_ring_batch_round_trip(items):
    assert unpack_ring_batch(pack_ring_batch(items)) == items
