"""A durable broker's storage: its data directory, lock, journal, recovery and compaction.

``Durability`` is what ``Broker(data_dir=...)`` adds to a broker. The per-message records
(a copy enqueued, leased, delayed, removed) are appended in C by the store
(``ext/store.pyx``) for durable queues only; this module writes the rare ones (topology
changes, snapshots) as msgpack, commits by the fsync policy, recovers the broker from the
journal before it serves anything (the records are replayed in C by
``ext/recovery.pyx``; this module works per queue), and removes segments once nothing
live is in them. The on-disk format and the recovery steps are in docs/storage.md.

It meets the broker through a small interface in each direction (docs/storage.md, "The
broker and its storage"): it needs ``BrokerState`` of the broker (implemented by
``fastfanout.broker.administration.StorageView``), and the broker reports its changes
of shape through ``Durability.topic_created`` ... ``unsubscribed``. It imports nothing
of the broker.

Invariants:

- One broker per data directory: ``DATA_DIR/lock`` and ``DATA_DIR`` itself are held
  with ``flock`` while the broker is open.
- Every segment this module opens begins with a ``snapshot`` record (topology, dedup
  windows, next ids), so recovery can start from the oldest remaining segment: segments
  older than the oldest one holding the message record of a live durable copy are
  removed.
- Nothing a caller was told is stored (a publish's result, a topology call's return)
  is missing from the file (``flush``) when the call returns; with ``fsync="always"``
  it is on disk (``fdatasync``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import msgspec

from fastfanout._ext import journal as journal_ops
from fastfanout._ext.dedup import DedupWindow
from fastfanout._ext.recovery import Replay
from fastfanout._ext.store import RECORD_KINDS, Store
from fastfanout.errors import (
    BrokerRunning,
    FastFanoutError,
    InvalidArgument,
    StoreFailed,
    StoreFull,
)
from fastfanout.records import ExponentialBackoff
from fastfanout.settings import QueueSettings, Subscription, TopicSettings

__all__ = ["FSYNC_POLICIES", "SEGMENT_BYTES", "BrokerState", "CommitTicket", "Durability",
           "QueueState", "TopicState", "Topology"]

log = logging.getLogger("fastfanout.storage.durability")

FSYNC_POLICIES = ("always", "interval", "never")
"""The fsync policies of a durable broker."""
CommitTicket = tuple[int, bool]
"""What ``commit_begin`` returns for ``commit_end``: the journal's drop count when the
batch's first publish was journaled, and whether it is synced."""
SEGMENT_BYTES = 64 << 20
"""A segment is closed (and a new one begun with a snapshot) once it holds this many
bytes of records after its head snapshot; with ``max_disk_bytes`` set, at most a quarter
of it."""
COPY_FORWARD_COPIES = 10_000
"""At each segment roll, the live copies of the oldest segments are journaled afresh
(copied forward) when they are at most this many and at most a quarter of those
segments' records (taken together), so a few long-lived messages do not keep old
segments on disk; a backlog stays where it is (it is live data, and rewriting it would
cost more)."""
SEQUENCE_JUMP_LIMIT = 1 << 20
"""A restart begins its segment past a last entry of the journal that holds no record
(a roll a crash cut short, a stray file named like a segment) when that entry's name is
at most this many sequences ahead; one further ahead is left behind (a jump there would
put the records after it out of recovery's reach: until 2026-12-05 a stray file named
like a far segment lost every record written after the restart that jumped to it)."""
FLUSH_BYTES = 1 << 20
"""Records of settle calls are buffered until the next commit, or until this many bytes
wait (then the next call flushes them)."""
FILE_CHECK_INTERVAL = 1.0
"""Seconds between checks (at ``sync_due``) that the journal's segment file is still in
its directory (``Journal.check_file``)."""
ID_BLOCK = 1 << 16
"""Message ids are reserved in the journal this many at a time: before a commit confirms
a message whose id reaches past the reservation, an ``ids`` record reserves the next
block, so ids given out before a crash are never given out again (those of messages no
durable queue kept included); a restart may skip up to a block."""
JOURNAL_DIRECTORY = "journal"
LOCK_FILE = "lock"
RESERVE_FILE = "reserve"
RESERVE_BYTES = 1 << 20
"""Bytes of disk a durable broker holds in reserve (the file ``reserve`` in its data
directory; at most a sixteenth of the file system): on a disk that is really full, it
is given back so the broker can begin a new segment — at a start, or to roll away a
segment whose messages were all settled — and taken again once there is room."""
RESERVE_RETRY_SECONDS = 1.0
"""How often a broker without its reserve tries to take it again (at a commit, or at the
server's housekeeping)."""

_TOPOLOGY = RECORD_KINDS["topology"]
_SNAPSHOT = RECORD_KINDS["snapshot"]

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


def settings_record(settings: QueueSettings) -> dict[str, Any]:
    """A queue's settings as ``create_queue`` keyword arguments, msgpack-ready."""
    record = asdict(settings)
    record.pop("durable", None)
    backoff = settings.redelivery_backoff
    if isinstance(backoff, ExponentialBackoff):
        record["redelivery_backoff"] = {"exponential": list(backoff)}
    elif backoff is not None:
        record["redelivery_backoff"] = list(backoff)
    return record


def settings_arguments(record: dict[str, Any]) -> dict[str, Any]:
    """``create_queue`` keyword arguments from ``settings_record``'s output."""
    arguments = dict(record)
    backoff = arguments.get("redelivery_backoff")
    if isinstance(backoff, dict):
        arguments["redelivery_backoff"] = ExponentialBackoff(*backoff["exponential"])
    elif backoff is not None:
        arguments["redelivery_backoff"] = tuple(backoff)
    return arguments


