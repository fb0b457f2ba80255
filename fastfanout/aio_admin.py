"""The asyncio client's administration calls: topics, queues, subscriptions, stats.

``AsyncClientAdministration`` is a base class of ``fastfanout.aio.AsyncClient``: the
awaitable forms of ``fastfanout.client_admin``'s calls (each one request; same
arguments, results and errors as ``Broker``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from fastfanout import protocol
from fastfanout.protocol import Opcode
from fastfanout.settings import QueueSettings, Subscription
from fastfanout.stats import BrokerStats

__all__ = ["AsyncClientAdministration"]


class AsyncClientAdministration:
    """Topics, queues, subscriptions and stats for ``AsyncClient`` (its base class)."""

    if TYPE_CHECKING:   # provided by AsyncClient
        async def _call(self, opcode: int, *args: Any, **kwargs: Any) -> Any: ...
        async def _request(self, opcode: int, payload: list[bytes], extra: float = 0.0
                           ) -> list[bytes]: ...

    async def create_topic(self, name: str, **settings: Any) -> None:
        """Create a topic; a no-op if it exists."""
        await self._call(Opcode.CREATE_TOPIC, name, **settings)

    async def create_queue(self, name: str, **settings: Any) -> None:
        """Create a queue (settings as ``Broker.create_queue``)."""
        if "redelivery_backoff" in settings:
            settings["redelivery_backoff"] = protocol.backoff_to_wire(
                settings["redelivery_backoff"])
        await self._call(Opcode.CREATE_QUEUE, name, **settings)

    async def subscribe(self, topic: str, queue: str, **options: Any) -> int:
        """Subscribe ``queue`` to ``topic``; returns the subscription id."""
        return int(await self._call(Opcode.SUBSCRIBE, topic, queue, **options))

    async def list_topics(self) -> list[str]:
        """Names of every topic."""
        return list(await self._call(Opcode.LIST_TOPICS))

    async def list_queues(self) -> list[str]:
        """Names of every queue."""
        return list(await self._call(Opcode.LIST_QUEUES))

    async def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions."""
        await self._call(Opcode.DELETE_TOPIC, name)

    async def delete_queue(self, name: str) -> None:
        """Delete a queue, its messages and its subscriptions."""
        await self._call(Opcode.DELETE_QUEUE, name)

    async def queue_settings(self, name: str) -> QueueSettings:
        """The settings queue ``name`` was created with."""
        raw = dict(await self._call(Opcode.QUEUE_SETTINGS, name))
        raw["redelivery_backoff"] = protocol.backoff_from_wire(raw.get("redelivery_backoff"))
        return QueueSettings(**raw)

    async def unsubscribe(self, subscription_id: int) -> None:
        """Remove a subscription."""
        await self._call(Opcode.UNSUBSCRIBE, subscription_id)

    async def set_filter_policy(self, subscription_id: int,
                                filter_policy: Mapping[str, Any] | str | None, *,
                                filter_scope: str = "attributes") -> None:
        """Replace a subscription's filter policy (takes effect at once)."""
        await self._call(Opcode.SET_FILTER_POLICY, subscription_id, filter_policy,
                         filter_scope=filter_scope)

    async def subscription(self, subscription_id: int) -> Subscription:
        """One subscription's topic, queue and filter policy."""
        return Subscription(**await self._call(Opcode.SUBSCRIPTION, subscription_id))

    async def list_subscriptions(self) -> dict[int, tuple[str, str]]:
        """Every subscription: id -> (topic, queue)."""
        raw = await self._call(Opcode.LIST_SUBSCRIPTIONS)
        return {int(key): (value[0], value[1]) for key, value in raw.items()}

    async def redrive(self, dead_letter_queue: str, *, to: str | None = None,
                      max_messages: int | None = None) -> int:
        """Move dead-lettered messages back to their source queue (or to ``to``)."""
        return int(await self._call(Opcode.REDRIVE, dead_letter_queue, to=to,
                                    max_messages=max_messages))

    async def purge(self, queue: str) -> int:
        """Remove every message of a queue; returns how many."""
        return int(await self._call(Opcode.PURGE, queue))

    async def stats(self) -> BrokerStats:
        """Counters of every topic and queue."""
        frames = await self._request(Opcode.STATS, [protocol.encode_payload([[], {}])])
        return msgspec.msgpack.decode(frames[0], type=BrokerStats)

    async def server_stats(self) -> dict[str, Any]:
        """The server's own counters: connections, consumers, errors by code, streams."""
        frames = await self._request(Opcode.SERVER_STATS, [])
        stats: dict[str, Any] = protocol.decode_payload(frames[0])
        return stats

    async def check(self) -> bool:
        """Verify the broker core's internal invariants (slow; for tests)."""
        return bool(await self._call(Opcode.CHECK))
