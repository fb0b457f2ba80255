"""The wire protocol's executable half: headers, payloads, results, receipts, error codes."""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfanout import errors
from fastfanout.errors import MalformedFrame, error_for_code
from fastfanout.records import ExponentialBackoff
from fastfanout.wire import protocol
from fastfanout.wire.protocol import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Opcode,
    Status,
    decode_error,
    decode_header,
    decode_payload,
    decode_receipts,
    decode_results,
    encode_error,
    encode_header,
    encode_payload,
    encode_receipts,
    encode_results,
)

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
U8 = st.integers(0, 255)

# every stable error code and the class it names (docs/protocol.md "Error codes")
CODES: dict[str, type[errors.FastFanoutError]] = {
    "not_found": errors.NotFound,
    "already_exists": errors.AlreadyExists,
    "invalid_argument": errors.InvalidArgument,
    "invalid_filter_policy": errors.InvalidFilterPolicy,
    "message_too_large": errors.MessageTooLarge,
    "queue_full": errors.QueueFull,
    "stale_receipt": errors.StaleReceipt,
    "closed": errors.Closed,
    "protocol_error": errors.ProtocolError,
    "malformed_frame": errors.MalformedFrame,
    "unknown_opcode": errors.UnknownOpcode,
    "unsupported_version": errors.UnsupportedVersion,
    "request_too_large": errors.RequestTooLarge,
    "broken": errors.BrokenConnection,
    "session_expired": errors.SessionExpired,
    "server_stopping": errors.ServerStopping,
    "error": errors.FastFanoutError,
}


# -- headers ------------------------------------------------------------------------------


def test_header_layout_is_twelve_little_endian_bytes() -> None:
    assert HEADER.size == 12 and MAGIC == b"FF" and PROTOCOL_VERSION == 1
    frame = encode_header(Opcode.PUBLISH, 0x0102030405060708)
    assert frame == b"FF\x01\x20" + bytes([8, 7, 6, 5, 4, 3, 2, 1])


@pytest.mark.parametrize("opcode", list(Opcode))
def test_every_opcode_round_trips(opcode: Opcode) -> None:
    version, kind, request_id = decode_header(encode_header(opcode, 42))
    assert (version, Opcode(kind), request_id) == (PROTOCOL_VERSION, opcode, 42)


@pytest.mark.parametrize("status", list(Status))
def test_every_status_round_trips(status: Status) -> None:
    version, kind, request_id = decode_header(encode_header(status, 2**64 - 1))
    assert (version, Status(kind), request_id) == (PROTOCOL_VERSION, status, 2**64 - 1)


def test_opcode_and_status_values_are_the_documented_ones() -> None:
    assert {op.name: op.value for op in Opcode} == {
        "HELLO": 0x01, "HEARTBEAT": 0x02, "BYE": 0x03, "ATTACH": 0x04, "REPORT": 0x05,
        "CREATE_TOPIC": 0x10, "DELETE_TOPIC": 0x11, "LIST_TOPICS": 0x12,
        "CREATE_QUEUE": 0x13, "DELETE_QUEUE": 0x14, "LIST_QUEUES": 0x15,
        "QUEUE_SETTINGS": 0x16, "SUBSCRIBE": 0x17, "UNSUBSCRIBE": 0x18,
        "LIST_SUBSCRIPTIONS": 0x19, "SET_FILTER_POLICY": 0x1A, "SUBSCRIPTION": 0x1B,
        "SET_QUEUE_SETTINGS": 0x1C,
        "TOPIC_SETTINGS": 0x1D,
        "PUBLISH": 0x20, "SEND": 0x21, "REPLY": 0x22, "RECEIVE": 0x30, "ACK": 0x31, "NACK": 0x32,
        "EXTEND": 0x33, "TERM": 0x34, "NACK_BATCH": 0x35, "EXTEND_BATCH": 0x36,
        "TERM_BATCH": 0x37, "CONSUME": 0x40, "CREDIT": 0x41, "CANCEL": 0x42,
        "SETTLE": 0x43,
        "REDRIVE": 0x50, "PURGE": 0x51, "STATS": 0x52, "CHECK": 0x53,
        "SERVER_STATS": 0x54, "WORKERS": 0x55,
    }
    assert [status.value for status in Status] == [0, 1, 2, 3, 4, 5, 6]


def test_every_call_opcode_names_a_broker_method() -> None:
    from fastfanout.broker.embedded import Broker

    for opcode, name in protocol.CALLS.items():
        assert callable(getattr(Broker, name)), (opcode, name)


