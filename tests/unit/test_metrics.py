"""Prometheus metrics of an embedded broker (fastfanout.metrics, docs/metrics.md)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastfanout import Broker, InvalidArgument, NoReply, QueueFull
from fastfanout.metrics import BrokerCollector, exposition, parse_address, serve_metrics
from fastfanout.stats import DROP_REASONS, QueueStats


def scrape(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> (sorted labels) -> value, read back by prometheus_client's parser."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def kinds(text: bytes) -> dict[str, str]:
    return {family.name: family.type
            for family in text_string_to_metric_families(text.decode())}


@pytest.fixture
def broker() -> Broker:
    with Broker() as broker:
        broker.create_topic("orders")
        broker.create_queue("dead")
        broker.create_queue("billing", max_messages=2, dead_letter_queue="dead")
        broker.subscribe("orders", "billing")
        yield broker


def test_the_counters_of_topics_subscriptions_and_queues(broker: Broker) -> None:
    broker.publish("orders", b"order 0")
    broker.publish("orders", b"order 1")
    with pytest.raises(QueueFull):   # max_messages=2
        broker.publish("orders", b"order 2")
    (message,) = broker.receive("billing")
    message.ack()
    samples = scrape(exposition(broker))
    assert samples["fastfanout_topic_published_total"] == {(("topic", "orders"),): 2}
    assert samples["fastfanout_queue_enqueued_total"][(("queue", "billing"),)] == 2
    assert samples["fastfanout_queue_acked_total"][(("queue", "billing"),)] == 1
    assert samples["fastfanout_queue_visible"][(("queue", "billing"),)] == 1
    assert samples["fastfanout_queue_messages"][(("queue", "dead"),)] == 0
    (labels,) = samples["fastfanout_subscription_delivered_total"]
    assert dict(labels) == {"subscription": "1", "topic": "orders", "queue": "billing"}
    assert samples["fastfanout_subscription_delivered_total"][labels] == 2
    rejected = {**dict(labels), "reason": "rejected"}
    assert samples["fastfanout_subscription_dropped_total"][
        tuple(sorted(rejected.items()))] == 1
    # every reason a queue drops for, each a labelled sample
    assert {dict(key)["reason"] for key in samples["fastfanout_queue_dropped_total"]} == \
        set(DROP_REASONS)
    assert samples["fastfanout_topology_queues"] == {(): 2}
    assert samples["fastfanout_up"] == {(): 1}


def test_counters_are_counters_and_levels_gauges(broker: Broker) -> None:
    types = kinds(exposition(broker))
    assert types["fastfanout_queue_acked"] == "counter"
    assert types["fastfanout_queue_dropped"] == "counter"
    assert types["fastfanout_topology_topics_refused"] == "counter"
    for level in ("visible", "leased", "delayed", "messages", "bytes", "oldest_age",
                  "groups", "dedup_entries"):
        assert types[f"fastfanout_queue_{level}"] == "gauge"
    assert types["fastfanout_topology_max_queues"] == "gauge"
    # every QueueStats number is exported, under its own name
    numbers = [name for name in QueueStats.__dataclass_fields__ if name != "dropped"]
    assert all(f"fastfanout_queue_{name}" in types for name in numbers)


def test_help_texts_are_the_fields_documentation(broker: Broker) -> None:
    helps = {family.name: family.documentation
             for family in text_string_to_metric_families(exposition(broker).decode())}
    assert helps["fastfanout_queue_leased"] == \
        "messages received and not yet acked, nacked or expired."
    assert helps["fastfanout_topic_unrouted"].startswith("accepted messages that reached")


def test_an_embedded_brokers_own_requests(broker: Broker) -> None:
    with pytest.raises(NoReply):
        broker.request("orders", b"x", timeout=0.01)
    samples = scrape(exposition(broker))
    assert samples["fastfanout_replies_requests_total"] == {(): 1}
    assert "fastfanout_server_connections" not in samples   # no server here


def test_a_durable_brokers_storage(tmp_path: Path) -> None:
    with Broker(data_dir=tmp_path / "data") as broker:
        broker.create_queue("q")
        broker.send("q", b"kept")
        samples = scrape(exposition(broker))
    assert samples["fastfanout_storage_segments"] == {(): 1}
    assert samples["fastfanout_storage_bytes_written_total"][()] > 0
    assert "fastfanout_storage_recovery_seconds" in samples
    with Broker() as memory:
        assert not any(name.startswith("fastfanout_storage")
                       for name in scrape(exposition(memory)))


def test_the_collector_in_an_applications_own_registry(broker: Broker) -> None:
    registry = CollectorRegistry()
    registry.register(BrokerCollector(broker))
    broker.publish("orders", b"x")
    assert scrape(generate_latest(registry))["fastfanout_topic_published_total"] == \
        {(("topic", "orders"),): 1}


def test_a_closed_broker_is_down_not_an_error() -> None:
    broker = Broker()
    collector = BrokerCollector(broker)
    broker.close()
    registry = CollectorRegistry()
    registry.register(collector)
    samples = scrape(generate_latest(registry))
    assert samples == {"fastfanout_up": {(): 0}, "fastfanout_scrape_failures_total": {(): 1}}
    assert collector.scrape_failures == 1


def test_the_endpoint_serves_scrapes_until_closed(broker: Broker) -> None:
    with serve_metrics(broker, "127.0.0.1:0") as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        broker.publish("orders", b"x")
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
            samples = scrape(response.read())
        assert samples["fastfanout_topic_published_total"] == {(("topic", "orders"),): 1}
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=10)
    server.close()   # again: nothing happens


def test_a_port_in_use_is_an_oserror(broker: Broker) -> None:
    with serve_metrics(broker, "127.0.0.1:0") as server, pytest.raises(OSError):
        serve_metrics(broker, f"127.0.0.1:{server.port}")


@pytest.mark.parametrize("address", ["9771", "localhost", ":9771", "host:port", "h:70000",
                                     "h:-1", ""])
def test_a_bad_address_is_refused(address: str) -> None:
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        parse_address(address)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:9771") == ("127.0.0.1", 9771)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)


def test_the_source_must_be_a_broker_or_client() -> None:
    with pytest.raises(TypeError, match="Broker or Client"):
        BrokerCollector(object())
