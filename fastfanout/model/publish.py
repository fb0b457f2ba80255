"""Topics, subscriptions and the checks of a publish, in the broker's order.

``check_batch`` runs every check of a publish or send before anything changes, and
returns what it found per entry and per target (``Batch``): duplicates of the topic's
window or of an earlier entry, copies a policy filtered out, copies a queue's window
holds already. The first fault raises; the counters a failed check bumps (a queue's
``duplicates``, ``oversized``, ``rejected``) stay bumped, as the broker's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastfanout.errors import InvalidArgument, MessageTooLarge, QueueFull
from fastfanout.model.checks import Entry
from fastfanout.model.dedup import DedupKey, DedupWindow
from fastfanout.model.queue import Copy, Queue
from fastfanout.semantics.filter_policy import reference_match

__all__ = ["Batch", "Subscription", "SubscriptionCounters", "Topic", "check_batch",
           "room_plan"]


@dataclass
class Topic:
    """A topic: its settings, its window and its counters."""

    settings: tuple[bool, bool, float]  # fifo, content_dedup, dedup_window as given
    window: DedupWindow
    published: int = 0
    deliveries: int = 0
    unrouted: int = 0
    duplicates: int = 0
    filtered_out: int = 0

    @property
    def fifo(self) -> bool:
        """FIFO topic: every message needs a group id."""
        return self.settings[0]

    @property
    def content_dedup(self) -> bool:
        """Messages without a dedup id are deduplicated by their body."""
        return self.settings[1]


@dataclass(frozen=True)
class Subscription:
    """A subscription: topic name or pattern, queue, filter policy (decoded) and scope."""

    topic: str
    queue: str
    policy: Any = field(compare=False)  # the decoded policy, or None: everything
    canonical: str | None  # the policy as sorted JSON (for the same-policy check)
    scope: str


@dataclass
class SubscriptionCounters:
    """A subscription's counters (``SubscriptionStats``).

    A queue fed by several subscriptions of a topic credits each of them with its copies
    and refusals.
    """

    delivered: int = 0
    filtered_out: int = 0
    rejected: int = 0
    oversized: int = 0
    duplicates: int = 0


@dataclass
class Batch:
    """What the checks of one publish found, per entry and per target."""

    keys: list[DedupKey | None]
    from_window: list[int | None]  # duplicate of this remembered message id
    from_batch: list[int | None]  # duplicate of this earlier entry of the batch
    skip: list[list[str | None]]  # per target, per entry: None, "duplicate", "filtered"

    def duplicate(self, index: int) -> bool:
        """True when entry ``index`` repeats a remembered key or an earlier entry."""
        return self.from_window[index] is not None or self.from_batch[index] is not None


def room_plan(queue: Queue, count: int, size: int) -> list[Copy] | None:
    """Listed copies to evict (drop order) so ``count`` copies of ``size`` bytes fit.

    Returns ``[]`` when they fit already, None when the queue must refuse them.
    """
    limit_messages = queue.settings.max_messages
    limit_bytes = queue.settings.max_bytes
    held, held_bytes = len(queue.copies), queue.bytes

    def fits() -> bool:
        return ((limit_messages is None or held + count <= limit_messages)
                and (limit_bytes is None or held_bytes + size <= limit_bytes))

    if fits():
        return []
    if queue.settings.overflow in ("reject", "hold"):   # hold: the server waits, not us
        return None
    evictions = []
    for copy in queue.listed_for_drop():
        evictions.append(copy)
        held -= 1
        held_bytes -= copy.size
        if fits():
            return evictions
    return None


def check_batch(entries: list[Entry], targets: list[tuple[Queue, list[Subscription] | None]],
                topic: Topic | None, now_us: int,
                feeders: list[list[SubscriptionCounters]] | None = None) -> Batch:
    """Every check of a publish, in the broker's order; raises on the first fault.

    ``feeders``: per target, the counters of the subscriptions feeding it (a publish),
    credited with the target's refusals.
    """
    count = len(entries)
    content = (topic is not None and topic.content_dedup) or any(
        queue.settings.content_dedup for queue, _ in targets)
    batch = Batch(
        keys=[("id", entry.dedup_id) if entry.dedup_id is not None
              else ("body", entry.body) if content else None for entry in entries],
        from_window=[None] * count, from_batch=[None] * count,
        skip=[[None] * count for _ in targets])
    if topic is not None:
        _topic_checks(entries, topic, batch, now_us)
        for position, (_, subs) in enumerate(targets):
            if subs is None or any(sub.policy is None for sub in subs):
                continue
            for index, entry in enumerate(entries):
                if not batch.duplicate(index) and not any(
                        reference_match(sub.policy, sub.scope, entry.attributes, entry.body)
                        for sub in subs):
                    batch.skip[position][index] = "filtered"
    topic_content = topic is not None and topic.content_dedup
    for position, (queue, _) in enumerate(targets):
        _check_target(entries, queue, batch, position, now_us, topic_content,
                      [] if feeders is None else feeders[position])
    if topic is None:
        # A duplicate for the only queue of a send is a duplicate of the send.
        queue = targets[0][0]
        for index, key in enumerate(batch.keys):
            if batch.skip[0][index] != "duplicate" or batch.duplicate(index):
                continue
            assert key is not None
            found = queue.window.lookup(key, now_us)
            if found is not None:
                batch.from_window[index] = found
            else:
                batch.from_batch[index] = next(
                    earlier for earlier in range(index) if batch.keys[earlier] == key
                    and not batch.duplicate(earlier))
    return batch

def _topic_checks(entries: list[Entry], topic: Topic, batch: Batch,
                  now_us: int) -> None:
    """The topic's FIFO rules, then its window (and repeats inside the batch)."""
    if topic.fifo:
        for index, entry in enumerate(entries):
            if entry.group_id is None:
                raise InvalidArgument(f"entry {index}: topic is FIFO: give a group_id")
            if entry.dedup_id is None and not topic.content_dedup:
                raise InvalidArgument(
                    f"entry {index}: FIFO topic without content_dedup: give a dedup_id")
    first: dict[DedupKey, int] = {}
    for index, entry in enumerate(entries):
        key = batch.keys[index]
        if key is None or not (entry.dedup_id is not None or topic.content_dedup):
            continue
        found = topic.window.lookup(key, now_us)
        if found is not None:
            batch.from_window[index] = found
        elif key in first:
            batch.from_batch[index] = first[key]
        else:
            first[key] = index

