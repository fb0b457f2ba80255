"""Chaos across the bridge: ``kill -9`` of NATS, broker A and broker B under load.

A publisher confirms numbered batches on A (each message with a dedup id, a batch
retried after a failure with the same ids); a consumer on B acks what it gets; a killer
SIGKILLs the NATS server, A or B at random moments and restarts it. Every confirmed
message must reach B's consumer at least once; the copies a retry made are absorbed by
the dedup windows (A's topic, JetStream's, B's queue) and counted there.

The default run kills each of the three once in a few seconds of load;
``FASTFANOUT_CHAOS=full`` runs the full tier (more kills over a minute).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Tracker, wait_until
from jetstream_nodes import NatsNode, unavailable, wait_for_export

from fastfanout import FastFanoutError, PublishEntry
from fastfanout.client import connect

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

FULL = os.environ.get("FASTFANOUT_CHAOS") == "full"
LOAD_SECONDS = 60.0 if FULL else 6.0
KILLS = 15 if FULL else 3
BATCH = 50
DRAIN_DEADLINE = 90.0


class Broker:
    """A ``fastfanout serve --bridge`` process that can be killed and started again."""

    def __init__(self, track: Tracker, name: str, rules: Path) -> None:
        self.track = track
        self.endpoint = f"ipc://{track.tmp_path}/{name}.sock"
        self.args = ("--data-dir", str(track.tmp_path / name), "--bridge", str(rules))
        self.process = track.broker_process(self.endpoint, *self.args)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def start(self) -> None:
        self.process = self.track.broker_process(self.endpoint, *self.args)


def rules(path: Path, url: str, body: str) -> Path:
    path.write_text(f"servers = [{json.dumps(url)}]\nmax_backoff = 0.5\n"
                    f'identity = "{path.stem}"\n{body}')
    return path


class Load:
    """The publisher on A and the consumer on B, each reconnecting after a kill."""

    def __init__(self, endpoint_a: str, endpoint_b: str) -> None:
        self.endpoint_a, self.endpoint_b = endpoint_a, endpoint_b
        self.confirmed: set[int] = set()
        self.received: Counter[int] = Counter()
        self.publishing = threading.Event()
        self.consuming = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self.guard, args=(self.publish,)),
                        threading.Thread(target=self.guard, args=(self.consume,))]

    def guard(self, target: Any) -> None:
        try:
            target()
        except BaseException as error:   # reported by the test
            self.errors.append(error)

    def publish(self) -> None:
        number = 0
        client = None
        while not self.publishing.is_set():
            batch = [PublishEntry(b"%d" % n, dedup_id=f"m{n}")
                     for n in range(number, number + BATCH)]
            try:
                if client is None:
                    client = connect(self.endpoint_a, timeout=5.0)
                client.publish_batch("orders", batch)
            except FastFanoutError:
                if client is not None:
                    client.close(timeout=0.5)
                client = None
                time.sleep(0.1)
                continue   # the same batch again: A's topic dedup absorbs a stored one
            with self.lock:
                self.confirmed.update(range(number, number + BATCH))
            number += BATCH
            time.sleep(0.02)
        if client is not None:
            client.close(timeout=2.0)

    def consume(self) -> None:
        client = None
        while not self.consuming.is_set():
            try:
                if client is None:
                    client = connect(self.endpoint_b, timeout=5.0)
                for message in client.consume("orders-in", prefetch=500, timeout=0.5):
                    with self.lock:
                        self.received[int(message.body)] += 1
                    message.ack()
                    if self.consuming.is_set():
                        break
            except FastFanoutError:
                if client is not None:
                    client.close(timeout=0.5)
                client = None
                time.sleep(0.1)
        if client is not None:
            client.close(timeout=2.0)

    def missing(self) -> set[int]:
        with self.lock:
            return self.confirmed - set(self.received)


@pytest.mark.slow
@pytest.mark.timeout(900 if FULL else 120)
def test_kill_9_of_nats_and_both_brokers_loses_nothing_confirmed(
        track: Tracker, tmp_path: Path) -> None:
    node = NatsNode(tmp_path / "nats", "n0").start()
    try:
        broker_a = Broker(track, "a", rules(tmp_path / "host-a.toml", node.url,
                                            '[[export]]\nname = "orders"\ntopic = "orders"\n'
                                            'stream = "ORDERS"\npublish_timeout = 2.0\n'))
        broker_b = Broker(track, "b", rules(tmp_path / "host-b.toml", node.url,
                                            '[[import]]\nname = "orders"\nstream = "ORDERS"\n'
                                            'queue = "orders-in"\nack_wait = 2.0\n'))
        with connect(broker_a.endpoint, timeout=5.0) as client:
            wait_for_export(client)
        load = Load(broker_a.endpoint, broker_b.endpoint)
        for thread in load.threads:
            thread.start()
        victims: list[Any] = []
        seed = int(os.environ.get("FASTFANOUT_CHAOS_SEED", "0")) or random.randrange(1, 2**32)
        print(f"FASTFANOUT_CHAOS_SEED={seed}")   # shown with a failure: run it again
        rng = random.Random(seed)
        started = time.monotonic()
        for _ in range(KILLS):
            if not victims:
                victims = [node, broker_a, broker_b]
                rng.shuffle(victims)
            time.sleep(rng.uniform(0.2, 2 * LOAD_SECONDS / KILLS))
            victim = victims.pop()
            victim.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            victim.start()
        time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
        load.publishing.set()
        load.threads[0].join(30)
        loaded = time.monotonic()
        assert load.confirmed, "nothing was confirmed"
        wait_until(lambda: not load.missing(), timeout=DRAIN_DEADLINE,
                   what=f"every confirmed message on B (FASTFANOUT_CHAOS_SEED={seed})")
        load.consuming.set()
        load.threads[1].join(30)
        assert not load.errors, (f"FASTFANOUT_CHAOS_SEED={seed}", load.errors)
        assert not load.missing(), f"FASTFANOUT_CHAOS_SEED={seed}"
        duplicates = sum(count - 1 for count in load.received.values())
        with connect(broker_b.endpoint, timeout=5.0) as client:
            bridge = client.server_stats()["bridge"]["import:orders"]
        # Duplicates that reached the consumer come from B's own redeliveries (a kill
        # ends leases, an ack may be lost); the copies the bridges made were absorbed.
        print(f"load {loaded - started:.1f} s, drain {time.monotonic() - loaded:.1f} s, "
              f"confirmed {len(load.confirmed)}, delivered {sum(load.received.values())}, "
              f"duplicates delivered {duplicates}, bridge {bridge}")
        assert len(load.received) <= max(load.confirmed) + BATCH
    finally:
        node.stop()
