"""The NATS JetStream bridge between two brokers ("two hosts" on one machine).

Broker A exports topic ``orders`` into the JetStream stream ``ORDERS``; broker B imports
the stream into its queue ``orders-in``. Each broker is a ``fastfanout serve --bridge``
process with its own ipc endpoint and data directory; NATS is ``nats-server`` with
JetStream's file store (``jetstream_nodes``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import zmq.auth
from conftest import Tracker, free_tcp_endpoint, wait_until
from jetstream_nodes import NatsNode, cluster, unavailable, wait_for_export, wait_for_jetstream

from fastfanout import FastFanoutError, PublishEntry, QueueFull
from fastfanout.client import Client, connect
from fastfanout.transport.sockets import client_curve

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

BRIDGE_DEADLINE = 30.0
QUICK = "max_backoff = 1.0\nconnect_timeout = 0.5\n"   # retries a test can wait for


def export_rules(path: Path, urls: list[str], **extra: Any) -> Path:
    options = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    path.write_text(f"servers = {json.dumps(urls)}\n{QUICK}identity = \"host-a\"\n"
                    f'[[export]]\nname = "orders"\ntopic = "orders"\nstream = "ORDERS"\n'
                    f"{options}")
    return path


def import_rules(path: Path, urls: list[str], **extra: Any) -> Path:
    options = "".join(f"{key} = {json.dumps(value)}\n" for key, value in extra.items())
    path.write_text(f"servers = {json.dumps(urls)}\n{QUICK}"
                    f'[[import]]\nname = "orders"\nstream = "ORDERS"\nqueue = "orders-in"\n'
                    f"{options}")
    return path


def broker(track: Tracker, name: str, rules: Path) -> tuple[str, subprocess.Popen[bytes]]:
    endpoint = f"ipc://{track.tmp_path}/{name}.sock"
    process = track.broker_process(endpoint, "--data-dir", str(track.tmp_path / name),
                                   "--bridge", str(rules))
    return endpoint, process


def prepare(track: Tracker, name: str, **queues: dict[str, Any]) -> None:
    """Create queues on broker ``name``'s data directory before its bridge runs."""
    endpoint = f"ipc://{track.tmp_path}/{name}.sock"
    process = track.broker_process(endpoint, "--data-dir", str(track.tmp_path / name))
    client = track.client(endpoint)
    for queue, settings in queues.items():
        client.create_queue(queue.replace("_", "-"), **settings)
    client.close()
    track.clients.remove(client)
    process.terminate()
    process.wait(10)


def bridge_stats(client: Client) -> dict[str, dict[str, float]]:
    return client.server_stats().get("bridge", {})


def consume_all(client: Client, queue: str, count: int,
                timeout: float = BRIDGE_DEADLINE) -> list[Any]:
    received: list[Any] = []
    deadline = time.monotonic() + timeout
    # an import's run makes its target queue: consuming before it is NotFound
    wait_until(lambda: queue in client.list_queues(),
               timeout=timeout, what=f"queue {queue!r} made")
    for message in client.consume(queue, prefetch=1000, timeout=timeout):
        received.append(message)
        message.ack()
        if len(received) >= count or time.monotonic() > deadline:
            break
    return received


def stored(url: str, stream: str, count: int, timeout: float = BRIDGE_DEADLINE
           ) -> list[Any]:
    """The first ``count`` messages of JetStream ``stream`` (waits until it holds them)."""
    import nats
    from nats.js.errors import NotFoundError

    async def read() -> list[Any]:
        connection = await nats.connect(url)
        try:
            js = connection.jetstream()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if (await js.stream_info(stream)).state.messages >= count:
                        break
                except NotFoundError:
                    pass
                assert time.monotonic() < deadline, f"{stream} holds fewer than {count}"
                await asyncio.sleep(0.02)
            return [await js.get_msg(stream, seq) for seq in range(1, count + 1)]
        finally:
            await connection.close()

    return asyncio.run(read())


@pytest.fixture
def nats_node(tmp_path: Path) -> Any:
    node = NatsNode(tmp_path / "nats", "n0").start()
    try:
        yield node
    finally:
        node.stop()


