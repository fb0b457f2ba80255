"""A Prometheus scrape of a broker with 1,000 queues, beside prometheus_client's own.

The baseline is what prometheus_client costs for the same samples kept in its own
instrumented metrics (labelled gauges, set beforehand): the text format of as many
samples. fastfanout's scrape reads the broker's stats and builds the families on each
scrape; the ratio says what that costs on top (items: samples a scrape writes).
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastfanout import Broker
from fastfanout.metrics import exposition

QUEUES = 1_000


def sample_count(text: bytes) -> int:
    return sum(len(family.samples)
               for family in text_string_to_metric_families(text.decode()))


@pytest.fixture(scope="module")
def broker():
    with Broker() as broker:
        broker.create_topic("orders")
        for index in range(QUEUES):
            broker.create_queue(f"q{index}")
            broker.subscribe("orders", f"q{index}")
        broker.publish("orders", b"x")
        yield broker


@pytest.mark.benchmark(group=f"a scrape of {QUEUES:,} queues (samples)")
def test_scrape_of_a_broker(benchmark, broker):
    benchmark.extra_info["items"] = sample_count(exposition(broker))
    benchmark.pedantic(exposition, args=(broker,), rounds=7)


@pytest.mark.benchmark(group=f"a scrape of {QUEUES:,} queues (samples)")
def test_scrape_of_prometheus_client_gauges_baseline(benchmark, broker):
    samples = sample_count(exposition(broker))
    registry = CollectorRegistry()
    per_queue = samples // QUEUES
    gauges = [Gauge(f"g{index}", "a gauge", ["queue"], registry=registry)
              for index in range(per_queue)]
    for gauge in gauges:
        for queue in range(QUEUES):
            gauge.labels(f"q{queue}").set(queue)
    benchmark.extra_info["items"] = sample_count(generate_latest(registry))
    benchmark.pedantic(generate_latest, args=(registry,), rounds=7)
