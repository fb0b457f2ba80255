"""Filter-policy matching throughput: native FilterSet vs the pure-Python reference.

100 subscriptions with a realistic mix of policies (exact strings, prefixes, numeric
ranges, anything-but), batches of 1,000 messages with 3-5 attributes and a 64-byte body.
Run: ``.venv/bin/python -m pytest bench/test_bench_filters.py -p no:cacheprovider``.
Rates (messages per second, from the median round) land in ``benchmark.extra_info``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from fastfanout._ext.filters import FilterSet
from fastfanout.semantics.filter_policy import parse_policy, reference_match

BATCH = 1_000
SUBSCRIPTIONS = 100
EVENTS = ["order_placed", "order_cancelled", "order_shipped", "payment_failed", "refund"]
STORES = ["example_corp", "acme", "globex", "initech", "umbrella", "hooli"]
REGIONS = ["eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1"]


def make_policies(seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    policies: list[dict[str, Any]] = []
    for index in range(SUBSCRIPTIONS):
        kind = index % 4
        policy: dict[str, Any]
        if kind == 0:
            policy = {"event": rng.sample(EVENTS, 2), "store": [rng.choice(STORES)]}
        elif kind == 1:
            policy = {"region": [{"prefix": rng.choice(["eu-", "us-", "ap-"])}],
                      "event": [rng.choice(EVENTS)]}
        elif kind == 2:
            low = rng.randrange(0, 500)
            policy = {"price_usd": [{"numeric": [">=", low, "<", low + rng.randrange(50, 500)]}],
                      "store": [{"anything-but": rng.sample(STORES, 2)}]}
        else:
            policy = {"event": [{"anything-but": {"prefix": "order_"}}],
                      "region": [rng.choice(REGIONS), {"prefix": "ap-"}],
                      "price_usd": [{"numeric": [">", rng.randrange(0, 900)]}]}
        policies.append(policy)
    return policies


def make_messages(seed: int = 11) -> list[dict[str, object]]:
    rng = random.Random(seed)
    messages: list[dict[str, object]] = []
    for _ in range(BATCH):
        attributes: dict[str, object] = {
            "event": rng.choice(EVENTS),
            "store": rng.choice(STORES),
            "price_usd": round(rng.uniform(0, 1000), 2),
        }
        if rng.random() < 0.7:
            attributes["region"] = rng.choice(REGIONS)
        if rng.random() < 0.5:
            attributes["trace"] = f"t-{rng.randrange(10**6):06d}"
        messages.append(attributes)
    return messages


BODY = b'{"id": 12345, "note": "sixty-four bytes of body ..........."}'[:64]
POLICIES = make_policies()
MESSAGES = make_messages()


def _rate(benchmark: Any) -> float:
    return BATCH / benchmark.stats.stats.median


@pytest.mark.benchmark(group="filters")
def test_native_filterset(benchmark: Any) -> None:
    filter_set = FilterSet()
    for sub_id, policy in enumerate(POLICIES):
        filter_set.set(sub_id, parse_policy(policy).plain)
    match = filter_set.match

    def run() -> int:
        delivered = 0
        for attributes in MESSAGES:
            delivered += len(match(attributes, BODY))
        return delivered

    delivered = benchmark(run)
    assert delivered > 0
    benchmark.extra_info["messages_per_second"] = _rate(benchmark)
    benchmark.extra_info["deliveries_per_batch"] = delivered


@pytest.mark.benchmark(group="filters")
def test_reference_matcher(benchmark: Any) -> None:
    messages = MESSAGES[:100]  # the oracle is slow: a tenth of the batch, rate scaled

    def run() -> int:
        delivered = 0
        for attributes in messages:
            for policy in POLICIES:
                delivered += reference_match(policy, "attributes", attributes, BODY)
        return delivered

    delivered = benchmark.pedantic(run, rounds=3, iterations=1)
    assert delivered > 0
    benchmark.extra_info["messages_per_second"] = len(messages) / benchmark.stats.stats.median


def test_native_agrees_with_reference() -> None:
    filter_set = FilterSet()
    for sub_id, policy in enumerate(POLICIES):
        filter_set.set(sub_id, parse_policy(policy).plain)
    for attributes in MESSAGES[:200]:
        expected = [i for i, p in enumerate(POLICIES)
                    if reference_match(p, "attributes", attributes, BODY)]
        assert filter_set.match(attributes, BODY) == expected
