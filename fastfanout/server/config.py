"""The broker's configuration: the keys of ``fastfanout serve --config FILE``, checked up front.

Design
------
Prior art: Cargo's and Ruff's TOML files (one flat table of documented keys; an unknown
key is an error that names it, not something silently ignored), and msgspec's typed
decoding (a ``Struct`` with ``forbid_unknown_fields`` checks every key and type at once).

Invariants:

- Every key a file may hold is a field of ``ServerConfig``, with a type, a default and a
  line in ``docs/configuration.md``. A file with a syntax error, a table, an unknown key,
  or a value of the wrong type or out of range is refused before anything binds, with
  one ``InvalidArgument`` line naming the file, the key and the expected form.
- A command-line option and its key share a name (``--max-request-bytes`` is
  ``max_request_bytes``); an option given on the command line wins over the file, and
  both go through the same check. ``--in-memory`` and ``--data-dir`` are one choice:
  either on the command line wins over the other in the file; both in one place is an
  error.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec

from fastfanout.errors import InvalidArgument
from fastfanout.runtime import endpoint_problem
from fastfanout.server.deliveries import DEFAULT_MAX_CONSUMERS, DEFAULT_MAX_LONG_POLLS
from fastfanout.server.local_sessions import BACKLOG_BYTES as LOCAL_BACKLOG_BYTES
from fastfanout.server.loop import (
    DEFAULT_IDLE_SESSION_TIMEOUT,
    DEFAULT_MAX_HELD_BYTES,
    DEFAULT_MAX_QUEUED_REPLIES,
)
from fastfanout.server.sessions import DEFAULT_MAX_HELD_RECEIPTS
from fastfanout.server.streams import DEFAULT_MAX_STREAM_SUBSCRIPTIONS
from fastfanout.settings import (
    DEFAULT_MAX_PATTERN_SUBSCRIPTIONS,
    DEFAULT_MAX_QUEUES,
    DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC,
    DEFAULT_MAX_TOPICS,
    MAX_HIGH_WATER_MARK,
    MAX_RECEIVE_BATCH,
)
from fastfanout.wire.protocol import (
    DEFAULT_MAX_REQUEST_BYTES,
    MIN_FRAME_BYTES,
)

__all__ = ["EXPECTED", "LOG_LEVELS", "ServerConfig", "endpoint_problem", "load_config",
           "server_options"]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
"""The accepted ``log_level`` values (any case)."""

MAX_SECONDS: Final = 86_400.0
"""Longest time a ``serve`` setting in seconds takes (a day): finite, so never ``inf``."""
_Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
_PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
_Bytes = Annotated[int, msgspec.Meta(ge=1)]
_FrameBytes = Annotated[int, msgspec.Meta(ge=MIN_FRAME_BYTES)]
_HighWaterMark = Annotated[int, msgspec.Meta(ge=1, le=MAX_HIGH_WATER_MARK)]
"""A count libzmq or the server keeps in a C int."""


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Every key of a ``fastfanout serve --config`` file (see docs/configuration.md).

    Attributes:
        endpoint: command endpoint, ``ipc://PATH`` or ``tcp://HOST:PORT`` (None: the
            per-user ipc socket, or ``$FASTFANOUT_ENDPOINT``).
        stream_endpoint: stream endpoint (None: ``PATH.stream``, or tcp port PORT+1).
        log_level: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
        heartbeat_interval: seconds between client heartbeats.
        heartbeat_timeout: seconds of silence after which a client is gone.
        max_request_bytes: largest request answered (bytes, all frames together).
        max_frame_bytes: largest frame accepted (bytes; None: 256 MiB, or
            ``max_request_bytes`` when that is larger).
        slow_listener: ``drop`` or ``wait``: what a stream listener that falls behind gets.
        stream_wait: seconds the ``wait`` policy waits for a slow listener.
        push_batch: most messages in one push to a consumer (1 to 10,000; a push never
            exceeds the consumer's prefetch, nor a quarter of a local consumer's ring).
        hold_timeout: seconds a publish to a full ``hold`` queue is held.
        max_held_bytes: bytes of one session's requests held at once.
        max_consumers: push consumers one session may have open.
        max_long_polls: receives of one session waiting for messages at once.
        max_held_receipts: receipts of leases one session holds to release them when
            its client vanishes; past it, new ones are not held.
        local_channels: let clients on this host use shared memory (ipc:// only).
        deliver_by_reference: a push that is exactly one publish frame of a local
            producer goes to a local consumer as a reference to it, not a copy (on by
            default; docs/arrays.md, "Deliveries by reference").
        stream_high_water_mark: stream batches queued per listener before the broker
            drops (``drop``) or waits (``wait``).
        max_stream_subscriptions: subscriptions one listener connection may hold; one
            more ends that connection.
        local_backlog_bytes: bytes a local-channel session may have queued for room in
            its ring before it is ended as a slow client.
        max_queued_replies: replies queued per socket client before it is ended as a
            slow client.
        idle_session_timeout: seconds after which a session without heartbeats that
            holds nothing (no consumer, lease, long poll or held publish) is ended.
        curve_secret_key: path of the broker's ``.key_secret`` certificate (turns on CURVE).
        curve_clients: with CURVE: a directory of allowed client ``*.key`` files, or ``*``.
        data_dir: the broker's data directory (None: the per-user state directory's
            sub-directory of the endpoint, see ``runtime.default_data_dir``).
        in_memory: keep nothing on disk (today's in-memory broker); not with ``data_dir``.
        fsync: ``always``, ``interval`` or ``never``: when the journal is synced to disk.
        fsync_interval: with ``interval``, seconds between syncs.
        max_disk_bytes: most bytes the journal may hold (None: no limit but the disk).
        max_topics: most topics the broker holds.
        max_queues: most queues the broker holds.
        max_subscriptions_per_topic: most subscriptions feeding one topic.
        max_pattern_subscriptions: most pattern subscriptions the broker holds.
        bridge: path of a NATS JetStream bridge rule file (docs/bridge.md), or None.
        metrics: ``HOST:PORT`` where the broker's process serves its Prometheus metrics
            (docs/metrics.md), or None.
        definitions: path of a definitions document the broker imports as it starts
            (docs/semantics.md, "Definitions"), or None.
    """

    endpoint: str | None = None
    stream_endpoint: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    heartbeat_interval: _PositiveSeconds = 0.25
    heartbeat_timeout: _PositiveSeconds = 2.0
    max_request_bytes: _Bytes = DEFAULT_MAX_REQUEST_BYTES
    max_frame_bytes: _FrameBytes | None = None
    slow_listener: Literal["drop", "wait"] = "drop"
    stream_wait: _Seconds = 1.0
    push_batch: Annotated[int, msgspec.Meta(ge=1, le=MAX_RECEIVE_BATCH)] = 8192
    hold_timeout: _Seconds = 30.0
    max_held_bytes: _Bytes = DEFAULT_MAX_HELD_BYTES
    max_consumers: _HighWaterMark = (
        DEFAULT_MAX_CONSUMERS)
    max_long_polls: _HighWaterMark = (
        DEFAULT_MAX_LONG_POLLS)
    max_held_receipts: _HighWaterMark = DEFAULT_MAX_HELD_RECEIPTS
    local_channels: bool = True
    deliver_by_reference: bool = True
    stream_high_water_mark: _HighWaterMark = 10_000
    max_stream_subscriptions: _HighWaterMark = (
        DEFAULT_MAX_STREAM_SUBSCRIPTIONS)
    local_backlog_bytes: _Bytes = LOCAL_BACKLOG_BYTES
    max_queued_replies: _HighWaterMark = DEFAULT_MAX_QUEUED_REPLIES
    idle_session_timeout: _PositiveSeconds = DEFAULT_IDLE_SESSION_TIMEOUT
    curve_secret_key: str | None = None
    curve_clients: str | None = None
    data_dir: str | None = None
    in_memory: bool = False
    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval: Annotated[float, msgspec.Meta(ge=0.001, le=3600)] = 1.0
    max_disk_bytes: Annotated[int, msgspec.Meta(ge=65536)] | None = None
    max_topics: _HighWaterMark = DEFAULT_MAX_TOPICS
    max_queues: _HighWaterMark = DEFAULT_MAX_QUEUES
    max_subscriptions_per_topic: _HighWaterMark = DEFAULT_MAX_SUBSCRIPTIONS_PER_TOPIC
    max_pattern_subscriptions: _HighWaterMark = DEFAULT_MAX_PATTERN_SUBSCRIPTIONS
    bridge: str | None = None
    metrics: str | None = None
    definitions: str | None = None