def test_every_message_once_in_order_per_group(track: Tracker, nats_node: NatsNode) -> None:
    endpoint_a, _ = broker(track, "a", export_rules(track.tmp_path / "a.toml",
                                                    [nats_node.url]))
    prepare(track, "b", orders_in={"max_priority": 9})   # the bridge keeps a queue that exists
    endpoint_b, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url]))
    client_a = track.client(endpoint_a)
    client_b = track.client(endpoint_b)
    wait_for_export(client_a)

    groups, count = 5, 3000
    results = []
    for start in range(0, count, 500):
        results += client_a.publish_batch("orders", [
            PublishEntry(b"%d" % n, {"n": n, "raw": b"\x00\xff"}, group_id=f"g{n % groups}",
                         priority=n % groups % 4) for n in range(start, start + 500)])
    received = consume_all(client_b, "orders-in", count)

    assert sorted(int(m.body) for m in received) == list(range(count))   # each once
    by_group: dict[str, list[int]] = defaultdict(list)
    for message in received:
        by_group[message.group_id].append(int(message.body))
    assert all(numbers == sorted(numbers) for numbers in by_group.values())
    first = next(m for m in received if m.body == b"7")
    assert first.attributes == {"n": 7, "raw": b"\x00\xff"}
    assert first.priority == 2   # 7 % 5 % 4: one priority per group keeps its order
    assert first.dedup_id == f"host-a:{results[7].message_id}"
    wait_until(lambda: bridge_stats(client_a)["export:orders"]["messages"] == count,
               what="export counters")
    # B's rule counts a message once JetStream took its ack: after B's consumer may see it
    wait_until(lambda: bridge_stats(client_b)["import:orders"]["messages"] == count,
               what="import counters")
    assert bridge_stats(client_b)["import:orders"]["dead_lettered"] == 0

    # fastfanout stats shows each rule: messages, lag, retries, errors
    shown = subprocess.run([sys.executable, "-m", "fastfanout", "stats", "-e", endpoint_b],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "import:orders" in shown.stdout and "retries" in shown.stdout


def test_refused_for_good_goes_to_the_dead_letter_queue(track: Tracker,
                                                        nats_node: NatsNode) -> None:
    import nats

    async def publish() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        await js.publish("orders.x", b"fits", headers={"Nats-Msg-Id": "m1"})
        await js.publish("orders.x", b"x" * 500, headers={"Nats-Msg-Id": "m2"})
        await js.publish("orders.x", b"bad header",
                         headers={"Nats-Msg-Id": "m3", "Fastfanout-Attributes": "{oops"})
        await js.publish("orders.x", b"no msg id")
        await connection.close()

    asyncio.run(publish())
    prepare(track, "b", orders_in={"max_message_size": 100})
    endpoint, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url]))
    client = track.client(endpoint)
    received = consume_all(client, "orders-in", 2)
    assert sorted(m.body for m in received) == [b"fits", b"no msg id"]
    assert sorted(m.dedup_id for m in received) == ["ORDERS:4", "m1"]
    dead = consume_all(client, "bridge.import.orders.dlq", 2)
    assert sorted(m.dedup_id for m in dead) == ["m2", "m3"]
    assert {m.attributes["bridge_rule"] for m in dead} == {"orders"}
    assert "message_too_large" in next(m for m in dead if m.dedup_id == "m2"
                                       ).attributes["bridge_error"]
    # the rule counts a message once JetStream took its ack or term: after B may see it
    wait_until(lambda: (bridge_stats(client)["import:orders"]["dead_lettered"],
                        bridge_stats(client)["import:orders"]["messages"]) == (2, 2),
               what="import counters")

    async def pending() -> tuple[int, int]:
        connection = await nats.connect(nats_node.url)
        info = await connection.jetstream().consumer_info("ORDERS", "orders")
        await connection.close()
        return info.num_pending, info.num_ack_pending

    wait_until(lambda: asyncio.run(pending()) == (0, 0), what="every message settled")


def test_a_full_target_is_nacked_and_redelivered_later(track: Tracker,
                                                      nats_node: NatsNode) -> None:
    import nats

    async def publish() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        for n in range(30):
            await js.publish("orders.x", b"%d" % n, headers={"Nats-Msg-Id": f"m{n}"})
        await connection.close()

    asyncio.run(publish())
    prepare(track, "b", orders_in={"max_messages": 10})
    endpoint, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url],
                                                  nak_delay=0.2))
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["import:orders"]["retries"] >= 1,
               what="a batch refused for now (the queue holds 10)")
    # what fits went in, in order (a batch of 30 would never fit whole)
    wait_until(lambda: client.stats().queues["orders-in"].messages == 10, timeout=5.0,
               what="the first 10 in")
    received = consume_all(client, "orders-in", 30)
    assert sorted(int(m.body) for m in received) == list(range(30))
    assert bridge_stats(client)["import:orders"]["dead_lettered"] == 0


def test_nats_down_the_export_queue_buffers_bounded(track: Tracker, tmp_path: Path) -> None:
    node = NatsNode(tmp_path / "nats", "n0")   # not started yet: NATS is down
    endpoint_a, _ = broker(track, "a", export_rules(
        track.tmp_path / "a.toml", [node.url], max_messages=600))
    endpoint_b, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [node.url]))
    client_a = track.client(endpoint_a)
    wait_for_export(client_a)
    client_a.publish_batch("orders", [b"%d" % n for n in range(600)])
    with pytest.raises(QueueFull):   # the bound holds, and the refusal is counted
        client_a.publish("orders", b"one too many")
    assert client_a.stats().queues["bridge.export.orders"].rejected == 1
    wait_until(lambda: bridge_stats(client_a)["export:orders"]["retries"] >= 2,
               what="retries while NATS is down")
    wait_until(lambda: bridge_stats(client_a)["export:orders"]["lag"] == 600,
               what="the lag shown")
    try:
        node.start()
        client_b = track.client(endpoint_b)
        received = consume_all(client_b, "orders-in", 600)
        assert sorted(int(m.body) for m in received) == list(range(600))
        wait_until(lambda: bridge_stats(client_a)["export:orders"]["lag"] == 0,
                   what="the export queue drained")
    finally:
        node.stop()


