"""A durable broker's storage: its data directory, lock, journal, recovery and compaction.

``Durability`` is what ``Broker(data_dir=...)`` adds to a broker. The per-message records
(a copy enqueued, leased, delayed, removed) are appended in C by the store
(``ext/store.pyx``) for durable queues only; this module writes the rare ones (topology
changes, snapshots) as msgpack, commits by the fsync policy, recovers the broker from the
journal before it serves anything, and removes segments once nothing live is in them.
The on-disk format and the recovery steps are in docs/storage.md.

Invariants:

- One broker per data directory: ``DATA_DIR/lock`` is held with ``flock`` while the
  broker is open.
- Every segment this module opens begins with a ``snapshot`` record (topology, dedup
  windows, next ids), so recovery can start from the oldest remaining segment: segments
  older than the oldest one holding the message record of a live durable copy are
  removed.
- Nothing a caller was told is stored (a publish's result, a topology call's return)
  is missing from the file (``flush``) when the call returns; with ``fsync="always"``
  it is on disk (``fdatasync``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import msgspec

from fastfanout._ext import journal as journal_ops
from fastfanout._ext.dedup import hash128
from fastfanout._ext.store import RECORD_KINDS, Replay
from fastfanout.errors import BrokerRunning, InvalidArgument, StoreFailed, StoreFull
from fastfanout.records import ExponentialBackoff
from fastfanout.semantics.topic_pattern import is_pattern
from fastfanout.settings import QueueSettings

if TYPE_CHECKING:
    from fastfanout.broker.administration import Administration

__all__ = ["FSYNC_POLICIES", "SEGMENT_BYTES", "Durability"]

log = logging.getLogger("fastfanout.storage.durability")

FSYNC_POLICIES = ("always", "interval", "never")
"""The fsync policies of a durable broker."""
SEGMENT_BYTES = 64 << 20
"""A segment is closed (and a new one begun with a snapshot) once it holds this many
bytes; with ``max_disk_bytes`` set, at most a quarter of it."""
COPY_FORWARD_COPIES = 10_000
"""At each segment roll, the live copies of the oldest segment are journaled afresh
(copied forward) when they are at most this many and at most a quarter of its records,
so a few long-lived messages do not keep old segments on disk; a
backlog stays where it is (it is live data, and rewriting it would cost more)."""
FLUSH_BYTES = 1 << 20
"""Records of settle calls are buffered until the next commit, or until this many bytes
wait (then the next call flushes them)."""
JOURNAL_DIRECTORY = "journal"
LOCK_FILE = "lock"

_TOPOLOGY = RECORD_KINDS["topology"]
_SNAPSHOT = RECORD_KINDS["snapshot"]
_TOPIC_KEY = RECORD_KINDS["topic_key"]

_TOPIC_KEY_RECORD = struct.Struct("<I4xQQQq")
_MESSAGE_HEADER = struct.Struct("<QqqqIIHHB3x")      # an enqueue record's message part
_BODY_KEY_MARK = 0x9E3779B97F4A7C15   # as in ext/fanout.pyx: body keys never meet id keys
_LOW64 = (1 << 64) - 1

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


def _lock(directory: str) -> int:
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
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BrokerRunning(
            f"the data directory {directory} is in use by another broker (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class _Replay(Replay):
    """What the journal's records add up to, built record by record by ``scan``.

    The per-message records are read by ``Replay`` (C), topology and snapshots here.
    """

    def __init__(self, bases: list[int]) -> None:
        super().__init__(bases)
        self.topics: dict[str, dict[str, Any]] = {}
        self.topic_by_id: dict[int, str] = {}
        self.queues: dict[str, tuple[bool, dict[str, Any]]] = {}
        self.subscriptions: dict[int, tuple[str, str, str | None, str]] = {}
        self.next_subscription = 1
        # name -> (key low, key high, message id, remembered at) of the topic or queue
        # now live under that name, in journal order
        self.topic_keys: dict[str, list[tuple[int, int, int, int]]] = {}
        self.queue_keys: dict[str, list[tuple[int, int, int, int]]] = {}

    def other_record(self, kind: int, payload: bytes) -> None:
        """A record that is not about one copy: topology or a snapshot."""
        if kind == _TOPOLOGY:
            self._topology(_decode(payload))
        elif kind == _SNAPSHOT:
            self._snapshot(_decode(payload))
        elif kind == _TOPIC_KEY:
            topic_id, low, high, message_id, when = _TOPIC_KEY_RECORD.unpack(payload)
            self.next_message_id = max(self.next_message_id, message_id + 1)
            name = self.topic_by_id.get(topic_id)
            if name is not None:
                self.topic_keys.setdefault(name, []).append((low, high, message_id, when))
            return
        else:
            self.orphans += 1

    def remember_keys(self, message: bytes, queue: str, topic: int) -> None:
        """The dedup key this copy's publish or send left in its queue's window.

        Called only for an enqueue record flagged so (a dedup id, or a body in a
        ``content_dedup`` queue); a moved copy (redrive, dead letter) left none.
        """
        (message_id, timestamp, _due, _expires, body_length, attrs_length, group_length,
         dedup_length, _priority) = _MESSAGE_HEADER.unpack_from(message, 0)
        start = _MESSAGE_HEADER.size
        if dedup_length:
            begin = start + body_length + attrs_length + group_length
            key = hash128(message[begin:begin + dedup_length])
        else:
            key = hash128(message[start:start + body_length]) ^ (_BODY_KEY_MARK << 64)
        self.queue_keys.setdefault(queue, []).append(
            (key & _LOW64, key >> 64, message_id, timestamp))

    def _topology(self, record: dict[str, Any]) -> None:
        op = record["op"]
        if op == "create_topic":
            self.topics[record["name"]] = record["settings"]
            self.topic_by_id[record["id"]] = record["name"]
        elif op == "delete_topic":
            # Its window goes with it: a topic re-created with this name starts empty.
            self.topics.pop(record["name"], None)
            self.topic_by_id.pop(record["id"], None)
            self.topic_keys.pop(record["name"], None)
            for sid, sub in list(self.subscriptions.items()):
                if sub[0] == record["name"]:
                    del self.subscriptions[sid]
        elif op == "create_queue":
            self.queues[record["name"]] = (record["durable"], record["settings"])
            self.queue_by_id[record["id"]] = record["name"]
        elif op == "delete_queue":
            name = record["name"]
            self.queues.pop(name, None)
            self.queue_by_id.pop(record["id"], None)
            # Its window goes with it: a queue re-created with this name starts empty.
            self.queue_keys.pop(name, None)
            for sid, sub in list(self.subscriptions.items()):
                if sub[1] == name:
                    del self.subscriptions[sid]
            for seq in [seq for seq, copy in self.copies.items() if copy[0] == name]:
                del self.copies[seq]
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
            self.next_message_id = max(self.next_message_id, record["next_message_id"])

    def _snapshot(self, record: dict[str, Any]) -> None:
        # A snapshot is the topology as the records before it left it: load it (the
        # first record recovery reads is always one), keep the copies.
        self.topics = {name: settings for name, _, settings in record["topics"]}
        self.topic_by_id = {topic_id: name for name, topic_id, _ in record["topics"]}
        self.queues = {name: (durable, settings)
                       for name, _, durable, settings in record["queues"]}
        self.queue_by_id.clear()
        self.queue_by_id.update(
            (queue_id, name) for name, queue_id, _, _ in record["queues"])
        self.subscriptions = {sid: (topic, queue, policy, scope)
                              for sid, topic, queue, policy, scope in record["subscriptions"]}
        self.next_subscription = max(self.next_subscription, record["next_subscription"])
        self.next_message_id = max(self.next_message_id, record["next_message_id"])
        # The windows as they were (of the topics and queues then live), replacing the
        # keys of earlier records.
        self.topic_keys = {name: [(low, high, message_id, when)
                                  for low, high, message_id, when in entries]
                           for name, entries in record["dedup_topics"]}
        self.queue_keys = {name: [(low, high, message_id, when)
                                  for low, high, message_id, when in entries]
                           for name, entries in record["dedup_queues"]}


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
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.fsync = fsync
        self.fsync_interval = float(fsync_interval)
        self.max_disk_bytes = max_disk_bytes
        self.segment_bytes = segment_bytes
        self.journal_directory = os.path.join(self.directory, JOURNAL_DIRECTORY)
        self._lock_fd: int | None = _lock(self.directory)
        self.journal: journal_ops.Journal | None = None
        self.recovering = False
        self._broker: Administration | None = None
        self._segment_bases: dict[int, int] = {}    # segment index -> its base sequence
        self._segment_sizes: dict[int, int] = {}    # closed segments' bytes
        self._first_segment = 0                      # the oldest segment index on disk
        self._last_sync = time.monotonic()
        self._first_seq = 1
        self._snapshot_needed = False
        self._failure_logged = False
        self.store_full = 0          # publishes refused with StoreFull
        self.removed_segments = 0
        self.copied_forward = 0      # live copies journaled afresh by compaction
        self.snapshots = 0
        self.recovery: dict[str, Any] = {}

    # -- recovery ----------------------------------------------------------------------

    def recover(self, broker: Administration) -> None:
        """Rebuild ``broker`` (new, empty) from the journal, then open the journal."""
        started = time.monotonic()
        self._broker = broker
        os.makedirs(self.journal_directory, mode=0o700, exist_ok=True)
        found = journal_ops.segments(self.journal_directory)
        bases = [base for base, _ in found]
        replay = _Replay(bases)
        report = journal_ops.scan(self.journal_directory, replay.record)
        self.recovering = True
        try:
            restored = self._rebuild(broker, replay)
        finally:
            self.recovering = False
        next_seq = max(report.last_seq, bases[-1] if bases else 0) + 1
        for index, (base, name) in enumerate(found):
            self._segment_bases[index] = base
            self._segment_sizes[index] = os.path.getsize(
                os.path.join(self.journal_directory, name))
        self.journal = journal_ops.Journal(
            self.journal_directory, next_seq=next_seq, segment_bytes=1 << 62,
            segment_index=len(found), auto_roll=False)
        self._first_seq = next_seq
        self._segment_bases[self.journal.segment_index] = next_seq
        broker._store.attach_journal(self.journal)
        self._write_snapshot()
        self.journal.commit()
        self._last_sync = time.monotonic()
        self._compact()
        torn = report.torn_tail
        if torn is not None:   # the cut records were the ones after the last good one
            torn = {**torn, "after_seq": report.last_seq}
        self.recovery = {
            "records": report.records, "bytes": report.bytes,
            "seconds": round(time.monotonic() - started, 6),
            "torn_tail": torn, "skipped": list(report.skipped),
            "bad_segments": list(report.bad_segments), "messages": restored,
            "orphan_records": replay.orphans,
        }
        if torn is not None:
            log.warning("journal %s: cut a torn tail: %s", self.journal_directory, torn)
        for stretch in report.skipped:
            log.error("journal %s: skipped a bad stretch: %s", self.journal_directory, stretch)
        for name in report.bad_segments:
            log.error("journal %s: %s is not a segment (bad header), left in place",
                      self.journal_directory, name)
        if report.records:
            log.info("recovered %d messages from %d records (%d bytes) in %.3f s",
                     restored, report.records, report.bytes, self.recovery["seconds"])

    def _rebuild(self, broker: Administration, replay: _Replay) -> int:
        """Create the replayed topology and put back every live durable copy."""
        for name, settings in replay.topics.items():
            broker.create_topic(name, **settings)
        pending = dict(replay.queues)
        while pending:
            progress = False
            for name, (durable, settings) in list(pending.items()):
                dlq = settings.get("dead_letter_queue")
                if dlq is not None and dlq in pending:
                    continue
                if dlq is not None and dlq not in broker._queues:
                    settings = {**settings, "dead_letter_queue": None,
                                "overflow": "reject" if settings.get("overflow") ==
                                "dead_letter" else settings.get("overflow", "reject")}
                broker.create_queue(name, durable=durable, **settings_arguments(settings))
                del pending[name]
                progress = True
            if not progress:   # a cycle cannot be created; never loop forever
                break
        for sid, (topic, queue, policy, scope) in sorted(replay.subscriptions.items()):
            if queue not in broker._queues or (
                    topic not in broker._topics and not is_pattern(topic)):
                continue
            broker._next_subscription = sid
            broker.subscribe(topic, queue, filter_policy=policy, filter_scope=scope)
        broker._next_subscription = max(broker._next_subscription, replay.next_subscription)
        store = broker._store
        restored = 0
        # Arrival order: copies journaled afresh by compaction have later sequences
        # than the copies that followed them, but keep their entry time.
        copies = sorted((copy[2], seq, copy) for seq, copy in replay.copies.items())
        for _, copy_seq, (queue, message_seq, entered, due, receive_count, dead) in copies:
            queue_id = broker._queues.get(queue)
            if queue_id is None or not broker._queue_settings[queue].durable:
                continue
            message, segment = replay.messages[message_seq]
            store.restore_copy(queue_id, copy_seq, message_seq, segment, message, entered,
                               due, receive_count, dead)
            restored += 1
        store.raise_message_ids(replay.next_message_id)
        # The keys of the topic or queue live under each name (a deleted one's went
        # with it), each from a publish or send that left it in that window.
        for topic, entries in replay.topic_keys.items():
            if topic in broker._topics:
                window = broker._dispatcher.dedup_window(broker._topics[topic])
                for low, high, message_id, when in entries:
                    if message_id:
                        window.remember_key(low, high, message_id, when)
        for queue, entries in replay.queue_keys.items():
            if queue in broker._queues:
                window = store.dedup_window(broker._queues[queue])
                for low, high, message_id, when in entries:
                    if message_id:
                        window.remember_key(low, high, message_id, when)
        return restored

    # -- records -----------------------------------------------------------------------

    def topology(self, record: dict[str, Any]) -> None:
        """Journal a topology change and commit it (nothing during recovery)."""
        if self.recovering or self.journal is None:
            return
        self.journal.append(_TOPOLOGY, _encode(record))
        self.commit()

    def _snapshot_record(self) -> dict[str, Any]:
        broker = self._broker
        assert broker is not None
        now_us = broker._store.tick(broker._clock)
        topics = [[name, topic_id, {"fifo": settings.fifo,
                                    "content_dedup": settings.content_dedup,
                                    "dedup_window": settings.dedup_window}]
                  for name, topic_id in broker._topics.items()
                  for settings in (broker._topic_settings[name],)]
        queues = [[name, queue_id, broker._queue_settings[name].durable,
                   settings_record(broker._queue_settings[name])]
                  for name, queue_id in broker._queues.items()]
        subscriptions = [[sid, sub.topic, sub.queue, sub.filter_policy, sub.filter_scope]
                         for sid, sub in sorted(broker._subscriptions.items())]
        return {
            "topics": topics, "queues": queues, "subscriptions": subscriptions,
            "next_subscription": broker._next_subscription,
            "next_message_id": broker._store.new_message_ids(0),
            "dedup_topics": [
                [name, broker._dispatcher.dedup_window(topic_id).live_entries(now_us)]
                for name, topic_id in broker._topics.items()],
            "dedup_queues": [
                [name, broker._store.dedup_window(queue_id).live_entries(now_us)]
                for name, queue_id in broker._queues.items()
                if broker._queue_settings[name].durable],
        }

    def _write_snapshot(self) -> None:
        assert self.journal is not None
        self.journal.append(_SNAPSHOT, _encode(self._snapshot_record()))
        self.snapshots += 1

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

        ``StoreFailed`` after a failure, ``StoreFull`` past ``max_disk_bytes`` (after
        trying to free room), both counted.
        """
        journal = self.journal
        assert journal is not None
        if journal.failure is not None:
            raise self._failed()
        if self.max_disk_bytes is not None and self.disk_bytes() >= self.max_disk_bytes:
            self._compact()
            if (self.disk_bytes() >= self.max_disk_bytes
                    and journal.current_segment_bytes > self.segment_bytes // 8):
                self._roll()
            if self.disk_bytes() >= self.max_disk_bytes:
                self.store_full += 1
                raise StoreFull(
                    f"the journal in {self.journal_directory} holds {self.disk_bytes()} "
                    f"bytes, max_disk_bytes={self.max_disk_bytes}: publishes are refused "
                    f"until consumers settle enough messages")

    def after_call(self) -> None:
        """Before each call: flush the records of earlier calls past ``FLUSH_BYTES``.

        A failure here is counted and logged; publishes are the calls that raise it.
        """
        journal = self.journal
        if journal is None or journal.failure is not None:
            return   # a failed store refuses publishes (before_publish); others go on
        if journal.buffered_bytes > FLUSH_BYTES:
            try:
                self.commit(sync=False)
            except (StoreFull, StoreFailed):
                pass   # counted and logged; publishes are refused, settles go on

    def commit(self, sync: bool = True) -> None:
        """Flush what was journaled, fdatasync by the policy, roll and compact.

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
        self._flush()
        if sync and (self.fsync == "always" or (
                self.fsync == "interval"
                and time.monotonic() - self._last_sync >= self.fsync_interval)):
            self._sync()
        if self._snapshot_needed or journal.current_segment_bytes >= self.segment_bytes:
            self._roll()
        else:
            self._compact()

    def _flush(self) -> None:
        """Write the buffer (a full disk drops it).

        After a full disk the copies its records described are in memory only, and the
        next segment begins with a snapshot.
        """
        journal = self.journal
        assert journal is not None and self._broker is not None
        try:
            journal.flush()
        except StoreFull:
            self._broker._store.forget_journal_after(journal.written_seq)
            self._snapshot_needed = True
            self.store_full += 1
            raise
        except StoreFailed:
            raise self._failed() from None

    def sync_due(self) -> None:
        """With ``interval``: flush, and fdatasync if ``fsync_interval`` has passed."""
        journal = self.journal
        if journal is None or journal.failure is not None:
            return
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
            journal.roll()   # nothing left to flush: a sync, then the new segment
        except StoreFull:    # no room for the new segment: the old one goes on
            self.store_full += 1
            return
        except StoreFailed:
            raise self._failed() from None
        closed = journal.segment_index - 1
        self._segment_sizes[closed] = os.path.getsize(os.path.join(
            self.journal_directory, journal_ops.segment_name(self._segment_bases[closed])))
        self._segment_bases[journal.segment_index] = int(journal.segment[:20])
        self._write_snapshot()
        self._copy_forward()
        try:
            self._flush()
        except StoreFull:
            return
        self._snapshot_needed = False
        if self.fsync != "never":
            self._sync()
        self._compact()

    def _copy_forward(self) -> None:
        """Move the few live copies of the oldest segments into the new one."""
        journal = self.journal
        assert journal is not None and self._broker is not None
        store = self._broker._store
        budget = COPY_FORWARD_COPIES
        while budget > 0:
            oldest = store.oldest_live_segment(journal.segment_index)
            if oldest >= journal.segment_index - 1:
                return   # the segment just closed is left as it is
            records = self._segment_bases[oldest + 1] - self._segment_bases[oldest]
            if store.segment_live_count(oldest) * 4 > records:
                return   # still mostly live: rewriting it would cost more than it frees
            moved = store.copy_forward(oldest + 1, budget)
            if moved < 0:
                return
            budget -= moved
            self.copied_forward += moved

    def _compact(self) -> None:
        """Remove the oldest segments once no live durable copy has its message there."""
        journal = self.journal
        assert journal is not None and self._broker is not None
        oldest = self._broker._store.oldest_live_segment(journal.segment_index)
        if oldest <= self._first_segment:
            return
        journal.remove_segments_before(self._segment_bases[oldest])
        for index in range(self._first_segment, oldest):
            self._segment_sizes.pop(index, None)
            self._segment_bases.pop(index, None)
            self.removed_segments += 1
        self._first_segment = oldest

    def disk_bytes(self) -> int:
        """Journal bytes on disk (and about to be: the buffer)."""
        journal = self.journal
        assert journal is not None
        total: int = (sum(self._segment_sizes.values()) + journal.current_segment_bytes
                      + journal.buffered_bytes)
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
            "buffered_bytes": journal.buffered_bytes,
            "written_seq": journal.written_seq, "synced_seq": journal.synced_seq,
            "store_full": self.store_full + journal.full_refusals,
            "failures": 0 if journal.failure is None else 1, "failure": journal.failure,
            "removed_segments": self.removed_segments, "snapshots": self.snapshots,
            "copied_forward": self.copied_forward,
            "recovery": dict(self.recovery),
        }

    def close(self) -> None:
        """Write the next ids, commit and close the journal, release the lock."""
        try:
            journal = self.journal
            if journal is not None and journal.failure is None and self._broker is not None:
                try:
                    journal.append(_TOPOLOGY, _encode(
                        {"op": "ids",
                         "next_message_id": self._broker._store.new_message_ids(0)}))
                    journal.close()
                except (StoreFull, StoreFailed) as exc:
                    log.error("closing the journal in %s: %s", self.journal_directory, exc)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

