"""Faults against a durable broker: kill -9, power loss, a full disk, fsync errors, corruption.

Two tiers: by default each test is short (the kill -9 test still kills the broker 20
times); ``FASTFANOUT_SOAK=1`` runs the full tier (more kills and longer runs, more
producers and consumers, every fsync policy, 200+ power losses). Every process a test
starts is killed or stopped with a deadline; endpoints are ipc:// under the test's dir.

The kill -9 test keeps a ledger in bitsets (one bit per message sequence, per producer):
attempted (logged before ``publish_batch``), confirmed (logged after it returned) and
acked (logged after ``ack_batch`` returned). After every restart, before any worker runs,
it drains the queue and checks that every confirmed, unacked message is there (none
lost; only one whose ack a consumer had sent when the kill came may be gone), that
nothing never attempted is there, and that no message is there twice; a message there
that was already acked must have been acked in the run the kill ended (its ack was in
flight). Those, and the unconfirmed messages that were stored, are counted and reported.
"""

from __future__ import annotations

import errno
import inspect
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Tracker, wait_for_broker, wait_until
from durability_worker import body, key

from fastfanout import Broker
from fastfanout.client import Client, connect

pytestmark = pytest.mark.skipif("data_dir" not in inspect.signature(Broker).parameters,
                                reason="the durable broker has not landed yet")

SOAK = os.environ.get("FASTFANOUT_SOAK") == "1"
"""The full tier (``FASTFANOUT_SOAK=1``)."""
WORKER = str(Path(__file__).with_name("durability_worker.py"))
DEADLINE = 30.0
TOPIC, QUEUE = "events", "work"


class Bitset:
    """One bit per sequence number (from 0), growing as needed."""

    def __init__(self) -> None:
        self.bits = bytearray()

    def add_range(self, first: int, last: int) -> None:
        """Set the bits of ``first`` to ``last`` (both included)."""
        for seq in range(first, last + 1):
            self.add(seq)

    def add(self, seq: int) -> None:
        """Set the bit of ``seq``."""
        index = seq >> 3
        if index >= len(self.bits):
            self.bits.extend(bytes(index + 1 - len(self.bits) + 1024))
        self.bits[index] |= 1 << (seq & 7)

    def __contains__(self, seq: int) -> bool:
        index = seq >> 3
        return index < len(self.bits) and bool(self.bits[index] >> (seq & 7) & 1)

    def __iter__(self) -> Any:
        for index, byte in enumerate(self.bits):
            if byte:
                for bit in range(8):
                    if byte >> bit & 1:
                        yield index * 8 + bit

    def count(self) -> int:
        """Bits set."""
        return sum(byte.bit_count() for byte in self.bits)


