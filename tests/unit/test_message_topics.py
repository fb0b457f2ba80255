"""message.topic: the topic a message was published on, for a queue that keeps topics.

A queue holding a pattern subscription keeps topics: a publish that reaches it puts the
topic's name into the message's blob (ext/blobs.pxd, BLOB_TOPIC), the journal keeps it
with the message, and deliveries carry it (docs/protocol.md, flag bit5). Every other
message pays nothing for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clocks import FakeClock

from fastfanout import Broker, PublishEntry
from fastfanout._ext.codec import Record, decode_batch, encode_batch
from fastfanout._ext.received import RemoteMessage, messages_of
from fastfanout.storage import durability


def pattern_and_plain(broker: Broker) -> None:
    for topic in ("orders.eu", "orders.us", "other"):
        broker.create_topic(topic)
    broker.create_queue("pat")
    broker.create_queue("plain")
    broker.subscribe("orders.*", "pat")
    broker.subscribe("orders.eu", "plain")
    broker.subscribe("other", "plain")


def test_a_pattern_subscriber_s_messages_carry_their_topic(broker: Broker) -> None:
    pattern_and_plain(broker)
    broker.publish("orders.eu", b"a")
    broker.publish_batch("orders.us", [b"b", PublishEntry(b"c", {"k": "v"}, ttl=60.0)])
    broker.publish("other", b"d")
    broker.send("pat", b"e")
    got = broker.receive("pat", max_messages=10)
    assert [(m.body, m.topic, m.queue) for m in got] == [
        (b"a", "orders.eu", "pat"), (b"b", "orders.us", "pat"), (b"c", "orders.us", "pat"),
        (b"e", None, "pat")]   # a send has no topic
    assert got[2].attributes == {"k": "v"}
    # a plain queue's copy of the same message: no topic (it does not keep topics)
    assert [(m.body, m.topic) for m in broker.receive("plain", max_messages=10)] == [
        (b"a", None), (b"d", None)]


def test_a_queue_keeps_topics_while_it_holds_a_pattern_subscription(broker: Broker) -> None:
    pattern_and_plain(broker)
    direct = broker.subscribe("other", "pat")   # a direct subscription beside the pattern
    broker.publish("other", b"1")
    pattern = next(sid for sid, (topic, _) in broker.list_subscriptions().items()
                   if topic == "orders.*")
    broker.unsubscribe(pattern)
    broker.publish("other", b"2")
    assert [(m.body, m.topic) for m in broker.receive("pat", max_messages=10)] == [
        (b"1", None), (b"2", None)]   # the first copy's queue no longer keeps topics
    broker.subscribe("orders.>", "pat")
    broker.publish("other", b"3")
    broker.publish("orders.eu", b"4")
    assert [(m.body, m.topic) for m in broker.receive("pat", max_messages=10)] == [
        (b"3", "other"), (b"4", "orders.eu")]
    broker.unsubscribe(direct)


def test_a_dead_letter_of_a_pattern_subscriber_has_no_topic(broker: Broker) -> None:
    # its delivery's name part is the dead-letter record (flag bit3, never with bit5)
    broker.create_topic("orders.eu")
    broker.create_queue("dlq")
    broker.subscribe("orders.*", "dlq")   # the dead-letter queue keeps topics too
    broker.create_queue("pat", dead_letter_queue="dlq", max_receive_count=1)
    broker.subscribe("orders.*", "pat")
    broker.publish("orders.eu", b"x")
    (first,) = broker.receive("pat")
    first.term()
    got = broker.receive("dlq", max_messages=10)
    assert [(m.topic, m.dead_letter is not None) for m in got] == [
        ("orders.eu", False), (None, True)]


def test_a_durable_queue_s_copies_keep_their_topic_across_a_restart(
        clock: FakeClock, tmp_path: Path) -> None:
    with Broker(clock=clock, data_dir=tmp_path) as broker:
        broker.create_topic("orders.eu")
        broker.create_topic("orders.us")
        broker.create_queue("pat", durable=True)
        broker.create_queue("plain", durable=True)
        broker.subscribe("orders.*", "pat")
        broker.subscribe("orders.eu", "plain")
        broker.publish_batch("orders.eu", [b"a", PublishEntry(b"b", group_id="g", ttl=600.0)])
        broker.publish("orders.us", b"c")
        (leased,) = broker.receive("pat")   # a leased copy comes back visible
        assert leased.topic == "orders.eu"
    with Broker(clock=clock, data_dir=tmp_path) as broker:
        got = broker.receive("pat", max_messages=10)
        assert [(m.body, m.topic) for m in got] == [
            (b"a", "orders.eu"), (b"b", "orders.eu"), (b"c", "orders.us")]
        assert got[1].group_id == "g"
        assert [(m.body, m.topic) for m in broker.receive("plain", max_messages=10)] == [
            (b"a", None), (b"b", None)]
        broker.publish("orders.us", b"d")   # the restored subscription keeps topics still
        assert [(m.body, m.topic) for m in broker.receive("pat")] == [(b"d", "orders.us")]
        assert broker.check()


def test_a_copied_forward_message_keeps_its_topic(
        clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a long-lived copy is written again into a newer segment with its message
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    with Broker(clock=clock, data_dir=tmp_path, fsync="never") as broker:
        broker.create_topic("orders.eu")
        broker.create_queue("pat", durable=True)
        broker.create_queue("busy", durable=True)
        broker.subscribe("orders.*", "pat")
        broker.publish("orders.eu", b"old")
        for i in range(300):
            broker.send("busy", b"busy %d" % i)
            broker.ack_batch([m.receipt for m in broker.receive("busy", max_messages=10)])
        storage = broker.stats().storage
        assert storage is not None and storage["copied_forward"] >= 1
        assert storage["removed_segments"] > 5   # the publish's own record is gone
    with Broker(clock=clock, data_dir=tmp_path) as broker:
        assert [(m.body, m.topic) for m in broker.receive("pat")] == [(b"old", "orders.eu")]


# In a fresh process: the bytes of live blobs the slab loses when every copy of N
# messages is acked are N blobs' bytes exactly.
BLOB_BYTES = """
import json, sys
from fastfanout import Broker
from fastfanout._ext.blobs import blob_slab_stats
count, topic = 1000, sys.argv[1]
with Broker() as broker:
    broker.create_topic("orders.eu")
    broker.create_topic("other")
    broker.create_queue("pat")
    broker.create_queue("plain")
    broker.subscribe("orders.*", "pat")
    broker.subscribe("other", "plain")
    broker.subscribe("orders.eu", "plain")
    queues = ["pat", "plain"] if topic == "orders.eu" else ["plain"]
    broker.publish_batch(topic, [b"x" * 64] * count)
    before = blob_slab_stats()["live_bytes"]
    for queue in queues:
        broker.ack_batch([m.receipt for m in broker.receive(queue, max_messages=count)])
    print(json.dumps((before - blob_slab_stats()["live_bytes"]) / count))
