"""The server's per-session record of leases to give back (fastfanout.server.sessions)."""

from __future__ import annotations

from fastfanout.server.sessions import EndedSessions, Session
from fastfanout.wire.protocol import encode_receipts


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
