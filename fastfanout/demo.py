"""The fan-out demo: one topic, three subscribed queues, three consumers.

Run it with ``python -m fastfanout.demo`` (README: ``bash ci/demo.sh``). Two consumers
ack what they receive; the third fails every message (nacks it), so after
``max_receive_count`` deliveries each of its messages lands in its dead-letter queue,
where the demo reads the dead-letter record and redrives the messages back.
"""

from __future__ import annotations

import argparse
import threading
import time

from rich.console import Console
from rich.table import Table

from fastfanout.broker import Broker

__all__ = ["main", "run_embedded"]

TOPIC = "orders"
QUEUES = ("billing", "shipping", "audit")
FAILING_QUEUE = "audit"


def _consume(broker: Broker, queue: str, expected: int, fail: bool, log: list[str]) -> None:
    """Receive until ``expected`` messages are settled (acked, or dead-lettered)."""
    settled = 0
    deadline = time.monotonic() + 30.0
    while settled < expected and time.monotonic() < deadline:
        messages = broker.receive(queue, max_messages=50, wait=0.2, visibility_timeout=5.0)
        if fail:
            for message in messages:
                broker.nack(message.receipt)
            settled = broker.stats().queues[queue].dead_lettered
        else:
            broker.ack_batch([message.receipt for message in messages])
            settled += len(messages)
            if messages:
                first, last = messages[0].id, messages[-1].id
                log.append(f"{queue}: acked {len(messages)} (ids {first}..{last})")


def run_embedded(messages: int, console: Console) -> Broker:
    """Run the demo in this process with one consumer thread per queue; returns the broker."""
    broker = Broker()
    broker.create_queue(f"{FAILING_QUEUE}-dlq")
    for queue in QUEUES:
        failing = queue == FAILING_QUEUE
        broker.create_queue(
            queue,
            max_receive_count=3 if failing else None,
            dead_letter_queue=f"{FAILING_QUEUE}-dlq" if failing else None,
        )
        broker.create_topic(TOPIC)
        broker.subscribe(TOPIC, queue)
    log: list[str] = []
    consumers = [
        threading.Thread(
            target=_consume, args=(broker, queue, messages, queue == FAILING_QUEUE, log),
            name=f"consumer-{queue}")
        for queue in QUEUES
    ]
    for thread in consumers:
        thread.start()
    started = time.perf_counter()
    bodies = [f"order {n}".encode() for n in range(messages)]
    for start in range(0, messages, 1000):
        broker.publish_batch(TOPIC, bodies[start:start + 1000])
    for thread in consumers:
        thread.join(timeout=60.0)
    elapsed = time.perf_counter() - started
    for line in log[:6]:
        console.print(f"  {line}")
    if len(log) > 6:
        console.print(f"  ... {len(log) - 6} more batches")
    console.print(
        f"published {messages} messages to topic {TOPIC!r} -> {len(QUEUES)} queues "
        f"in {elapsed * 1000:.1f} ms")
    return broker


def _report(broker: Broker, console: Console) -> None:
    stats = broker.stats()
    table = Table(title="queues after the run")
    for column in ("queue", "enqueued", "delivered", "acked", "redelivered", "dead-lettered",
                   "visible", "leased"):
        table.add_column(column, justify="right" if column != "queue" else "left")
    for name, queue in stats.queues.items():
        table.add_row(name, str(queue.enqueued), str(queue.delivered), str(queue.acked),
                      str(queue.redelivered), str(queue.dead_lettered), str(queue.visible),
                      str(queue.leased))
    console.print(table)
    dead = broker.receive(f"{FAILING_QUEUE}-dlq", max_messages=1, visibility_timeout=1.0)
    if dead and dead[0].dead_letter is not None:
        info = dead[0].dead_letter
        console.print(
            f"dead letter: message {dead[0].id} {dead[0].body!r} from {info.source_queue!r}, "
            f"reason {info.reason!r} after {info.receive_count} deliveries")
        broker.nack(dead[0].receipt)
    moved = broker.redrive(f"{FAILING_QUEUE}-dlq")
    console.print(f"redrive moved {moved} messages back to {FAILING_QUEUE!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastfanout.demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000, help="messages to publish")
    args = parser.parse_args(argv)
    console = Console()
    console.print("[bold]fastfanout demo[/bold]: embedded broker, consumer threads")
    broker = run_embedded(args.messages, console)
    _report(broker, console)
    broker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