"""


@pytest.mark.parametrize(("topic", "tail"), [("other", -1), ("orders.eu", len("orders.eu"))])
def test_only_a_message_for_a_queue_keeping_topics_grows_by_its_topic(
        topic: str, tail: int) -> None:
    from fastfanout._ext.blobs import blob_bytes

    done = subprocess.run([sys.executable, "-c", BLOB_BYTES, topic], capture_output=True,
                          text=True, timeout=60, check=True)
    per_message = json.loads(done.stdout)
    assert per_message == blob_bytes(64, topic=tail)
    if tail < 0:
        assert per_message == blob_bytes(64) == 96   # not a byte more than before
    else:
        assert per_message == blob_bytes(64 + 2 + tail)   # the u16 length and the name


def test_a_delivery_frame_carries_the_topic_in_its_name_part(broker: Broker) -> None:
    pattern_and_plain(broker)
    broker.publish("orders.eu", b"a")
    port = broker.server_port()
    frame, _ = port.receive_frame("pat", 10)
    (record,) = decode_batch(frame)
    assert (record.name, record.name_is_topic, record.dead_letter) == (
        "orders.eu", True, False)
    (plain,) = decode_batch(port.receive_frame("plain", 10)[0])
    assert (plain.name, plain.name_is_topic) == (None, False)
    # the client's native message: the name part is the topic, not the queue
    (message,) = messages_of(frame, broker)
    assert (message.topic, message.queue) == ("orders.eu", "")
    (message,) = messages_of(frame, broker, None, "pat")
    assert (message.topic, message.queue) == ("orders.eu", "pat")


def test_the_codec_record_and_the_remote_message_name_a_topic() -> None:
    record = Record(b"x", name="orders.eu", name_is_topic=True, receipt=1)
    (decoded,) = decode_batch(encode_batch([record]))
    assert decoded == record and decoded.name_is_topic
    message = RemoteMessage(decoded, None, None)
    assert (message.topic, message.queue) == ("orders.eu", "")
    # a name part without the flag is still the queue's name (and no topic)
    named = RemoteMessage(Record(b"x", name="q", receipt=1), None, None)
    assert (named.topic, named.queue) == (None, "q")
    with pytest.raises(Exception, match="not both"):
        Record(b"x", name="[]", dead_letter=True, name_is_topic=True)
