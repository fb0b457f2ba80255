"""Arguments of the wrong type: ``InvalidArgument`` embedded, ``invalid_argument`` on the wire.

Every administration and generic call operation (``protocol.CALLS``) is tried with values
of the wrong type for each of its arguments, in turn: through the embedded broker and as
a raw request from a bare DEALER (as a client in another language would send it). Each
must be refused with ``InvalidArgument`` (or a subclass), never ``internal`` nor a
``TypeError``, and must change nothing.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import msgspec
import numpy as np
import pytest
import zmq
from conftest import raw_dealer

from fastfanout import Broker, InvalidArgument, PublishEntry, aio
from fastfanout.errors import error_for_code
from fastfanout.server.loop import Server
from fastfanout.settings import CHANGEABLE_QUEUE_SETTINGS
from fastfanout.wire import protocol

# Values of the wrong type for every argument, unless ``WRONG`` names others.
WRONG_EVERYWHERE: list[Any] = [[1], {"k": 1}, b"x"]
WRONG: dict[str, list[Any]] = {
    # a map is a policy and a list is no type error here: a number or bytes are
    "filter_policy": [[1], 7, 1.5, True],
    "filter_scope": [[1], {"k": 1}, 1],
    # a list is a backoff, a map is an exponential backoff (on the wire)
    "redelivery_backoff": [{"k": 1}, {"initial": [1]}, {1: 2}, "1", b"x", 1.5, True],
    "name": [*WRONG_EVERYWHERE, 7, 1.5, None, True],
    "topic": [*WRONG_EVERYWHERE, 7, None],
    "queue": [*WRONG_EVERYWHERE, 7, None],
    "dead_letter_queue": [*WRONG_EVERYWHERE, 7],
    "to": [*WRONG_EVERYWHERE, 7],
    "fifo": [*WRONG_EVERYWHERE, 1, "yes", None],
    "content_dedup": [*WRONG_EVERYWHERE, 1, "yes", None],
    "overflow": [*WRONG_EVERYWHERE, 1, None],
    "subscription_id": [*WRONG_EVERYWHERE, "1", 1.0, None],
    "receipt": [*WRONG_EVERYWHERE, "1", 1.5, None],
    "max_messages": [*WRONG_EVERYWHERE, "1", 1.5],
    "max_bytes": [*WRONG_EVERYWHERE, "1", 1.5],
    "max_receive_count": [*WRONG_EVERYWHERE, "1", 1.5],
    "max_message_size": [*WRONG_EVERYWHERE, "1", 1.5, None],
    "max_priority": [*WRONG_EVERYWHERE, "1", 1.5, None],
    "seconds": [*WRONG_EVERYWHERE, "1", None],
    "delay": [*WRONG_EVERYWHERE, "1"],
}
# How a message names an argument when not by its own name: ``session`` (nack, extend and
# term, the server's tag of its caller) is an owner tag of the store.
SAID = {"session": "owner"}
DURATIONS = ("visibility_timeout", "retention", "dedup_window")
for _duration in DURATIONS:
    WRONG[_duration] = [*WRONG_EVERYWHERE, "1", None]


def cases() -> list[tuple[str, str, Any]]:
    """(method, argument, wrong value) for every argument of every generic call.

    A call's ``**changes`` (``set_queue_settings``) stands for each setting it may change.
    """
    found = []
    for method in protocol.CALLS.values():
        for argument, parameter in inspect.signature(getattr(Broker, method)).parameters.items():
            names = (CHANGEABLE_QUEUE_SETTINGS if parameter.kind is parameter.VAR_KEYWORD
                     else () if argument == "self" else (argument,))
            for name in names:
                found.extend((method, name, value) for value in WRONG.get(name, WRONG_EVERYWHERE))
    return found


CASES = cases()


def case_id(case: tuple[str, str, Any]) -> str:
    method, argument, value = case
    return f"{method}-{argument}-{type(value).__name__}"


def valid_arguments(method: str, receipt: int, subscription_id: int) -> dict[str, Any]:
    """Valid values for the required arguments of ``method`` (a new name to create)."""
    valid: dict[str, Any] = {"topic": "t", "queue": "q", "receipt": receipt, "seconds": 5.0,
                             "subscription_id": subscription_id, "filter_policy": None,
                             "dead_letter_queue": "dlq"}
    valid["name"] = ("fresh" if method.startswith("create") else
                     "t" if method == "delete_topic" else "q")
    parameters = inspect.signature(getattr(Broker, method)).parameters.values()
    return {p.name: valid[p.name] for p in parameters
            if p.name != "self" and p.default is inspect.Parameter.empty
            and p.kind is not p.VAR_KEYWORD}


def shape(broker: Broker) -> tuple[Any, ...]:
    """Everything the calls under test could change."""
    stats = broker.stats()
    return (broker.list_topics(), broker.list_queues(), broker.list_subscriptions(),
            [broker.subscription(sid) for sid in broker.list_subscriptions()],
            [broker.queue_settings(name) for name in broker.list_queues()],
            {name: (q.visible, q.leased, q.delayed, q.dead_lettered, q.purged)
             for name, q in stats.queues.items()})


def prepared(broker: Broker) -> tuple[int, int]:
    """Set ``broker`` up; returns (receipt of a leased message, subscription id)."""
    broker.create_topic("t")
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq", max_receive_count=3)
    sid = broker.subscribe("t", "q")
    broker.publish("t", b"m")
    (message,) = broker.receive("q", visibility_timeout=60.0)
    return message.receipt, sid


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_embedded_refuses_wrong_types(case: tuple[str, str, Any]) -> None:
    method, argument, value = case
    with Broker() as broker:
        receipt, sid = prepared(broker)
        before = shape(broker)
        arguments = valid_arguments(method, receipt, sid)
        arguments[argument] = value
        with pytest.raises(InvalidArgument, match=SAID.get(argument, argument)):
            getattr(broker, method)(**arguments)
        assert shape(broker) == before
        assert broker.check()


def raw_call(dealer: zmq.Socket[bytes], request_id: int, method: str,
             arguments: dict[str, Any]) -> tuple[int, list[Any]]:
    """Send a generic call as ``[[], kwargs]``; returns (status, decoded payload)."""
    opcode = next(op for op, name in protocol.CALLS.items() if name == method)
    dealer.send_multipart([protocol.encode_header(opcode, request_id),
                           msgspec.msgpack.encode([[], arguments])])
    assert dealer.poll(5000), f"no reply to {method}"
    reply = dealer.recv_multipart()
    _, status, replied_to = protocol.decode_header(reply[0])
    assert replied_to == request_id
    return status, msgspec.msgpack.decode(reply[1])


def test_wire_refuses_wrong_types(track: Any) -> None:
    server: Server = track.server(local_channels=False)
    broker = server.broker
    receipt, sid = prepared(broker)
    before = shape(broker)
    refused = []
    with raw_dealer(server.endpoint) as dealer:
        for number, (method, argument, value) in enumerate(CASES, 1):
            arguments = valid_arguments(method, receipt, sid)
            arguments[argument] = value
            status, payload = raw_call(dealer, number, method, arguments)
            what = f"{method}({argument}={value!r})"
            assert status == protocol.Status.ERROR, what
            code, message = payload[0], payload[1]
            assert issubclass(error_for_code(code), InvalidArgument), (what, payload)
            assert argument in message, (what, message)
            refused.append(what)
        # a backoff map of unknown fields names them
        status, payload = raw_call(dealer, 0, "create_queue", {
            "name": "fresh", "redelivery_backoff": {"initial": 1, "growth": 2}})
        assert (status, payload[0]) == (protocol.Status.ERROR, "invalid_argument")
        assert "redelivery_backoff" in payload[1] and "growth" in payload[1]
        assert len(refused) == len(CASES)
        assert shape(broker) == before


RAW_CASES: list[tuple[protocol.Opcode, list[Any], dict[str, Any], str]] = [
    (protocol.Opcode.RECEIVE, [], {"queue": [1]}, "queue"),
    (protocol.Opcode.RECEIVE, [{"k": 1}], {}, "queue"),
    (protocol.Opcode.RECEIVE, [], {"queue": "q", "max_messages": "1"}, "max_messages"),
    (protocol.Opcode.RECEIVE, [], {"queue": "q", "wait": [1]}, "wait"),
    (protocol.Opcode.RECEIVE, [], {"queue": "q", "visibility_timeout": [1]},
     "visibility_timeout"),
    (protocol.Opcode.CONSUME, [], {"queue": {"k": 1}}, "queue"),
    (protocol.Opcode.CONSUME, [], {"queue": "q", "prefetch": [1]}, "prefetch"),
    (protocol.Opcode.CONSUME, [], {"queue": "q", "visibility_timeout": "1"},
     "visibility_timeout"),
    (protocol.Opcode.CANCEL, [[1]], {}, "consumer"),
    (protocol.Opcode.CANCEL, [{"k": 1}], {}, "consumer"),
]


@pytest.mark.parametrize("opcode, args, kwargs, argument", RAW_CASES,
                         ids=[f"{c[0].name}-{c[3]}-{i}" for i, c in enumerate(RAW_CASES)])
def test_wire_refuses_wrong_types_of_the_other_requests(
        track: Any, opcode: protocol.Opcode, args: list[Any], kwargs: dict[str, Any],
        argument: str) -> None:
    server: Server = track.server(local_channels=False)
    receipt, _ = prepared(server.broker)
    before = shape(server.broker)
    with raw_dealer(server.endpoint) as dealer:
        dealer.send_multipart([protocol.encode_header(opcode, 1),
                               msgspec.msgpack.encode([args, kwargs])])
        assert dealer.poll(5000)
        reply = dealer.recv_multipart()
        _, status, _ = protocol.decode_header(reply[0])
        code, message, _ = msgspec.msgpack.decode(reply[1])
        assert status == protocol.Status.ERROR
        assert issubclass(error_for_code(code), InvalidArgument), (code, message)
        assert argument in message
    assert shape(server.broker) == before
    assert server.broker.ack(receipt) is None


MESSAGE_PATH: list[tuple[str, Any]] = [
    ("topic", lambda b, v: b.publish(v, b"x")),
    ("entries", lambda b, v: b.publish_batch("t", v)),
    ("topic", lambda b, v: b.publish_batch(v, [b"x"])),
    ("entries", lambda b, v: b.send_batch("q", v)),
    ("queue", lambda b, v: b.send(v, b"x")),
    ("queue", lambda b, v: b.receive(v)),
    ("max_messages", lambda b, v: b.receive("q", max_messages=v)),
    ("receipt", lambda b, v: b.ack(v)),
    ("receipts", lambda b, v: b.ack_batch(v)),
    ("queue", lambda b, v: b.purge(v)),
    ("topic", lambda b, v: b.producer(v)),
]


@pytest.mark.parametrize("argument, call", MESSAGE_PATH,
                         ids=[f"{i}-{a}" for i, (a, _) in enumerate(MESSAGE_PATH)])
@pytest.mark.parametrize("value", [1.5, None, object()], ids=["float", "None", "object"])
def test_embedded_message_path_refuses_wrong_types(argument: str, call: Any,
                                                   value: Any) -> None:
    with Broker() as broker:
        prepared(broker)
        before = shape(broker)
        with pytest.raises(InvalidArgument):
            call(broker, value)
        assert shape(broker) == before


@pytest.mark.parametrize("settle", [
    lambda api, receipt: api.ack(receipt),
    lambda api, receipt: api.ack_batch([receipt]),
    lambda api, receipt: api.ack_batch((receipt,)),
], ids=["ack", "ack_batch-list", "ack_batch-tuple"])
def test_a_bool_is_no_receipt_embedded_or_over_the_wire(track: Any, settle: Any) -> None:
    # A client (and the embedded ack_batch of a tuple) took True as receipt 1 and
    # answered StaleReceipt, where the embedded ack refused it as no int.
    server: Server = track.server()
    receipt, _ = prepared(server.broker)
    client = track.client(server.endpoint)
    for api in (server.broker, client):
        with pytest.raises(InvalidArgument, match="receipt"):
            settle(api, True)
    assert server.broker.stats().queues["q"].leased == 1
    server.broker.ack(receipt)
    assert server.broker.stats().queues["q"].acked == 1


CLIENT_MISTAKES: list[tuple[str, Any]] = [
    ("entries", lambda c: c.publish_batch("t", 5)),
    ("entries", lambda c: c.send_batch("q", None)),
    ("entries", lambda c: c.send_batch("q", 1.5)),
    ("max_messages|receive", lambda c: c.receive("q", max_messages=object())),
    ("wait|receive", lambda c: c.receive("q", wait=object())),
    ("redelivery_backoff", lambda c: c.create_queue("n", redelivery_backoff=5)),
]


@pytest.mark.parametrize("what, mistake", CLIENT_MISTAKES,
                         ids=[f"{i}-{w}" for i, (w, _) in enumerate(CLIENT_MISTAKES)])
def test_both_clients_refuse_what_the_embedded_broker_refuses(
        track: Any, what: str, mistake: Any) -> None:
    # The clients raised Python's TypeError (not iterable, not msgpack-encodable) where
    # the embedded broker raises InvalidArgument.
    server: Server = track.server()
    prepared(server.broker)
    before = shape(server.broker)
    with pytest.raises(InvalidArgument, match=what):
        mistake(server.broker)
    with pytest.raises(InvalidArgument, match=what):
        mistake(track.client(server.endpoint))

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            with pytest.raises(InvalidArgument, match=what):
                result = mistake(client)
                if inspect.isawaitable(result):
                    await result

    asyncio.run(main())
    assert shape(server.broker) == before


@pytest.mark.parametrize("deliver_at", [-2**70, -1e300, -10**400])
def test_a_deliver_at_in_the_far_past_means_now_everywhere(
        track: Any, deliver_at: float) -> None:
    # Beyond an int64 of microseconds it raised OverflowError (the broker and the
    # clients), where a deliver_at in the past means now (docs/semantics.md).
    server: Server = track.server()
    prepared(server.broker)
    client = track.client(server.endpoint)
    for api in (server.broker, client):
        api.send("q", b"due", deliver_at=deliver_at)
        (message,) = api.receive("q", max_messages=10)
        assert message.body == b"due"
        api.ack(message.receipt)


@pytest.mark.parametrize("deliver_at", [2**70, 10**400, 1e300])
def test_a_deliver_at_far_ahead_is_invalid_argument_everywhere(
        track: Any, deliver_at: float) -> None:
    server: Server = track.server()
    prepared(server.broker)
    before = shape(server.broker)
    client = track.client(server.endpoint)
    for api in (server.broker, client):
        with pytest.raises(InvalidArgument, match="deliver_at"):
            api.send("q", b"x", deliver_at=deliver_at)
        with pytest.raises(InvalidArgument, match="deliver_at"):
            api.publish("t", b"x", deliver_at=deliver_at)
    assert shape(server.broker) == before


@pytest.mark.parametrize("ttl", [0, 0.0, 1e-7])
def test_a_ttl_of_no_microsecond_is_refused_alike(track: Any, ttl: float) -> None:
    # A client sent it and the broker answered "the message expired before it was
    # published"; embedded it is "ttl must be > 0 seconds".
    server: Server = track.server()
    prepared(server.broker)
    before = shape(server.broker)
    client = track.client(server.endpoint)
    for api in (server.broker, client):
        with pytest.raises(InvalidArgument, match="ttl must be > 0 seconds") as raised:
            api.send("q", b"x", ttl=ttl)
        # a ttl of 1e-07 is > 0: the message names the floor and the value (until
        # 2026-12-05 it said only "> 0 seconds")
        assert str(raised.value).endswith(f"(at least 1 µs, 1e-06), got {ttl!r}")
    assert shape(server.broker) == before


@pytest.mark.parametrize("value, item", [(["x", 1], "item 1 has type int"),
                                         ([None], "item 0 has type NoneType"),
                                         (["x", ["y"]], "item 1 has type list")])
def test_a_list_attribute_with_a_non_str_item_names_the_item(
        track: Any, value: list[Any], item: str) -> None:
    # the message said "attribute 'a' has type list; expected ... list[str]"
    server: Server = track.server()
    prepared(server.broker)
    before = shape(server.broker)
    what = f"attribute 'a' is a list whose {item}: a list \\(String.Array\\) holds only str"
    client = track.client(server.endpoint)
    for api in (server.broker, client):
        with pytest.raises(InvalidArgument, match=what):
            api.publish("t", b"m", attributes={"a": value})
        with pytest.raises(InvalidArgument, match=what):
            api.send_batch("q", [PublishEntry(b"m", attributes={"a": value})])

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as aio_client:
            with pytest.raises(InvalidArgument, match=what):
                await aio_client.send("q", b"m", attributes={"a": value})

    asyncio.run(main())
    assert shape(server.broker) == before



def test_a_topic_or_queue_that_is_no_str_is_named_alike(track: Any) -> None:
    # the clients said "name 5 must be a string" (publish, send, their nowait and batch
    # forms) or "topic name 5 must be a string" (producer), not which argument it was
    server: Server = track.server()
    client = track.client(server.endpoint)
    calls = {
        "publish": lambda api: api.publish(5, b"x"),
        "publish_nowait": lambda api: api.publish_nowait(5, b"x"),
        "publish_batch": lambda api: api.publish_batch(5, [b"x"]),
        "send": lambda api: api.send(5, b"x"),
        "send_batch_nowait": lambda api: api.send_batch_nowait(5, [b"x"]),
        "producer": lambda api: api.producer(5),
    }
    for name, call in calls.items():
        kind = "queue" if name.startswith("send") else "topic"
        # the embedded broker has no nowait forms: their words are its publish's and send's
        for api in (client,) if name.endswith("nowait") else (server.broker, client):
            with pytest.raises(InvalidArgument) as raised:
                call(api)
            assert str(raised.value) == f"{kind} must be a {kind} name (str), got int 5", (
                name, api)


def test_a_name_that_is_not_valid_unicode_fails_its_caller_on_every_face(track: Any) -> None:
    """A topic or queue name with a lone surrogate (``"a\\udcffb"``, what a bad decode
    gives): the blocking client raised ``UnicodeEncodeError`` (a ``publish_nowait``
    even took it, its future then failing with an ``AssertionError``), and the asyncio
    client's publish, send and request never returned (the loop's flush raised)."""
    server: Server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    bad = "a\udcffb"
    calls = {
        "publish": lambda api: api.publish(bad, b"x"),
        "publish_nowait": lambda api: api.publish_nowait(bad, b"x"),
        "publish_batch": lambda api: api.publish_batch(bad, [b"x"]),
        "send": lambda api: api.send(bad, b"x"),
        "send_batch": lambda api: api.send_batch(bad, [b"x"]),
        "request": lambda api: api.request(bad, b"x", timeout=1.0),
    }
    for name, call in calls.items():
        for api in (client,) if name.endswith("nowait") else (server.broker, client):
            with pytest.raises(InvalidArgument, match=r"Unicode|name"):
                call(api)

    async def asyncio_calls() -> list[str]:
        async with aio.connect(server.endpoint, timeout=5.0) as aclient:
            refused = []
            for make in (lambda: aclient.publish(bad, b"x"), lambda: aclient.send(bad, b"x"),
                         lambda: aclient.request(bad, b"x", timeout=1.0)):
                with pytest.raises(InvalidArgument, match="not valid Unicode"):
                    await asyncio.wait_for(make(), 5.0)   # never done: TimeoutError
                refused.append("refused")
            await aclient.publish("t", b"after")   # the connection carries on
            return refused

    assert asyncio.run(asyncio_calls()) == ["refused"] * 3
    client.flush()
    assert [m.body for m in client.receive("q", max_messages=10, wait=0.5)] == [b"after"]


def test_an_int_too_large_for_a_float_is_an_invalid_number_of_seconds(track: Any) -> None:
    """``10**400`` seconds: ``math.isfinite`` and ``float()`` raised ``OverflowError``
    (``int too large to convert to float``) out of the checks of every seconds argument
    of the embedded broker, of ``request(timeout=)`` on all three faces, of the blocking
    client's ``receive(wait=)`` and ``connect(timeout=)``, of ``Worker.handler``'s
    ``batch_window`` and of the messages' ``nack``/``extend``."""
    from fastfanout.workers import Worker

    huge = 10**400
    server: Server = track.server()
    broker = server.broker
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    client = track.client(server.endpoint)
    calls: dict[str, Any] = {
        **{f"create_queue({name}=)": (lambda name=name: broker.create_queue("q2", **{name: huge}))
           for name in ("visibility_timeout", "retention", "delay", "dedup_window")},
        "publish(delay=)": lambda: broker.publish("t", b"x", delay=huge),
        "publish(delay=-)": lambda: broker.publish("t", b"x", delay=-huge),
        "send_batch(ttl=-)": lambda: broker.send_batch("q", [PublishEntry(b"x", ttl=-huge)]),
        "set_queue_settings": lambda: broker.set_queue_settings("q", visibility_timeout=huge),
        "embedded request": lambda: broker.request("t", b"x", timeout=huge),
        "client request": lambda: client.request("t", b"x", timeout=huge),
        "client receive(wait=)": lambda: client.receive("q", wait=huge),
        "connect(timeout=)": lambda: track.client(server.endpoint, timeout=huge),
        "batch_window": lambda: Worker(server.endpoint).handler("q", batch_window=huge)(print),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidArgument):
            call()
        assert "q2" not in broker.list_queues(), name
    broker.publish("t", b"x")
    [message] = broker.receive("q")
    for call in (lambda: message.nack(delay=huge), lambda: message.extend(huge)):
        with pytest.raises(InvalidArgument):
            call()
    message.ack()   # the refusals changed nothing: its lease is still the receive's
    client.publish("t", b"y")
    [remote] = client.receive("q", wait=2.0)
    for call in (lambda: remote.nack(delay=huge), lambda: remote.extend(huge)):
        with pytest.raises(InvalidArgument):
            call()
    remote.ack()
    stats = broker.stats().queues["q"]
    assert (stats.acked, stats.leased, stats.messages) == (2, 0, 0)


