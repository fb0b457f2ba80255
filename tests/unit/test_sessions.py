"""The server's per-session record of leases to give back (fastfanout.server.sessions)."""

from __future__ import annotations

from fastfanout.server.sessions import EndedSessions, Session
from fastfanout.wire.protocol import decode_receipts, encode_receipts


def test_a_batch_acked_whole_is_forgotten_a_partial_ack_keeps_the_rest() -> None:
    session = Session(b"id", 0.0, 0)
    whole = encode_receipts([1, 2, 3])
    other = encode_receipts([7, 8])
    session.hold_batch(whole, 10.0)
    session.hold_batch(other, 10.0)
    assert session.held_receipts() == 5
    session.settled(encode_receipts([7]))          # same first receipt, not the batch
    session.settled(encode_receipts([1, 2, 3]))
    # the receipt not acked stays held (released if the session ends); the acked one
    # is forgotten (until 2026-12-05 it was held until the lease ended)
    assert session.held_receipts() == 1 and session.holds_leases()
    assert session.take_receipts() == [encode_receipts([8])]
    assert session.held_receipts() == 0 and not session.holds_leases()


def test_receipts_acked_out_of_order_or_not_a_prefix_keep_the_batch() -> None:
    session = Session(b"id", 0.0, 0)
    batch = encode_receipts([1, 2, 3])
    session.hold_batch(batch, 10.0)
    session.settled(encode_receipts([2]))           # not a batch's start
    session.settled(encode_receipts([1, 3]))        # starts it, but is not its prefix
    assert session.take_receipts() == [batch]


def test_batches_acked_back_to_back_in_one_request_are_all_forgotten() -> None:
    session = Session(b"id", 0.0, 0)
    first, second, third = (encode_receipts(r) for r in ([1, 2], [3, 4, 5], [6]))
    for batch in (first, second, third):
        session.hold_batch(batch, 10.0)
    session.settled(second + first)                 # any order
    assert session.take_receipts() == [third]
    for batch in (first, second, third):
        session.hold_batch(batch, 10.0)
    # the scan stops at receipts that do not start a held batch (here a partial one)
    session.settled(first + encode_receipts([3, 4]) + third)
    assert sorted(session.take_receipts()) == sorted([second, third])


def test_expire_drops_what_ended_by_itself_and_keeps_the_rest() -> None:
    session = Session(b"id", 0.0, 0)
    session.hold_batch(encode_receipts([1]), 5.0)
    session.hold_batch(encode_receipts([2]), 20.0)
    session.hold_extended(encode_receipts([3]), 6.0)
    session.hold_extended(encode_receipts([4]), 30.0)
    session.expire(10.0)
    assert sorted(session.take_receipts()) == sorted([encode_receipts([2]),
                                                      encode_receipts([4])])


def test_ended_identities_are_bounded_and_forgotten_in_time() -> None:
    ended = EndedSessions(memory=10.0, limit=3)
    for number, identity in enumerate([b"a", b"b", b"c", b"d"]):
        ended.remember(identity, float(number), "slow" if identity != b"c" else None)
    assert list(ended) == [b"b", b"c", b"d"]   # the oldest went past the limit
    assert ended.forgotten_early == 1            # and was counted
    assert ended[b"b"] == (11.0, "slow") and ended[b"c"] == (12.0, None)
    ended.said_goodbye(b"b")
    assert ended[b"b"] == (11.0, None) and list(ended) == [b"b", b"c", b"d"]
    ended.remember(b"b", 5.0, "idle")   # ended again: remembered from now, last
    assert list(ended) == [b"c", b"d", b"b"]
    ended.expire(12.0)
    assert list(ended) == [b"d", b"b"]
    ended.expire(15.0)
    assert not ended
    assert ended.forgotten_early == 1   # expiry in time is not counted


def test_the_held_count_follows_every_way_receipts_come_and_go() -> None:
    # SERVER_STATS adds held_receipts() over every session: a kept count, kept right
    # through holding, replacing, settling, expiring, extending and taking.
    session = Session(b"id", 0.0, 0)
    session.hold_batch(encode_receipts([1, 2, 3]), 5.0)
    session.hold_batch(encode_receipts([1, 9]), 6.0)       # same key: replaces the first
    assert session.held_receipts() == 2
    session.hold_batch(encode_receipts([4, 5, 6, 7]), 20.0)
    session.hold_extended(encode_receipts([8]), 7.0)
    session.hold_extended(encode_receipts([10, 11]), 30.0)
    assert session.held_receipts() == 2 + 4 + 1 + 2
    session.expire(10.0)                                    # [1, 9] and [8] ended
    assert session.held_receipts() == 4 + 2
    session.settled(encode_receipts([4, 5, 6, 7]))
    assert session.held_receipts() == 2
    held = session.take_receipts()
    assert sum(len(packed) for packed in held) // 8 == 2 and session.held_receipts() == 0


