import heapq
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfanout._ext.timers import DueHeap, TimerHeap
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


# DueHeap: the pending copies' heap (no key index, no cancel: its owner removes).


def test_due_heap_pops_by_due_then_seq() -> None:
    heap = DueHeap()
    heap.add(5, 300, 0)
    heap.add(1, 100, 9)   # the same due time as key 2, armed later
    heap.add(2, 100, 3)
    heap.add(3, 200, 4)
    heap.add(1, 50, 10)   # a key may be in the heap twice: nothing is replaced
    assert len(heap) == 5
    assert heap.pop_until(250) == [(1, 50), (2, 100), (1, 100), (3, 200)]
    assert heap.pop_until(299) == [] and heap.pop_until(300) == [(5, 300)]
    assert len(heap) == 0


def test_due_heap_refuses_bad_timers_and_keys() -> None:
    heap = DueHeap()
    for key, due, seq in ((-1, 1, 0), (2**32, 1, 0), ("x", 1, 0), (1, 2**63, 0),
                          (1, 1.5, 0), (1, 1, -1), (1, 1, 2**64)):
        with pytest.raises(InvalidArgument):
            heap.add(key, due, seq)
    with pytest.raises(InvalidArgument):
        heap.remove_keys([1])
    assert len(heap) == 0


@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "pop"]),
                          st.integers(0, 60), st.integers(0, 1000)), max_size=300))
def test_due_heap_matches_a_sorted_model(operations) -> None:
    heap = DueHeap()
    model: list[tuple[int, int, int]] = []   # (due, seq, key)
    seq = 0
    for op, key, value in operations:
        if op == "add":
            heap.add(key, value, seq)
            model.append((value, seq, key))
            seq += 1
        elif op == "remove":
            keys = {key, key + 1, value % 61}
            gone = [node for node in model if node[2] in keys]
            assert heap.remove_keys(keys) == len(gone)
            model = [node for node in model if node[2] not in keys]
        else:
            due_now = sorted(node for node in model if node[0] <= value)
            assert heap.pop_until(value) == [(k, due) for due, _, k in due_now]
            model = [node for node in model if node[0] > value]
        assert len(heap) == len(model)
    assert heap.pop_until(10**9) == [(k, due) for due, _, k in sorted(model)]


def test_due_heap_large_random_workload_against_heapq() -> None:
    rng = random.Random(11)
    heap = DueHeap()
    reference = []
    for seq in range(20_000):
        due, key = rng.randrange(2_000), rng.randrange(2**32)   # many ties on due
        heap.add(key, due, seq)
        heapq.heappush(reference, (due, seq, key))
    removed = {key for _, _, key in reference[::3]}
    assert heap.remove_keys(removed) == sum(1 for r in reference if r[2] in removed)
    expected = sorted(r for r in reference if r[2] not in removed)
    assert heap.pop_until(10**9) == [(key, due) for due, _, key in expected]