def _check_target(entries: list[Entry], queue: Queue, batch: Batch,
                  position: int, now_us: int, topic_content: bool,
                  feeders: list[SubscriptionCounters]) -> None:
    """Which copies one target takes: its FIFO rules, window, size and room.

    ``topic_content``: published to a topic with ``content_dedup``; its copies carry the
    body hash as their dedup key, which the queue applies as a dedup id.
    """
    content = queue.settings.content_dedup or topic_content
    skip = batch.skip[position]
    seen: set[DedupKey] = set()
    messages = size = 0
    for index, entry in enumerate(entries):
        if batch.duplicate(index) or skip[index] is not None:
            continue
        if queue.fifo:
            if entry.group_id is None:
                raise InvalidArgument(
                    f"entry {index}: queue {queue.name!r} is FIFO: give a group_id")
            if entry.dedup_id is None and not content:
                raise InvalidArgument(
                    f"entry {index}: FIFO queue {queue.name!r} without content_dedup: "
                    f"give a dedup_id")
        key = batch.keys[index]
        if key is not None and (entry.dedup_id is not None or content):
            if queue.window.lookup(key, now_us) is not None or key in seen:
                skip[index] = "duplicate"   # counted once the batch is taken
                continue
            seen.add(key)
        if entry.size > queue.settings.max_message_size:
            queue.oversized += 1
            for counters in feeders:
                counters.oversized += 1
            raise MessageTooLarge(
                f"entry {index}: message of {entry.size} bytes exceeds max_message_size "
                f"{queue.settings.max_message_size} of queue {queue.name!r}")
        if entry.due_us is not None and entry.due_us - now_us >= queue.retention_us:
            raise InvalidArgument(
                f"entry {index}: due in {(entry.due_us - now_us) / 1e6:g} s but queue "
                f"{queue.name!r} has retention={queue.settings.retention:g} s")
        messages += 1
        size += entry.size
    if messages and room_plan(queue, messages, size) is None:
        queue.rejected += messages
        for counters in feeders:
            counters.rejected += messages
        error = QueueFull(f"queue {queue.name!r} is full: no room for {messages} "
                          f"message(s) of {size} bytes")
        error.hold = queue.settings.overflow == "hold"
        raise error