def test_a_message_over_the_nats_max_payload_is_dead_lettered_on_a(
        track: Tracker, tmp_path: Path) -> None:
    node = NatsNode(tmp_path / "nats", "n0", extra="max_payload: 8192").start()
    try:
        endpoint_a, _ = broker(track, "a", export_rules(track.tmp_path / "a.toml",
                                                        [node.url]))
        endpoint_b, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml",
                                                        [node.url]))
        client_a = track.client(endpoint_a)
        wait_for_export(client_a)
        client_a.publish_batch("orders", [b"small 1", b"x" * 10_000, b"small 2"])
        received = consume_all(track.client(endpoint_b), "orders-in", 2)
        assert [m.body for m in received] == [b"small 1", b"small 2"]
        (dead,) = client_a.receive("bridge.export.orders.dlq", max_messages=10, wait=5.0)
        assert len(dead.body) == 10_000 and dead.dead_letter.reason == "rejected"
        wait_until(lambda: bridge_stats(client_a)["export:orders"]["dead_lettered"] == 1,
                   what="the refusal counted")
    finally:
        node.stop()


def test_a_message_over_the_stream_max_msg_size_is_dead_lettered_on_a(
        track: Tracker, nats_node: NatsNode) -> None:
    import nats

    async def create() -> None:
        connection = await nats.connect(nats_node.url)
        await connection.jetstream().add_stream(name="ORDERS", subjects=["fastfanout.orders"],
                                                max_msg_size=2000)
        await connection.close()

    asyncio.run(create())
    endpoint_a, _ = broker(track, "a", export_rules(track.tmp_path / "a.toml",
                                                    [nats_node.url]))
    endpoint_b, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml",
                                                    [nats_node.url]))
    client_a = track.client(endpoint_a)
    wait_for_export(client_a)
    client_a.publish_batch("orders", [b"small 1", b"x" * 5000, b"small 2"])
    received = consume_all(track.client(endpoint_b), "orders-in", 2)
    assert [m.body for m in received] == [b"small 1", b"small 2"]
    (dead,) = client_a.receive("bridge.export.orders.dlq", max_messages=10, wait=5.0)
    assert len(dead.body) == 5000
    wait_until(lambda: bridge_stats(client_a)["export:orders"]["dead_lettered"] == 1,
               what="the refusal counted")
    wait_until(lambda: bridge_stats(client_a)["export:orders"]["messages"] == 2,
               what="the publishes counted")


@pytest.mark.slow
def test_three_node_cluster_survives_a_node_kill(track: Tracker, tmp_path: Path) -> None:
    nodes = cluster(tmp_path / "nats")
    try:
        for node in nodes:
            node.start()
        urls = [node.url for node in nodes]
        wait_for_jetstream(urls)
        endpoint_a, _ = broker(track, "a", export_rules(
            track.tmp_path / "a.toml", [urls[0], urls[1]], replicas=3))
        endpoint_b, _ = broker(track, "b", import_rules(
            track.tmp_path / "b.toml", [urls[2], urls[1]]))
        client_a = track.client(endpoint_a)
        client_b = track.client(endpoint_b)
        wait_until(lambda: bridge_stats(client_a)["export:orders"]["connected"] == 1,
                   timeout=BRIDGE_DEADLINE, what="the export rule connected")
        count = 2000
        for start in range(0, count // 2, 250):
            client_a.publish_batch("orders", [b"%d" % n for n in range(start, start + 250)])
        nodes[0].kill()   # A's server: the bridge fails over to another node
        for start in range(count // 2, count, 250):
            client_a.publish_batch("orders", [b"%d" % n for n in range(start, start + 250)])
        received = consume_all(client_b, "orders-in", count, timeout=60.0)
        assert sorted({int(m.body) for m in received}) == list(range(count))
        assert len(received) == count   # retried copies were absorbed by the dedup ids
    finally:
        for node in nodes:
            node.stop()


def test_a_curve_broker_exports_to_jetstream(track: Tracker, nats_node: NatsNode) -> None:
    keys, admitted = track.tmp_path / "keys", track.tmp_path / "admitted"
    keys.mkdir()
    admitted.mkdir()
    for name in ("broker", "alice"):
        zmq.auth.create_certificates(keys, name)
    shutil.copy(keys / "alice.key", admitted)
    endpoint = free_tcp_endpoint()
    rules = export_rules(track.tmp_path / "a.toml", [nats_node.url])
    process = track.process([
        "-m", "fastfanout", "serve", "--endpoint", endpoint, "--data-dir",
        str(track.tmp_path / "a"), "--log-level",
        "WARNING", "--curve-secret-key", str(keys / "broker.key_secret"), "--curve-clients",
        str(admitted), "--bridge", str(rules)])
    curve = client_curve(str(keys / "broker.key"), str(keys / "alice.key_secret"))

    def serving() -> bool:
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        try:
            connect(endpoint, timeout=0.3, curve=curve).close()
        except FastFanoutError:
            return False
        return True

    wait_until(serving, timeout=15.0, what="the CURVE broker")
    client = track.client(endpoint, curve=curve)
    wait_until(lambda: bridge_stats(client)["export:orders"]["connected"] == 1,
               timeout=BRIDGE_DEADLINE, what="the export rule connected")
    results = client.publish_batch("orders", [b"one", b"two", b"three"])
    messages = stored(nats_node.url, "ORDERS", 3)
    assert [m.data for m in messages] == [b"one", b"two", b"three"]
    assert [m.subject for m in messages] == ["fastfanout.orders"] * 3
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [
        f"host-a:{result.message_id}" for result in results]
    # the bridge's key pair was admitted in memory: nothing was written beside alice's
    assert sorted(p.name for p in admitted.iterdir()) == ["alice.key"]


def test_a_running_bridge_shortens_the_gil_switch_interval(track: Tracker,
                                                           nats_node: NatsNode) -> None:
    from fastfanout.bridges import Bridge, load_rules
    from fastfanout.bridges.jetstream import SWITCH_INTERVAL

    server = track.server(data_dir=str(track.tmp_path / "a"))
    path = export_rules(track.tmp_path / "a.toml", [nats_node.url])
    # no stats sample while the test runs: a bridge stops between two connects
    path.write_text("stats_interval = 3600.0\n" + path.read_text())
    rules = load_rules(str(path))

    def run(**options: Any) -> None:
        bridge = Bridge(rules, server.endpoint, **options).start()
        try:
            wait_until(lambda: bridge.stats()["export:orders"]["connected"] == 1,
                       timeout=BRIDGE_DEADLINE, what="the export rule connected")
        finally:
            bridge.stop()

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)   # Python's default
        run(switch_interval=None)
        assert sys.getswitchinterval() == 0.005   # None: left alone
        run()
        assert sys.getswitchinterval() == SWITCH_INTERVAL   # lowered...
        sys.setswitchinterval(SWITCH_INTERVAL / 2)
        run()
        assert sys.getswitchinterval() == SWITCH_INTERVAL / 2   # ...never raised
    finally:
        sys.setswitchinterval(before)


def test_an_in_memory_broker_exports_to_jetstream(track: Tracker, nats_node: NatsNode) -> None:
    # its bridge's queues are in memory too: a durable queue needs a data directory
    endpoint = f"ipc://{track.tmp_path}/a.sock"
    track.broker_process(endpoint, "--in-memory", "--bridge",
                         str(export_rules(track.tmp_path / "a.toml", [nats_node.url])))
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["export:orders"]["connected"] == 1,
               timeout=BRIDGE_DEADLINE, what="the export rule connected")
    assert not client.queue_settings("bridge.export.orders").durable
    client.publish_batch("orders", [b"one", b"two"])
    assert [m.data for m in stored(nats_node.url, "ORDERS", 2)] == [b"one", b"two"]