@dataclass
class Ledger:
    """What the workers logged, per producer, and what the checks counted."""

    attempted: dict[int, Bitset] = field(default_factory=dict)
    confirmed: dict[int, Bitset] = field(default_factory=dict)
    acked: dict[int, Bitset] = field(default_factory=dict)
    acked_in: dict[str, int] = field(default_factory=dict)   # key -> run of its first ack
    acks_in_flight: set[str] = field(default_factory=set)     # at the last kill
    next_seq: dict[int, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def bits(self, table: dict[int, Bitset], producer: int) -> Bitset:
        return table.setdefault(producer, Bitset())

    def read_producer_log(self, path: Path) -> None:
        for line in path.read_text().splitlines() if path.exists() else []:
            kind, producer, first, last = line.split()
            table = self.attempted if kind == "A" else self.confirmed
            self.bits(table, int(producer)).add_range(int(first), int(last))
            if kind == "A":
                self.next_seq[int(producer)] = max(self.next_seq.get(int(producer), 0),
                                                   int(last) + 1)

    def ack(self, name: str, run: int) -> None:
        producer, seq = map(int, name.split(":"))
        if seq in self.bits(self.acked, producer):
            self.counts["acked, redelivered after the kill"] += 1
            first = self.acked_in[name]
            if first != run - 1:
                self.problems.append(f"{name} acked in run {first} and again in run {run}")
        else:
            self.bits(self.acked, producer).add(seq)
            self.acked_in[name] = run

    def read_consumer_log(self, path: Path, run: int) -> None:
        pending: list[str] = []
        for line in path.read_text().splitlines() if path.exists() else []:
            kind, *names = line.split()
            if kind == "X":
                self.problems.append(f"run {run}: a consumer got a wrong body for {names}")
            elif kind == "R":
                pending = names
            elif kind == "K":
                pending = []
                for name in names:
                    self.ack(name, run)
        self.acks_in_flight.update(pending)   # acked, or not: the kill came first


def start_broker(track: Tracker, endpoint: str, data_dir: Path, fsync: str,
                 log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stderr:
        broker = subprocess.Popen(
            [sys.executable, "-m", "fastfanout", "serve", "--endpoint", endpoint,
             "--data-dir", str(data_dir), "--fsync", fsync, "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=stderr)
    track.processes.append(broker)
    return broker


def start_worker(track: Tracker, *args: str) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    track.processes.append(worker)
    return worker


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(DEADLINE)


def drain_and_check(client: Client, ledger: Ledger, run: int) -> None:
    """After a restart: everything confirmed and unacked is there; ack all of it."""
    held = client.stats().queues[QUEUE].messages
    found: dict[str, bytes] = {}
    receipts: list[int] = []
    deadline = time.monotonic() + DEADLINE
    while len(receipts) < held and time.monotonic() < deadline:
        for message in client.receive(QUEUE, max_messages=1000, wait=0.5,
                                      visibility_timeout=600.0):
            name = key(bytes(message.body))
            if name in found:
                ledger.problems.append(f"run {run}: {name} held twice after a restart")
            found[name] = bytes(message.body)
            receipts.append(message.receipt)
    for producer, confirmed in ledger.confirmed.items():
        acked = ledger.bits(ledger.acked, producer)
        for seq in confirmed:
            name = f"{producer}:{seq}"
            if seq in acked or name in found:
                continue
            if name in ledger.acks_in_flight:   # its ack reached the broker: fine
                ledger.counts["ack in flight at the kill, applied"] += 1
                ledger.ack(name, run - 1)
            else:
                ledger.problems.append(f"run {run}: confirmed {name} LOST")
    ledger.acks_in_flight.clear()
    for name, message_body in found.items():
        producer, seq = map(int, name.split(":"))
        if seq not in ledger.bits(ledger.attempted, producer):
            ledger.problems.append(f"run {run}: {name} was never published")
        elif message_body != body(producer, seq):
            ledger.problems.append(f"run {run}: {name} has a wrong body")
        elif seq not in ledger.bits(ledger.confirmed, producer):
            ledger.counts["unconfirmed, stored"] += 1
    for start in range(0, len(receipts), 1000):
        client.ack_batch(receipts[start:start + 1000])
    for name in found:
        ledger.ack(name, run)
    ledger.counts["drained after restarts"] += len(found)


@pytest.mark.slow
@pytest.mark.timeout(1800 if SOAK else 180)
def test_kill_9_loses_no_confirmed_message(track: Tracker, tmp_path: Path) -> None:
    kills = 60 if SOAK else 14
    producers, consumers = (3, 2) if SOAK else (2, 1)
    longest_run = 3.0 if SOAK else 0.3
    seed = int(os.environ.get("FASTFANOUT_SEED", "0")) or random.randrange(1, 2**32)
    rng = random.Random(seed)
    endpoint = track.endpoint()
    data_dir = tmp_path / "data"
    logs = tmp_path / "logs"
    logs.mkdir()
    ledger = Ledger()
    torn = skipped = 0
    for run in range(kills + 1):
        fsync = rng.choice(["always", "interval", "never"]) if SOAK else "always"
        broker = start_broker(track, endpoint, data_dir, fsync, logs / "broker.log")
        go = logs / f"go-{run}"
        workers = [] if run == kills else [
            start_worker(track, "produce", endpoint, TOPIC, str(p),
                         str(ledger.next_seq.get(p, 0)), str(rng.getrandbits(32)),
                         str(logs / f"p{p}-{run}.log"), "--go", str(go),
                         *(["--no-local-channel"] if p % 2 else []))
            for p in range(producers)]
        workers += [] if run == kills else [
            start_worker(track, "consume", endpoint, QUEUE, str(logs / f"c{c}-{run}.log"),
                         "--go", str(go))
            for c in range(consumers)]
        wait_for_broker(endpoint, broker, timeout=DEADLINE)
        with connect(endpoint, timeout=10.0, local_channel=False) as client:
            if run == 0:
                client.create_topic(TOPIC)
                client.create_queue(QUEUE)
                client.subscribe(TOPIC, QUEUE)
            else:
                assert client.list_queues() == [QUEUE] and client.list_topics() == [TOPIC]
                recovery = (client.stats().storage or {}).get("recovery", {})
                torn += recovery.get("torn_tail") is not None
                skipped += len(recovery.get("skipped") or ())
                drain_and_check(client, ledger, run)
        assert not ledger.problems, (f"FASTFANOUT_SEED={seed}", ledger.problems[:20])
        if run == kills:
            broker.terminate()
            assert broker.wait(DEADLINE) == 0
            break
        go.touch()   # the workers start now
        wait_until(lambda: (logs / f"p0-{run}.log").exists()   # noqa: B023
                   and b"C" in (logs / f"p0-{run}.log").read_bytes(),  # noqa: B023
                   DEADLINE, "a first confirmed publish")
        time.sleep(rng.uniform(0.0, longest_run))   # the random moment of the kill
        kill(broker)
        for worker in workers:
            kill(worker)
        for p in range(producers):
            ledger.read_producer_log(logs / f"p{p}-{run}.log")
        for c in range(consumers):
            ledger.read_consumer_log(logs / f"c{c}-{run}.log", run)
        assert not ledger.problems, (f"FASTFANOUT_SEED={seed}", ledger.problems[:20])
    for producer, confirmed in ledger.confirmed.items():
        missing = [seq for seq in confirmed if seq not in ledger.bits(ledger.acked, producer)]
        assert not missing, f"producer {producer}: confirmed, never delivered: {missing[:20]}"
    confirmed_total = sum(bits.count() for bits in ledger.confirmed.values())
    attempted_total = sum(bits.count() for bits in ledger.attempted.values())
    report = (f"{kills} kills: {confirmed_total} confirmed of {attempted_total} attempted, "
              f"none lost; {dict(ledger.counts)}; torn tails cut {torn}, "
              f"stretches skipped {skipped}")
    print(report)
    assert confirmed_total > kills   # the workers did publish between the kills


# -- embedded brokers: power loss, a full disk, write and fsync errors, corruption ------


def journal_dir(data_dir: Path) -> Path:
    """Where a broker's segment files are (docs/storage.md)."""
    return data_dir / "journal"


def segment_files(data_dir: Path) -> list[Path]:
    return sorted(journal_dir(data_dir).glob("*.seg"))


def records_end(data: bytes, last_seq: int) -> int:
    """Offset just past the last record with sequence <= ``last_seq`` (docs/storage.md)."""
    offset = end = 32
    while offset + 24 <= len(data):
        length = int.from_bytes(data[offset + 4:offset + 8], "little")
        seq = int.from_bytes(data[offset + 8:offset + 16], "little")
        size = (24 + length + 7) & ~7
        if seq == 0 or seq > last_seq or offset + size > len(data):
            break
        offset = end = offset + size
    return end


def storage(broker: Broker) -> dict[str, Any]:
    stats = broker.stats().storage
    assert stats is not None
    return stats


def drain(broker: Broker, queue: str) -> dict[int, bytes]:
    """Every message of ``queue`` (leased for a long time): id -> body."""
    found: dict[int, bytes] = {}
    while True:
        messages = broker.receive(queue, max_messages=1000, visibility_timeout=3600.0)
        if not messages:
            return found
        for message in messages:
            assert message.id not in found, f"message {message.id} held twice"
            found[message.id] = bytes(message.body)


def power_loss_copy(data_dir: Path, crash_dir: Path, synced_seq: int,
                    rng: random.Random) -> int:
    """Copy an open broker's data dir as a power loss would leave it; returns garbage bytes.

    Each segment keeps its records up to ``synced_seq`` (on disk), then a random part of
    what was written after them (the page cache may have written some back), then
    sometimes random garbage (blocks written back half, or never zeroed).
    """
    (crash_dir / "journal").mkdir(parents=True)
    garbage = 0
    for path in segment_files(data_dir):
        data = path.read_bytes()
        synced_end = records_end(data, synced_seq)
        kept = data[:rng.randint(synced_end, len(data))]
        if rng.random() < 0.5:
            noise = rng.randbytes(rng.randint(1, 300))
            garbage += len(noise)
            kept += noise
        (crash_dir / "journal" / path.name).write_bytes(kept)
    return garbage


def test_power_loss_with_fsync_always_loses_no_confirmed_message(tmp_path: Path) -> None:
    """Many trials: an embedded broker works, the power fails, it recovers a crash copy."""
    trials = 200 if SOAK else 25
    rng = random.Random(1414)
    detected = injected = 0
    for trial in range(trials):
        data_dir = tmp_path / f"trial{trial}"
        confirmed: dict[int, bytes] = {}
        acked: set[int] = set()
        with Broker(data_dir=data_dir, fsync="always") as broker:
            broker.create_topic("t")
            for queue in ("a", "b"):
                broker.create_queue(queue, visibility_timeout=0.0 if queue == "b" else 30.0)
                broker.subscribe("t", queue)
            for _ in range(rng.randint(1, 12)):
                bodies = [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(1, 20))]
                for result, message_body in zip(broker.publish_batch("t", bodies), bodies,
                                                strict=True):
                    confirmed[result.message_id] = message_body
                received = broker.receive("a", max_messages=rng.randint(1, 10))
                chosen = [m for m in received if rng.random() < 0.7]
                broker.ack_batch([m.receipt for m in chosen])
                acked.update(m.id for m in chosen)
                broker.receive("b", max_messages=rng.randint(1, 5))   # lease 0: visible again
            crash_dir = tmp_path / f"crash{trial}"
            garbage = power_loss_copy(data_dir, crash_dir, storage(broker)["synced_seq"], rng)
        with Broker(data_dir=crash_dir) as recovered:
            recovery = storage(recovered)["recovery"]
            held = drain(recovered, "a")
            held_b = drain(recovered, "b")
        for message_id, message_body in confirmed.items():
            assert held_b.get(message_id) == message_body, f"trial {trial}: {message_id} lost"
            if message_id not in acked:
                assert held.get(message_id) == message_body, f"trial {trial}: {message_id} lost"
        assert held.keys() <= confirmed.keys() and held_b.keys() <= confirmed.keys()
        assert not recovery["skipped"], recovery
        if garbage:
            injected += 1
            detected += recovery["torn_tail"] is not None
    assert injected > trials // 4 and detected == injected


def test_fsync_never_loses_at_most_the_unsynced_tail_in_a_power_loss(tmp_path: Path) -> None:
    """With ``never`` a power loss may take confirmed messages, but only a suffix."""
    rng = random.Random(99)
    for trial in range(40 if SOAK else 8):
        data_dir = tmp_path / f"trial{trial}"
        order: list[int] = []
        with Broker(data_dir=data_dir, fsync="never") as broker:
            broker.create_queue("q")
            for _ in range(rng.randint(1, 30)):
                order += [r.message_id for r in broker.send_batch(
                    "q", [b"m%d" % n for n in range(rng.randint(1, 10))])]
            crash_dir = tmp_path / f"crash{trial}"
            power_loss_copy(data_dir, crash_dir, storage(broker)["synced_seq"], rng)
        with Broker(data_dir=crash_dir) as recovered:
            held = drain(recovered, "q") if "q" in recovered.list_queues() else {}
        assert sorted(held) == order[:len(held)], f"trial {trial}: not a prefix"


def test_an_fsync_error_fails_the_store_closed(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from fastfanout._ext import journal as journal_ops
    from fastfanout.errors import StoreFailed

    data_dir = tmp_path / "data"
    try:
        with Broker(data_dir=data_dir, fsync="always") as broker:
            broker.create_queue("q")
            kept = [broker.send("q", b"kept %d" % n).message_id for n in range(5)]
            journal_ops.inject_fault("fsync", errno.EIO)
            with pytest.raises(StoreFailed):
                broker.send("q", b"refused")
            for _ in range(3):   # failed closed: no further confirm, never a retried fsync
                with pytest.raises(StoreFailed):
                    broker.send_batch("q", [b"refused too"])
            # consumers still drain what is in memory
            messages = broker.receive("q", max_messages=10)
            assert [m.id for m in messages][:5] == kept
            stats = storage(broker)
            assert stats["failures"] == 1 and "fdatasync" in str(stats["failure"])
    finally:
        journal_ops.inject_fault("fsync", 0)
    assert any(record.levelname in ("ERROR", "CRITICAL") for record in caplog.records)
    with Broker(data_dir=data_dir) as recovered:   # a restart recovers what is on disk
        held = drain(recovered, "q")
        assert sorted(held)[:5] == kept and b"refused too" not in held.values()


def test_a_write_error_fails_the_store_closed(tmp_path: Path) -> None:
    from fastfanout._ext import journal as journal_ops
    from fastfanout.errors import StoreFailed

    data_dir = tmp_path / "data"
    try:
        with Broker(data_dir=data_dir) as broker:
            broker.create_queue("q")
            kept = broker.send("q", b"kept").message_id
            journal_ops.inject_fault("write", errno.EIO)
            with pytest.raises(StoreFailed):
                broker.send("q", b"refused")
            with pytest.raises(StoreFailed):
                broker.send("q", b"refused again")
            assert storage(broker)["failures"] == 1
    finally:
        journal_ops.inject_fault("write", 0)
    with Broker(data_dir=data_dir) as recovered:
        assert list(drain(recovered, "q").items()) == [(kept, b"kept")]


def fill_until_full(broker: Broker, queue: str, size: int) -> tuple[dict[int, bytes], int]:
    """Send ``size``-byte messages until ``StoreFull``: (confirmed id -> body, refusals)."""
    from fastfanout.errors import StoreFull

    confirmed: dict[int, bytes] = {}
    for n in range(100_000):
        message_body = b"%08d" % n + bytes(size - 8)
        try:
            confirmed[broker.send(queue, message_body).message_id] = message_body
        except StoreFull:
            return confirmed, n
    raise AssertionError("the store never filled up")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    """A 4 MiB tmpfs mounted under tmp_path (root only), unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (RLIMIT_FSIZE covers the rest)")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_full_disk_refuses_publishes_and_recovers(small_tmpfs: Path) -> None:
    from fastfanout.errors import StoreFull

    filler = small_tmpfs / "filler"
    filler.write_bytes(bytes(1 << 20))   # removed later: the space that returns
    data_dir = small_tmpfs / "data"
    with Broker(data_dir=data_dir, fsync="always") as broker:
        broker.create_queue("q")
        confirmed, refused_at = fill_until_full(broker, "q", 16384)
        assert len(confirmed) > 50
        with pytest.raises(StoreFull):   # all or nothing: none of the batch is stored
            broker.send_batch("q", [b"batch %d " % n + bytes(16384) for n in range(3)])
        # consumers keep draining
        messages = broker.receive("q", max_messages=20)
        broker.ack_batch([m.receipt for m in messages])
        acked = {m.id for m in messages}
        assert storage(broker)["store_full"] >= 2
        filler.unlink()   # room again: publishing resumes
        later = broker.send("q", b"after the room came back").message_id
        confirmed[later] = b"after the room came back"
    with Broker(data_dir=data_dir) as recovered:
        held = drain(recovered, "q")
    refused = b"%08d" % refused_at
    assert not any(held_body.startswith(refused) for held_body in held.values())
    assert not any(held_body.startswith(b"batch ") for held_body in held.values())
    for message_id, message_body in confirmed.items():
        if message_id not in acked:
            assert held.get(message_id) == message_body, f"{message_id} lost"


def test_max_disk_bytes_refuses_publishes_until_acks_free_segments(tmp_path: Path) -> None:
    from fastfanout.errors import StoreFull

    data_dir = tmp_path / "data"
    limit = 1 << 20
    with Broker(data_dir=data_dir, max_disk_bytes=limit) as broker:
        broker.create_queue("q")
        confirmed, _ = fill_until_full(broker, "q", 4096)
        # refused once the journal holds the limit: the last request may pass it a little
        assert limit <= sum(p.stat().st_size for p in segment_files(data_dir)) <= limit + 8192
        with pytest.raises(StoreFull):
            broker.send("q", b"no room")
        while messages := broker.receive("q", max_messages=1000):
            broker.ack_batch([m.receipt for m in messages])
        after = broker.send("q", b"room again").message_id   # settled segments removed
        assert storage(broker)["store_full"] >= 2
    with Broker(data_dir=data_dir) as recovered:
        assert list(drain(recovered, "q").items()) == [(after, b"room again")]
    assert confirmed


def test_damage_in_older_segments_is_reported_and_skipped(tmp_path: Path) -> None:
    """Bit flips and a cut inside older segments: every other message is kept."""
    rng = random.Random(7)
    for damage in ("flip", "cut"):
        data_dir = tmp_path / damage
        sent: dict[int, bytes] = {}
        with Broker(data_dir=data_dir, max_disk_bytes=1 << 20) as broker:
            broker.create_queue("q")
            for n in range(600):
                message_body = b"message %04d " % n + rng.randbytes(1000)
                sent[broker.send("q", message_body).message_id] = message_body
        segments = segment_files(data_dir)
        assert len(segments) >= 3, segments
        older = segments[len(segments) // 2 - 1]
        data = bytearray(older.read_bytes())
        where = len(data) // 2
        if damage == "flip":
            data[where] ^= 0x10
            data[where + 3000] ^= 0x01
        else:
            del data[where:]
        older.write_bytes(bytes(data))
        with Broker(data_dir=data_dir) as recovered:
            recovery = storage(recovered)["recovery"]
            held = drain(recovered, "q")
        assert recovery["skipped"], recovery
        assert all(sent[message_id] == message_body for message_id, message_body in held.items())
        lost = sent.keys() - held.keys()
        # a stretch of one segment is lost, never a message of another segment
        assert 0 < len(lost) <= (3 if damage == "flip" else 200), (damage, len(lost))
        last = max(sent)
        assert last in held, "a message in a later segment was dropped"


KILLED_AFTER_PUBLISHING = """
import os, signal, sys
from fastfanout import Broker
broker = Broker(data_dir=sys.argv[1])
broker.create_topic("lonely")          # no subscriber: its messages reach no queue
broker.create_queue("mem", durable=False)
ids = [broker.publish("lonely", b"x").message_id for _ in range(int(sys.argv[2]))]
ids += [broker.send("mem", b"y").message_id]
print(max(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # no close: nothing more is written
"""


@pytest.mark.parametrize("count", [3, 70_000])   # within the first block of ids, past it
def test_ids_of_messages_no_durable_queue_kept_are_not_given_again_after_kill_9(
        tmp_path: Path, count: int) -> None:
    data = tmp_path / "data"
    child = subprocess.run([sys.executable, "-c", KILLED_AFTER_PUBLISHING, str(data),
                            str(count)], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    last = int(child.stdout)
    assert last > count
    broker = Broker(data_dir=data)
    try:
        assert broker.publish("lonely", b"z").message_id > last
        assert broker.send("mem", b"z").message_id > last
    finally:
        broker.close()


KILLED_WHILE_HANDLING = """
import os, signal, sys
from fastfanout import Broker
broker = Broker(data_dir=sys.argv[1])
if sys.argv[2] == "consume":
    with broker.consume("work", prefetch=1) as consumer:
        messages = [next(consumer)]
else:
    messages = broker.receive("work", max_messages=10)
print(" ".join(f"{m.body.decode()}:{m.receive_count}" for m in messages), flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # the handler crashed the process (and its broker)
"""


@pytest.mark.parametrize("how", ["receive", "consume"])
def test_a_message_that_kills_its_embedded_broker_reaches_the_dead_letter_queue(
        tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    broker = Broker(data_dir=data)
    broker.create_queue("dead")
    broker.create_queue("work", max_receive_count=2, dead_letter_queue="dead")
    broker.send("work", b"poison")
    broker.close()
    for receive_count in (1, 2):
        child = subprocess.run([sys.executable, "-c", KILLED_WHILE_HANDLING, str(data), how],
                               capture_output=True, text=True, timeout=60)
        assert child.returncode == -signal.SIGKILL, child.stderr
        assert child.stdout.split() == [f"poison:{receive_count}"]
    broker = Broker(data_dir=data)
    try:
        assert broker.receive("work") == []
        (dead,) = broker.receive("dead")
        assert dead.body == b"poison" and dead.dead_letter is not None
        assert dead.dead_letter.reason == "max_receives"
    finally:
        broker.close()


def test_a_topology_change_on_a_full_disk_is_refused_and_changes_nothing(
        small_tmpfs: Path) -> None:
    """``delete_queue`` on a full disk raised ``StoreFull`` but had deleted the queue in
    memory (``NotFound`` after), and a restart brought it back with its messages."""
    from fastfanout.errors import StoreFull

    filler = small_tmpfs / "filler"
    filler.write_bytes(bytes(1 << 20))   # removed later: the room that returns
    data_dir = small_tmpfs / "data"
    with Broker(data_dir=data_dir) as broker:
        broker.create_topic("t")
        for queue in ("q", "other"):
            broker.create_queue(queue)
            broker.subscribe("t", queue)
        refused = 0
        for _ in range(5000):
            try:
                broker.publish("t", bytes(1024))
            except StoreFull:
                refused += 1
                if refused > 20:
                    break
        assert refused > 20
        for change in (lambda: broker.delete_queue("other"),
                       lambda: broker.create_queue("new"), lambda: broker.unsubscribe(1)):
            with pytest.raises(StoreFull, match="nothing was changed"):
                change()
        assert broker.list_queues() == ["other", "q"]
        assert sorted(broker.list_subscriptions()) == [1, 2]
        filler.unlink()   # room again: the change is made, and kept
        broker.delete_queue("other")
        assert broker.list_queues() == ["q"]
    with Broker(data_dir=data_dir) as recovered:
        assert recovered.list_queues() == ["q"]
