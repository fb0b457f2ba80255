"""Which queues a topic's messages go to: subscriptions resolved into dispatcher targets.

A topic is fed by its direct subscriptions and by every pattern subscription whose pattern
matches its name (``orders.*``, ``orders.>``), now or later, provided the queue's
FIFO-ness equals the topic's (others are passed over). The dispatcher then gets one target
per queue, however many of that queue's subscriptions feed the topic (a direct one and a
pattern, say): a message goes to it if any of them would let it through (RabbitMQ's rule
for a queue bound twice), so the queue's policies are alternatives, and an unfiltered
subscription takes everything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from fastfanout.errors import InvalidArgument
from fastfanout.semantics.filter_policy import SCOPES, CompiledPolicy, parse_policy
from fastfanout.semantics.topic_pattern import is_pattern, pattern_matches
from fastfanout.settings import Subscription

__all__ = ["compile_policy", "dispatch_targets", "feeding_subscriptions", "feeds"]


def compile_policy(policy: object, scope: str) -> tuple[CompiledPolicy | None, str | None]:
    """Validate a filter policy; returns it compiled and as canonical JSON (None: no filter).

    Raises:
        InvalidArgument: ``scope`` is not one of ``SCOPES``.
        InvalidFilterPolicy: the policy is malformed or over a limit.
    """
    if scope not in SCOPES:
        raise InvalidArgument(f"filter_scope must be one of {SCOPES}, got {scope!r}")
    if policy is None:
        return None, None
    compiled = parse_policy(policy, scope)  # type: ignore[arg-type]
    decoded = json.loads(policy) if isinstance(policy, str | bytes) else policy
    return compiled, json.dumps(decoded, sort_keys=True)


def feeds(sub: Subscription, topic: str, fifo: bool, queue_fifo: bool) -> bool:
    """Whether ``sub`` feeds ``topic`` (a FIFO one if ``fifo``; ``queue_fifo``: its queue's)."""
    return ((sub.topic == topic or (is_pattern(sub.topic) and pattern_matches(sub.topic, topic)))
            and queue_fifo == fifo)


def feeding_subscriptions(subscriptions: Mapping[int, Subscription], topic: str, fifo: bool,
                          queue_is_fifo: Callable[[str], bool]) -> list[int]:
    """Ids (ascending) of the subscriptions that feed ``topic`` (a FIFO one if ``fifo``)."""
    return [sid for sid, sub in sorted(subscriptions.items())
            if feeds(sub, topic, fifo, queue_is_fifo(sub.queue))]


def dispatch_targets(subscriptions: Mapping[int, Subscription], feeding: list[int],
                     queue_ids: Mapping[str, int]
                     ) -> tuple[list[int], list[Any], list[list[int]]]:
    """One target per queue: (queue ids, policies, feeders).

    Per queue: a list of alternative plain compiled policies or None (no filter), and the
    ids of the subscriptions feeding it (each is credited with the queue's copies and
    refusals).
    """
    targets: list[int] = []
    policies: list[Any] = []
    feeders: list[list[int]] = []
    position: dict[int, int] = {}
    for sid in feeding:
        sub = subscriptions[sid]
        queue_id = queue_ids[sub.queue]
        if queue_id not in position:
            position[queue_id] = len(targets)
            targets.append(queue_id)
            policies.append([])
            feeders.append([])
        feeders[position[queue_id]].append(sid)
        alternatives = policies[position[queue_id]]
        if alternatives is not None:
            if sub.compiled is None:
                policies[position[queue_id]] = None   # an unfiltered one takes all
            else:
                alternatives.append(sub.compiled.plain)
    return targets, policies, feeders