def pattern_rules(path: Path, urls: list[str]) -> Path:
    path.write_text(f"servers = {json.dumps(urls)}\n{QUICK}identity = \"host-a\"\n"
                    f'[[export]]\nname = "orders"\ntopic = "orders.>"\nstream = "ORDERS"\n')
    return path


def by_subject(messages: list[Any]) -> dict[str, list[bytes]]:
    subjects: dict[str, list[bytes]] = defaultdict(list)
    for message in messages:
        subjects[message.subject].append(message.data)
    return dict(subjects)


def test_a_pattern_export_publishes_each_topic_on_its_subject(
        track: Tracker, nats_node: NatsNode) -> None:
    # topic = "orders.>" and no subject: each message on ORDERS.<its topic>, the stream
    # made on ORDERS.>; in order per topic, also from the durable queue after a kill -9
    rules = pattern_rules(track.tmp_path / "a.toml", [nats_node.url])
    endpoint, process = broker(track, "a", rules)
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client).get("export:orders", {}).get("connected") == 1,
               timeout=BRIDGE_DEADLINE, what="the export rule connected")
    client.create_topic("orders.eu")
    client.create_topic("orders.us.east")   # ">" covers deeper topics, made after the rule

    def publish(first: int, last: int) -> None:
        for start in range(first, last, 50):
            for topic in ("orders.eu", "orders.us.east"):
                client.publish_batch(topic, [b"%s %d" % (topic.encode(), n)
                                             for n in range(start, start + 50)])

    def expected(topic: str, count: int) -> list[bytes]:
        return [b"%s %d" % (topic.encode(), n) for n in range(count)]

    publish(0, 200)
    assert by_subject(stored(nats_node.url, "ORDERS", 400)) == {
        "ORDERS.orders.eu": expected("orders.eu", 200),
        "ORDERS.orders.us.east": expected("orders.us.east", 200)}
    wait_until(lambda: bridge_stats(client)["export:orders"]["messages"] == 400,
               what="every publish acknowledged")
    # a message sent to the export queue has no topic: dead-lettered, not blocking the rule
    client.send("bridge.export.orders", b"no topic")
    wait_until(lambda: bridge_stats(client)["export:orders"]["dead_lettered"] == 1,
               what="the message without a topic dead-lettered")
    (dead,) = client.receive("bridge.export.orders.dlq")
    assert dead.body == b"no topic" and dead.dead_letter.reason == "rejected"

    # NATS away: the durable queue buffers; the broker is killed; both come back
    nats_node.stop()
    publish(200, 300)
    process.kill()
    process.wait(10)
    nats_node.start()
    endpoint, _ = broker(track, "a", rules)
    assert by_subject(stored(nats_node.url, "ORDERS", 600)) == {
        "ORDERS.orders.eu": expected("orders.eu", 300),
        "ORDERS.orders.us.east": expected("orders.us.east", 300)}