EXPECTED: Final[dict[str, str]] = {
    "endpoint": "a string, ipc://PATH or tcp://HOST:PORT",
    "stream_endpoint": "a string, ipc://PATH or tcp://HOST:PORT",
    "log_level": "one of " + ", ".join(f'"{level}"' for level in LOG_LEVELS),
    "heartbeat_interval": "a number of seconds > 0 and at most 86400",
    "heartbeat_timeout": "a number of seconds > 0 and at most 86400",
    "max_request_bytes": "an integer number of bytes >= 1",
    "max_frame_bytes": f"an integer number of bytes >= {MIN_FRAME_BYTES}",
    "slow_listener": 'one of "drop", "wait"',
    "stream_wait": "a number of seconds from 0 to 86400",
    "push_batch": f"an integer from 1 to {MAX_RECEIVE_BATCH}",
    "hold_timeout": "a number of seconds from 0 to 86400",
    "max_held_bytes": "an integer number of bytes >= 1",
    "max_consumers": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "max_long_polls": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "max_held_receipts": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "local_channels": "true or false",
    "deliver_by_reference": "true or false",
    "stream_high_water_mark": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "max_stream_subscriptions": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "local_backlog_bytes": "an integer number of bytes >= 1",
    "max_queued_replies": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "idle_session_timeout": "a number of seconds > 0 and at most 86400",
    "curve_secret_key": "a string: the path of a .key_secret certificate",
    "curve_clients": 'a string: a directory of client *.key certificates, or "*"',
    "data_dir": "a string: the path of the broker's data directory",
    "in_memory": "true or false",
    "fsync": 'one of "always", "interval", "never"',
    "fsync_interval": "a number of seconds from 0.001 to 3600",
    "max_disk_bytes": "an integer number of bytes >= 65536",
    "max_topics": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "max_queues": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "max_subscriptions_per_topic": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "max_pattern_subscriptions": f"an integer from 1 to {MAX_HIGH_WATER_MARK}",
    "bridge": "a string: the path of a bridge rule file (docs/bridge.md)",
    "metrics": "a string, HOST:PORT (docs/metrics.md)",
    "definitions": "a string: the path of a definitions document",
}
"""Each key's expected form, as error messages state it."""

