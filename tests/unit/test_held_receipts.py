"""The native table of receipts a server session holds for extended leases (ext/held.pyx)."""

from __future__ import annotations

import math
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastfanout._ext.held import ExtendedReceipts, select_packed
from fastfanout.errors import InvalidArgument, MalformedFrame
from fastfanout.wire.protocol import decode_receipts, encode_receipts

RECEIPTS = st.integers(0, 2**64 - 1) | st.integers(0, 40)   # many repeats among small ones
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("hold"), st.lists(RECEIPTS, max_size=40),
                  st.floats(0, 100, allow_nan=False)),
        st.tuples(st.just("expire"), st.floats(0, 100, allow_nan=False)),
        st.tuples(st.just("take")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_the_table_does_what_a_dict_of_latest_ends_does(steps) -> None:
    table = ExtendedReceipts()
    model: dict[int, float] = {}
    for step in steps:
        if step[0] == "hold":
            _, receipts, until = step
            table.hold_packed(encode_receipts(receipts), until)
            for receipt in receipts:
                model[receipt] = max(model.get(receipt, -math.inf), until)
        elif step[0] == "expire":
            gone = [receipt for receipt, end in model.items() if end < step[1]]
            assert table.expire(step[1]) == len(gone)
            for receipt in gone:
                del model[receipt]
        else:
            taken = decode_receipts(table.take())
            assert sorted(taken) == sorted(model)
            model.clear()
        assert len(table) == len(model)
        for receipt, end in model.items():
            assert receipt in table and table.end_of(receipt) == end
    assert sorted(decode_receipts(table.take())) == sorted(model)
    assert len(table) == 0 and not table


def test_bad_frames_and_times_are_refused_and_change_nothing() -> None:
    table = ExtendedReceipts()
    table.hold_packed(encode_receipts([5]), 10.0)
    with pytest.raises(MalformedFrame):
        table.hold_packed(encode_receipts([6]) + b"\x00", 20.0)
    with pytest.raises(InvalidArgument):
        table.hold_packed(encode_receipts([7]), math.nan)
    with pytest.raises(TypeError):
        table.hold_packed("not a buffer", 20.0)   # type: ignore[arg-type]
    assert len(table) == 1 and table.end_of(5) == 10.0
    assert table.end_of(-1) is None and "5" not in table and 6 not in table


def test_one_receipt_named_a_million_times_costs_one_slot() -> None:
    # an EXTEND_BATCH frame may name one lease again and again: the table must not size
    # itself by the receipts named (8 MB here) but by the distinct ones
    frame = encode_receipts([3]) * 1_000_000
    tracemalloc.start()
    try:
        table = ExtendedReceipts()
        table.hold_packed(frame, 30.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == 1
    assert peak < 64 * 1024


def test_expire_keeps_the_later_ends_and_frees_an_emptied_table() -> None:
    table = ExtendedReceipts()
    table.hold_packed(encode_receipts(range(10_000)), 5.0)
    table.hold_packed(encode_receipts(range(5_000, 10_001)), 50.0)
    assert table.expire(5.0) == 0            # an end at 5.0 has not passed at 5.0
    assert table.expire(6.0) == 5_000
    assert len(table) == 5_001 and table.end_of(5_000) == 50.0 and 4_999 not in table
    assert table.expire(60.0) == 5_001 and len(table) == 0
    table.hold_packed(encode_receipts([1]), 1.0)   # usable again after emptying
    assert table.take() == encode_receipts([1])


def test_select_packed_keeps_the_flagged_receipts_in_order() -> None:
    packed = struct.pack("<5Q", 7, 0, 2**64 - 1, 9, 11)
    assert struct.unpack("<3Q", select_packed(packed, bytes([1, 1, 0, 1, 0]))) == (
        7, 0, 9)
    assert select_packed(packed, bytes(5)) == b""
    assert select_packed(packed, b"\x01" * 5) == packed
    for mask in (b"\x01" * 4, b"\x01" * 6):   # one byte a receipt, or refused
        with pytest.raises(InvalidArgument):
            select_packed(packed, mask)
    with pytest.raises(InvalidArgument):
        select_packed(packed[:-1], b"\x01" * 5)