def _file_bytes(path: str) -> int:
    """Bytes a journal entry holds on disk.

    A regular file's size; 0 for anything else (a directory or FIFO named like a
    segment: reported, never read) and for an entry gone since it was listed.
    """
    try:
        status = os.stat(path)
    except OSError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def _make_directory(path: str, what: str, hint: str) -> None:
    """Create directory ``path`` (mode 0700) unless it is one.

    Raises:
        InvalidArgument: ``path``, or a directory above it, is something else (a file).
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = path   # the nearest of it and its parents that exists
        while not os.path.lexists(blocker) and os.path.dirname(blocker) != blocker:
            blocker = os.path.dirname(blocker)
        raise InvalidArgument(f"{what} {path} must be a directory, but {blocker} is not "
                              f"one: {hint}") from None


def _unusable(directory: str, exc: OSError) -> OSError | StoreFailed | StoreFull:
    """The typed error for an OS error on a data directory's files at start.

    No room (``ENOSPC``, ``EFBIG``, ``EDQUOT``) is ``StoreFull``, as on a full disk later
    (until 2026-12-07 ``StoreFailed``, whose advice was permissions). (A
    ``FastFanoutError`` that is an ``OSError``, a ``TransportError``, stays itself.)
    """
    if isinstance(exc, FastFanoutError):
        return exc
    where = exc.filename if exc.filename is not None else directory
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return StoreFull(
            f"no room to start on the data directory {directory}: {where}: "
            f"{exc.strerror or exc}; free space on that file system (or give a data "
            f"directory on a larger one), then start it again")
    return StoreFailed(
        f"cannot use the data directory {directory}: {where}: {exc.strerror or exc}; the "
        f"broker must read and write every file in it: check their permissions and owner, "
        f"an immutable attribute (lsattr), a read-only file system, the disk, then start "
        f"it again")


def _head_snapshot(path: str, base: int) -> bytes | None:
    """The payload of the snapshot heading segment ``path`` (named ``base``).

    None when that first record is not a good snapshot (or cannot be read).
    """
    head = _head_record(path, base)
    return head[1] if head is not None and head[0] == _SNAPSHOT else None


def _head_record(path: str, base: int) -> tuple[int, bytes] | None:
    """The kind and payload of the first record of segment ``path`` (named ``base``).

    None when it is not a good record of sequence ``base`` (or cannot be read).
    """
    header = journal_ops.SEGMENT_HEADER_BYTES
    record = journal_ops.RECORD_HEADER_BYTES
    try:
        # (O_NONBLOCK, and regular files only: a FIFO named like a segment would hold
        # up the start, waiting for a writer)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        with open(fd, "rb") as file:
            file.seek(header)
            head = file.read(record)
            if len(head) < record:
                return None
            length = int.from_bytes(head[4:8], "little")
            if length > journal_ops.MAX_PAYLOAD_BYTES:
                return None
            payload = file.read(length)
    except OSError:
        return None
    if (len(payload) < length or head[16] == 0
            or int.from_bytes(head[8:16], "little") != base
            or journal_ops.crc32c(head[4:] + payload) != int.from_bytes(head[:4], "little")):
        return None
    return head[16], payload


def _lock(directory: str) -> list[int]:
    """Take ``DIRECTORY/lock`` and ``DIRECTORY`` itself (flock); returns their fds.

    The directory is locked too because a lock file is easily taken for a stale one:
    removed under a running broker, it would let a second broker lock a new one and
    work on the same journal (its compaction deleting the segment the first one
    writes to).

    Raises:
        BrokerRunning: another live broker holds either (its pid named when known).
    """
    fd = _lock_file(directory)
    try:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        os.close(fd)
        raise
    try:
        fcntl.flock(directory_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as exc:
        os.close(directory_fd)
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise BrokerRunning(
                f"the data directory {directory} is in use by another broker (pid unknown: "
                f"its lock file {os.path.join(directory, LOCK_FILE)} was removed while it "
                f"ran; stop that broker first)") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return [fd, directory_fd]


def _lock_file(directory: str) -> int:
    """Take ``DIRECTORY/lock`` (flock, exclusive); returns its descriptor.

    Raises:
        BrokerRunning: another live broker holds it (its pid named).
    """
    path = os.path.join(directory, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgument(f"{path} is a symbolic link: refused") from None
        if exc.errno == errno.EISDIR:
            raise InvalidArgument(f"{path} is a directory: the broker's lock file must be "
                                  f"a file (remove it)") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BrokerRunning(
            f"the data directory {directory} is in use by another broker (pid {holder})"
        ) from None
    return fd


# -- the interface between the broker and its storage ------------------------------------

@dataclass(frozen=True, slots=True)
class TopicState:
    """One topic of a broker, as its storage sees it.

    Attributes:
        name: the topic's name.
        id: its id in the broker (``restore_topology`` ignores it: ids are new).
        settings: what it was created with.
        window: its dedup window (None in a topology given to ``restore_topology``).
    """

    name: str
    id: int
    settings: TopicSettings
    window: DedupWindow | None = None


@dataclass(frozen=True, slots=True)
class QueueState:
    """One queue of a broker, as its storage sees it.

    Attributes:
        name: the queue's name.
        id: its id in the broker (``restore_topology`` ignores it: ids are new).
        settings: what it was created with (``durable`` included).
        window: its dedup window (None in a topology given to ``restore_topology``).
    """

    name: str
    id: int
    settings: QueueSettings
    window: DedupWindow | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    """A broker's shape: what a snapshot records and what recovery restores.

    Attributes:
        topics: every topic.
        queues: every queue, a dead-letter queue before the queues that use it.
        subscriptions: every subscription by id (``compiled`` may be None).
        next_subscription: the id the next subscription gets.
    """

    topics: list[TopicState]
    queues: list[QueueState]
    subscriptions: dict[int, Subscription]
    next_subscription: int


class BrokerState(Protocol):
    """What a durable broker's storage needs of the broker it keeps.

    The broker's state owner (``fastfanout.broker.administration``) implements it; storage
    uses nothing else of the broker. The other direction — the broker telling storage
    what changed — is ``Durability``'s ``topic_created`` ... ``unsubscribed`` and the
    records the store appends itself (docs/storage.md, "The broker and its storage").
    """

    @property
    def store(self) -> Store:
        """The broker's native store.

        Storage attaches its journal to it, restores the copies into it and asks it
        which segments hold live messages.
        """
        ...

    def now_us(self) -> int:
        """The broker's clock, microseconds (what the dedup windows count in)."""
        ...

    def topology(self) -> Topology:
        """The broker's topics, queues and subscriptions now, with ids and windows."""
        ...

    def restore_topology(self, topology: Topology) -> None:
        """Create ``topology`` in a new, empty broker.

        Its topics, its queues in the order given (their ``durable`` setting kept),
        the subscriptions whose topic (or pattern) and queue exist, with their ids,
        and the next subscription id. Storage journals none of it (it is recovering).
        """
        ...


