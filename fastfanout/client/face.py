"""What the blocking ``Client`` and the ``AsyncClient`` share: options and plain calls.

The calls that are plain (not awaited) in both clients live here once: the pipelined
publishes (``publish_nowait``...: their futures are the driver's kind), the checks of a
producer's and a listener's arguments, and the client options. ``control()`` makes
either client's control calls from their declaration in ``fastfanout.api``
(``ControlCall``); what remains in each client is how it waits. Docstrings of the
operations live on the declared API (``fastfanout.api``).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

from fastfanout._ext.offers import NowaitGate
from fastfanout.client.core import ConnectionCore, ControlCall, Request
from fastfanout.client.messages import publish_options
from fastfanout.client.producers import ProducerCore, producer_limits
from fastfanout.errors import InvalidArgument, NotFound
from fastfanout.records import Attributes, Body
from fastfanout.runtime import default_endpoint, endpoint_problem
from fastfanout.semantics.topic_pattern import validate_pattern
from fastfanout.settings import (
    MAX_DELAY,
    MAX_HIGH_WATER_MARK,
    check_count,
    check_producer_topic,
    finite,
    seconds_to_us,
)
from fastfanout.stats import BrokerStats
from fastfanout.transport.local_channel import check_channel_options
from fastfanout.transport.sockets import CurveKeys, client_curve
from fastfanout.wire.protocol import Opcode

__all__ = ["ClientFace", "FaceDriver", "control"]

P = ParamSpec("P")
R = TypeVar("R")
F_co = TypeVar("F_co", covariant=True)
BF_co = TypeVar("BF_co", covariant=True)
F = TypeVar("F")
BF = TypeVar("BF")


def control(declared: Callable[P, R]) -> Callable[P, R]:
    """A client method for a control call declared in ``fastfanout.api``.

    The method sends one request (``ControlCall``) and returns its decoded answer; it is
    a coroutine where the declaration is one (``AsyncClient``'s).
    """
    call = ControlCall(declared)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        connection = self.connection
        return call.decode(connection.wait(
            connection.submit(call.request, connection.core, args, kwargs), None))

    async def awaited(self: Any, *args: Any, **kwargs: Any) -> Any:
        connection = self.connection
        return call.decode(await connection.wait(
            connection.submit(call.request, connection.core, args, kwargs)))

    chosen = awaited if inspect.iscoroutinefunction(declared) else method
    return cast("Callable[P, R]", functools.wraps(declared)(chosen))


class FaceDriver(Protocol[F_co, BF_co]):
    """A driver as ``ClientFace`` uses it: futures of kind ``F_co`` and ``BF_co``.

    Attributes:
        core: the protocol state.
    """

    core: ConnectionCore

    def submit(self, make: Any, *args: Any, **kwargs: Any) -> Any:
        """Queue a request made by ``make`` (a core method) and send it."""

    def enqueue(self, opcode: int, name: str, body: Any,
                options: tuple[Any, ...] | None) -> F_co:
        """Add one message to the batch of (opcode, name); its future."""

    def batch_future(self, request: Request) -> BF_co:
        """A future of a publish request's results."""


class ClientFace(Generic[F, BF]):
    """The options and plain calls of both clients (see the module's essay).

    Attributes:
        endpoint: the broker's command endpoint.
        timeout: seconds a call waits for its reply beyond any ``wait`` it asks for.
        connection: the I/O driver over the protocol core.
    """

    connection: FaceDriver[F, BF]

    def _options(self, endpoint: str | None, timeout: float, linger: float,
                 batch_messages: int, batch_bytes: int, curve: CurveKeys | None,
                 curve_server_key: bytes | str | os.PathLike[str] | None,
                 curve_keys: tuple[bytes, bytes] | str | os.PathLike[str] | None,
                 local_channel: bool | None, ring_bytes: int) -> CurveKeys | None:
        """Check and keep the client options; returns the CURVE keys to use.

        Raises:
            InvalidArgument: an option of the wrong type or out of its range (nothing is
                opened).
        """
        if endpoint is not None and type(endpoint) is not str:
            raise InvalidArgument(f"endpoint={endpoint!r} must be a str (ipc://PATH or "
                                  f"tcp://HOST:PORT) or None (the default endpoint)")
        # a malformed one failed only when connecting: BrokenConnection, at once or after
        # the handshake timeout (tcp://127.0.0.1:99999, inproc://x); "" meant the default
        resolved = default_endpoint() if endpoint is None else endpoint
        problem = endpoint_problem(resolved)
        if problem is not None:
            source = " (from $FASTFANOUT_ENDPOINT)" if endpoint is None else ""
            raise InvalidArgument(f"endpoint={resolved!r:.200}{source}: {problem}")
        if (type(timeout) not in (int, float) or not finite(timeout)
                or timeout <= 0):
            raise InvalidArgument(f"timeout={timeout!r} must be finite seconds > 0")
        seconds_to_us("linger", linger, maximum=MAX_DELAY)   # finite, 0 to MAX_DELAY
        producer_limits("", batch_messages, batch_bytes, 1, linger, (0, 0, 0.0))
        check_channel_options(local_channel, ring_bytes)
        if curve_server_key is not None:
            curve = client_curve(curve_server_key, curve_keys)
        self.endpoint = resolved
        self.timeout = timeout
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self.local_channel = local_channel
        self.ring_bytes = ring_bytes
        return curve

    @property
    def info(self) -> dict[str, Any]:
        """The broker's HELLO reply (its settings and limits)."""
        return self.connection.core.info

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self.connection.core.closed

    def publish_nowait(self, topic: str, body: Body, *,
                       attributes: Attributes | None = None, delay: float | None = None,
                       deliver_at: float | datetime | None = None,
                       group_id: str | None = None, dedup_id: str | None = None,
                       priority: int | None = None, ttl: float | None = None) -> F:
        """Add a message to the current batch of ``topic``; a future of its result.

        See ``fastfanout.api.PipelineAPI.publish_nowait``.
        """
        return self.connection.enqueue(Opcode.PUBLISH, topic, body, publish_options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def _native_nowait(self, gate: NowaitGate) -> None:
        """Make ``publish_nowait``/``send_nowait`` of this client the gate's own.

        The gate's methods take the same arguments: a bare body is then one C call from
        the caller's loop, with no Python frame (issue 15); options come back to the
        methods here. A subclass's own methods stay in charge.
        """
        gate.bind_face(Opcode.PUBLISH, Opcode.SEND, ClientFace.publish_nowait.__get__(self),
                       ClientFace.send_nowait.__get__(self))
        cls = type(self)
        publish_nowait, send_nowait = gate.calls()   # no argument parsing for a bare body
        if cls.publish_nowait is ClientFace.publish_nowait:
            self.publish_nowait = publish_nowait  # type: ignore[method-assign]
        if cls.send_nowait is ClientFace.send_nowait:
            self.send_nowait = send_nowait  # type: ignore[method-assign]

    def send_nowait(self, queue: str, body: Body, *,
                    attributes: Attributes | None = None, delay: float | None = None,
                    deliver_at: float | datetime | None = None, group_id: str | None = None,
                    dedup_id: str | None = None, priority: int | None = None,
                    ttl: float | None = None) -> F:
        """Add a message to the current batch of ``queue``; a future of its result."""
        return self.connection.enqueue(Opcode.SEND, queue, body, publish_options(
            attributes, delay, deliver_at, group_id, dedup_id, priority, ttl))

    def _entries(self, opcode: int, name: str, entries: Iterable[Any]) -> Request:
        """Send a whole batch now, encoded natively in one frame; its request."""
        connection = self.connection
        request: Request = connection.submit(connection.core.publish_entries, opcode, name,
                                             entries)
        return request

    def publish_batch_nowait(self, topic: str, entries: Iterable[Any]) -> BF:
        """Pipelined ``publish_batch``: the batch leaves now; a future of its results.

        See ``fastfanout.api.PipelineAPI.publish_batch_nowait``.
        """
        return self.connection.batch_future(self._entries(Opcode.PUBLISH, topic, entries))

    def send_batch_nowait(self, queue: str, entries: Iterable[Any]) -> BF:
        """Pipelined ``send_batch``: the batch leaves now; a future of its results."""
        return self.connection.batch_future(self._entries(Opcode.SEND, queue, entries))

    def _producer_core(self, topic: str, group_id: str | None, batch_messages: int | None,
                       batch_bytes: int | None, max_in_flight: int, linger: float | None,
                       default_linger: float) -> ProducerCore:
        """A new producer's state, its arguments checked (``InvalidArgument``)."""
        batch_messages, batch_bytes, linger = producer_limits(
            topic, batch_messages, batch_bytes, max_in_flight, linger,
            (self.batch_messages, self.batch_bytes, default_linger))
        return ProducerCore(topic, batch_messages, batch_bytes, max_in_flight, linger,
                            group_id)

    @staticmethod
    def _check_producer_topic(core: ProducerCore, stats: BrokerStats) -> None:
        """Refuse a producer whose topic is missing, or whose rules it cannot meet.

        Raises:
            NotFound: the topic does not exist.
            InvalidArgument: see ``settings.check_producer_topic``.
        """
        topic = stats.topics.get(core.topic)
        if topic is None:
            raise NotFound(f"topic {core.topic!r} does not exist")
        check_producer_topic(core.topic, topic.fifo, topic.content_dedup,
                             core.builder.group_id)

    @staticmethod
    def _check_listen(topic_pattern: object, high_water_mark: object) -> None:
        """``InvalidArgument`` unless both are right.

        ``topic_pattern``: a topic name or a well-formed pattern (as ``subscribe`` takes);
        ``high_water_mark``: an int from 1 to ``MAX_HIGH_WATER_MARK``.
        """
        validate_pattern(topic_pattern)   # type: ignore[arg-type]   # checks the type
        check_count("high_water_mark", high_water_mark, maximum=MAX_HIGH_WATER_MARK)
