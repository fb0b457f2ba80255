from collections.abc import Iterator
from typing import overload

from fastfanout._ext.blobs import BodySource
from fastfanout.records import Attributes, PublishResult

MAX_ATTRIBUTES: int
MAX_ATTRIBUTE_NAME: int
MAX_ID_LENGTH: int
MAX_DELAY_US: int
MAX_BODY: int
IN_PLACE_MIN_BODY: int

def encode_attributes(attributes: Attributes | None) -> bytes | None:
    """Check attributes as a publish does and encode them (msgpack); None for none."""

class PublishBatch:
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> PublishResult: ...
    @overload
    def __getitem__(self, index: slice) -> list[PublishResult]: ...
    def __iter__(self) -> Iterator[PublishResult]: ...
    @property
    def message_ids(self) -> list[int]: ...
    @property
    def accepted(self) -> int: ...
    def to_wire(self) -> bytes: ...
    def stream_frame(
        self, frame: bytes | bytearray | memoryview, topic: str, first_sequence: int, now_us: int
    ) -> tuple[bytes, int]: ...

class RingBatch:
    frame: bytes | bytearray | memoryview
    def __init__(self, frame: bytes | bytearray | memoryview) -> None: ...

class EncodedBatch:
    frame: bytes | bytearray | memoryview | BodySource
    def __init__(self, frame: bytes | bytearray | memoryview | BodySource) -> None: ...
