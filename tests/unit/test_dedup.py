import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfanout._ext.dedup import DedupWindow, hash128
from fastfanout.errors import InvalidArgument


def test_remembers_for_the_window_only():
    window = DedupWindow(1_000)
    window.add(b"id-1", 7, now_us=0)
    assert window.seen(b"id-1", 999) == 7
    assert window.seen(b"id-2", 10) is None
    assert window.seen(b"id-1", 1_000) is None
    window.forget_expired(1_000)
    assert len(window) == 0


def test_bounded_size_evicts_oldest_and_counts():
    window = DedupWindow(10**9, max_entries=3)
    for n in range(5):
        window.add(f"k{n}".encode(), n + 1, now_us=n)
    assert len(window) == 3 and window.evicted == 2
    assert window.seen(b"k0", 10) is None and window.seen(b"k4", 10) == 5


def test_bad_arguments():
    with pytest.raises(InvalidArgument):
        DedupWindow(0)
    with pytest.raises(InvalidArgument):
        DedupWindow(10, max_entries=0)
    with pytest.raises(InvalidArgument):
        DedupWindow(10).add(b"x", 0, 0)


def test_hash_differs_for_near_inputs():
    keys = {hash128(bytes([n]) * length) for n in range(50) for length in range(0, 20)}
    assert len(keys) == 50 * 19 + 1  # all empty strings hash alike


@given(st.lists(st.tuples(st.sampled_from(["add", "seen", "expire"]),
                          st.binary(max_size=3), st.integers(0, 50)), max_size=300))
def test_matches_a_dict_model(operations):
    window_us = 10
    window = DedupWindow(window_us)
    model: dict[bytes, tuple[int, int]] = {}  # key -> (id, expires)
    now = 0
    next_id = 1
    for op, key, step in operations:
        now += step % 4
        if op == "add":
            window.add(key, next_id, now)
            model[key] = (next_id, now + window_us)
            next_id += 1
        elif op == "seen":
            entry = model.get(key)
            expected = entry[0] if entry and entry[1] > now else None
            assert window.seen(key, now) == expected
        else:
            window.forget_expired(now)
            model = {k: v for k, v in model.items() if v[1] > now}
            assert len(window) == len(model)
