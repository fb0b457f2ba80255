"""fastfanout: an in-host SNS+SQS-style message broker with a Cython core.

Topics fan out to queues with leases, redelivery and dead-letter queues, in process
(``Broker``) or across processes over ZeroMQ. This module only re-exports the public API.

The names load on first use (PEP 562): ``import fastfanout`` alone imports nothing heavy,
so that the command line (``fastfanout.entry``) runs its first line, which holds the
stop signals, before the native core, ZeroMQ and click load (``import fastfanout`` took
0.4 s). ``from fastfanout import Broker`` and ``fastfanout.Broker`` import its module
then, as before; so does a submodule's name (``fastfanout.aio``).
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
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
        NoReply,
        NoResponders,
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
    from fastfanout.records import (
        DeadLetterInfo,
        ExponentialBackoff,
        PublishEntry,
        PublishResult,
        Reply,
    )
    from fastfanout.server.allocator import keep_freed_memory
    from fastfanout.server.loop import Server, serve
    from fastfanout.stats import (
        BrokerStats,
        QueueStats,
        ReplyStats,
        SubscriptionStats,
        TopicStats,
    )
    from fastfanout.workers import Worker

_EXPORTS: dict[str, str] = {
    "PublishBatch": "fastfanout._ext.batches",
    "Message": "fastfanout._ext.message",
    "Broker": "fastfanout.broker.embedded",
    "QueueSettings": "fastfanout.broker.embedded",
    "TopicSettings": "fastfanout.broker.embedded",
    "Producer": "fastfanout.broker.producer",
    "Client": "fastfanout.client",
    "connect": "fastfanout.client",
    "AlreadyExists": "fastfanout.errors",
    "BridgeUnavailable": "fastfanout.errors",
    "BrokenConnection": "fastfanout.errors",
    "BrokerRunning": "fastfanout.errors",
    "CallTimeout": "fastfanout.errors",
    "Closed": "fastfanout.errors",
    "FastFanoutError": "fastfanout.errors",
    "InvalidArgument": "fastfanout.errors",
    "InvalidFilterPolicy": "fastfanout.errors",
    "LimitExceeded": "fastfanout.errors",
    "MalformedBatch": "fastfanout.errors",
    "MalformedFrame": "fastfanout.errors",
    "MessageTooLarge": "fastfanout.errors",
    "NoReply": "fastfanout.errors",
    "NoResponders": "fastfanout.errors",
    "NotFound": "fastfanout.errors",
    "PeerGone": "fastfanout.errors",
    "PeerLost": "fastfanout.errors",
    "PeerUnavailable": "fastfanout.errors",
    "ProtocolError": "fastfanout.errors",
    "QueueFull": "fastfanout.errors",
    "RequestTooLarge": "fastfanout.errors",
    "ServerStopping": "fastfanout.errors",
    "SessionExpired": "fastfanout.errors",
    "StaleReceipt": "fastfanout.errors",
    "StoreFailed": "fastfanout.errors",
    "StoreFull": "fastfanout.errors",
    "TransportError": "fastfanout.errors",
    "UnknownOpcode": "fastfanout.errors",
    "Unroutable": "fastfanout.errors",
    "UnsafeDirectory": "fastfanout.errors",
    "UnsafeLockFile": "fastfanout.errors",
    "UnsupportedVersion": "fastfanout.errors",
    "UsedAfterFork": "fastfanout.errors",
    "WouldBlock": "fastfanout.errors",
    "WrongClient": "fastfanout.errors",
    "WrongEventLoop": "fastfanout.errors",
    "DeadLetterInfo": "fastfanout.records",
    "ExponentialBackoff": "fastfanout.records",
    "PublishEntry": "fastfanout.records",
    "PublishResult": "fastfanout.records",
    "Reply": "fastfanout.records",
    "keep_freed_memory": "fastfanout.server.allocator",
    "Server": "fastfanout.server.loop",
    "serve": "fastfanout.server.loop",
    "BrokerStats": "fastfanout.stats",
    "QueueStats": "fastfanout.stats",
    "ReplyStats": "fastfanout.stats",
    "SubscriptionStats": "fastfanout.stats",
    "TopicStats": "fastfanout.stats",
    "Worker": "fastfanout.workers",
}
"""Each public name -> the module that defines it (imported on the name's first use)."""


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name.startswith("_"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        try:   # a submodule (fastfanout.aio after a bare ``import fastfanout``)
            return _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "NoReply",
    "NoResponders",
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
    "Reply",
    "ReplyStats",
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
