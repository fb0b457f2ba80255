from typing import Any

from fastfanout._ext.message import Message
from fastfanout._ext.sinks import FrameSink
from fastfanout._ext.store import Store

def receive(
    self: Store, qid: int, max_messages: int, lease_us: int, now_us: int, owner: Any,
    tag: int = 0,
) -> list[Message]: ...
def receive_push(
    self: Store, qid: int, max_messages: int, lease_us: int, now_us: int,
    sink: FrameSink | None, header: bytes, owner: int = 0,
    max_bytes: int | None = None,
) -> tuple[bytes | None, int, bytes, int, bool]: ...
