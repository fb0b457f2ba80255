"""One queue of the reference model: its copies, visible lists, FIFO groups and counters.

Visible copies are *listed* (receivable) or not. In a standard queue every visible copy
is listed, in one list per priority level (FIFO within a level; whatever becomes visible
goes to the tail). In a FIFO queue only the head of a group whose lease is free is
listed: that is "at most one leased message per group", and "a delayed head holds its
group". When a head leaves its group (ack, dead letter, drop, ...) the next one is
listed at the tail if it is visible and the group is free.

``drop_oldest`` takes listed copies from the lowest level up; receive takes them from
the highest level down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastfanout.model.checks import to_us
from fastfanout.model.dedup import DedupWindow
from fastfanout.records import Attributes, DeadLetterInfo, ExponentialBackoff
from fastfanout.stats import DROP_REASONS

__all__ = ["Copy", "Group", "Queue", "Settings"]


@dataclass(frozen=True)
class Settings:
    """The settings of one queue as given (for the equal-settings check)."""

    visibility_timeout: float
    max_receive_count: int | None
    dead_letter_queue: str | None
    delay: float
    max_messages: int | None
    max_bytes: int | None
    max_message_size: int
    retention: float
    overflow: str
    max_priority: int = 0
    fifo: bool = False
    content_dedup: bool = False
    dedup_window: float = 300.0
    redelivery_backoff: tuple[float, ...] | ExponentialBackoff | None = None
    durable: bool = False


@dataclass(eq=False)
class Copy:
    """One message copy held by a queue (compared by identity)."""

    id: int
    body: bytes
    attributes: Attributes
    timestamp_us: int
    size: int
    dead_letter: DeadLetterInfo | None
    priority: int = 0
    expires_us: int | None = None
    group_id: str | None = None
    dedup_id: str | None = None
    entered_us: int = 0
    level: int = 0
    receive_count: int = 0
    first_receive_us: int | None = None
    last_receive_us: int | None = None
    state: str = "visible"  # visible | leased | delayed | detached
    listed: bool = False  # in its level's visible list
    due_us: int = 0  # lease end or delay end (leased / delayed only)
    armed: int = 0  # arming order of the running timer
    receipt: int | None = None  # live receipt while leased
    # the due time a durable broker's journal holds: at entry (its delay), then that of
    # every later delay (a nack's, a backoff's); a restart re-arms it (Queue.restart)
    journal_due_us: int = 0

    def moved(self, dead_letter: DeadLetterInfo | None) -> Copy:
        """A new copy of the same message for another queue (receive state reset)."""
        return Copy(id=self.id, body=self.body, attributes=self.attributes,
                    timestamp_us=self.timestamp_us, size=self.size, dead_letter=dead_letter,
                    priority=self.priority, expires_us=self.expires_us,
                    group_id=self.group_id, dedup_id=self.dedup_id)


@dataclass(eq=False)
class Group:
    """A FIFO group: its copies in arrival order and the one leased, if any."""

    members: list[Copy] = field(default_factory=list)
    leased: Copy | None = None


class Queue:
    """A queue: its settings, its copies and its counters."""

    def __init__(self, name: str, settings: Settings, backoff_us: tuple[int, ...],
                 dedup_capacity: int) -> None:
        self.name = name
        self.settings = settings
        self.fifo = settings.fifo
        self.visibility_us = to_us(settings.visibility_timeout)
        self.delay_us = to_us(settings.delay)
        self.retention_us = to_us(settings.retention)
        self.backoff_us = backoff_us
        self.window = DedupWindow(to_us(settings.dedup_window), dedup_capacity)
        self.copies: list[Copy] = []  # every held copy, in arrival order
        self.lists: list[list[Copy]] = [[] for _ in range(settings.max_priority + 1)]
        self.groups: dict[str, Group] = {}
        self.enqueued = 0
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.dead_lettered = 0
        self.redriven = 0
        self.rejected = 0
        self.purged = 0
        self.duplicates = 0
        self.oversized = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        # Not a contract counter: dead letters and redrive moves this queue had no room for.
        self.refused_moves = 0

    def change_settings(self, settings: Settings, backoff_us: tuple[int, ...]) -> None:
        """Take changed settings (``set_queue_settings``).

        Ordering, priorities and deduplication stay; each setting is read from the next
        operation that needs it.
        """
        self.settings = settings
        self.visibility_us = to_us(settings.visibility_timeout)
        self.delay_us = to_us(settings.delay)
        self.retention_us = to_us(settings.retention)
        self.backoff_us = backoff_us

    @property
    def bytes(self) -> int:
        """Body and attribute bytes held."""
        return sum(copy.size for copy in self.copies)

    def holds(self, copy: Copy) -> bool:
        """True while ``copy`` is one of this queue's copies."""
        return any(held is copy for held in self.copies)

    # -- listing -----------------------------------------------------------------------

    def _group_of(self, copy: Copy) -> Group:
        return self.groups[copy.group_id or ""]

    def _list(self, copy: Copy) -> None:
        copy.listed = True
        self.lists[copy.level].append(copy)

    def make_visible(self, copy: Copy) -> None:
        """Enter the visible state; listed unless a FIFO group holds it back."""
        copy.state = "visible"
        copy.listed = False
        if not self.fifo:
            self._list(copy)
            return
        group = self._group_of(copy)
        if group.members[0] is copy and group.leased is None:
            self._list(copy)

    def leave_visible(self, copy: Copy) -> None:
        """Leave the visible state (unlisted)."""
        if copy.listed:
            self.lists[copy.level].remove(copy)
            copy.listed = False

    def lease(self, copy: Copy) -> None:
        """A listed copy becomes leased (the caller arms the timer)."""
        self.leave_visible(copy)
        if self.fifo:
            self._group_of(copy).leased = copy

    def release_group(self, copy: Copy) -> None:
        """A leased copy's lease ended: its group is free again."""
        if self.fifo:
            self._group_of(copy).leased = None

    def listed_for_drop(self) -> list[Copy]:
        """Listed copies in the order drop_oldest removes them (lowest level first)."""
        return [copy for level in self.lists for copy in level]

    def listed_for_receive(self) -> list[Copy]:
        """Listed copies in receive order (highest level first)."""
        return [copy for level in reversed(self.lists) for copy in level]

    def next_for_receive(self) -> Copy | None:
        """The copy a receive takes next, or None."""
        for level in reversed(self.lists):
            if level:
                return level[0]
        return None

    # -- entering and leaving ----------------------------------------------------------

    def add(self, copy: Copy, now_us: int) -> None:
        """Append a copy to the arrival list (and its group); state is the caller's."""
        copy.entered_us = now_us
        copy.level = min(copy.priority, len(self.lists) - 1)
        copy.listed = False
        self.copies.append(copy)
        self.enqueued += 1
        if self.fifo:
            self.groups.setdefault(copy.group_id or "", Group()).members.append(copy)

    def detach(self, copy: Copy) -> None:
        """Take a copy out of every list of the queue (its lease is the caller's)."""
        if copy.state == "visible":
            self.leave_visible(copy)
        copy.state = "detached"
        self.copies.remove(copy)
        if not self.fifo:
            return
        key = copy.group_id or ""
        group = self.groups[key]
        if group.leased is copy:
            group.leased = None
        group.members.remove(copy)
        if not group.members:
            del self.groups[key]
            return
        head = group.members[0]
        if group.leased is None and head.state == "visible" and not head.listed:
            self._list(head)

    def restart(self, now_us: int) -> list[Copy]:
        """What a broker restart leaves of this queue (see ``ModelBroker.restart``).

        A durable queue keeps every copy, in arrival order, with its receive count. A
        copy whose journaled due time is still ahead of ``now_us`` (it entered delayed,
        or a nack or a backoff delayed it, and that time has not come) waits for it:
        returned, in arrival order, for the caller to arm; every other one is visible
        at once, in arrival order (until 2026-12-06 one whose due time had passed was
        armed again, and so came after the others: a copy-forward, which journals no due
        time that has passed, made the broker put it back in its place instead). FIFO
        groups are free. A queue that is not durable is
        emptied and forgets its dedup keys. Receive times are not kept (the journal has
        none), receive counts are. Every counter starts afresh: ``enqueued``
        is the copies held, the others 0 (``dedup_evicted`` too).
        """
        if not self.settings.durable:
            for copy in self.copies:
                copy.state = "detached"
            self.copies = []
            self.groups = {}
            self.window.keys.clear()
        self.lists = [[] for _ in self.lists]
        for group in self.groups.values():
            group.leased = None
        waiting = []
        for copy in self.copies:
            copy.listed = False
            copy.receipt = None
            # receive times are journaled (lease records): a copy keeps them
            if copy.journal_due_us > now_us:
                copy.state = "delayed"
                waiting.append(copy)
            else:
                self.make_visible(copy)
        self.enqueued = len(self.copies)
        self.delivered = self.redelivered = self.acked = self.dead_lettered = 0
        self.redriven = self.rejected = self.purged = self.duplicates = self.oversized = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.refused_moves = 0
        self.window.evicted = 0
        return waiting

    def backoff_after_failure(self, copy: Copy) -> int:
        """Microseconds to wait after the copy's latest failed delivery (0: none)."""
        if not self.backoff_us or copy.receive_count == 0:
            return 0
        return self.backoff_us[min(copy.receive_count, len(self.backoff_us)) - 1]
