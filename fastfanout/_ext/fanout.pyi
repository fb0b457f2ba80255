from collections.abc import Iterable, Iterator
from typing import overload

from fastfanout._ext.store import Store
from fastfanout.filter_policy import CompiledPolicy
from fastfanout.records import PublishEntry, PublishResult

MAX_ATTRIBUTES: int
MAX_ATTRIBUTE_NAME: int
MAX_ID_LENGTH: int
MAX_DELAY_US: int
MAX_BODY: int

_Entry = bytes | bytearray | memoryview | PublishEntry

class PublishBatch:
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> PublishResult: ...
    @overload
    def __getitem__(self, index: slice) -> list[PublishResult]: ...
    def __iter__(self) -> Iterator[PublishResult]: ...
    @property
    def message_ids(self) -> list[int]: ...

class Dispatcher:
    def __init__(self, store: Store) -> None: ...
    def add_topic(
        self, fifo: bool = False, content_dedup: bool = False, dedup_window_us: int = 300_000_000
    ) -> int: ...
    def remove_topic(self, topic: int) -> None: ...
    def set_targets(
        self, topic: int, queue_ids: list[int], policies: list[CompiledPolicy | None] | None = None
    ) -> None: ...
    def topic_counters(self, topic: int) -> tuple[int, int, int, int, int, int, int]: ...
    def publish(
        self, topic: int, entries: Iterable[_Entry] | EncodedBatch, now_us: int
    ) -> PublishBatch: ...
    def send(
        self, queue: int, entries: Iterable[_Entry] | EncodedBatch, now_us: int
    ) -> PublishBatch: ...

class EncodedBatch:
    frame: bytes | bytearray | memoryview
    def __init__(self, frame: bytes | bytearray | memoryview) -> None: ...
