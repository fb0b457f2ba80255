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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fastfanout.errors import InvalidArgument
from fastfanout.semantics.filter_policy import SCOPES, CompiledPolicy, parse_policy
from fastfanout.semantics.topic_pattern import is_pattern, pattern_matches
from fastfanout.settings import Subscription

__all__ = ["TargetPositions", "compile_policy", "dispatch_targets", "feeding_subscriptions",
           "feeds", "target_policies"]


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
    feeders: list[list[int]] = []
    position: dict[int, int] = {}
    for sid in feeding:
        queue_id = queue_ids[subscriptions[sid].queue]
        if queue_id not in position:
            position[queue_id] = len(targets)
            targets.append(queue_id)
            feeders.append([])
        feeders[position[queue_id]].append(sid)
    return targets, [target_policies(subscriptions, fed) for fed in feeders], feeders


def target_policies(subscriptions: Mapping[int, Subscription], feeders: list[int]
                    ) -> list[Any] | None:
    """The filter of a target fed by ``feeders`` (subscription ids).

    Their plain compiled policies, any of which lets a copy go; or None (no filter) when
    one of them has none: it takes every message.
    """
    alternatives: list[Any] = []
    for sid in feeders:
        compiled = subscriptions[sid].compiled
        if compiled is None:
            return None
        alternatives.append(compiled.plain)
    return alternatives


class TargetPositions:
    """The positions of a topic's target queues in the dispatcher, as targets come and go.

    Targets are appended, and removed from anywhere (the later ones move up one place,
    as ``Dispatcher.remove_target`` moves them). Each queue keeps the slot it was
    appended at; its position is the number of live slots before it, kept in a Fenwick
    tree: O(log n) per append, removal and look-up, where a list's ``index`` would be
    O(n). Slots of removed queues are compacted away once they are half of all slots
    (amortised O(log n)).

    Args:
        queues: the initial targets, in order.
    """

    def __init__(self, queues: Iterable[str] = ()) -> None:
        self._slots: dict[str, int] = {}   # queue -> its slot (0-based)
        self._tree: list[int] = [0]        # 1-based Fenwick tree of live slots
        for queue in queues:
            self.append(queue)

    def __len__(self) -> int:
        return len(self._slots)

    def _prefix(self, index: int) -> int:
        """Live slots among the first ``index``."""
        tree = self._tree
        total = 0
        while index > 0:
            total += tree[index]
            index &= index - 1
        return total

    def append(self, queue: str) -> None:
        """``queue`` becomes the last target."""
        index = len(self._tree)   # 1-based index of the new slot
        # A Fenwick node covers (index - lowbit, index]: the new slot plus those before it.
        self._tree.append(1 + self._prefix(index - 1) - self._prefix(index - (index & -index)))
        self._slots[queue] = index - 1

    def position(self, queue: str) -> int:
        """The position of target ``queue`` (KeyError if it is none)."""
        return self._prefix(self._slots[queue])

    def remove(self, queue: str) -> int:
        """Remove target ``queue``; returns the position it had."""
        slot = self._slots.pop(queue)
        position = self._prefix(slot)
        tree = self._tree
        index = slot + 1
        while index < len(tree):
            tree[index] -= 1
            index += index & -index
        if len(tree) > 2 * len(self._slots) + 64:   # mostly dead slots: start again
            live = sorted(self._slots, key=self._slots.__getitem__)
            self._slots = {}
            self._tree = [0]
            for name in live:
                self.append(name)
        return position
