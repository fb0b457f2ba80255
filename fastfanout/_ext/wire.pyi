from collections.abc import Iterable
from datetime import datetime

from typing_extensions import Buffer

from fastfanout.records import Attributes, PublishEntry

MAX_DELAY: float

_BytesLike = bytes | bytearray | memoryview

class FrameBuilder:
    body_bytes: int
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def append_body(self, body: Buffer, index: int = 0) -> int: ...
    def append(
        self,
        body: Buffer,
        attributes: Attributes | None = None,
        delay: float | None = None,
        deliver_at: float | datetime | None = None,
        group_id: str | None = None,
        dedup_id: str | None = None,
        priority: int | None = None,
        ttl: float | None = None,
        index: int = 0,
    ) -> int: ...
    def extend(self, entries: Iterable[Buffer | PublishEntry]) -> None: ...
    def take(self) -> bytes: ...

def encode_entries(entries: Iterable[Buffer | PublishEntry]) -> bytes: ...
def receipts_of(frame: _BytesLike) -> bytes: ...
def count_of(frame: _BytesLike) -> int: ...
def receipt_span(frame: _BytesLike) -> tuple[int, int, int]: ...
