from collections.abc import Iterable

from typing_extensions import Buffer

from fastfanout._ext.batches import EncodedBatch, PublishBatch, RingBatch
from fastfanout._ext.dedup import DedupWindow
from fastfanout._ext.store import Store
from fastfanout.records import PublishEntry
from fastfanout.semantics.filter_policy import PlainPolicy

_Entry = Buffer | PublishEntry

class Dispatcher:
    def __init__(self, store: Store) -> None: ...
    def add_topic(
        self, fifo: bool = False, content_dedup: bool = False,
        dedup_window_us: int = 300_000_000, name: bytes = b""
    ) -> int:
        """Create a topic; ``name`` goes into the blobs of its publishes that reach a
        queue keeping topics."""
    def remove_topic(self, topic: int) -> None: ...
    def dedup_window(self, topic: int) -> DedupWindow: ...
    def set_targets(
        self,
        topic: int,
        queue_ids: list[int],
        policies: list[PlainPolicy | list[PlainPolicy] | None] | None = None,
        subscriptions: list[list[int]] | None = None,
    ) -> None:
        """Replace a topic's targets; ``subscriptions``: per target, the ids of the
        subscriptions credited with its copies and refusals."""
    def add_target(
        self, topic: int, queue_id: int, policy: PlainPolicy | None, subscription_id: int
    ) -> None:
        """Append one target fed by one subscription, in amortised O(1) (what
        ``set_targets`` with it last would do)."""
    def remove_target(self, topic: int, position: int) -> None:
        """Remove one target; the later ones move up one place (a memmove, no rebuild)."""
    def set_target_policy(self, topic: int, position: int, policy: PlainPolicy | None) -> None:
        """Replace the filter of one target fed by one subscription, O(1)."""
    def replace_target(
        self,
        topic: int,
        position: int,
        policies: PlainPolicy | list[PlainPolicy] | None,
        subscriptions: list[int],
    ) -> None:
        """Give one target new feeders and filters in place (a queue fed twice): what
        ``set_targets`` would make of it, without rebuilding the topic's other targets."""
    def forget_subscription(self, subscription_id: int) -> None:
        """Drop a deleted subscription's counters (after the topics it fed were
        re-targeted)."""
    def subscription_counters(self) -> dict[int, tuple[int, int, int, int, int]]:
        """Subscription id -> (delivered, filtered_out, rejected, oversized, duplicates);
        a subscription that has fed no topic yet is absent (all 0)."""
    def has_room(self, queue: int, messages: int, size: int) -> bool: ...
    def withdraw_refusal(self, queue: int, messages: int) -> None: ...
    def topic_counters(
        self, topic: int, now_us: int
    ) -> tuple[int, int, int, int, int, int, int]: ...
    def publish(
        self, topic: int, entries: Iterable[_Entry] | EncodedBatch | RingBatch, now_us: int,
    ) -> PublishBatch: ...
    def send(
        self, queue: int, entries: Iterable[_Entry] | EncodedBatch | RingBatch, now_us: int,
    ) -> PublishBatch: ...