@given(kind=U8, request_id=U64, version=U8)
def test_header_round_trip(kind: int, request_id: int, version: int) -> None:
    assert decode_header(encode_header(kind, request_id, version)) == (
        version, kind, request_id)


@pytest.mark.parametrize("frame", [b"", b"FF", b"FF\x01\x01" + bytes(7),
                                   b"FF\x01\x01" + bytes(9), bytes(100)])
def test_header_of_wrong_length_is_malformed(frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match=f"header is {len(frame)} bytes") as caught:
        decode_header(frame)
    assert caught.value.code == "malformed_frame"


@given(magic=st.binary(min_size=2, max_size=2).filter(lambda m: m != MAGIC))
def test_header_with_wrong_magic_is_malformed(magic: bytes) -> None:
    with pytest.raises(MalformedFrame, match="magic"):
        decode_header(magic + encode_header(Opcode.HELLO, 1)[2:])


def test_header_version_is_reported_not_judged() -> None:
    # the broker, not the decoder, refuses another version (with unsupported_version)
    assert decode_header(encode_header(Opcode.HELLO, 7, version=9))[0] == 9


# -- control payloads ---------------------------------------------------------------------

PAYLOADS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(PAYLOADS)
def test_payload_round_trip(value: Any) -> None:
    assert decode_payload(encode_payload(value)) == value


def test_payload_decodes_from_a_memoryview() -> None:
    assert decode_payload(memoryview(encode_payload([[1], {"a": 2}]))) == [[1], {"a": 2}]


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x92\x01", b"\x81\xa1a"])
def test_invalid_msgpack_is_malformed(frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match="not valid msgpack") as caught:
        decode_payload(frame)
    assert caught.value.code == "malformed_frame"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(CODES))
def test_error_class_for_every_code(code: str) -> None:
    cls = error_for_code(code)
    assert cls is CODES[code] and cls.code == code


def test_error_class_of_an_unknown_code_is_the_base_class() -> None:
    assert error_for_code("no_such_code") is errors.FastFanoutError
    assert error_for_code("") is errors.FastFanoutError


def test_wire_errors_are_fastfanout_errors() -> None:
    assert issubclass(errors.MalformedFrame, errors.ProtocolError)
    assert issubclass(errors.SessionExpired, errors.BrokenConnection)
    assert issubclass(errors.ServerStopping, errors.BrokenConnection)
    for cls in CODES.values():
        assert issubclass(cls, errors.FastFanoutError)


@pytest.mark.parametrize("code", [code for code in CODES if code != "stale_receipt"])
def test_error_round_trip_keeps_class_and_message(code: str) -> None:
    original = CODES[code](f"what went wrong with {code}")
    decoded = decode_error(encode_error(original))
    assert type(decoded) is CODES[code] and str(decoded) == str(original)


@given(receipts=st.lists(U64, max_size=20))
def test_stale_receipt_round_trip_keeps_the_receipts(receipts: list[int]) -> None:
    decoded = decode_error(encode_error(errors.StaleReceipt("stale", receipts)))
    assert isinstance(decoded, errors.StaleReceipt) and decoded.receipts == receipts


@pytest.mark.parametrize("hold", [True, False])
def test_queue_full_round_trip_keeps_hold(hold: bool) -> None:
    error = errors.QueueFull("full")
    error.hold = hold
    decoded = decode_error(encode_error(error))
    assert isinstance(decoded, errors.QueueFull) and decoded.hold is hold
    assert decode_error(encode_payload(["queue_full", "old", None])).hold is False


def test_foreign_exception_is_sent_as_internal() -> None:
    code, message, receipts = msgspec.msgpack.decode(encode_error(RuntimeError("boom")))
    assert (code, message, receipts) == ("internal", "boom", None)
    assert type(decode_error(encode_error(RuntimeError("boom")))) is errors.FastFanoutError


@pytest.mark.parametrize("frame", [b"", b"\xc1", encode_payload([1, 2]),
                                   encode_payload("text"), encode_payload([1, 2, 3, 4]),
                                   encode_payload([1, 2, 3, {}, 5])])
def test_undecodable_error_payload_becomes_malformed_frame(frame: bytes) -> None:
    decoded = decode_error(frame)
    assert isinstance(decoded, MalformedFrame) and "undecodable error payload" in str(decoded)


# -- receipts -------------------------------------------------------------------------------


@given(st.lists(U64, max_size=200))
def test_receipts_round_trip(receipts: list[int]) -> None:
    frame = encode_receipts(receipts)
    assert len(frame) == 8 * len(receipts) and decode_receipts(frame) == receipts


def test_receipts_are_little_endian_u64() -> None:
    assert encode_receipts([1, 2**64 - 1]) == struct.pack("<QQ", 1, 2**64 - 1)


