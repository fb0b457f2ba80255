from collections.abc import Callable
from typing import Any, final

from typing_extensions import Buffer

from fastfanout._ext.fanout import Dispatcher
from fastfanout._ext.locks import FastCondition
from fastfanout._ext.message import Message, Settler
from fastfanout._ext.store import Store
from fastfanout.records import Attributes, PublishResult

__all__ = ["SingleCalls"]

@final
class SingleCalls(Settler):
    closed: bool
    def __init__(self, owner: Any, lock: Any, arrivals: FastCondition, store: Store,
                 dispatcher: Dispatcher, topics: dict[str, int], queues: dict[str, int],
                 queue_names: dict[int, str],
                 clock: Callable[[], float],
                 topic_id: Callable[[object], int], queue_id: Callable[[object], int],
                 publish_options: Callable[..., PublishResult] | None = None,
                 send_options: Callable[..., PublishResult] | None = None,
                 receive_options: Callable[..., list[Message]] | None = None,
                 ack_options: Callable[..., None] | None = None,
                 settles: bool = True) -> None: ...
    def publish(self, topic: str, body: object, *, attributes: Any = None,
                delay: float | None = None, deliver_at: Any = None,
                group_id: str | None = None, dedup_id: str | None = None,
                priority: int | None = None, ttl: float | None = None) -> PublishResult: ...
    def send(self, queue: str, body: object, *, attributes: Any = None,
             delay: float | None = None, deliver_at: Any = None,
             group_id: str | None = None, dedup_id: str | None = None,
             priority: int | None = None, ttl: float | None = None) -> PublishResult: ...
    def receive(self, queue: str, *, max_messages: int = 1, wait: float = 0.0,
                visibility_timeout: float | None = None, owner: int = 0) -> list[Message]: ...
    def ack(self, receipt: int, *, session: int = 0) -> None: ...
    def nack(self, receipt: int, *, delay: float | None = None) -> None: ...
    def extend(self, receipt: int, seconds: float) -> None: ...
    def term(self, receipt: int) -> None: ...
    def reply(self, address: str, body: Buffer, *,
              attributes: Attributes | None = None) -> None: ...