def test_an_import_whose_stream_vanished_while_nats_was_away_starts_again(
        track: Tracker, nats_node: NatsNode) -> None:
    # until 2026-12-05 the import asked the missing consumer for messages again at once
    # on each refusal (status 503), for ever: a core spun, the rule showed connected with
    # no error, and the consumer was never created again for the stream made anew
    import nats
    from nats.js.errors import NotFoundError

    async def publish(body: bytes) -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        try:
            await js.stream_info("ORDERS")
        except NotFoundError:
            await js.add_stream(name="ORDERS", subjects=["orders.>"])
        await js.publish("orders.x", body, headers={"Nats-Msg-Id": body.decode()})
        await connection.close()

    asyncio.run(publish(b"before"))
    endpoint, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url]))
    client = track.client(endpoint)
    assert [m.body for m in consume_all(client, "orders-in", 1)] == [b"before"]
    nats_node.stop()
    shutil.rmtree(nats_node.directory / "jetstream")   # the stream and consumer are gone
    nats_node.start()
    wait_until(lambda: bridge_stats(client)["import:orders"]["errors"] >= 1,
               timeout=BRIDGE_DEADLINE, what="the missing consumer counted as an error")
    asyncio.run(publish(b"after"))   # the stream made again: the rule makes its consumer
    assert [m.body for m in consume_all(client, "orders-in", 1)] == [b"after"]


def test_nats_away_shows_every_rule_disconnected_with_an_error(
        track: Tracker, nats_node: NatsNode) -> None:
    # until 2026-12-05 idle rules showed connected = 1 and no error for as long as NATS
    # was away (nats-py reconnecting under them): fastfanout stats said all was well
    path = track.tmp_path / "ab.toml"
    path.write_text(f"servers = {json.dumps([nats_node.url])}\n{QUICK}"
                    f'[[export]]\nname = "out"\ntopic = "t"\nstream = "OUT"\n'
                    f'[[import]]\nname = "in"\nstream = "OUT"\nqueue = "in"\n')
    endpoint, process = broker(track, "a", path)
    client = track.client(endpoint)

    def connected() -> list[float]:
        rules = bridge_stats(client)
        return [rules.get(name, {}).get("connected", 0) for name in ("export:out", "import:in")]

    wait_until(lambda: connected() == [1, 1], timeout=BRIDGE_DEADLINE, what="both rules up")
    errors = [bridge_stats(client)[name]["errors"] for name in ("export:out", "import:in")]
    nats_node.stop()
    wait_until(lambda: connected() == [0, 0], timeout=15.0, what="both rules shown down")
    assert all(bridge_stats(client)[name]["errors"] > before
               for name, before in zip(("export:out", "import:in"), errors, strict=True))
    nats_node.start()
    wait_until(lambda: connected() == [1, 1], timeout=BRIDGE_DEADLINE, what="both rules up again")
    client.publish("t", b"after")   # and they work
    assert [m.body for m in consume_all(client, "in", 1)] == [b"after"]
    # the bridge's own close at the broker's stop is no outage: no warning of one
    process.terminate()
    assert process.wait(BRIDGE_DEADLINE) == 0
    assert process.stderr is not None
    assert process.stderr.read().decode().count("NATS disconnected") == 1


@pytest.mark.parametrize("made_outside", ["push", "max_batch"])
def test_a_consumer_made_outside_that_the_import_cannot_pull_is_an_error(
        track: Tracker, nats_node: NatsNode, made_outside: str) -> None:
    # until 2026-12-05 the import pulled again at once on each refusal (409), for ever: a
    # core spun, nothing was imported, and the rule showed connected with no error
    import nats
    from nats.js.api import ConsumerConfig

    async def setup() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        if made_outside == "push":
            await js.add_consumer("ORDERS", ConsumerConfig(durable_name="orders",
                                                           deliver_subject="elsewhere"))
        else:   # a pull consumer taking batches of 10 at most: the rule asks for 500
            reply = await connection.request(
                "$JS.API.CONSUMER.CREATE.ORDERS.orders", json.dumps({
                    "stream_name": "ORDERS", "config": {
                        "durable_name": "orders", "ack_policy": "explicit",
                        "max_batch": 10}}).encode(), timeout=5.0)
            assert b'"error"' not in reply.data, reply.data
        await js.publish("orders.x", b"one", headers={"Nats-Msg-Id": "one"})
        await connection.close()

    async def delete() -> None:
        connection = await nats.connect(nats_node.url)
        await connection.jetstream().delete_consumer("ORDERS", "orders")
        await connection.close()

    asyncio.run(setup())
    endpoint, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url]))
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["import:orders"]["errors"] >= 2,
               timeout=BRIDGE_DEADLINE, what="the refusals counted as errors")
    assert client.stats().queues["orders-in"].messages == 0
    asyncio.run(delete())   # the way out: the rule makes a consumer of its own
    assert [m.body for m in consume_all(client, "orders-in", 1)] == [b"one"]


def test_an_export_queue_made_with_other_settings_is_named_in_a_warning(
        track: Tracker, nats_node: NatsNode) -> None:
    # until 2026-12-05 a rule file edited (max_messages 600 -> 1000) and the broker
    # restarted kept the old bound without a word: publishes were refused at 600
    def run(max_messages: int) -> str:
        rules = export_rules(track.tmp_path / "a.toml", [nats_node.url],
                             max_messages=max_messages)
        endpoint, process = broker(track, "a", rules)
        client = track.client(endpoint)
        wait_until(lambda: bridge_stats(client)["export:orders"]["connected"] == 1,
                   timeout=BRIDGE_DEADLINE, what="the export rule connected")
        settings = client.queue_settings("bridge.export.orders")
        client.close()
        track.clients.remove(client)
        process.terminate()
        assert process.wait(BRIDGE_DEADLINE) == 0
        assert process.stderr is not None and settings.max_messages == 600
        return process.stderr.read().decode()

    assert "other settings" not in run(600)
    told = run(1000)
    assert told.count("other settings") == 1
    assert "max_messages 600 (the rule: 1000)" in told and "delete-queue" in told


