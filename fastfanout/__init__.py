"""fastfanout: an in-host SNS+SQS-style message broker with a Cython core.

Topics fan out to queues with leases, redelivery and dead-letter queues, in process
(``Broker``) or across processes over ZeroMQ. This module only re-exports the public API.
"""

from fastfanout._ext.batches import PublishBatch
from fastfanout._ext.message import Message
from fastfanout.allocator import keep_freed_memory
from fastfanout.broker import Broker, QueueSettings, TopicSettings
from fastfanout.client import Client, connect
from fastfanout.errors import (
    AlreadyExists,
    Closed,
    FastFanoutError,
    InvalidArgument,
    InvalidFilterPolicy,
    MalformedBatch,
    MessageTooLarge,
    NotFound,
    QueueFull,
    StaleReceipt,
)
from fastfanout.producer import Producer
from fastfanout.records import DeadLetterInfo, ExponentialBackoff, PublishEntry, PublishResult
from fastfanout.server import Server, serve
from fastfanout.stats import BrokerStats, QueueStats, TopicStats

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Broker",
    "BrokerStats",
    "Client",
    "Closed",
    "DeadLetterInfo",
    "ExponentialBackoff",
    "FastFanoutError",
    "InvalidArgument",
    "InvalidFilterPolicy",
    "MalformedBatch",
    "Message",
    "MessageTooLarge",
    "NotFound",
    "Producer",
    "PublishBatch",
    "PublishEntry",
    "PublishResult",
    "QueueFull",
    "QueueSettings",
    "QueueStats",
    "Server",
    "StaleReceipt",
    "TopicSettings",
    "TopicStats",
    "__version__",
    "connect",
    "keep_freed_memory",
    "serve",
]
