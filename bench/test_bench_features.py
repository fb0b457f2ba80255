"""Issue-3 micro-benchmarks: filtered fan-out and FIFO groups, each beside a baseline."""

import random

import pytest

from fastfanout import Broker, PublishEntry
from fastfanout.semantics.filter_policy import parse_policy, reference_match

SUBSCRIPTIONS = 100
MESSAGES = 1_000
GROUPS = 1_000


def policy_for(index):
    """A realistic mix: exact strings, prefixes, numeric ranges, anything-but."""
    kind = index % 4
    if kind == 0:
        return {"customer": [f"c{index}"]}
    if kind == 1:
        return {"region": [{"prefix": f"eu-{index % 10}"}], "tier": ["gold"]}
    if kind == 2:
        return {"amount": [{"numeric": [">=", index * 10, "<", index * 10 + 50]}]}
    return {"status": [{"anything-but": ["cancelled", "refunded"]}], "customer": [f"c{index}"]}


def entries_for(count, seed=1):
    rng = random.Random(seed)
    statuses = ["new", "paid", "cancelled", "refunded"]
    return [
        PublishEntry(b"x" * 64, attributes={
            "customer": f"c{rng.randrange(SUBSCRIPTIONS)}",
            "region": f"eu-{rng.randrange(10)}-west",
            "tier": rng.choice(["gold", "silver"]),
            "amount": rng.randrange(1000),
            "status": rng.choice(statuses),
        })
        for _ in range(count)
    ]


@pytest.mark.benchmark(group="fan-out to 100 filtered subscriptions (messages)")
def test_publish_batch_100_filtered_subscriptions(benchmark):
    broker = Broker()
    broker.create_topic("orders")
    for index in range(SUBSCRIPTIONS):
        broker.create_queue(f"q{index}")
        broker.subscribe("orders", f"q{index}", filter_policy=policy_for(index))
    entries = entries_for(MESSAGES)

    def setup():
        for index in range(SUBSCRIPTIONS):
            broker.purge(f"q{index}")

    benchmark.extra_info["items"] = MESSAGES
    benchmark.pedantic(broker.publish_batch, args=("orders", entries), setup=setup, rounds=15)
    stats = broker.stats().topics["orders"]
    benchmark.extra_info["copies_per_message"] = stats.deliveries / stats.published


@pytest.mark.benchmark(group="fan-out to 100 filtered subscriptions (messages)")
def test_reference_matcher_100_subscriptions_baseline(benchmark):
    policies = [parse_policy(policy_for(index)) and policy_for(index)
                for index in range(SUBSCRIPTIONS)]
    entries = entries_for(100)

    def run():
        return sum(reference_match(policy, "attributes", entry.attributes, entry.body)
                   for entry in entries for policy in policies)

    benchmark.extra_info["items"] = len(entries)
    benchmark(run)


def fifo_cycle(broker, queue, count, batch):
    received = 0
    while received < count:
        messages = broker.receive(queue, max_messages=batch)
        broker.ack_batch([m.receipt for m in messages])
        received += len(messages)


@pytest.mark.benchmark(group="FIFO, 1,000 groups: receive(1000) + ack_batch (messages)")
def test_fifo_1000_groups_receive_ack(benchmark):
    broker = Broker()
    broker.create_queue("f", fifo=True, content_dedup=True, dedup_window=1)
    count = 20 * GROUPS
    entries = [PublishEntry(b"x" * 64, group_id=f"g{n % GROUPS}", dedup_id=str(n))
               for n in range(count)]

    def setup():
        broker.purge("f")
        broker.send_batch("f", [e._replace(dedup_id=f"{e.dedup_id}-{random.random()}")
                                for e in entries])

    benchmark.extra_info["items"] = count
    benchmark.pedantic(fifo_cycle, args=(broker, "f", count, 1000), setup=setup, rounds=7)


@pytest.mark.benchmark(group="FIFO, 1,000 groups: receive(1000) + ack_batch (messages)")
def test_standard_queue_receive_ack_baseline(benchmark):
    broker = Broker()
    broker.create_queue("s")
    count = 20 * GROUPS

    def setup():
        broker.purge("s")
        broker.send_batch("s", [b"x" * 64] * count)

    benchmark.extra_info["items"] = count
    benchmark.pedantic(fifo_cycle, args=(broker, "s", count, 1000), setup=setup, rounds=7)