class _Replay(Replay):
    """What the journal's records add up to, built record by record by ``scan``.

    The per-message records are applied by ``Replay`` (C, ``ext/recovery.pyx``);
    topology records and snapshots here, by name, telling ``Replay`` which queues live
    (its replay queues, one per queue by name: a queue keeps its copies when a restart
    gives it a new id) and which ids name them and the topics, and what dedup keys a
    snapshot holds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.topics: dict[str, dict[str, Any]] = {}
        self.topic_by_id: dict[int, str] = {}
        self.queues: dict[str, tuple[bool, dict[str, Any]]] = {}
        self.queue_by_id: dict[int, str] = {}
        self.replay_queues: dict[str, int] = {}   # live queue name -> its replay queue
        self.subscriptions: dict[int, tuple[str, str, str | None, str]] = {}
        self.next_subscription = 1
        self.ids_reserved = 0   # message ids reserved (given out, or may have been)
        self.removed: list[list[int]] = []   # the last snapshot's superseded ranges

    def other_record(self, kind: int, payload: bytes) -> None:
        """A record that is not about one copy: topology or a snapshot."""
        if kind == _TOPOLOGY:
            self._topology(_decode(payload))
        elif kind == _SNAPSHOT:
            self._snapshot(_decode(payload))
        else:
            self.orphans += 1

    def _topology(self, record: dict[str, Any]) -> None:
        op = record["op"]
        if op != "ids":   # (the message ids: every later snapshot restates them)
            self.busy_segments.add(self.segment_now)
        if op == "create_topic":
            self.topics[record["name"]] = record["settings"]
            self.topic_by_id[record["id"]] = record["name"]
            self.topic_created(record["id"])
        elif op == "delete_topic":
            # Its window goes with it: a topic re-created with this name starts empty.
            self.topics.pop(record["name"], None)
            self.topic_by_id.pop(record["id"], None)
            self.topic_deleted(record["id"])
            for sid, sub in list(self.subscriptions.items()):
                if sub[0] == record["name"]:
                    del self.subscriptions[sid]
        elif op == "create_queue":
            name = record["name"]
            if name in self.replay_queues:   # (only when a stretch was lost)
                self.drop_queue(self.replay_queues[name])
            self.queues[name] = (record["durable"], record["settings"])
            self.queue_by_id[record["id"]] = name
            self.replay_queues[name] = self.new_queue()
            self.bind_queue(record["id"], self.replay_queues[name])
        elif op == "set_queue_settings":
            name = record["name"]
            if name in self.queues:   # its durability stays what it was created with
                self.queues[name] = (self.queues[name][0], record["settings"])
            else:
                self.orphans += 1
        elif op == "delete_queue":
            name = record["name"]
            self.queues.pop(name, None)
            self.queue_by_id.pop(record["id"], None)
            # Its copies and its window go with it: one re-created with this name (or
            # this id) starts empty.
            if name in self.replay_queues:
                self.drop_queue(self.replay_queues.pop(name))
            for sid, sub in list(self.subscriptions.items()):
                if sub[1] == name:
                    del self.subscriptions[sid]
        elif op in ("subscribe", "set_filter_policy"):
            sid = record["id"]
            if op == "subscribe":
                topic, queue = record["topic"], record["queue"]
            elif sid in self.subscriptions:
                topic, queue = self.subscriptions[sid][:2]
            else:
                self.orphans += 1
                return
            self.subscriptions[sid] = (topic, queue, record["filter_policy"],
                                       record["filter_scope"])
            self.next_subscription = max(self.next_subscription, sid + 1)
        elif op == "unsubscribe":
            self.subscriptions.pop(record["id"], None)
        elif op == "ids":
            if "reserved" in record:   # a block of ids reserved before a commit
                self.ids_reserved = max(self.ids_reserved, record["reserved"])
            else:   # a clean close: the next id exactly (none was given out past it)
                self.raise_message_id(record["next_message_id"])
                self.ids_reserved = 0

    def _snapshot(self, record: dict[str, Any]) -> None:
        # A snapshot is the topology as the records before it left it: load it (the
        # first record recovery reads is always one). A queue keeps its copies by name
        # (a restart may have given it another id); the ids are bound anew.
        topic_by_id = {topic_id: name for name, topic_id, _ in record["topics"]}
        queue_by_id = {queue_id: name for name, queue_id, _, _ in record["queues"]}
        for topic_id, name in self.topic_by_id.items():
            if topic_by_id.get(topic_id) != name:
                self.topic_deleted(topic_id)
        for topic_id, name in topic_by_id.items():
            if self.topic_by_id.get(topic_id) != name:
                self.topic_created(topic_id)
        named = set(queue_by_id.values())
        for name in [name for name in self.replay_queues if name not in named]:
            self.drop_queue(self.replay_queues.pop(name))
        self.unbind_queues()
        for queue_id, name in queue_by_id.items():
            if name not in self.replay_queues:
                self.replay_queues[name] = self.new_queue()
            self.bind_queue(queue_id, self.replay_queues[name])
        self.topic_by_id = topic_by_id
        self.queue_by_id = queue_by_id
        self.topics = {name: settings for name, _, settings in record["topics"]}
        self.queues = {name: (durable, settings)
                       for name, _, durable, settings in record["queues"]}
        self.subscriptions = {sid: (topic, queue, policy, scope)
                              for sid, topic, queue, policy, scope in record["subscriptions"]}
        self.next_subscription = max(self.next_subscription, record["next_subscription"])
        self.raise_message_id(record["next_message_id"])
        self.ids_reserved = max(self.ids_reserved, record.get("ids_reserved", 0))
        self.removed = [list(span) for span in record.get("removed", [])]
        # The windows as they were (of the topics and queues then live), replacing the
        # keys of earlier records.
        self.clear_keys()
        topic_ids = {name: topic_id for topic_id, name in topic_by_id.items()}
        for name, entries in record["dedup_topics"]:
            if name in topic_ids:
                self.set_topic_keys(topic_ids[name], entries)
        for name, entries in record["dedup_queues"]:
            if name in self.replay_queues:
                self.set_queue_keys(self.replay_queues[name], entries)

    def topology(self) -> Topology:
        """The topology the records left, a dead-letter queue before its users.

        A queue whose dead-letter queue is gone (a stretch of the journal was lost)
        comes back without one (``overflow="dead_letter"`` becomes ``reject``).
        """
        topics = [TopicState(name, topic_id, TopicSettings(**self.topics[name]))
                  for topic_id, name in self.topic_by_id.items() if name in self.topics]
        ids = {name: queue_id for queue_id, name in self.queue_by_id.items()}
        queues: list[QueueState] = []
        created: set[str] = set()
        pending = dict(self.queues)
        while pending:
            progress = False
            for name, (durable, settings) in list(pending.items()):
                dlq = settings.get("dead_letter_queue")
                if dlq is not None and dlq in pending:
                    continue
                if dlq is not None and dlq not in created:
                    settings = {**settings, "dead_letter_queue": None,
                                "overflow": "reject" if settings.get("overflow") ==
                                "dead_letter" else settings.get("overflow", "reject")}
                queues.append(QueueState(name, ids.get(name, -1), QueueSettings(
                    **settings_arguments(settings), durable=durable)))
                created.add(name)
                del pending[name]
                progress = True
            if not progress:   # a cycle cannot be created; never loop forever
                break
        subscriptions = {sid: Subscription(topic, queue, policy, scope)
                         for sid, (topic, queue, policy, scope)
                         in self.subscriptions.items()}
        return Topology(topics, queues, subscriptions, self.next_subscription)


def _note_range(ranges: list[list[int]], first: int, last: int) -> None:
    """Add sequences ``first..last`` to ``ranges`` (sorted, merged where they touch)."""
    ranges.append([first, last])
    ranges.sort()
    merged: list[list[int]] = []
    for span in ranges:
        if merged and span[0] <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], span[1])
        else:
            merged.append(list(span))
    ranges[:] = merged


def _covered(ranges: list[list[int]], gap: dict[str, Any]) -> bool:
    """Whether a gap ``scan`` found between segments is a range removed on purpose."""
    first, last = gap["after_seq"] + 1, gap["next_seq"] - 1
    return any(span[0] <= first and last <= span[1] for span in ranges)


class Durability:
    """The storage of one durable broker (see the module docstring).

    Args:
        data_dir: the data directory (created, mode 0700).
        fsync: ``always``, ``interval`` or ``never``.
        fsync_interval: seconds between syncs with ``interval`` (0.001 to 3600).
        max_disk_bytes: most journal bytes on disk before publishes are refused with
            ``StoreFull`` (None: no limit).
        segment_bytes: size at which a segment is closed (tests make it small).

    Raises:
        InvalidArgument: a bad argument.
        BrokerRunning: another broker holds the directory.
    """

    def __init__(self, data_dir: str | os.PathLike[str], fsync: str, fsync_interval: float,
                 max_disk_bytes: int | None, segment_bytes: int | None = None) -> None:
        if fsync not in FSYNC_POLICIES:
            raise InvalidArgument(f"fsync={fsync!r} must be one of {', '.join(FSYNC_POLICIES)}")
        if (type(fsync_interval) not in (int, float) or not 0.001 <= fsync_interval <= 3600):
            raise InvalidArgument(
                f"fsync_interval={fsync_interval!r} must be from 0.001 to 3600 seconds")
        if max_disk_bytes is not None and (
                type(max_disk_bytes) is not int or max_disk_bytes < 65536):
            raise InvalidArgument(
                f"max_disk_bytes={max_disk_bytes!r} must be None or an int >= 65536")
        if segment_bytes is None:
            segment_bytes = SEGMENT_BYTES
            if max_disk_bytes is not None:
                segment_bytes = max(min(segment_bytes, max_disk_bytes // 4), 16384)
        self.directory = os.path.abspath(os.fspath(data_dir))
        try:
            _make_directory(self.directory, "data_dir",
                            "give a directory, or a path where one can be made")
            lock_fds = _lock(self.directory)
        except OSError as exc:
            raise _unusable(self.directory, exc) from None
        self.fsync = fsync
        self.fsync_interval = float(fsync_interval)
        self.max_disk_bytes = max_disk_bytes
        self.segment_bytes = segment_bytes
        self.journal_directory = os.path.join(self.directory, JOURNAL_DIRECTORY)
        self._lock_fds = lock_fds   # the lock file's and the directory's, while open
        self.journal: journal_ops.Journal | None = None
        self.recovering = False
        self._state: BrokerState | None = None
        self._segment_bases: dict[int, int] = {}    # segment index -> its base sequence
        self._segment_sizes: dict[int, int] = {}    # closed segments' bytes
        self._first_segment = 0                      # the oldest segment index on disk
        self._last_sync = time.monotonic()
        self._last_file_check = self._last_sync
        self._first_seq = 1
        # sequences of segments removed out of the middle (superseded: a snapshot and
        # nothing else), merged, as every snapshot notes them for recovery
        self._removed_ranges: list[list[int]] = []
        self.superseded_segments = 0
        self._snapshot_needed = False
        self._head_bytes = 0         # the current segment's header and head snapshot
        self._ids_reserved = 0       # message ids below this are reserved in the journal
        self._failure_logged = False
        self._drops_begun = 0        # the journal's drops at the batch's first publish
        self._gathering = False      # a publish was journaled since the last commit_begin
        self.store_full = 0          # publishes refused with StoreFull
        self.store_full_dedup = 0    # of those, with the dedup windows' snapshot too big
        self.removed_segments = 0
        self._removal_errors = 0     # the journal's removal_errors last logged
        self._stranded_bytes = 0     # passed segments still on disk (_stranded)
        self.copied_forward = 0      # live copies journaled afresh by compaction
        self.snapshots = 0
        self.recovery: dict[str, Any] = {}
        self._reserve_held = False
        self._reserve_tried = 0.0       # monotonic time of the last try to take it
        self.reserve_releases = 0    # times the reserve was given back on a full disk
        self._using_reserve = False  # (a roll the reserve made room for is running)

    # -- recovery ----------------------------------------------------------------------

    def recover(self, state: BrokerState) -> None:
        """Rebuild a new, empty broker from the journal, then open the journal.

        See docs/storage.md, "Recovery".

        Raises:
            StoreFailed: a file of the data directory could not be read or written (its
                permissions, an immutable attribute, a read-only file system, an I/O
                error): named in the message.
            StoreFull: no room for the new segment.
        """
        try:
            self._recover(state)
        except OSError as exc:
            raise _unusable(self.directory, exc) from None

    def _recover(self, state: BrokerState) -> None:
        started = time.monotonic()
        self._state = state
        _make_directory(self.journal_directory, "the journal",
                        "this data directory is not a broker's (or was damaged)")
        found = journal_ops.segments(self.journal_directory)
        bases = [base for base, _ in found]
        replay = _Replay()
        seed = self._seed_snapshot(found)
        if seed is not None:
            replay.other_record(_SNAPSHOT, seed)
        report = journal_ops.scan(self.journal_directory, replay)
        replay.raise_message_id(replay.ids_reserved)   # after a crash: past every block
        self.recovering = True
        try:
            restored = self._rebuild(state, replay)
        finally:
            self.recovering = False
        next_seq = report.last_seq + 1
        if bases and next_seq <= bases[-1] < next_seq + SEQUENCE_JUMP_LIMIT:
            # Past a last entry holding no record (a roll a crash cut short, a stray file
            # named like a segment): a later roll cannot need its name.
            next_seq = bases[-1] + 1
        while os.path.lexists(os.path.join(self.journal_directory,
                                           journal_ops.segment_name(next_seq))):
            next_seq += 1
        for index, (base, name) in enumerate(found):
            self._segment_bases[index] = base
            self._segment_sizes[index] = _file_bytes(os.path.join(self.journal_directory, name))
        self._removed_ranges = [span for span in replay.removed
                                if bases and span[1] >= bases[0]]
        missing = [gap for gap in report.missing if not _covered(self._removed_ranges, gap)]
        superseded = self._superseded(found, report, replay, next_seq)
        # The new segment and its snapshot come first, and on a full disk nothing else
        # makes room for them: the reserve does (taken again below, once the start's
        # compaction has run).
        self._give_reserve(full=False)
        try:
            self.journal = journal_ops.Journal(
                self.journal_directory, next_seq=next_seq, segment_bytes=1 << 62,
                segment_index=len(found), auto_roll=False)
            self._first_seq = next_seq
            self._segment_bases[self.journal.segment_index] = next_seq
            # a settle answered while the disk is full is written once there is room
            self.journal.keep_on_full([RECORD_KINDS["lease"], RECORD_KINDS["remove"],
                                       RECORD_KINDS["delay"]])
            # and a segment's head snapshot (the records after it need it first)
            self.journal.keep_head_on_full(_SNAPSHOT)
            state.store.attach_journal(self.journal)
            self._ids_reserved = state.store.new_message_ids(0)   # none given out past it
            self._write_snapshot()   # (noting the superseded segments' ranges)
            self.journal.commit()
        except StoreFull:
            # (the journal's own words speak of a batch of publishes: until 2026-12-07
            # a start on a full disk said "nothing of this batch was stored")
            raise StoreFull(
                f"no room to start on the data directory {self.directory}: its disk is "
                f"full; a broker starts a new segment (its snapshot first) before it "
                f"serves: free space on that file system (or move the data directory to "
                f"a larger one), then start it again; the journal was read and keeps "
                f"every record") from None
        self._last_sync = time.monotonic()
        # The segments before this start's are closed: their few live copies move
        # forward as at a roll, so they can go. Until 2026-12-06 only a roll copied
        # forward, and a broker restarted before its segment filled (64 MiB) kept one
        # more segment on disk per restart for as long as one message of the first one
        # lived (100 restarts with one message kept: 100 segments).
        self._remove_superseded(found, superseded)
        moved = self.copied_forward
        self._copy_forward(self.journal.segment_index)
        if self.copied_forward == moved:
            self._compact()
        else:   # the copies' records are written (and synced) before their old ones go
            self._write_and_compact()
        self._take_reserve()
        torn = report.torn_tail
        if torn is not None:   # the cut records were the ones after the last good one
            torn = {**torn, "after_seq": report.last_seq}
        self.recovery = {
            "records": report.records, "bytes": report.bytes,
            "seconds": round(time.monotonic() - started, 6),
            "torn_tail": torn, "skipped": list(report.skipped),
            "bad_headers": list(report.bad_headers),
            "bad_segments": list(report.bad_segments), "missing": missing,
            "duplicates": list(report.duplicates),
            "messages": restored,
            "orphan_records": replay.orphans,
        }
        if torn is not None:
            log.warning("journal %s: cut a torn tail: %s", self.journal_directory, torn)
        for stretch in report.skipped:
            log.error("journal %s: skipped a bad stretch: %s", self.journal_directory, stretch)
        for name in report.bad_headers:
            log.error("journal %s: %s has a damaged header; its records were read by its name",
                      self.journal_directory, name)
        for name in report.bad_segments:
            log.error("journal %s: %s is not a segment (no good record, or not a regular "
                      "file), left in place", self.journal_directory, name)
        for gap in missing:
            log.error("journal %s: records %d to %d are missing before %s (a segment "
                      "deleted, or cut short at a record's end): lost",
                      self.journal_directory, gap["after_seq"] + 1, gap["next_seq"] - 1,
                      gap["segment"])
        for repeat in report.duplicates:
            log.warning("journal %s: %s repeats %d records (%d to %d) read in an earlier "
                        "segment (a copy of one?): read once", self.journal_directory,
                        repeat["segment"], repeat["records"], repeat["first_seq"],
                        repeat["last_seq"])
        if report.records:
            log.info("recovered %d messages from %d records (%d bytes) in %.3f s",
                     restored, report.records, report.bytes, self.recovery["seconds"])

    def _superseded(self, found: list[tuple[int, str]], report: journal_ops.ScanReport,
                    replay: _Replay, next_seq: int) -> list[int]:
        """The segments (indexes into ``found``) this start may remove mid-journal.

        Their ranges are noted in ``_removed_ranges`` (the snapshot writes them).

        A segment that held its head snapshot and nothing else (a start's, that no
        publish, settle or change followed) adds nothing the later snapshots do not
        restate; its live copies are none. But it is not the oldest (compaction
        removes that one, and it is what recovery begins with), and a segment with
        any damage (a bad header, a skipped stretch, no good record) stays to be looked
        at. Until 2026-12-07 every such segment stayed for as long as a message of an
        older one lived: each restart of a broker with a backlog left one more (the
        dedup windows' snapshot, 620 KB each in a durability hunt), and under
        ``max_disk_bytes`` the disk they took refused publishes for good.
        """
        damaged = set(report.bad_headers) | set(report.bad_segments)
        damaged.update(stretch["segment"] for stretch in report.skipped)
        if report.torn_tail is not None:
            damaged.add(report.torn_tail["segment"])
        busy = replay.busy_segments
        superseded = []
        for index in range(1, len(found)):
            base, name = found[index]
            if index in busy or name in damaged:
                continue
            if index + 1 < len(found) and _head_snapshot(
                    os.path.join(self.journal_directory, found[index + 1][1]),
                    found[index + 1][0]) is None:
                # the next begins without a snapshot (a full disk refused it before
                # 2026-12-07): its records are read by this one's ids, which must stay
                continue
            end = (found[index + 1][0] if index + 1 < len(found) else next_seq) - 1
            if end < base:
                continue
            superseded.append(index)
            _note_range(self._removed_ranges, base, end)
        return superseded

    def _remove_superseded(self, found: list[tuple[int, str]], superseded: list[int]) -> None:
        """Remove the segments ``_superseded`` chose.

        Called once the snapshot noting their ranges is on disk (a crash before leaves
        them, read as before).
        """
        if not superseded:
            return
        assert self.journal is not None
        removed = self.journal.remove_superseded([found[index][1] for index in superseded])
        for index in superseded[:removed]:
            self._segment_sizes.pop(index, None)
        self.superseded_segments += removed
        self._removal_errors_seen()

    def _seed_snapshot(self, found: list[tuple[int, str]]) -> bytes | None:
        """The snapshot to read the oldest segment by when its own head is damaged.

        Every segment begins with a snapshot, and the oldest one's is what names the
        queues and topics its records speak of by id: damaged, every copy in that
        segment would be an orphan (a whole segment of messages lost to one bad
        sector). The first good head snapshot of a later segment names them as they
        were then; the records read before it are bound to its ids (a queue created
        in between is bound by its own record; one deleted in between stays unknown),
        and it is read again in its place. None when the oldest head is good.
        """
        later: bytes | None = None
        found = [(base, name) for base, name in found
                 if os.path.isfile(os.path.join(self.journal_directory, name))]
        headless = False   # the oldest begins with a good record that is no snapshot
        for index, (base, name) in enumerate(found):
            path = os.path.join(self.journal_directory, name)
            if index == 0:
                head = _head_record(path, base)
                if head is not None and head[0] == _SNAPSHOT:
                    return None
                headless = head is not None
                continue
            payload = _head_snapshot(path, base)
            if payload is not None:
                later = payload
                if headless:
                    # not damage: a full disk dropped the snapshot the segment began
                    # with, and the records after it were written there all the same
                    log.warning("journal %s: %s, its oldest segment, begins with no "
                                "snapshot (a full disk refused it): its records are read "
                                "by the snapshot heading %s", self.journal_directory,
                                found[0][1], name)
                else:
                    log.error("journal %s: the snapshot heading %s, its oldest segment, "
                              "is damaged: its records are read by the snapshot heading "
                              "%s", self.journal_directory, found[0][1], name)
                break
        return later

    def _rebuild(self, state: BrokerState, replay: _Replay) -> int:
        """Create the replayed topology, put back every live copy and the dedup keys.

        Per queue and per topic here; per copy and per key in C (``Replay``).
        """
        state.restore_topology(replay.topology())
        now = state.topology()
        topics = {topic.name: topic for topic in now.topics}
        queues = {queue.name: queue for queue in now.queues}
        topic_windows: list[DedupWindow | None] = [None] * (max(replay.topic_by_id, default=-1) + 1)
        for topic_id, name in replay.topic_by_id.items():
            if name in topics:
                topic_windows[topic_id] = topics[name].window
        size = max(replay.replay_queues.values(), default=-1) + 1
        targets: list[int | None] = [None] * size
        queue_windows: list[DedupWindow | None] = [None] * size
        for name, number in replay.replay_queues.items():
            queue = queues.get(name)
            if queue is not None:
                queue_windows[number] = queue.window
                if queue.settings.durable:
                    targets[number] = queue.id
        restored: int = replay.restore(state.store, targets, state.now_us())
        replay.restore_keys(topic_windows, queue_windows)
        return restored

    # -- records -----------------------------------------------------------------------

    # The broker tells its storage about every change of its shape through these (the
    # store journals the per-message changes itself, in C).

    def topic_created(self, name: str, topic_id: int, settings: TopicSettings) -> None:
        """Journal a new topic (a topology record, committed before it returns)."""
        self._journal_topology({
            "op": "create_topic", "name": name, "id": topic_id,
            "settings": {"fifo": settings.fifo, "content_dedup": settings.content_dedup,
                         "dedup_window": settings.dedup_window}})

    def topic_deleted(self, name: str, topic_id: int) -> None:
        """Journal a deleted topic."""
        self._journal_topology({"op": "delete_topic", "name": name, "id": topic_id})

    def queue_created(self, name: str, queue_id: int, settings: QueueSettings) -> None:
        """Journal a new queue, durable or not (its settings say)."""
        self._journal_topology({
            "op": "create_queue", "name": name, "id": queue_id,
            "durable": settings.durable, "settings": settings_record(settings)})

    def queue_settings_set(self, name: str, queue_id: int, settings: QueueSettings) -> None:
        """Journal a queue's changed settings (all of them: a replay takes the last)."""
        self._journal_topology({
            "op": "set_queue_settings", "name": name, "id": queue_id,
            "settings": settings_record(settings)})

    def queue_deleted(self, name: str, queue_id: int) -> None:
        """Journal a deleted queue (its copies go with it)."""
        self._journal_topology({"op": "delete_queue", "name": name, "id": queue_id})

    def subscribed(self, subscription_id: int, subscription: Subscription) -> None:
        """Journal a new subscription."""
        self._journal_topology({
            "op": "subscribe", "id": subscription_id, "topic": subscription.topic,
            "queue": subscription.queue, "filter_policy": subscription.filter_policy,
            "filter_scope": subscription.filter_scope})

    def filter_policy_set(self, subscription_id: int, subscription: Subscription) -> None:
        """Journal a subscription's new filter policy."""
        self._journal_topology({
            "op": "set_filter_policy", "id": subscription_id,
            "filter_policy": subscription.filter_policy,
            "filter_scope": subscription.filter_scope})

    def unsubscribed(self, subscription_id: int) -> None:
        """Journal a removed subscription."""
        self._journal_topology({"op": "unsubscribe", "id": subscription_id})

    def _journal_topology(self, record: dict[str, Any]) -> None:
        """Journal a topology record (docs/storage.md, kind 1) and commit it.

        Nothing while recovering (the records are there already).
        """
        if self.recovering or self.journal is None:
            return
        self.journal.append(_TOPOLOGY, _encode(record))
        # No roll here: a deletion or a settings change journals its record before it
        # is made (Administration), and a roll's snapshot now would state the topology
        # without it, the record then compacted away with the old segment (until
        # 2026-12-07 such a deleted queue came back after the restart).
        self.commit(roll=False)

    def _snapshot_record(self) -> dict[str, Any]:
        state = self._state
        assert state is not None
        now_us = state.now_us()
        topology = state.topology()
        return {
            "topics": [[topic.name, topic.id, {"fifo": topic.settings.fifo,
                                               "content_dedup": topic.settings.content_dedup,
                                               "dedup_window": topic.settings.dedup_window}]
                       for topic in topology.topics],
            "queues": [[queue.name, queue.id, queue.settings.durable,
                        settings_record(queue.settings)] for queue in topology.queues],
            "subscriptions": [[sid, sub.topic, sub.queue, sub.filter_policy, sub.filter_scope]
                              for sid, sub in sorted(topology.subscriptions.items())],
            "next_subscription": topology.next_subscription,
            "next_message_id": state.store.new_message_ids(0),
            # the reservation, so compaction never drops it with the ids records
            "ids_reserved": self._ids_reserved,
            "dedup_topics": [[topic.name, topic.window.live_entries(now_us)]
                             for topic in topology.topics if topic.window is not None],
            "dedup_queues": [[queue.name, queue.window.live_entries(now_us)]
                             for queue in topology.queues
                             if queue.settings.durable and queue.window is not None],
            # the gaps recovery finds between segments and must not call lost
            "removed": self._removed_ranges,
        }

    def _write_snapshot(self) -> None:
        assert self.journal is not None
        payload = _encode(self._snapshot_record())
        self.journal.append(_SNAPSHOT, payload)
        self.snapshots += 1
        self._head_bytes = (journal_ops.SEGMENT_HEADER_BYTES
                            + (journal_ops.RECORD_HEADER_BYTES + len(payload) + 7) // 8 * 8)

    def _records_bytes(self) -> int:
        """Bytes of the current segment past its header and head snapshot.

        What rolling it would leave behind: a segment is closed once these reach
        ``segment_bytes``, so dedup windows whose snapshot alone is that big do not
        roll a segment (and write the snapshot again) at every commit.
        """
        assert self.journal is not None
        return self.journal.current_segment_bytes - self._head_bytes

    # -- commit, limits, compaction ----------------------------------------------------

    def _failed(self) -> StoreFailed:
        assert self.journal is not None
        if not self._failure_logged:
            self._failure_logged = True
            log.error("the journal in %s failed closed: %s", self.journal_directory,
                      self.journal.failure)
        return StoreFailed(f"the journal in {self.journal_directory} failed closed: "
                           f"{self.journal.failure}; restart the broker to recover")

    def before_publish(self) -> None:
        """Refuse a publish or send when the store cannot take it.

        ``StoreFailed`` after a failure (or once the segment file is found deleted),
        ``StoreFull`` past ``max_disk_bytes`` (after trying to free room), both counted.
        """
        journal = self.journal
        assert journal is not None
        if journal.failure is not None:
            raise self._failed()
        if not journal.busy:
            self._check_file_due(journal)
        if self.max_disk_bytes is not None and self.disk_bytes() >= self.max_disk_bytes:
            self._compact()
            if (self.disk_bytes() >= self.max_disk_bytes
                    and self._records_bytes() > self.segment_bytes // 8):
                self._roll()
            if self.disk_bytes() >= self.max_disk_bytes:
                # The current segment is too small to roll (or the roll freed nothing),
                # yet the closed segments may hold only a few live copies, settled
                # around them since: delayed or leased ones no consumer can settle
                # now. Copied forward into the current segment, they pin nothing.
                self._free_closed_segments()
            if self.disk_bytes() >= self.max_disk_bytes:
                self.store_full += 1
                windows = ""
                if self._head_bytes > self.segment_bytes:   # settles cannot free this
                    self.store_full_dedup += 1
                    windows = (f" (the dedup windows' snapshot at the head of each "
                               f"segment alone takes {self._head_bytes} bytes: shorten "
                               f"dedup_window or raise max_disk_bytes)")
                raise StoreFull(
                    f"the journal in {self.journal_directory} holds {self.disk_bytes()} "
                    f"bytes, max_disk_bytes={self.max_disk_bytes}: publishes are refused "
                    f"until consumers settle enough messages{windows}")
        if not self._gathering:
            # the first publish of the server's next batch: a drop from now on loses
            # its records (commit_begin's ticket); one before it did not
            self._gathering = True
            self._drops_begun = journal.drops

    def before_topology(self) -> None:
        """Refuse a topology change before the broker makes it (the journal failed).

        Raises:
            StoreFailed: the journal failed closed.
        """
        journal = self.journal
        if journal is None:
            return
        if journal.failure is not None:
            raise self._failed()
        if self._snapshot_needed and not self.recovering:
            # a full disk dropped records: what waits (a new segment, its snapshot) is
            # written first, and while the disk is still full that raises StoreFull with
            # nothing changed (until 2026-12-07 the change was made in memory, its
            # record then refused, and a restart undid it: a deleted queue came back)
            self.commit()
            if self._snapshot_needed:   # no room for it yet
                self.store_full += 1
                raise StoreFull(
                    f"the disk of {self.journal_directory} is full: a topology change "
                    f"waits for room (settle messages, or free space on that file "
                    f"system); nothing was changed")

    def after_call(self) -> None:
        """Before each call: flush the records of earlier calls past ``FLUSH_BYTES``.

        A failure here is counted and logged; publishes are the calls that raise it.
        """
        journal = self.journal
        if journal is None or journal.failure is not None:
            return   # a failed store refuses publishes (before_publish); others go on
        if journal.busy:
            return   # a pipelined commit is in flight: the server's next one takes these
        if journal.buffered_bytes > FLUSH_BYTES:
            try:
                self.commit(sync=False)
            except (StoreFull, StoreFailed):
                pass   # counted and logged; publishes are refused, settles go on

    def write_leases(self) -> None:
        """Write what was journaled (no fdatasync): an embedded broker's receive leased.

        A lease record counts a delivery. Left in the buffer until the next commit, it
        would die with a process that a message crashed (an embedded broker's consumer
        is its process): that message would come back with the same receive count after
        every crash, never reaching ``max_receive_count`` and its dead-letter queue.
        Written, it survives ``kill -9``. The server writes every round's records
        itself. A failure is counted and logged; publishes are the calls that raise it.
        """
        journal = self.journal
        if journal is None or journal.failure is not None or journal.busy:
            return
        if journal.buffered_bytes:
            try:
                self._flush()
            except (StoreFull, StoreFailed):
                pass

    def _reserve_ids(self) -> None:
        """Journal the next block of ids once those given out reach the reservation.

        ``ID_BLOCK`` ids a block; called before each commit, so it is in the commit.
        """
        assert self.journal is not None and self._state is not None
        next_id = self._state.store.new_message_ids(0)
        if next_id > self._ids_reserved:
            self._ids_reserved = next_id + ID_BLOCK
            self.journal.append(_TOPOLOGY, _encode(
                {"op": "ids", "reserved": self._ids_reserved}))

    def commit(self, sync: bool = True, roll: bool = True) -> None:
        """Flush what was journaled, fdatasync by the policy, roll and compact.

        ``roll=False``: neither (a topology record journaled before its change is made:
        a roll now would write a snapshot without the change; the next commit rolls).

        Raises:
            StoreFull: the disk is full: the records since the last commit are not in
                the file (the copies they described stay in memory only).
            StoreFailed: a write or fsync error: the journal failed closed.
        """
        journal = self.journal
        if journal is None:
            return
        if journal.failure is not None:
            raise self._failed()
        self._reserve_ids()
        self._flush()
        if sync and (self.fsync == "always" or (
                self.fsync == "interval"
                and time.monotonic() - self._last_sync >= self.fsync_interval)):
            self._sync()
        if not roll:
            return
        if self._snapshot_needed or self._records_bytes() >= self.segment_bytes:
            self._roll()
        else:
            self._compact()
        self._retake_reserve()

    def _retake_reserve(self) -> None:
        """Take the reserve again if it was given back, at most once a second.

        An embedded broker has no housekeeping: its commits try (until 2026-12-07 only a
        compaction that removed a segment did, and a broker started on a full disk kept
        none, so the next start on a full disk was refused).
        """
        if self._reserve_held:
            return
        now = time.monotonic()
        if now - self._reserve_tried >= RESERVE_RETRY_SECONDS:
            self._reserve_tried = now
            self._take_reserve()

    def start_writer(self) -> int:
        """Start the journal's writer thread (pipelined commits).

        Returns its eventfd, readable when a batch begun by ``commit_begin`` is done.
        """
        assert self.journal is not None
        return int(self.journal.start_writer())

    def commit_begin(self, confirms: bool) -> CommitTicket:
        """Hand what was journaled to the writer thread; the caller goes on meanwhile.

        The thread writes it, and fdatasyncs it by the policy when ``confirms`` (the
        batch holds records a reply will confirm). Returns a ticket for ``commit_end``.

        Raises:
            StoreFull: the disk is full (the records are dropped, as for ``commit``).
            StoreFailed: the journal failed closed.
        """
        journal = self.journal
        assert journal is not None
        if journal.failure is not None:
            raise self._failed()
        self._reserve_ids()
        sync = confirms and (self.fsync == "always" or (
            self.fsync == "interval"
            and time.monotonic() - self._last_sync >= self.fsync_interval))
        # The batch's publishes are lost if a drop came after the first of them (until
        # 2026-12-07: after the last commit_begin, so a drop between two batches, of a
        # topology change's commit say, had the next batch's stored publishes answered
        # StoreFull: a retry duplicated them).
        drops = self._drops_begun if self._gathering else journal.drops
        self._gathering = False
        self._drops_begun = journal.drops
        try:
            journal.commit_begin(sync)
        except StoreFull:
            self._dropped()
            self._drops_begun = journal.drops
            raise
        except StoreFailed:
            raise self._failed() from None
        return drops, sync

    def commit_end(self, ticket: CommitTicket, wait: bool = False) -> bool:
        """Whether the batch of ``ticket`` is done (``wait``: block until it is).

        Done: written, and synced when it was to be; then roll and compact as
        ``commit`` does.

        Raises:
            StoreFull: the disk was full: the batch's records (and those appended while
                it was written) are not in the file.
            StoreFailed: a write or fsync error: the journal failed closed.
        """
        journal = self.journal
        assert journal is not None
        try:
            if not journal.poll(wait):
                return False
        except StoreFull:
            self._dropped()
        except StoreFailed:
            raise self._failed() from None
        if journal.failure is not None:
            raise self._failed()
        drops, sync = ticket
        if journal.drops != drops:
            raise StoreFull(f"the disk of {self.journal_directory} was full: the records "
                            f"of this batch were not stored")
        if sync:
            self._last_sync = time.monotonic()
        if self._snapshot_needed or self._records_bytes() >= self.segment_bytes:
            self._roll()
        else:
            self._compact()
        return True

    def _dropped(self) -> None:
        """The journal dropped what was not in the file (a full disk).

        The copies its records described are in memory only; the next segment begins
        with a snapshot; the segments nothing live needs any more are removed.
        """
        journal = self.journal
        assert journal is not None and self._state is not None
        store = self._state.store
        refused = store.forget_journal_after(journal.written_seq)
        if refused:
            # Their publishes were answered StoreFull: a retry with the same dedup id
            # (or body) must be stored, not answered duplicate=True by the key the
            # refused one left (until 2026-12-07 it was, and the message, in memory
            # only, was gone after the restart).
            topology = self._state.topology()
            for window in [*(topic.window for topic in topology.topics),
                           *(queue.window for queue in topology.queues)]:
                if window is not None:
                    window.forget_messages(refused)
        self._snapshot_needed = True
        self.store_full += 1
        # What the settles freed goes now, not after the next write that finds room: on
        # a disk that is really full there would be none (until 2026-12-07 publishes
        # stayed refused after every message was acked, their segments kept). Safe:
        # a copy whose record the disk refused is in memory only, and a move whose
        # records it refused keeps the old record's segment (forget_journal_after).
        self._compact()
        # Nothing lives in the current segment or before it, yet it fills the disk: the
        # reserve makes room for the next one, and the roll removes it. The settles
        # kept for the next write are about copies in those segments: they go too.
        if (not self._using_reserve and self._records_bytes() > 0
                and store.oldest_live_segment(journal.segment_index + 1)
                > journal.segment_index and self._give_reserve(full=True)):
            self._using_reserve = True
            try:
                journal.discard_buffered()
                self._roll()
            finally:
                self._using_reserve = False

    def _flush(self) -> None:
        """Write the buffer (a full disk drops it).

        After a full disk the copies its records described are in memory only, and the
        next segment begins with a snapshot.
        """
        journal = self.journal
        assert journal is not None and self._state is not None
        try:
            journal.flush()
        except StoreFull:
            self._dropped()
            raise
        except StoreFailed:
            raise self._failed() from None

    def _check_file_due(self, journal: journal_ops.Journal) -> None:
        """Every ``FILE_CHECK_INTERVAL``: fail closed if the segment file was deleted."""
        now = time.monotonic()
        if now - self._last_file_check >= FILE_CHECK_INTERVAL:
            self._last_file_check = now
            try:
                journal.check_file()
            except StoreFailed:
                raise self._failed() from None

    def sync_due(self) -> None:
        """With ``interval``: flush, and fdatasync if ``fsync_interval`` has passed.

        Every ``FILE_CHECK_INTERVAL`` it also checks that the current segment file is
        still in its directory: one deleted under the broker fails the store closed
        (``StoreFailed``, counted in ``failures``), as a failed write does.
        """
        journal = self.journal
        if journal is None or journal.failure is not None or journal.busy:
            return   # (busy: the server's pipelined commit in flight ends it)
        self._check_file_due(journal)
        self._retake_reserve()   # given back on a full disk: again, once there is room
        if journal.buffered_bytes or (
                self.fsync == "interval" and journal.synced_seq < journal.written_seq):
            self.commit()

    def _sync(self) -> None:
        assert self.journal is not None
        try:
            self.journal.sync()
        except StoreFailed:
            raise self._failed() from None
        self._last_sync = time.monotonic()

    def _roll(self) -> None:
        """Begin a new segment with a snapshot, then remove what is no longer needed."""
        journal = self.journal
        assert journal is not None
        try:
            self._flush()   # (a full disk is counted there)
        except StoreFull:
            return
        try:
            # nothing left to flush: a sync, then the new segment (or, False: the
            # current one holds no record yet, its snapshot refused by a full disk:
            # it gets its snapshot now)
            began = journal.roll()
        except StoreFull:    # no room for the new segment: the old one goes on
            self.store_full += 1
            return
        except StoreFailed:
            raise self._failed() from None
        if began:
            closed = journal.segment_index - 1
            self._segment_sizes[closed] = os.path.getsize(os.path.join(
                self.journal_directory,
                journal_ops.segment_name(self._segment_bases[closed])))
            self._segment_bases[journal.segment_index] = int(journal.segment[:20])
        else:
            closed = journal.segment_index
        self._write_snapshot()
        self._copy_forward(closed)   # (the segment just closed is left as it is)
        if self._write_and_compact():
            self._snapshot_needed = False

    def _copy_forward(self, below: int) -> None:
        """Move the few live copies of the oldest segments, below index ``below``, forward.

        Into the current segment: the live copies of the longest run of oldest segments
        whose live copies are at most a quarter of their records, taken together, and
        at most ``COPY_FORWARD_COPIES``. Together, not one by one: a small segment (a
        restart's, cut short by the next restart) holding a few long-lived copies would
        otherwise fail the rule on its own and keep every segment after it on disk.
        """
        journal = self.journal
        assert journal is not None and self._state is not None
        store = self._state.store
        oldest = store.oldest_live_segment(journal.segment_index)
        live = records = 0
        last = -1   # the newest segment of the run to free
        for index in range(oldest, below):
            live += store.segment_live_count(index)
            if live > COPY_FORWARD_COPIES:
                break
            records += self._segment_bases[index + 1] - self._segment_bases[index]
            if live * 4 <= records:
                last = index
        if last < 0:
            return   # still mostly live: rewriting it would cost more than it frees
        moved = store.copy_forward(last + 1, COPY_FORWARD_COPIES)
        if moved > 0:
            self.copied_forward += moved

    def _free_closed_segments(self) -> None:
        """Copy the few live copies of every closed segment forward, then remove it.

        For ``max_disk_bytes`` reached with a current segment too small to roll. The
        copies' new records are written (and synced by the policy) before the
        segments holding their old ones go.
        """
        journal = self.journal
        assert journal is not None
        moved = self.copied_forward
        self._copy_forward(journal.segment_index)
        if self.copied_forward != moved:
            self._write_and_compact()

    def _write_and_compact(self) -> bool:
        """Write what waits, then remove the segments no live copy needs.

        The write is synced as the policy says. Returns False when the disk is full
        (counted; nothing is removed).
        """
        try:
            self._flush()
        except StoreFull:
            return False
        if self.fsync != "never":
            self._sync()
        self._compact()
        return True

    def _compact(self) -> None:
        """Remove the oldest segments once no live durable copy has its message there."""
        journal = self.journal
        assert journal is not None and self._state is not None
        self._removal_errors_seen()
        oldest = self._state.store.oldest_live_segment(journal.segment_index)
        if oldest <= self._first_segment:
            return
        journal.remove_segments_before(self._segment_bases[oldest])
        if not self._reserve_held:
            self._take_reserve()   # (the removal may have made room for it again)
        for index in range(self._first_segment, oldest):
            self._segment_sizes.pop(index, None)
            self._segment_bases.pop(index, None)
            self.removed_segments += 1
        self._first_segment = oldest
        first_base = self._segment_bases.get(oldest)
        if first_base is not None:
            self._removed_ranges[:] = [span for span in self._removed_ranges
                                       if span[1] >= first_base]
        self._removal_errors_seen()
        if self._stranded_bytes:
            self._stranded_bytes = self._stranded()

    def _reserve_path(self) -> str:
        return os.path.join(self.directory, RESERVE_FILE)

    def _take_reserve(self) -> None:
        """Hold ``RESERVE_BYTES`` of disk in the reserve file.

        At most a sixteenth of the file system; only if it is not held and there is
        room (else again at a later compaction, or at housekeeping).
        """
        if self._reserve_held:
            return
        path = self._reserve_path()
        try:
            total = os.statvfs(self.directory)
            size = min(RESERVE_BYTES, total.f_blocks * total.f_frsize // 16) // 4096 * 4096
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                if size:
                    os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError:   # no room yet (or a file system without fallocate)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        self._reserve_held = True

    def _reserve_bytes(self) -> int:
        """Bytes the reserve file holds now (0: given back, or not taken yet)."""
        if not self._reserve_held:
            return 0
        try:
            return os.stat(self._reserve_path()).st_blocks * 512
        except OSError:
            return 0

    def _give_reserve(self, full: bool) -> bool:
        """Give the reserve file's disk back; True when there was one to give.

        ``full``: on a full disk (counted in ``reserve_releases``, and logged); else at a
        start, before its new segment.
        """
        try:
            os.unlink(self._reserve_path())
        except FileNotFoundError:
            self._reserve_held = False
            return False
        except OSError:
            return False
        self._reserve_held = False
        if full:
            self.reserve_releases += 1
            log.warning("journal %s: the disk is full; gave back the broker's reserve to "
                        "begin a new segment and remove the settled ones",
                        self.journal_directory)
        return True

    def _removal_errors_seen(self) -> None:
        """Log a segment compaction could not remove (once per new failure).

        The journal removes segments oldest first and stops at one it cannot unlink
        (the later ones stay: removed around it, they would take the remove records
        of its copies with them, and a restart would bring those copies back).
        """
        assert self.journal is not None
        errors = self.journal.removal_errors
        if errors != self._removal_errors:
            self._removal_errors = errors
            log.warning("journal %s: cannot remove an old segment (%s); it and the "
                        "segments after it stay on disk until it can be removed (check "
                        "its permissions and attributes)", self.journal_directory,
                        self.journal.removal_error)
            self._stranded_bytes = self._stranded()

    def _stranded(self) -> int:
        """Bytes of the segments compaction passed that are still on disk.

        One could not be removed, and the ones after it wait for it: ``disk_bytes``
        counts them, so ``max_disk_bytes`` holds. Files that are no segments are not.
        """
        first = self._segment_bases.get(self._first_segment)
        if first is None:
            return 0
        not_segments = set(self.recovery.get("bad_segments", ()))
        return sum(_file_bytes(os.path.join(self.journal_directory, name))
                   for base, name in journal_ops.segments(self.journal_directory)
                   if base < first and name not in not_segments)

    def disk_bytes(self) -> int:
        """Journal bytes on disk (and about to be: the buffer)."""
        journal = self.journal
        assert journal is not None
        total: int = (sum(self._segment_sizes.values()) + journal.current_segment_bytes
                      + journal.buffered_bytes + self._stranded_bytes)
        return total

    # -- stats and lifecycle -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The storage counters (see ``Broker.stats``)."""
        journal = self.journal
        assert journal is not None
        return {
            "data_dir": self.directory, "fsync": self.fsync,
            "fsync_interval": self.fsync_interval, "max_disk_bytes": self.max_disk_bytes,
            "journal_bytes": self.disk_bytes(),
            "segments": len(self._segment_sizes) + 1,
            "records": journal.next_seq - self._first_seq,
            "bytes_written": journal.bytes_written, "syncs": journal.syncs,
            "inline_writes": journal.inline_writes,
            "writer_batches": journal.writer_batches,
            "slow_inline_writes": journal.slow_inline_writes,
            "buffered_bytes": journal.buffered_bytes,
            "written_seq": journal.written_seq, "synced_seq": journal.synced_seq,
            "store_full": self.store_full + journal.full_refusals,
            "store_full_dedup": self.store_full_dedup,
            "dedup_snapshot_bytes": self._head_bytes,
            "failures": 0 if journal.failure is None else 1, "failure": journal.failure,
            "removed_segments": self.removed_segments,
            "kept_settles": journal.kept_records,
            "superseded_segments": self.superseded_segments,
            "reserve_bytes": self._reserve_bytes(),
            "reserve_releases": self.reserve_releases,
            "removal_errors": journal.removal_errors, "snapshots": self.snapshots,
            "copied_forward": self.copied_forward,
            "recovery": dict(self.recovery),
        }

    def close(self) -> None:
        """Write the next ids, commit and close the journal, release the lock."""
        try:
            journal = self.journal
            if journal is not None and journal.failure is None and self._state is not None:
                try:
                    journal.append(_TOPOLOGY, _encode(
                        {"op": "ids",
                         "next_message_id": self._state.store.new_message_ids(0)}))
                    journal.close()
                except (StoreFull, StoreFailed) as exc:
                    log.error("closing the journal in %s: %s", self.journal_directory, exc)
        finally:
            for fd in self._lock_fds:
                os.close(fd)
            self._lock_fds = []