_HELP: Final = "see docs/configuration.md"


def _refuse_unknown(source: str, data: Mapping[str, Any]) -> None:
    known = ServerConfig.__struct_fields__
    for key, value in data.items():
        if key in known:
            continue
        if isinstance(value, dict):
            raise InvalidArgument(
                f"{source}: table [{key}] is not allowed: the keys go at the top level of "
                f"the file (remove the line [{key}]); {_HELP}")
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidArgument(
            f"{source}: unknown key {key!r}: {hint}known keys: {', '.join(known)}")


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise InvalidArgument(f"{path}: cannot read the config file: {error.strerror}"
                              ) from None
    except UnicodeDecodeError as error:
        raise InvalidArgument(f"{path}: not UTF-8 text ({error.reason}); {_HELP}") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{path}: not valid TOML: {error}; {_HELP}") from None


def _refuse_unusable(config: ServerConfig, judged: set[str], given: set[str], source: str
                     ) -> None:
    """Refuse values of the right type that would leave a broker unusable.

    Only the keys in ``judged`` are judged (a rule on two keys, only when it holds both):
    the file's own keys, or every key once the command line's are over them. A key in
    ``given`` came from the command line and is named as its option; the others as
    ``source`` (the file).
    """
    def origin(*keys: str) -> str:
        if given & set(keys):
            return "/".join(f"--{key.replace('_', '-')}" for key in keys)
        return source

    pair = {"heartbeat_interval", "heartbeat_timeout"}
    if pair <= judged and not config.heartbeat_interval < config.heartbeat_timeout:
        raise InvalidArgument(
            f"{origin('heartbeat_interval', 'heartbeat_timeout')}: heartbeat_interval = "
            f"{config.heartbeat_interval!r} must be below heartbeat_timeout = "
            f"{config.heartbeat_timeout!r}; {_HELP}")
    if "data_dir" in judged and config.data_dir == "":
        raise InvalidArgument(f"{origin('data_dir')}: data_dir = '' is empty: give a "
                              f"directory ('.' for this one)")
    for key in ("endpoint", "stream_endpoint"):
        value = getattr(config, key)
        problem = endpoint_problem(value) if key in judged and value is not None else None
        if problem is not None:
            raise InvalidArgument(f"{origin(key)}: {key} = {value!r} is malformed: {problem}")
    if ({"in_memory", "data_dir"} <= judged and config.in_memory
            and config.data_dir is not None):
        if "data_dir" in given:   # then in_memory was given too (the file's is set aside)
            said = "--in-memory and --data-dir exclude each other"
        else:
            said = (f"{source}: in_memory = true and data_dir = {config.data_dir!r} exclude "
                    f"each other")
        raise InvalidArgument(f"{said}: a broker keeps its data either in memory or in a "
                              f"data directory; give one of them")


