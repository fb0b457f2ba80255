"""Durable brokers against the model across restarts (hypothesis state machines).

The two machines of tests/property (the core semantics and the issue-3 features) run
again on a broker with a data directory, and gain a ``restart`` rule: the real broker is
closed and opened again on the same directory (recovering from its journal), the model
applies ``ModelBroker.restart()`` (docs/semantics.md, "Durable queues"), and from then on
every answer and ``stats()`` must agree as before. One queue of each machine is created
``durable=False``: it must come back empty. Receipts of before the restart are forgotten
by the machines (the new broker may hand out the same numbers again).

The features machine found core bugs about dedup keys after a restart, now fixed and
kept as regression tests in tests/unit/test_durable_restart.py.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from test_broker_features_model import BrokerFeaturesMachine
from test_broker_model import QUEUE_SETTINGS, BrokerModelMachine

from fastfanout import Broker
from fastfanout.model import ModelBroker

pytestmark = pytest.mark.skipif("data_dir" not in inspect.signature(Broker).parameters,
                                reason="the durable broker has not landed yet")

FSYNC = "never"
"""The machines test what a restart keeps, not the disk: no fdatasync (fast)."""


class Restarting:
    """A restart rule for a machine comparing ``real`` with ``model``."""

    clock: object
    real: Broker
    model: ModelBroker
    receipt_map: dict[int, int]
    pairs: list[tuple[int, int]]

    def open_durable(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="fastfanout-restart-")
        self.real.close()
        self.model.close()
        self.real = Broker(clock=self.clock, data_dir=self.data_dir, fsync=FSYNC)
        self.model = ModelBroker(clock=self.clock, data_dir=self.data_dir)
        self.restarts = 0

    def restart_both(self) -> None:
        self.real.close()
        self.real = Broker(clock=self.clock, data_dir=self.data_dir, fsync=FSYNC)
        self.model.restart()
        self.receipt_map.clear()
        self.pairs.clear()
        self.restarts += 1

    def remove_data_dir(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


class DurableModelMachine(Restarting, BrokerModelMachine):
    def __init__(self) -> None:
        super().__init__()
        self.open_durable()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.remove_data_dir()

    @rule()
    def restart(self) -> None:
        self.restart_both()

    @rule(name=st.sampled_from(sorted(QUEUE_SETTINGS)))
    def create_queue_in_memory(self, name: str) -> None:
        self.same("create_queue", name, durable=False)


class DurableFeaturesMachine(Restarting, BrokerFeaturesMachine):
    def __init__(self) -> None:
        super().__init__()
        self.open_durable()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.remove_data_dir()

    @rule()
    def restart(self) -> None:
        self.restart_both()


SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much]
DurableModelMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=50, deadline=None, suppress_health_check=SUPPRESS)
DurableFeaturesMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=60, deadline=None, suppress_health_check=SUPPRESS)
TestDurableBrokerModel = DurableModelMachine.TestCase
TestDurableBrokerFeatures = DurableFeaturesMachine.TestCase
