from typing import Any

from fastfanout._ext.store import Store

def add_queue(
    store: Store, name: str, visibility_us: int, delay_us: int, retention_us: int,
    max_messages: int, max_bytes: int, max_message_size: int, max_receive_count: int,
    dead_letter_queue: int, overflow: int, max_priority: int, fifo: bool = False,
    content_dedup: bool = False, dedup_window_us: int = 300_000_000,
    backoff_us: list[int] | None = None,
) -> int:
    """Create a queue from validated settings; returns its id (a deleted queue's, if any)."""

def set_queue_settings(
    store: Store, qid: int, visibility_us: int, delay_us: int, retention_us: int,
    max_messages: int, max_bytes: int, max_message_size: int, max_receive_count: int,
    dead_letter_queue: int, overflow: int, backoff_us: list[int] | None = None) -> None:
    """Change the settings of live queue ``qid`` that may change (validated settings);
    each applies from the next operation that reads it, retention to held messages too."""

def set_keeps_topics(store: Store, qid: int, keeps: bool) -> None:
    """Whether a publish reaching queue ``qid`` puts its topic's name into the message's
    blob (its deliveries carry the topic): set for a queue holding a pattern subscription."""

def remove_queue(store: Store, qid: int) -> None:
    """Delete a queue and every copy it holds (their receipts go stale)."""

def redrive(
    store: Store, dlq: int, to: int, max_messages: int, now_us: int,
    live_queues: dict[str, int],
) -> int:
    """Move dead-lettered visible messages back; returns how many moved."""

def purge(store: Store, qid: int) -> int:
    """Remove every message of the queue; returns how many."""

def release_all(store: Store) -> int:
    """Free every copy every queue holds, journaling nothing (the broker is closing);
    returns how many."""

def counters(store: Store, qid: int, now_us: int) -> tuple[Any, ...]:
    """The queue's counters and gauges as a tuple, in QueueStats field order."""