def test_an_extended_receipt_is_held_once_until_its_latest_end() -> None:
    # until 2026-12-05 every extend kept its whole receipts frame: a frame naming one
    # lease a million times, sent again and again, grew the broker without bound
    session = Session(b"id", 0.0, 0)
    session.hold_extended(encode_receipts([3] * 100_000), 30.0)
    session.hold_extended(encode_receipts([3, 3]), 6.0)   # an earlier end: 3 keeps 30
    assert session.held_receipts() == 1
    session.expire(10.0)
    assert session.held_receipts() == 1
    session.hold_extended(encode_receipts([4]), 50.0)
    assert session.held_receipts() == 2
    session.expire(40.0)
    assert session.held_receipts() == 1
    assert session.take_receipts() == [encode_receipts([4])]
    assert session.held_receipts() == 0 and not session.holds_leases()


def test_a_session_holds_at_most_max_held_receipts_and_counts_the_rest() -> None:
    # Until 2026-12-06 only time bounded them: a session could hold any number.
    session = Session(b"id", 0.0, 0, max_held=5)
    assert session.hold_batch(encode_receipts([1, 2, 3]), 10.0) == 0
    assert session.hold_batch(encode_receipts([4, 5, 6]), 10.0) == 1   # 6 not held
    assert session.hold_batch(encode_receipts([7]), 10.0) == 1
    assert session.hold_extended(encode_receipts([8, 9]), 10.0) == 2
    assert session.held_receipts() == 5
    session.settled(encode_receipts([1, 2, 3]))
    assert session.hold_extended(encode_receipts([8, 8, 9, 10, 11]), 10.0) == 1   # 11
    assert session.hold_extended(encode_receipts([8]), 20.0) == 0   # held: a later end
    assert session.held_receipts() == 5
    assert sorted(decode_receipts(b"".join(session.take_receipts()))) == [4, 5, 8, 9, 10]
    assert session.held_receipts() == 0


def test_a_prune_forgets_the_receipts_whose_lease_ended_and_keeps_the_rest() -> None:
    session = Session(b"id", 0.0, 0)
    session.hold_batch(encode_receipts([1, 2, 3]), 10.0)
    session.hold_batch(encode_receipts([4, 5]), 20.0)
    session.hold_batch(encode_receipts([6]), 30.0)
    session.hold_extended(encode_receipts([7, 8, 9]), 40.0)
    live = {2, 3, 6, 9}
    asked: list[list[int]] = []

    def mask(packed: bytes) -> bytes:
        receipts = decode_receipts(packed)
        asked.append(receipts)
        return bytes(receipt in live for receipt in receipts)

    assert session.prune(mask, 0.0) == 5
    assert len(asked) == 2   # one call for the deliveries, one for the extends
    assert session.held_receipts() == 4
    session.expire(15.0)     # the first delivery's rest (2, 3) went at its own time
    assert session.held_receipts() == 2
    session.settled(encode_receipts([6]))   # a whole delivery still acks as one
    assert session.take_receipts() == [encode_receipts([9])]


def test_a_prune_is_due_when_the_held_receipts_doubled_or_some_were_dropped() -> None:
    from fastfanout.server.sessions import PRUNE_INTERVAL, PRUNE_MIN

    session = Session(b"id", 0.0, 0)
    session.hold_batch(encode_receipts(range(PRUNE_MIN - 1)), 10.0)
    assert not session.prune_due(0.0)
    session.hold_batch(encode_receipts([PRUNE_MIN]), 10.0)
    assert session.prune_due(0.0)
    assert session.prune(lambda packed: b"\x01" * (len(packed) // 8), 0.0) == 0
    assert not session.prune_due(0.0)   # all live: the next at twice as many
    small = Session(b"id", 0.0, 0, max_held=2)
    small.hold_batch(encode_receipts([1, 2, 3]), 10.0)
    assert small.prune_due(0.0)        # it dropped one: prune now...
    small.prune(lambda packed: b"\x01" * (len(packed) // 8), 0.0)
    small.hold_batch(encode_receipts([4]), 10.0)
    assert not small.prune_due(PRUNE_INTERVAL / 2)   # ... and at most once an interval
    assert small.prune_due(PRUNE_INTERVAL)


def test_extended_receipts_keep_a_mask_and_a_limit() -> None:
    from fastfanout._ext.held import ExtendedReceipts

    table = ExtendedReceipts()
    assert table.hold_packed(encode_receipts(range(100)), 5.0) == 0
    assert table.hold_packed(encode_receipts([5, 100, 101]), 9.0, 101) == 1   # 101
    packed = table.packed()
    assert sorted(decode_receipts(packed)) == list(range(101)) and len(table) == 101
    mask = bytes(receipt % 3 == 0 for receipt in decode_receipts(packed))
    assert table.keep(mask) == 101 - 34
    assert sorted(decode_receipts(table.packed())) == list(range(0, 101, 3))
    assert table.end_of(99) == 5.0 and table.end_of(5) is None
    assert table.expire(6.0) == 34 and decode_receipts(table.take()) == []
    import pytest

    from fastfanout import InvalidArgument
    table.hold_packed(encode_receipts([1]), 1.0)
    with pytest.raises(InvalidArgument):
        table.keep(b"\x01\x01")
    assert table.keep(b"\x00") == 1 and len(table) == 0
