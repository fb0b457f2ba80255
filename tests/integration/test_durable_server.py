"""A server over a durable broker: its round commits the publishes it answers (group
commit), and what it confirmed is there after a restart."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
from conftest import Tracker

from fastfanout import Broker
from fastfanout._ext import journal as journal_ops
from fastfanout.errors import StoreFailed, StoreFull


def test_confirmed_messages_survive_a_server_restart(track: Tracker, tmp_path: Path) -> None:
    data = tmp_path / "data"
    broker = Broker(data_dir=data)
    endpoint = track.endpoint()
    server = track.server(endpoint, broker=broker)
    client = track.client(endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    futures = [client.publish_nowait("t", f"m{i}".encode()) for i in range(200)]
    for future in futures:
        future.result()
    for i in range(20):
        client.send("q", f"s{i}".encode())
    received = client.receive("q", max_messages=5)
    for message in received:
        client.ack(message.receipt)
    sent = len(futures) + 20
    storage = broker.stats().storage
    assert storage is not None
    assert storage["syncs"] < sent   # pipelined publishes shared fdatasyncs
    assert storage["writer_batches"] > 0   # fdatasyncs are the writer thread's
    client.close()
    server.stop()
    broker.close()

    broker = Broker(data_dir=data)
    try:
        assert broker.list_subscriptions() == {1: ("t", "q")}
        bodies = []
        while messages := broker.receive("q", max_messages=100):
            bodies += [m.body for m in messages]
            broker.ack_batch([m.receipt for m in messages])
        assert len(bodies) == sent - len(received)
        assert not {m.body for m in received} & set(bodies)
    finally:
        broker.close()


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_a_drop_between_two_rounds_refuses_no_publish_it_did_not_drop(
        track: Tracker, tmp_path: Path, fsync: str) -> None:
    # A full disk refused a topology change's commit between two rounds: the next
    # round's publish was written, yet answered StoreFull (its ticket counted every drop
    # since the round before began), and a publisher's retry duplicated it (a
    # durability hunt, 2026-12-07).
    data = tmp_path / "data"
    broker = Broker(data_dir=data, fsync=fsync)
    try:
        endpoint = track.endpoint()
        track.server(endpoint, broker=broker)
        client = track.client(endpoint)
        client.create_queue("q")
        client.send("q", b"m1")
        journal_ops.inject_fault("write", errno.ENOSPC)
        try:
            with pytest.raises(StoreFull):
                client.create_queue("other")
        finally:
            journal_ops.inject_fault("write", 0)
        client.send("q", b"m2")   # answered: stored
        client.send("q", b"m3")
    finally:
        for server in track.servers:
            server.stop()
        broker.close()
    broker = Broker(data_dir=data)
    try:
        assert [m.body for m in broker.receive("q", max_messages=10)] == [b"m1", b"m2", b"m3"]
    finally:
        broker.close()


def test_a_publish_is_answered_after_its_round_is_committed(
        track: Tracker, tmp_path: Path) -> None:
    broker = Broker(data_dir=tmp_path / "data")
    try:
        endpoint = track.endpoint()
        track.server(endpoint, broker=broker)
        client = track.client(endpoint)
        client.create_queue("q")
        client.send("q", b"confirmed")
        journal_ops.inject_fault("fsync", errno.EIO)
        try:
            with pytest.raises(StoreFailed):
                client.send("q", b"its fdatasync fails")
        finally:
            journal_ops.inject_fault("fsync", 0)
        with pytest.raises(StoreFailed):
            client.send("q", b"refused from now on")
        assert [m.body for m in client.receive("q", max_messages=10)] == [
            b"confirmed", b"its fdatasync fails"]   # consumers still drain memory
    finally:
        for server in track.servers:
            server.stop()
        broker.close()


def test_settles_alone_are_written_without_an_fdatasync(track: Tracker, tmp_path: Path) -> None:
    broker = Broker(data_dir=tmp_path / "data")
    try:
        endpoint = track.endpoint()
        track.server(endpoint, broker=broker)
        client = track.client(endpoint)
        client.create_queue("q")
        client.send("q", b"m")   # confirmed: on disk
        before = broker.stats().storage
        assert before is not None and before["synced_seq"] == before["written_seq"]
        for message in client.receive("q", max_messages=1):
            client.ack(message.receipt)   # a lease and a remove record
        deadline = time.monotonic() + 10
        while True:
            after = broker.stats().storage
            assert after is not None
            if after["written_seq"] >= before["written_seq"] + 2:
                break
            assert time.monotonic() < deadline, after
            client.list_queues()          # another round of the server's loop
        assert after["syncs"] == before["syncs"]   # a crash may forget an ack: no sync
        client.send("q", b"n")    # the next publish's fdatasync covers them too
        synced = broker.stats().storage
        assert synced is not None and synced["synced_seq"] == synced["written_seq"]
        assert synced["syncs"] == before["syncs"] + 1
    finally:
        for server in track.servers:
            server.stop()
        broker.close()


def test_a_publish_that_needs_no_fdatasync_is_confirmed_in_its_own_round(
        track: Tracker, tmp_path: Path) -> None:
    broker = Broker(data_dir=tmp_path / "data", fsync="never")
    try:
        endpoint = track.endpoint()
        track.server(endpoint, broker=broker)
        client = track.client(endpoint)
        client.create_queue("q")
        before = broker.stats().storage
        assert before is not None
        for i in range(20):
            client.send("q", f"m{i}".encode())   # each one confirmed: written
        after = broker.stats().storage
        assert after is not None
        # written by the server's own thread, without a round trip to the writer thread
        assert after["inline_writes"] >= before["inline_writes"] + 20
        assert after["writer_batches"] == before["writer_batches"]
        assert after["syncs"] == before["syncs"]
        assert len(client.receive("q", max_messages=50)) == 20
    finally:
        for server in track.servers:
            server.stop()
        broker.close()


def test_a_data_dir_deleted_under_the_server_refuses_publishes(track: Tracker,
                                                               tmp_path: Path) -> None:
    # publishes were confirmed as durable into the deleted files, lost at the restart
    import shutil

    broker = Broker(data_dir=tmp_path / "data")
    endpoint = track.endpoint()
    track.server(endpoint, broker=broker)
    client = track.client(endpoint)
    client.create_queue("q")
    client.send("q", b"before")
    shutil.rmtree(tmp_path / "data")

    def refused() -> bool:
        try:
            client.send("q", b"after")
        except StoreFailed as error:
            assert "was removed" in str(error)
            return True
        return False

    track.wait_until(refused, timeout=10, what="the store failed closed")
    storage = client.stats().storage
    assert storage is not None and storage["failures"] == 1
