"""The broker state machine again, with the broker behind a live server.

``BrokerModelMachine`` (test_broker_model.py) drives an embedded ``Broker`` and the
reference model with the same calls and compares every answer. Here the system under
test is a ``fastfanout.connect(...)`` client talking over ipc to an in-thread
``fastfanout.Server`` that serves a ``Broker`` on the same fake clock: every call goes
through the wire protocol (encoding, the server's dispatch, error codes re-raised as the
same classes) and must still agree with the model. Calls are synchronous, so the fake
clock is read by the server thread only while the test thread waits for the reply.

One seam: wire protocol version 1 carries a publish's ``delay`` as an absolute
``deliver_at`` that the *client* computes from the wall clock (``time.time()``, read by
the native ``FrameBuilder.append``). The broker
runs on the fake clock, so while a machine runs, ``time.time`` is the fake clock too
(``monotonic``, which timeouts and heartbeats use, stays real). A ``clock`` option on
``Client`` would make this patch unnecessary.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from test_broker_model import BrokerModelMachine, outcome

from fastfanout import Broker, InvalidArgument, NotFound
from fastfanout.client import Client, connect
from fastfanout.server.loop import Server

WALL_CLOCK = time.time

TOLERATED: list[tuple[tuple[str, ...], type[BaseException], type[BaseException]]] = [
    # By design (documented in docs/protocol.md): a client checks the body, attributes
    # and delay before any round trip, so a malformed message to a missing target is
    # InvalidArgument from a client where the embedded broker says NotFound first.
    (("publish(", "send("), InvalidArgument, NotFound),
]


class ServerModelMachine(BrokerModelMachine):
    """``BrokerModelMachine`` with ``self.real`` a client of a live server."""

    def __init__(self) -> None:
        super().__init__()  # makes self.real: the embedded broker on the fake clock
        self.embedded: Broker = self.real
        # a short path: ipc endpoints are unix socket paths (at most 107 bytes)
        self.directory = tempfile.mkdtemp(prefix="ffsm")
        # hold_timeout=0: a full ``hold`` queue is answered at once, as the model does
        # (held publishes are tested in tests/integration/test_holds.py).
        self.server = Server(f"ipc://{self.directory}/x", broker=self.embedded,
                             hold_timeout=0)
        self.server.start()
        self.client: Client = connect(self.server.endpoint, timeout=10.0)
        self.real = self.client  # type: ignore[assignment]
        # last, once nothing here can fail any more: teardown restores it
        time.time = self.fake_wall_clock

    def fake_wall_clock(self) -> float:
        return float(self.clock.now)

    def both(self, real_call: Callable[[], Any], model_call: Callable[[], Any],
             what: str) -> tuple[Any, Any] | None:
        real, model = outcome(real_call), outcome(model_call)
        if real[0] == model[0] == "error":
            for prefixes, real_class, model_class in TOLERATED:
                if (what.startswith(prefixes) and type(real[1]) is real_class
                        and type(model[1]) is model_class):
                    return None
        return super().both(lambda: _replay(real), lambda: _replay(model), what)

    def teardown(self) -> None:
        try:
            super().teardown()  # closes the client, then checks every call is Closed
        finally:
            self.client.close(timeout=1.0)
            self.server.stop()
            self.embedded.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            time.time = WALL_CLOCK


def _replay(outcome_: tuple[str, Any]) -> Any:
    """Give an outcome already obtained back to ``both``: return it, or raise it."""
    kind, value = outcome_
    if kind == "error":
        raise value
    return value


ServerModelMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestServerModel = ServerModelMachine.TestCase