def test_an_id_past_64_bits_is_the_same_invalid_argument_on_every_face(track: Any) -> None:
    """``unsubscribe(10**30)`` was ``NotFound`` on the embedded broker and
    ``InvalidArgument`` on the clients, whose message spoke of msgspec's internals
    ("can't serialize ints < -2**63 or > 2**64 - 1")."""
    server: Server = track.server()
    client = track.client(server.endpoint)
    huge = 10**30
    for api in (server.broker, client):
        for method, args in (("unsubscribe", ()), ("subscription", ()),
                             ("set_filter_policy", (None,))):
            with pytest.raises(InvalidArgument, match="outside the 64-bit integer range"):
                getattr(api, method)(huge, *args)


def test_a_batch_body_index_that_is_no_int_and_check_after_close() -> None:
    """``batch.body("x")`` raised a ``TypeError`` from its range check; ``check()`` of a
    closed broker answered True where every other call raises ``Closed``."""
    import numpy as np

    from fastfanout import Closed

    broker = Broker()
    broker.create_queue("q")
    broker.send_batch("q", [b"a", b"bb"])
    batch = broker.consume("q", prefetch=10).next_batch(timeout=5.0)
    assert batch is not None and bytes(batch.body(np.int64(1))) == b"bb"
    with pytest.raises(InvalidArgument, match="body index is an int"):
        batch.body("x")  # type: ignore[arg-type]
    broker.close()
    with pytest.raises(Closed):
        broker.check()


