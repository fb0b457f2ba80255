"""The blocking client's native publish futures (issue 15): made in C, same face as before."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import weakref
from typing import Any

import pytest

from fastfanout._ext.offers import FutureMaker, PendingBatch, PublishFuture, bind_batch
from fastfanout.client.core import Request
from fastfanout.errors import FastFanoutError, NotFound
from fastfanout.records import PublishResult


class FakeDriver:
    """What a future uses of the blocking driver: flush, publish_results, lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.flushed = 0
        self.batch = PendingBatch()
        self.request = Request(1, publish=True)

    def held(self) -> threading.RLock:
        return self.lock

    def flush(self) -> None:
        self.flushed += 1
        bind_batch(self.batch, self.request)

    def publish_results(self, request: Request, timeout: float | None = None) -> list[Any]:
        frames = request.value()
        return [PublishResult(int(frame), 1, False) for frame in frames]


def test_a_future_flushes_its_batch_and_reads_its_own_result() -> None:
    driver = FakeDriver()
    make = FutureMaker(driver)
    futures = [make(driver.batch, index) for index in range(3)]
    assert all(type(future) is PublishFuture for future in futures)
    assert driver.batch.futures == []   # not listed: they share the batch's answer
    assert not futures[0].done() and not futures[0].running()
    assert not futures[0].cancel() and not futures[0].cancelled()
    assert repr(futures[1]) == "<PublishFuture #1 pending>"
    driver.request.answer([b"10", b"11", b"12"])
    assert futures[2].result() == PublishResult(12, 1, False)   # flushes first
    assert driver.flushed == 1
    assert [future.result().message_id for future in futures] == [10, 11, 12]
    assert futures[0].done() and futures[0].exception() is None
    assert repr(futures[0]) == "<PublishFuture #0 finished>"


def test_callbacks_move_to_the_request_and_errors_reach_every_future(
        caplog: pytest.LogCaptureFixture) -> None:
    driver = FakeDriver()
    batch = PendingBatch()
    futures = [PublishFuture(driver, batch.answer, index) for index in range(2)]
    seen: list[object] = []

    def broken(future: object) -> None:
        raise RuntimeError("a callback that fails")

    futures[0].add_done_callback(seen.append)
    futures[0].add_done_callback(broken)
    request = Request(2, publish=True)
    bind_batch(batch, request)
    assert batch.answer.request is request
    assert futures[0].running() and seen == []
    futures[1].add_done_callback(seen.append)          # bound: watches the request
    with caplog.at_level(logging.ERROR, logger="fastfanout.client.futures"):
        request.fail(NotFound("topic 'missing' does not exist"))
    assert seen == [futures[0], futures[1]]
    assert "a callback that fails" in caplog.text
    for future in futures:
        assert isinstance(future.exception(), NotFound)
        with pytest.raises(FastFanoutError):
            future.result()
    late: list[object] = []
    futures[1].add_done_callback(late.append)          # done: runs at once
    assert late == [futures[1]]
    with pytest.raises(TypeError):
        bind_batch(object(), request)                   # only a native batch


def test_futures_hold_nothing_once_dropped() -> None:
    """No reference leaks: the driver, the request and the futures themselves."""
    driver = FakeDriver()
    make = FutureMaker(driver)
    refs = sys.getrefcount(driver)
    batch = PendingBatch()
    answer = batch.answer
    answer_refs = sys.getrefcount(answer)
    futures = [make(batch, index) for index in range(1000)]
    assert sys.getrefcount(driver) == refs + 1000
    assert sys.getrefcount(answer) == answer_refs + 1000
    request = Request(3, publish=True)
    request_refs = sys.getrefcount(request)
    bind_batch(batch, request)
    assert sys.getrefcount(request) == request_refs + 1   # the answer's, for them all
    request.answer([b"1"] * 1000)
    assert futures[999].result().message_id == 1
    assert sys.getrefcount(futures[5]) == 3   # the list's, the subscript's, the call's
    del futures, batch
    assert sys.getrefcount(driver) == refs
    assert sys.getrefcount(answer) == answer_refs - 1   # the batch's went with it
    del answer
    assert sys.getrefcount(request) == request_refs


def test_only_futures_with_callbacks_are_tracked_and_their_cycles_collected() -> None:
    """A bare future is no business of the cycle collector (thousands are in flight);
    one with a callback may be part of a cycle, and is collected with it."""

    class Callback:
        def __init__(self) -> None:
            self.future: object = None

        def __call__(self, future: object) -> None:
            pass

    driver = FakeDriver()
    batch = PendingBatch()
    bare = FutureMaker(driver)(batch, 0)
    assert not gc.is_tracked(bare)
    watched = FutureMaker(driver)(batch, 1)
    callback = Callback()
    callback.future = watched          # future -> callbacks -> callback -> future
    watched.add_done_callback(callback)
    assert gc.is_tracked(watched)
    bind_batch(batch, Request(4, publish=True))   # never answered
    gone = weakref.ref(callback)
    del watched, callback, batch, bare   # bare shares the batch's answer and request
    gc.collect()
    assert gone() is None
