from collections.abc import Callable, Sized
from typing import Any, final

from fastfanout._ext.wire import FrameBuilder

__all__ = ["NowaitGate", "OfferGate"]

@final
class OfferGate:
    closed: bool
    @property
    def offered(self) -> int: ...
    def __init__(self, builder: FrameBuilder, batch_messages: int, batch_bytes: int,
                 kept: Sized, blocked: Callable[[], object], opened: Callable[[], object],
                 full: Callable[[], object], result: Any = None) -> None: ...
    def offer(self, body: object) -> Any: ...

@final
class NowaitGate:
    def __init__(self, core: Any, new_future: Callable[[int], Any],
                 send_out: Callable[[], object], opened: Callable[[], float],
                 connection: Any = None) -> None: ...
    def enqueue(self, opcode: int, name: str, body: object) -> Any: ...