def test_an_import_rule_edited_updates_its_consumer(track: Tracker, nats_node: NatsNode
                                                    ) -> None:
    # until 2026-12-05 the consumer made by the first run was kept as it was: a rule file
    # edited to import orders.us only went on importing every subject of the stream
    import nats

    async def publish(*items: tuple[str, bytes]) -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        if not items:
            await js.add_stream(name="ORDERS", subjects=["orders.>"])
        for subject, body in items:
            await js.publish(subject, body, headers={"Nats-Msg-Id": body.decode()})
        await connection.close()

    async def consumer() -> Any:
        connection = await nats.connect(nats_node.url)
        info = await connection.jetstream().consumer_info("ORDERS", "orders")
        await connection.close()
        return info.config

    asyncio.run(publish())
    endpoint, process = broker(track, "b", import_rules(track.tmp_path / "b.toml",
                                                        [nats_node.url]))
    client = track.client(endpoint)
    asyncio.run(publish(("orders.eu", b"eu 1")))
    assert [m.body for m in consume_all(client, "orders-in", 1)] == [b"eu 1"]
    client.close()
    track.clients.remove(client)
    process.terminate()
    assert process.wait(BRIDGE_DEADLINE) == 0

    endpoint, process = broker(track, "b", import_rules(
        track.tmp_path / "b.toml", [nats_node.url], filter_subject="orders.us",
        ack_wait=10.0, max_in_flight=100))
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["import:orders"]["connected"] == 1,
               timeout=BRIDGE_DEADLINE, what="the import rule connected")
    config = asyncio.run(consumer())
    assert (config.filter_subject, config.ack_wait, config.max_ack_pending) == (
        "orders.us", 10.0, 100)
    asyncio.run(publish(("orders.eu", b"eu 2"), ("orders.us", b"us 1")))
    assert [m.body for m in consume_all(client, "orders-in", 1)] == [b"us 1"]
    assert client.stats().queues["orders-in"].messages == 0   # eu 2 stays out


def test_a_stream_that_does_not_take_the_export_subject_is_named(track: Tracker,
                                                                  nats_node: NatsNode) -> None:
    # until 2026-12-05 each retry logged "no JetStream stream answered (status 503)", naming
    # neither the stream nor the subject (its subjects changed outside the bridge)
    import nats
    from nats.js.errors import NotFoundError

    async def stream(subjects: list[str]) -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        try:
            info = await js.stream_info("ORDERS")
        except NotFoundError:
            await js.add_stream(name="ORDERS", subjects=subjects)
        else:
            info.config.subjects = subjects
            await js.update_stream(info.config)
        await connection.close()

    asyncio.run(stream(["other.>"]))
    endpoint, process = broker(track, "a", export_rules(track.tmp_path / "a.toml",
                                                        [nats_node.url]))
    client = track.client(endpoint)
    wait_for_export(client)
    client.publish("orders", b"kept")
    wait_until(lambda: bridge_stats(client)["export:orders"]["errors"] >= 1,
               timeout=BRIDGE_DEADLINE, what="the refusal counted")
    asyncio.run(stream(["other.>", "fastfanout.orders"]))   # the way out the warning names
    assert [m.data for m in stored(nats_node.url, "ORDERS", 1)] == [b"kept"]
    client.close()
    track.clients.remove(client)
    process.terminate()
    assert process.wait(BRIDGE_DEADLINE) == 0
    assert process.stderr is not None
    told = process.stderr.read().decode()
    assert ("stream 'ORDERS' takes subjects ['other.>'], not 'fastfanout.orders'" in told
            and "add it to the stream" in told)


def test_a_nats_msg_id_too_long_for_a_dedup_id_is_imported(track: Tracker,
                                                            nats_node: NatsNode) -> None:
    # until 2026-12-05 a Nats-Msg-Id over the 128 bytes of a local dedup id (a third-party
    # publisher's, or IDENTITY:ID of an exporter with a long identity) was refused, and so
    # was its dead-lettering with the same id: nacked for ever, every later message held
    import nats

    long_id = "publisher-" + "x" * 190

    async def publish() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        for body, msg_id in ((b"long", long_id), (b"again", long_id), (b"after", "m2")):
            await js.publish("orders.x", body, headers={"Nats-Msg-Id": msg_id})
        await connection.close()

    asyncio.run(publish())   # JetStream drops "again" (same id): two messages stored
    endpoint, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url]))
    client = track.client(endpoint)
    received = consume_all(client, "orders-in", 2)
    assert [m.body for m in received] == [b"long", b"after"]
    assert len(received[0].dedup_id.encode()) <= 128 and received[1].dedup_id == "m2"
    assert bridge_stats(client)["import:orders"]["dead_lettered"] == 0


