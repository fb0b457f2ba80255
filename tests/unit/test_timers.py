import heapq
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfanout._ext.timers import TimerHeap
from fastfanout.errors import InvalidArgument


def test_pops_in_due_order_and_arming_order_for_ties():
    heap = TimerHeap()
    heap.push(5, 300)
    heap.push(1, 100)
    heap.push(2, 100)
    heap.push(3, 200)
    assert heap.peek() == 100
    assert heap.pop_until(250) == [(1, 100), (2, 100), (3, 200)]
    assert len(heap) == 1
    assert heap.pop_until(299) == []
    assert heap.pop_until(10**12) == [(5, 300)]
    assert heap.peek() is None


def test_rearm_replaces_and_cancel_removes():
    heap = TimerHeap()
    heap.push(7, 100)
    heap.push(7, 50)
    assert len(heap) == 1 and 7 in heap
    assert heap.cancel(7) is True
    assert heap.cancel(7) is False
    assert 7 not in heap and heap.pop_until(1000) == []


def test_bad_keys_are_refused():
    heap = TimerHeap()
    for key in (-1, 2**32, "x", 1.5):
        with pytest.raises(InvalidArgument):
            heap.push(key, 1)
    with pytest.raises(InvalidArgument):
        heap.push(1, 2**63)
    assert len(heap) == 0


def test_pop_limit():
    heap = TimerHeap()
    for key in range(10):
        heap.push(key, key)
    assert [k for k, _ in heap.pop_until(100, max_count=3)] == [0, 1, 2]
    assert len(heap) == 7


@given(st.lists(st.tuples(st.sampled_from(["arm", "cancel", "pop"]),
                          st.integers(0, 40), st.integers(0, 1000)), max_size=200))
def test_matches_a_sorted_model(operations):
    heap = TimerHeap()
    model: dict[int, tuple[int, int]] = {}  # key -> (due, seq)
    seq = 0
    for op, key, value in operations:
        if op == "arm":
            heap.push(key, value)
            model[key] = (value, seq)
            seq += 1
        elif op == "cancel":
            assert heap.cancel(key) == (model.pop(key, None) is not None)
        else:
            expected = sorted((due, s, k) for k, (due, s) in model.items() if due <= value)
            assert heap.pop_until(value) == [(k, due) for due, _, k in expected]
            for _, _, k in expected:
                del model[k]
        assert len(heap) == len(model)
        assert heap.peek() == (min(due for due, _ in model.values()) if model else None)


def test_large_random_workload_against_heapq():
    rng = random.Random(7)
    heap = TimerHeap()
    reference = []
    for key in range(20_000):
        due = rng.randrange(1_000_000)
        heap.push(key, due)
        heapq.heappush(reference, (due, key))
    fired = heap.pop_until(10**9)
    assert fired == [(key, due) for due, key in sorted(reference)]


@given(st.lists(st.tuples(st.sampled_from(["arm", "cancel", "pop"]),
                          st.integers(0, 3000), st.integers(0, 10_000)), max_size=6000))
def test_many_cancels_compact_and_keep_the_order(operations):
    # Enough cancels to cross the compaction threshold (1,024 dead nodes).
    heap = TimerHeap()
    model: dict[int, tuple[int, int]] = {}
    seq = 0
    for op, key, value in operations:
        if op == "arm":
            heap.push(key, value)
            model[key] = (value, seq)
            seq += 1
        elif op == "cancel":
            assert heap.cancel(key) == (model.pop(key, None) is not None)
        elif value % 50 == 0:
            expected = sorted((due, s, k) for k, (due, s) in model.items() if due <= value)
            assert heap.pop_until(value) == [(k, due) for due, _, k in expected]
            for _, _, k in expected:
                del model[k]
    assert len(heap) == len(model)
    expected = sorted((due, s, k) for k, (due, s) in model.items())
    assert heap.pop_until(10**9) == [(k, due) for due, _, k in expected]


def test_cancel_storm_compacts():
    heap = TimerHeap()
    for key in range(5000):
        heap.push(key, key)
    for key in range(0, 5000, 2):
        heap.cancel(key)
    assert len(heap) == 2500 and heap.peek() == 1
    assert [k for k, _ in heap.pop_until(10)] == [1, 3, 5, 7, 9]