class _Seconds(float):
    """A user's float subclass."""


class _WholeSeconds(int):
    """A user's int subclass."""


@pytest.mark.parametrize("number", [np.float64, _Seconds,
                                    lambda value: _WholeSeconds(round(value))])
def test_both_clients_take_seconds_given_as_a_float_subclass(track: Any, number: Any) -> None:
    # until 2026-12 numpy.float64 was "not a number of seconds" (send's delay) or "cannot
    # be sent to the broker" (msgpack takes no subclass: create_queue, receive)
    endpoint = track.server().endpoint
    client = track.client(endpoint)
    client.create_queue("q", visibility_timeout=number(5), retention=number(3600))
    assert type(client.queue_settings("q").visibility_timeout) in (float, int)
    client.set_queue_settings("q", delay=number(0))
    client.send("q", b"a", delay=number(0), ttl=number(60))
    (message,) = client.receive("q", wait=number(0.1), visibility_timeout=number(5))
    message.extend(number(10))
    message.nack(delay=number(0))
    (message,) = client.receive("q", wait=number(0.1))
    client.extend_batch([message.receipt], number(10))
    client.nack_batch([message.receipt], delay=number(0))
    assert client.stats().queues["q"].visible == 1

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as aclient:
            await aclient.create_queue("aq", visibility_timeout=number(5))
            await aclient.send("aq", b"b", delay=number(0))
            (received,) = await aclient.receive("aq", wait=number(0.1),
                                                visibility_timeout=number(5))
            await received.nack(delay=number(0))
            assert (await aclient.queue_settings("aq")).visibility_timeout == 5.0

    asyncio.run(main())
