"""fastfanout: an in-host SNS+SQS-style message broker with a Cython core.

Topics fan out to queues with leases, redelivery and dead-letter queues, in process
(``Broker``) or across processes over ZeroMQ. This module only re-exports the public API.
"""

from fastfanout._ext.batches import PublishBatch
from fastfanout._ext.message import Message
from fastfanout.broker.embedded import Broker, QueueSettings, TopicSettings
from fastfanout.broker.producer import Producer
from fastfanout.client import Client, connect
from fastfanout.errors import (
    AlreadyExists,
    BridgeUnavailable,
    BrokenConnection,
    BrokerRunning,
    CallTimeout,
    Closed,
    FastFanoutError,
    InvalidArgument,
    InvalidFilterPolicy,
    LimitExceeded,
    MalformedBatch,
    MalformedFrame,
    MessageTooLarge,
    NotFound,
    PeerGone,
    PeerLost,
    PeerUnavailable,
    ProtocolError,
    QueueFull,
    RequestTooLarge,
    ServerStopping,
    SessionExpired,
    StaleReceipt,
    StoreFailed,
    StoreFull,
    TransportError,
    UnknownOpcode,
    Unroutable,
    UnsafeDirectory,
    UnsafeLockFile,
    UnsupportedVersion,
    UsedAfterFork,
    WouldBlock,
    WrongClient,
    WrongEventLoop,
)
from fastfanout.records import DeadLetterInfo, ExponentialBackoff, PublishEntry, PublishResult
from fastfanout.server.allocator import keep_freed_memory
from fastfanout.server.loop import Server, serve
from fastfanout.stats import BrokerStats, QueueStats, SubscriptionStats, TopicStats
from fastfanout.workers import Worker

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "BridgeUnavailable",
    "BrokenConnection",
    "Broker",
    "BrokerRunning",
    "BrokerStats",
    "CallTimeout",
    "Client",
    "Closed",
    "DeadLetterInfo",
    "ExponentialBackoff",
    "FastFanoutError",
    "InvalidArgument",
    "InvalidFilterPolicy",
    "LimitExceeded",
    "MalformedBatch",
    "MalformedFrame",
    "Message",
    "MessageTooLarge",
    "NotFound",
    "PeerGone",
    "PeerLost",
    "PeerUnavailable",
    "Producer",
    "ProtocolError",
    "PublishBatch",
    "PublishEntry",
    "PublishResult",
    "QueueFull",
    "QueueSettings",
    "QueueStats",
    "RequestTooLarge",
    "Server",
    "ServerStopping",
    "SessionExpired",
    "StaleReceipt",
    "StoreFailed",
    "StoreFull",
    "SubscriptionStats",
    "TopicSettings",
    "TopicStats",
    "TransportError",
    "UnknownOpcode",
    "Unroutable",
    "UnsafeDirectory",
    "UnsafeLockFile",
    "UnsupportedVersion",
    "UsedAfterFork",
    "Worker",
    "WouldBlock",
    "WrongClient",
    "WrongEventLoop",
    "__version__",
    "connect",
    "keep_freed_memory",
    "serve",
]
