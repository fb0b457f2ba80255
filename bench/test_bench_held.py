"""A session holding the receipts of an EXTEND_BATCH (ext/held.pyx; docs/benchmarks.md).

The server remembers each receipt an extend made longer, once, until its latest end, so
that it can give the lease back if the client vanishes. One EXTEND_BATCH frame of
100,000 receipts, held twice (the second time each receipt is there already), then
expired: the native table against the same work done with a dict (what the server did
before 2026-12-05: a Python int and two dict operations per receipt), in the same run.
``extra_info["items"]`` is the receipts per timed call.
"""

import array
import sys

import pytest

from fastfanout._ext.held import ExtendedReceipts
from fastfanout.wire.protocol import encode_receipts

RECEIPTS = 100_000
FRAME = encode_receipts([(3 << 32) | slot for slot in range(RECEIPTS)])


def _native() -> int:
    table = ExtendedReceipts()
    table.hold_packed(FRAME, 10.0)
    table.hold_packed(FRAME, 20.0)
    return table.expire(30.0)


def _dict() -> int:
    held: dict[int, float] = {}
    for until in (10.0, 20.0):
        values = array.array("Q", FRAME)
        if sys.byteorder == "big":
            values.byteswap()
        for receipt in dict.fromkeys(values):
            before = held.pop(receipt, None)
            held[receipt] = until if before is None else max(before, until)
    gone = [receipt for receipt, end in held.items() if end < 30.0]
    for receipt in gone:
        del held[receipt]
    return len(gone)


@pytest.mark.benchmark(group="extended receipts held by a session (receipts)")
@pytest.mark.parametrize("table", [_native, _dict], ids=["native", "dict baseline"])
def test_hold_twice_and_expire(benchmark, table):
    benchmark.extra_info["items"] = 2 * RECEIPTS
    assert benchmark.pedantic(table, rounds=10) == RECEIPTS