def test_an_import_whose_dead_letter_queue_was_deleted_makes_it_again(
        track: Tracker, nats_node: NatsNode) -> None:
    # until 2026-12-05 a message refused for good found no dead-letter queue, was nacked,
    # refused again the same way, for ever, and held back every later message of the rule
    import nats

    async def publish(*bodies: bytes) -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        if not bodies:
            await js.add_stream(name="ORDERS", subjects=["orders.>"])
        for body in bodies:
            await js.publish("orders.x", body, headers={"Nats-Msg-Id": body[:8].decode()})
        await connection.close()

    asyncio.run(publish())
    prepare(track, "b", orders_in={"max_message_size": 100})
    # JetStream's ack_wait is 30 s by default: a message pushed to the run that ended
    # (until 2026-12-05 not given back) came back only after it, and the wait below failed
    endpoint, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url],
                                                  nak_delay=0.2))
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["import:orders"]["connected"] == 1,
               timeout=BRIDGE_DEADLINE, what="the import rule connected")
    client.delete_queue("bridge.import.orders.dlq")
    asyncio.run(publish(b"too large " + b"x" * 500, b"fits"))
    # well before ack_wait: the bridge's next run takes it at once
    assert [m.body for m in consume_all(client, "orders-in", 1, timeout=12.0)] == [b"fits"]
    dead = consume_all(client, "bridge.import.orders.dlq", 1)
    assert [len(m.body) for m in dead] == [510]


def _certificates(directory: Path) -> Path:
    """A certificate authority and a server certificate for 127.0.0.1 (openssl)."""
    directory.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True,
                       timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=fastfanout-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return directory


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_an_export_reaches_a_tls_nats_server_of_a_private_ca(track: Tracker,
                                                             tmp_path: Path) -> None:
    # until 2026-12-05 the rule file had no key for a certificate authority: such a server
    # could never be reached (each connect failed verifying its certificate)
    certificates = _certificates(tmp_path / "certificates")
    node = NatsNode(tmp_path / "nats", "n0", extra=(
        f'tls {{\n  cert_file: "{certificates / "server.pem"}"\n'
        f'  key_file: "{certificates / "server.key"}"\n}}')).start()
    try:
        url = f"tls://127.0.0.1:{node.port}"
        rules = export_rules(track.tmp_path / "a.toml", [url])
        rules.write_text(f'tls_ca = "{certificates / "ca.pem"}"\n' + rules.read_text())
        endpoint, _ = broker(track, "a", rules)
        client = track.client(endpoint)
        wait_until(lambda: bridge_stats(client)["export:orders"]["connected"] == 1,
                   timeout=BRIDGE_DEADLINE, what="the export rule connected over TLS")
        client.publish("orders", b"over tls")

        async def read() -> list[bytes]:
            import ssl

            import nats

            context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
            connection = await nats.connect(url, tls=context)
            try:
                js = connection.jetstream()
                deadline = time.monotonic() + BRIDGE_DEADLINE
                while (await js.stream_info("ORDERS")).state.messages < 1:
                    assert time.monotonic() < deadline, "nothing stored"
                    await asyncio.sleep(0.02)
                return [(await js.get_msg("ORDERS", 1)).data]
            finally:
                await connection.close()

        assert asyncio.run(read()) == [b"over tls"]
    finally:
        node.stop()


def test_an_import_into_a_topic_without_subscription_warns(track: Tracker,
                                                           nats_node: NatsNode) -> None:
    # until 2026-12-05 an import started before B's queues were subscribed acked the
    # stream's backlog on JetStream while it reached no queue, without a word
    import nats

    async def publish() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        await js.publish("orders.x", b"backlog", headers={"Nats-Msg-Id": "b1"})
        await connection.close()

    asyncio.run(publish())
    rules = track.tmp_path / "b.toml"
    rules.write_text(f"servers = {json.dumps([nats_node.url])}\n{QUICK}"
                     f'[[import]]\nname = "orders"\nstream = "ORDERS"\ntopic = "fanout-in"\n')
    endpoint, process = broker(track, "b", rules)
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["import:orders"]["messages"] == 1,
               timeout=BRIDGE_DEADLINE, what="the backlog imported")
    client.close()
    track.clients.remove(client)
    process.terminate()
    assert process.wait(BRIDGE_DEADLINE) == 0
    assert process.stderr is not None
    assert ("topic fanout-in has no subscription: the 1 messages just imported (acked on "
            "JetStream) reached no queue") in process.stderr.read().decode()


