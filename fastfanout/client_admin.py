"""The blocking client's administration calls: topics, queues, subscriptions, stats.

``ClientAdministration`` is a base class of ``fastfanout.client.Client``, split off by
concern as ``Administration`` is from ``Broker``: each call is one request whose reply
is the embedded broker's result, with the same arguments and errors (see ``Broker``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from fastfanout import protocol
from fastfanout.futures import _Pending
from fastfanout.protocol import Opcode
from fastfanout.settings import QueueSettings, Subscription
from fastfanout.stats import BrokerStats

__all__ = ["ClientAdministration"]


class ClientAdministration:
    """Topics, queues, subscriptions and stats for ``Client`` (its base class)."""

    if TYPE_CHECKING:   # provided by Client
        def _call(self, opcode: int, *args: Any, **kwargs: Any) -> Any: ...
        def _request(self, opcode: int, payload: list[bytes], *, flush: bool = True
                     ) -> _Pending: ...
        def _wait(self, pending: _Pending, timeout: float | None, *, extra: float = 0.0,
                  handshake: bool = False) -> list[bytes]: ...

    def create_topic(self, name: str, *, fifo: bool = False, content_dedup: bool = False,
                     dedup_window: float = 300.0) -> None:
        """Create a topic; a no-op if it exists (see ``Broker.create_topic``)."""
        self._call(Opcode.CREATE_TOPIC, name, fifo=fifo, content_dedup=content_dedup,
                   dedup_window=dedup_window)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions."""
        self._call(Opcode.DELETE_TOPIC, name)

    def list_topics(self) -> list[str]:
        """Names of every topic, sorted."""
        return list(self._call(Opcode.LIST_TOPICS))

    def create_queue(self, name: str, **settings: Any) -> None:
        """Create a queue; the settings are those of ``Broker.create_queue`` (seconds, bytes)."""
        if "redelivery_backoff" in settings:
            settings["redelivery_backoff"] = protocol.backoff_to_wire(
                settings["redelivery_backoff"])
        self._call(Opcode.CREATE_QUEUE, name, **settings)

    def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and its subscriptions."""
        self._call(Opcode.DELETE_QUEUE, name)

    def list_queues(self) -> list[str]:
        """Names of every queue, sorted."""
        return list(self._call(Opcode.LIST_QUEUES))

    def queue_settings(self, name: str) -> QueueSettings:
        """The settings queue ``name`` was created with."""
        raw = dict(self._call(Opcode.QUEUE_SETTINGS, name))
        raw["redelivery_backoff"] = protocol.backoff_from_wire(raw.get("redelivery_backoff"))
        return QueueSettings(**raw)

    def subscribe(self, topic: str, queue: str, *,
                  filter_policy: Mapping[str, Any] | str | None = None,
                  filter_scope: str = "attributes") -> int:
        """Subscribe ``queue`` to ``topic`` (a name or pattern); returns the subscription id."""
        return int(self._call(Opcode.SUBSCRIBE, topic, queue, filter_policy=filter_policy,
                              filter_scope=filter_scope))

    def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription."""
        self._call(Opcode.UNSUBSCRIBE, subscription_id)

    def set_filter_policy(self, subscription_id: int,
                          filter_policy: Mapping[str, Any] | str | None, *,
                          filter_scope: str = "attributes") -> None:
        """Replace a subscription's filter policy (takes effect at once)."""
        self._call(Opcode.SET_FILTER_POLICY, subscription_id, filter_policy,
                   filter_scope=filter_scope)

    def subscription(self, subscription_id: int) -> Subscription:
        """One subscription's topic, queue and filter policy."""
        return Subscription(**self._call(Opcode.SUBSCRIPTION, subscription_id))

    def list_subscriptions(self) -> dict[int, tuple[str, str]]:
        """Every subscription: id -> (topic, queue)."""
        raw = self._call(Opcode.LIST_SUBSCRIPTIONS)
        return {int(key): (value[0], value[1]) for key, value in raw.items()}

    def redrive(self, dead_letter_queue: str, *, to: str | None = None,
                max_messages: int | None = None) -> int:
        """Move dead-lettered messages back to their source queue (or to ``to``)."""
        return int(self._call(Opcode.REDRIVE, dead_letter_queue, to=to,
                              max_messages=max_messages))

    def purge(self, queue: str) -> int:
        """Remove every message of a queue; returns how many."""
        return int(self._call(Opcode.PURGE, queue))

    def stats(self) -> BrokerStats:
        """Counters of every topic and queue."""
        pending = self._request(Opcode.STATS, [protocol.encode_payload([[], {}])])
        frames = self._wait(pending, None)
        return msgspec.msgpack.decode(frames[0], type=BrokerStats)

    def server_stats(self) -> dict[str, Any]:
        """The server's own counters: connections, consumers, errors by code, streams."""
        frames = self._wait(self._request(Opcode.SERVER_STATS, []), None)
        stats: dict[str, Any] = protocol.decode_payload(frames[0])
        return stats

    def check(self) -> bool:
        """Verify the broker core's internal invariants (slow; for tests)."""
        return bool(self._call(Opcode.CHECK))
