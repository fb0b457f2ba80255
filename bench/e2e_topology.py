"""Topology changes on a broker with many filtered subscriptions, topics and patterns.

Run: python bench/e2e_topology.py [--subscriptions 3000] [--topics 5000] [--patterns 1000]

Embedded, one process. Three figures, each a cost per call that should not grow with
the broker's size:

* filtered subscribes alternating with publishes on one topic: the first 300 pairs and
  the last 300 (a filter change used to rebuild the topic's whole filter index at its
  next publish);
* a pattern subscribe (``regionN.orders.*``, 100 matching topics each) with
  ``--topics`` topics;
* a ``create_topic`` with ``--patterns`` pattern subscriptions that do not match it;
* on the topic of ``--subscriptions`` filtered subscriptions, a queue fed twice (a
  direct subscription and a pattern): a subscribe and an unsubscribe of a third
  subscription of that queue (until 2026-12-06 each rebuilt the topic's targets).
"""

from __future__ import annotations

import argparse
import time

from fastfanout import Broker


def filtered_pairs(subscriptions: int) -> tuple[float, float]:
    """Seconds of the first and the last 300 (filtered subscribe + publish) pairs."""
    seconds = []
    with Broker() as broker:
        broker.create_topic("t")
        for i in range(subscriptions):
            broker.create_queue(f"q{i}")
            started = time.perf_counter()
            broker.subscribe("t", f"q{i}", filter_policy={"store": [f"s{i}"]})
            broker.publish("t", b"x", attributes={"store": "s1"})
            seconds.append(time.perf_counter() - started)
    return sum(seconds[:300]), sum(seconds[-300:])


def patterns(topics: int, pattern_count: int) -> tuple[float, float]:
    """Milliseconds per pattern subscribe, and per create_topic."""
    with Broker() as broker:
        for i in range(topics):
            broker.create_topic(f"region{i % 50}.orders.t{i}")
        broker.create_queue("q")
        started = time.perf_counter()
        for i in range(50):
            broker.subscribe(f"region{i}.orders.*", "q")
        subscribe_ms = (time.perf_counter() - started) / 50 * 1e3
        for i in range(pattern_count):
            broker.subscribe(f"app{i}.events.>", "q")
        started = time.perf_counter()
        for i in range(1000):
            broker.create_topic(f"new.topic{i}")
        create_ms = (time.perf_counter() - started) / 1000 * 1e3
    return subscribe_ms, create_ms


def fed_twice(subscriptions: int) -> float:
    """Milliseconds per subscribe or unsubscribe of a third feeder of a queue fed twice."""
    with Broker() as broker:
        broker.create_topic("orders.t")
        for i in range(subscriptions):
            broker.create_queue(f"q{i}")
            broker.subscribe("orders.t", f"q{i}", filter_policy={"store": [f"s{i}"]})
        broker.create_queue("both")
        broker.subscribe("orders.t", "both", filter_policy={"store": ["s1"]})
        broker.subscribe("orders.*", "both", filter_policy={"store": ["s2"]})
        started = time.perf_counter()
        for i in range(100):
            sid = broker.subscribe("orders.>", "both", filter_policy={"store": [f"x{i}"]})
            broker.unsubscribe(sid)
        return (time.perf_counter() - started) / 200 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=3000)
    parser.add_argument("--topics", type=int, default=5000)
    parser.add_argument("--patterns", type=int, default=1000)
    options = parser.parse_args()
    first, last = filtered_pairs(options.subscriptions)
    print(f"filtered subscribe + publish, {options.subscriptions} on one topic: "
          f"first 300 {first:.3f} s, last 300 {last:.3f} s")
    subscribe_ms, create_ms = patterns(options.topics, options.patterns)
    print(f"pattern subscribe with {options.topics} topics: {subscribe_ms:.3f} ms each")
    print(f"create_topic with {options.patterns + 50} patterns: {create_ms:.3f} ms each")
    print(f"a third feeder of a queue fed twice, beside {options.subscriptions} filtered "
          f"subscriptions: {fed_twice(options.subscriptions):.3f} ms a subscribe or "
          f"unsubscribe")


if __name__ == "__main__":
    main()