def test_a_consumer_deleted_under_an_import_resumes_after_its_ack_floor(
        track: Tracker, nats_node: NatsNode) -> None:
    # until 2026-12-05 the rule made the consumer again from the stream's start: the whole
    # stream came in again (duplicates, absorbed only inside the target's dedup window)
    import nats

    async def jetstream(action: str, *bodies: bytes) -> Any:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        try:
            if action == "publish":
                for body in bodies:
                    await js.publish("orders.x", body, headers={"Nats-Msg-Id": body.decode()})
            elif action == "create":
                await js.add_stream(name="ORDERS", subjects=["orders.>"])
            elif action == "delete":
                await js.delete_consumer("ORDERS", "orders")
            else:
                return await js.consumer_info("ORDERS", "orders")
        finally:
            await connection.close()

    asyncio.run(jetstream("create"))
    asyncio.run(jetstream("publish", b"m0", b"m1", b"m2"))
    rules = import_rules(track.tmp_path / "b.toml", [nats_node.url])
    endpoint, process = broker(track, "b", rules)
    client = track.client(endpoint)
    assert [m.body for m in consume_all(client, "orders-in", 3)] == [b"m0", b"m1", b"m2"]
    wait_until(lambda: asyncio.run(jetstream("info")).ack_floor.stream_seq == 3,
               what="the three acked on JetStream")
    client.close()
    track.clients.remove(client)
    process.terminate()
    assert process.wait(BRIDGE_DEADLINE) == 0

    endpoint, _ = broker(track, "b", rules)   # its rule reads the consumer's ack floor
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["import:orders"]["connected"] == 1,
               timeout=BRIDGE_DEADLINE, what="the import rule connected")
    asyncio.run(jetstream("delete"))
    wait_until(lambda: bridge_stats(client)["import:orders"]["errors"] >= 1,
               timeout=BRIDGE_DEADLINE, what="the deletion seen")
    asyncio.run(jetstream("publish", b"m3"))
    assert [m.body for m in consume_all(client, "orders-in", 1)] == [b"m3"]
    wait_until(lambda: bridge_stats(client)["import:orders"]["messages"] >= 1,
               what="the import counted")
    assert bridge_stats(client)["import:orders"]["duplicates"] == 0
    assert asyncio.run(jetstream("info")).config.opt_start_seq == 4


def test_an_import_batch_over_the_broker_request_limit_goes_in_parts(
        track: Tracker, nats_node: NatsNode) -> None:
    # until 2026-12-05 a fetched batch was one request: 30 messages of 300 KB against a
    # max_request_bytes of 4 MiB (500 of 150 KB against the default 64 MiB) were refused
    # whole, nacked and fetched again (what came in came in smaller fetches, by chance)
    import nats

    async def publish() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        for n in range(30):
            await js.publish("orders.x", b"%03d" % n + b"x" * 300_000,
                             headers={"Nats-Msg-Id": f"m{n}"})
        await connection.close()

    asyncio.run(publish())
    endpoint = f"ipc://{track.tmp_path}/b.sock"
    track.broker_process(endpoint, "--data-dir", str(track.tmp_path / "b"),
                         "--max-request-bytes", str(4 * 1024 * 1024), "--bridge",
                         str(import_rules(track.tmp_path / "b.toml", [nats_node.url])))
    client = track.client(endpoint)
    received = consume_all(client, "orders-in", 30)
    assert [m.body[:3] for m in received] == [b"%03d" % n for n in range(30)]   # in order
    rule = bridge_stats(client)["import:orders"]
    assert (rule["dead_lettered"], rule["errors"]) == (0, 0)   # no batch refused


def test_an_import_keeps_the_filters_of_a_consumer_made_outside(track: Tracker,
                                                                nats_node: NatsNode) -> None:
    # the update of a consumer to the rule's settings (2026-12-05) must not drop the
    # several filter_subjects of one made outside when the rule names no filter
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    async def setup() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        await js.add_consumer("ORDERS", ConsumerConfig(
            durable_name="orders", ack_policy=AckPolicy.EXPLICIT,
            filter_subjects=["orders.a", "orders.b"]))
        for subject in ("orders.c", "orders.a", "orders.b"):
            await js.publish(subject, subject.encode(), headers={"Nats-Msg-Id": subject})
        await connection.close()

    asyncio.run(setup())
    endpoint, _ = broker(track, "b", import_rules(track.tmp_path / "b.toml", [nats_node.url]))
    client = track.client(endpoint)
    received = consume_all(client, "orders-in", 2)
    assert [m.body for m in received] == [b"orders.a", b"orders.b"]
    assert client.stats().queues["orders-in"].messages == 0   # orders.c stays out


def test_pub_acks_are_read_as_json_not_by_their_bytes(track: Tracker,
                                                      nats_node: NatsNode) -> None:
    # until 2026-12-05 a PubAck was read by its bytes: every PubAck of a stream named
    # "error" was taken for a refusal (the export retried for ever, nothing acked), and
    # JetStream's '"duplicate": true' (with a space) was never counted in duplicates
    import nats

    async def prestore() -> None:
        connection = await nats.connect(nats_node.url)
        js = connection.jetstream()
        await js.add_stream(name="error", subjects=["fastfanout.orders"])
        for n in range(1, 101):   # the ids the broker's first message may have
            await js.publish("fastfanout.orders", b"earlier",
                             headers={"Nats-Msg-Id": f"host-a:{n}"})
        await connection.close()

    asyncio.run(prestore())
    rules = export_rules(track.tmp_path / "a.toml", [nats_node.url])
    rules.write_text(rules.read_text().replace('stream = "ORDERS"', 'stream = "error"'))
    endpoint, _ = broker(track, "a", rules)
    client = track.client(endpoint)
    wait_until(lambda: bridge_stats(client)["export:orders"]["connected"] == 1,
               timeout=BRIDGE_DEADLINE, what="the export rule connected")
    (result,) = client.publish_batch("orders", [b"again"])
    assert result.message_id <= 100
    wait_until(lambda: bridge_stats(client)["export:orders"]["duplicates"] == 1,
               timeout=BRIDGE_DEADLINE, what="JetStream's duplicate counted")
    wait_until(lambda: bridge_stats(client)["export:orders"]["messages"] == 1,
               what="the copy acked")
    assert bridge_stats(client)["export:orders"]["errors"] == 0
    assert client.stats().queues["bridge.export.orders"].messages == 0
