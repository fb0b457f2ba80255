"""Workers answering requests: a single-message handler's return value is the reply."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Tracker, wait_until

from fastfanout import Broker, NoReply, Worker

DEADLINE = 10.0


@pytest.mark.parametrize("is_async", [False, True])
def test_a_handlers_return_value_answers_the_request(track: Tracker, is_async: bool) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("math")
    client.create_queue("squares")
    client.subscribe("math", "squares")
    worker = Worker(server.endpoint, concurrency=2)
    track.closeables.append(_Stopper(worker))

    if is_async:
        @worker.handler("squares")
        async def square(message: Any) -> bytes:
            return b"%d" % int(bytes(message.body)) ** 2
    else:
        @worker.handler("squares")
        def square(message: Any) -> bytes:
            return b"%d" % int(bytes(message.body)) ** 2

    worker.start()
    for number in (3, 12, 40):
        assert client.request("math", b"%d" % number, timeout=DEADLINE).body == (
            b"%d" % number ** 2)
    wait_until(lambda: client.stats().queues["squares"].acked == 3, what="3 acked")
    client.publish("math", b"5")   # asked for no reply: the return value goes nowhere
    wait_until(lambda: client.stats().queues["squares"].acked == 4, what="4 acked")
    assert worker.stats().handlers["square"].failed == 0
    assert client.server_stats().get("replies_dropped", 0) == 0


@pytest.mark.parametrize("is_async", [False, True])
def test_a_return_value_a_reply_cannot_take_is_the_handlers_failure(is_async: bool) -> None:
    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q", max_receive_count=2, dead_letter_queue=None)
        broker.subscribe("t", "q")
        worker = Worker(broker)

        if is_async:
            @worker.handler("q")
            async def handle(message: Any) -> str:
                return "a str is not a body"
        else:
            @worker.handler("q")
            def handle(message: Any) -> str:
                return "a str is not a body"

        with worker:
            with pytest.raises(NoReply):
                broker.request("t", b"x", timeout=0.5)
            wait_until(lambda: worker.stats().handlers["handle"].failed >= 1,
                       what="the failure counted")
        assert broker.stats().queues["q"].acked == 0
        assert broker.stats().replies.replies == 0


class _Stopper:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def close(self) -> None:
        self.worker.stop(2.0)
