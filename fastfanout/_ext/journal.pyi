from collections.abc import Callable
from typing import Any, Final

Buffer = bytes | bytearray | memoryview

RECORD_HEADER_BYTES: Final[int]
SEGMENT_HEADER_BYTES: Final[int]
MAX_PAYLOAD_BYTES: Final[int]
FSYNC_POLICIES: Final[tuple[str, ...]]
MAGIC: Final[bytes]

def crc32c(data: Buffer, previous: int = 0) -> int: ...
def crc32c_hardware() -> bool: ...
def segment_name(base_seq: int) -> str: ...
def segment_header(base_seq: int) -> bytes: ...
def segments(directory: str | Any) -> list[tuple[int, str]]: ...

class ScanReport:
    records: int
    bytes: int
    first_seq: int
    last_seq: int
    torn_tail: dict[str, Any] | None
    skipped: list[dict[str, Any]]
    bad_segments: list[str]

def scan(directory: str | Any, callback: Callable[[int, int, bytes], object] | None = None,
         repair: bool = True) -> ScanReport: ...

class Journal:
    directory: str
    next_seq: int
    segment_bytes: int
    written_seq: int
    synced_seq: int
    bytes_written: int
    syncs: int
    full_refusals: int
    failure: str | None
    segment: str
    segment_index: int
    auto_roll: bool
    segment_size: int
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def current_segment_bytes(self) -> int: ...
    def __init__(self, directory: str | Any, next_seq: int = 1,
                 segment_bytes: int = ..., segment_index: int = 0,
                 auto_roll: bool = True) -> None: ...
    def roll(self) -> None: ...
    def append(self, kind: int, payload: Buffer) -> int: ...
    def flush(self) -> int: ...
    def sync(self) -> int: ...
    def commit(self, sync: bool = True) -> int: ...
    def synced_sizes_by_segment(self) -> dict[str, int]: ...
    def remove_segments_before(self, seq: int) -> int: ...
    def close(self) -> None: ...

def inject_fault(operation: str, error: int, after: int = 0) -> None: ...
