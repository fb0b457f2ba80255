"""The benchmark scenarios and the specification of one measurement.

A scenario is a topology: P publishers send to one topic; G groups each receive every
message; the M members of a group compete for its messages (each message goes to one
member of each group).

- ``fanout``: P publishers -> a topic -> Q queues x C consumers (G = Q, M = C), acks.
- ``workqueue``: P publishers -> one queue -> C competing consumers with acks (G = 1).
- ``stream``: P publishers -> a topic -> L listeners, at most once (G = L, M = 1).
- ``latency``: one publisher at a fixed rate, open loop, -> one queue -> C consumers;
  latency is measured from each message's intended send time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SCENARIOS = ("fanout", "workqueue", "stream", "latency")
"""The names of the scenarios, in the order the help lists them."""
TRANSPORTS = ("local", "ipc", "tcp")
"""fastfanout's transports: a local channel (shared memory), an ipc socket, tcp."""
FSYNC = ("always", "interval", "never")
"""fsync policies of the durable variants (``Broker(fsync=...)``; peers: their nearest)."""

APIS = {
    "batch": "publish_batch_nowait of each batch, 8 in flight (publish_nowait for "
             "batches of 1)",
    "publish_nowait": "client.publish_nowait per message (the client batches on the wire)",
    "offer": "producer.offer per message (client.producer: frames of 1,000, 8 in flight)",
    "publish": "client.publish per message (a round trip each)",
    "numpy": "publish_batch_nowait of a 2-D uint8 array per batch (one row per message)",
    "aio-publish": "asyncio: await client.publish per message (a round trip each)",
    "aio-gather": "asyncio: asyncio.gather of client.publish per batch",
    "aio-nowait": "asyncio: client.publish_nowait per message, the batch's futures awaited",
    "aio-offer": "asyncio: producer.offer per message, await producer.drain() per batch",
}
"""fastfanout's publishing APIs (``--api``): what each publisher calls per batch of
``--batch`` bodies. Peers keep their own natural API."""

RECEIVES = {
    "batch": "consume + DeliveryBatch.ack() per pushed batch (headers read from the frame)",
    "each": "for message in consume(q): message.body, message.ack()",
    "aio-each": "asyncio: async for message in client.consume(q): message.body, "
                "message.ack()",
    "array": "consume + batch.as_array(uint8, (size,)) + batch.ack() per pushed batch",
    "receive": "client.receive(max_messages=1000), message.ack() each (a round trip each)",
    "worker": "a fastfanout.Worker handler per message (concurrency 1, prefetch 1,000)",
    "worker-batch": "a fastfanout.Worker handler of batch_size=100 (concurrency 1)",
}
"""fastfanout's receiving APIs (``--receive``): how each consumer takes and acks its
messages. Peers keep their own natural API."""

DESCRIPTIONS = {
    "fanout": "P publishers -> a topic -> Q queues x C consumers each, acked",
    "workqueue": "P publishers -> one queue -> C competing consumers, acked",
    "stream": "P publishers -> a topic -> L stream listeners (at most once)",
    "latency": "open loop at a fixed rate -> one queue -> C consumers; latency from each "
               "message's intended send time",
}


@dataclass(frozen=True)
class Spec:
    """One measurement: a scenario at one message size, for one system.

    Attributes:
        scenario: one of SCENARIOS.
        size: message size in bytes (at least ``payload.MIN_SIZE``).
        count: messages per publisher, or None when ``duration`` bounds the run.
        duration: seconds each publisher publishes, or None when ``count`` does.
        rate: total messages per second over the publishers (open loop), or None for
            as fast as possible.
        batch: messages per publish call (1: one call per message).
        publishers: P.
        groups: G, the queues (fanout), listeners (stream) or 1.
        members: M, the competing consumers of each group.
        transport: fastfanout's transport (TRANSPORTS); peers use their own.
        warmup: seconds at the start of each run that are not measured.
        durable: fastfanout with a data directory, peers with their own persistence.
        api: fastfanout's publishing API (APIS).
        receive: fastfanout's receiving API (RECEIVES).
        fsync: the durable variants' fsync policy (FSYNC).
        prefetch: the most unsettled messages pushed to each consumer (fastfanout's
            ``consume(prefetch=...)``, RabbitMQ's ``basic.qos``), or None for the
            scenario's default (``adapters.PREFETCH``, ``adapters.LATENCY_PREFETCH``).
    """

    scenario: str
    size: int
    count: int | None
    duration: float | None
    rate: float | None
    batch: int
    publishers: int
    groups: int
    members: int
    transport: str
    warmup: float
    durable: bool = False
    api: str = "batch"
    receive: str = "batch"
    fsync: str = "always"
    prefetch: int | None = None

    @property
    def expected(self) -> int:
        """Messages each publisher is expected to send (an estimate with ``duration``)."""
        if self.count is not None:
            return self.count
        per_second = (self.rate / self.publishers) if self.rate else 100_000.0
        return max(1, int(per_second * (self.duration or 1.0)))

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def topology(scenario: str, publishers: int, queues: int, consumers: int,
             listeners: int) -> tuple[int, int, int]:
    """(P, G, M) of ``scenario`` from the command line's counts."""
    if scenario == "fanout":
        return publishers, queues, consumers
    if scenario == "stream":
        return publishers, listeners, 1
    if scenario == "latency":
        return 1, 1, consumers
    return publishers, 1, consumers