@pytest.mark.parametrize("receipts", [[-1], [2**64], ["1"], [1.5], [None]])
def test_receipts_out_of_range_are_invalid(receipts: list[Any]) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"receipts must be ints in \[0, 2\*\*64\)"
                       ) as caught:
        encode_receipts(receipts)
    assert caught.value.code == "invalid_argument"


@pytest.mark.parametrize("length", [1, 7, 9, 15, 17])
def test_receipts_frame_not_a_multiple_of_eight_is_malformed(length: int) -> None:
    with pytest.raises(MalformedFrame, match=f"{length} bytes is not a multiple of 8"):
        decode_receipts(bytes(length))


# -- results --------------------------------------------------------------------------------

RESULTS = st.integers(0, 50).flatmap(lambda n: st.tuples(
    st.lists(U64, min_size=n, max_size=n), st.lists(U32, min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n)))


@given(RESULTS)
def test_results_round_trip(results: tuple[list[int], list[int], list[bool]]) -> None:
    message_ids, deliveries, duplicates = results
    frame = encode_results(message_ids, deliveries, duplicates)
    assert len(frame) == 4 + 13 * len(message_ids)
    assert decode_results(frame) == (message_ids, deliveries, duplicates)


def test_results_layout_is_column_wise() -> None:
    frame = encode_results([7, 8], [1, 0], [False, True])
    assert frame == struct.pack("<IQQII", 2, 7, 8, 1, 0) + b"\x00\x01"


@pytest.mark.parametrize("frame", [b"", b"\x01\x00\x00"])
def test_results_shorter_than_the_count_are_malformed(frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match="shorter than its count"):
        decode_results(frame)


@pytest.mark.parametrize("extra", [-1, 1, 12])
def test_results_with_wrong_length_are_malformed(extra: int) -> None:
    frame = encode_results([1, 2], [1, 1], [False, False])
    frame = frame[:extra] if extra < 0 else frame + bytes(extra)
    with pytest.raises(MalformedFrame, match=r"results frame of \d+ bytes for 2 entries"):
        decode_results(frame)


def test_results_count_larger_than_the_frame_is_malformed() -> None:
    with pytest.raises(MalformedFrame, match="for 4294967295 entries"):
        decode_results(struct.pack("<I", 2**32 - 1) + bytes(13))


# -- settings and backoff -------------------------------------------------------------------


@pytest.mark.parametrize("backoff", [None, (0.0, 1.5, 3.0),
                                     ExponentialBackoff(0.5, 2.0, 60.0)])
def test_backoff_round_trips_through_msgpack(backoff: Any) -> None:
    wire = decode_payload(encode_payload(protocol.backoff_to_wire(backoff)))
    assert protocol.backoff_from_wire(wire) == backoff


def test_settings_travel_without_the_compiled_filter() -> None:
    from fastfanout.broker.embedded import Broker

    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q", redelivery_backoff=ExponentialBackoff(0.5, 2.0, 60.0))
        subscription_id = broker.subscribe("t", "q", filter_policy={"kind": ["a"]})
        subscription = protocol.call_result_to_wire(broker.subscription(subscription_id))
        settings = protocol.call_result_to_wire(broker.queue_settings("q"))
    assert "compiled" not in subscription and subscription["queue"] == "q"
    assert settings["redelivery_backoff"] == {"initial": 0.5, "multiplier": 2.0,
                                              "maximum": 60.0}
    assert decode_payload(encode_payload(settings)) == settings
    assert protocol.call_result_to_wire(["a", "b"]) == ["a", "b"]


def test_codec_module_is_the_native_codec() -> None:
    from fastfanout._ext import codec

    assert protocol.codec_module() is codec


def test_request_size_error_names_the_size_the_limit_and_the_fix() -> None:
    header = protocol.encode_header(protocol.Opcode.PUBLISH, 1)
    frames = [header, b"t", bytes(100 - len(header) - 1)]   # 100 bytes in all
    assert protocol.request_size_error(frames, 100, 100) is None
    error = protocol.request_size_error(frames, 99, 100)
    assert isinstance(error, errors.RequestTooLarge)
    assert "100 bytes" in str(error) and "max_request_bytes=99" in str(error)
    error = protocol.request_size_error(frames, 1000, 50)
    assert error is not None and "max_frame_bytes=50" in str(error)
    assert "frame of 87 bytes" in str(error)
    assert protocol.request_limits({"max_request_bytes": 5, "max_frame_bytes": 6}) == (5, 6)
    assert protocol.request_limits({"max_request_bytes": 5}) is None