def _spelled(value: Any) -> str:
    """``value`` as a config file spells it (TOML: ``true``, ``[1, 2]``).

    A string keeps Python's repr, single quotes: TOML reads that too.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_spelled(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_spelled(item)}" for key, item in value.items()) + "}"
    return repr(value)


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None
                ) -> ServerConfig:
    """Read and check a config file, then apply command-line ``overrides`` over it.

    Args:
        path: a TOML file of ``ServerConfig`` keys, or None for the defaults.
        overrides: key -> value given on the command line; None values are not given.

    Raises:
        InvalidArgument: the file cannot be read, is not TOML, holds a table or an
            unknown key, or a value (its or an override's) has the wrong type or range
            or would leave a broker unusable (an empty ``data_dir``, a malformed
            endpoint, ``in_memory`` with ``data_dir``, ...); one line naming the file
            and the key. The file is checked whole: a key an override replaces too.
    """
    data = _read(path) if path is not None else {}
    source = path or "the command line"
    _refuse_unknown(source, data)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    merged = {**data, **given}
    # --in-memory and --data-dir are one choice: either one on the command line wins
    # over the other in the file.
    if given.get("in_memory") is True and "data_dir" not in given:
        merged.pop("data_dir", None)
    if "data_dir" in given and "in_memory" not in given:
        merged.pop("in_memory", None)
    data = dict(data)
    for values in (data, merged):
        if isinstance(values.get("log_level"), str):
            values["log_level"] = values["log_level"].upper()
    # the file whole (its every key, those the command line overrides included: an
    # override sets the file's key aside in `merged`, so it is judged here or never),
    # then all together
    for values, judged, whose in ((data, set(data), source),
                                  (merged, set(ServerConfig.__struct_fields__), None)):
        try:
            config = msgspec.convert(values, ServerConfig)
        except msgspec.ValidationError as error:
            detail, _, where = str(error).partition(" - at `$.")
            key = where.rstrip("`")
            origin = whose or (f"--{key.replace('_', '-')}" if key in given else source)
            raise InvalidArgument(
                f"{origin}: {key} = {_spelled(values.get(key))} is not "
                f"{EXPECTED.get(key, 'valid')} ({detail}); {_HELP}") from None
        _refuse_unusable(config, judged, set() if whose else set(given), source)
    return config


def server_options(config: ServerConfig) -> dict[str, Any]:
    """The ``Server`` keyword arguments of ``config``.

    ``log_level``, ``curve_secret_key`` (a file the caller loads into
    ``Server(curve=...)``), ``in_memory`` (the caller picks ``data_dir``: see
    ``fastfanout serve``), ``bridge``, ``metrics`` and ``definitions`` (the caller runs
    them beside the server) are
    left out, and so are keys left at None (``Server`` then picks its default: for
    ``max_frame_bytes`` the larger of 256 MiB and ``max_request_bytes``, so a raised
    request limit is not undercut by the frame limit).
    """
    return {key: getattr(config, key) for key in config.__struct_fields__
            if key not in ("log_level", "curve_secret_key", "in_memory", "bridge", "metrics",
                           "definitions")
            and getattr(config, key) is not None}
