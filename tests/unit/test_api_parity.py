"""One API declared once: ``Broker``, ``Client`` and ``AsyncClient`` agree on it.

Every operation of ``fastfanout.api`` has the same parameters (names, kinds, defaults) in
the protocol and in each implementation; a parameter added to one of them only fails
here. ``session`` is ``Broker``'s server-only parameter (``SERVER_ONLY_PARAMETERS``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from fastfanout import Broker, Client
from fastfanout.aio import AsyncClient
from fastfanout.api import (
    BROKER_OPERATIONS,
    CLIENT_OPERATIONS,
    SERVER_ONLY_PARAMETERS,
    AsyncBrokerAPI,
    AsyncClientAPI,
    BrokerAPI,
    ClientAPI,
)
from fastfanout.broker.embedded import ServerPort

Shape = list[tuple[str, Any, Any]]


def shape(function: Callable[..., Any], *, drop: frozenset[str] = frozenset()) -> Shape:
    """(name, kind, default) of every parameter but ``self`` and the dropped ones."""
    return [(name, parameter.kind, parameter.default) for name, parameter
            in inspect.signature(function).parameters.items()
            if name != "self" and name not in drop]


def public_operations(cls: type) -> set[str]:
    return {name for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member) and not isinstance(member, type)}


@pytest.mark.parametrize("operation", BROKER_OPERATIONS)
def test_broker_operations_agree_everywhere(operation: str) -> None:
    declared = shape(getattr(BrokerAPI, operation))
    assert shape(getattr(AsyncBrokerAPI, operation)) == declared
    assert shape(getattr(Broker, operation), drop=SERVER_ONLY_PARAMETERS) == declared
    assert shape(getattr(Client, operation)) == declared
    assert shape(getattr(AsyncClient, operation)) == declared


@pytest.mark.parametrize("operation", CLIENT_OPERATIONS)
def test_client_operations_agree_in_both_clients(operation: str) -> None:
    declared = shape(getattr(ClientAPI, operation))
    assert shape(getattr(AsyncClientAPI, operation)) == declared
    assert shape(getattr(Client, operation)) == declared
    assert shape(getattr(AsyncClient, operation)) == declared


def test_the_protocols_declare_exactly_the_listed_operations() -> None:
    assert public_operations(BrokerAPI) == set(BROKER_OPERATIONS)
    assert public_operations(AsyncBrokerAPI) == set(BROKER_OPERATIONS)
    assert public_operations(ClientAPI) == set(BROKER_OPERATIONS) | set(CLIENT_OPERATIONS)
    assert public_operations(AsyncClientAPI) == set(BROKER_OPERATIONS) | set(CLIENT_OPERATIONS)


def test_both_clients_offer_the_same_operations_and_nothing_else() -> None:
    declared = set(BROKER_OPERATIONS) | set(CLIENT_OPERATIONS)
    assert public_operations(Client) == declared
    assert public_operations(AsyncClient) == declared


def test_awaitable_twins_are_coroutines_where_the_protocol_says() -> None:
    for operation in (*BROKER_OPERATIONS, *CLIENT_OPERATIONS):
        declared = getattr(AsyncClientAPI, operation)
        implemented = getattr(AsyncClient, operation)
        if operation in ("consume", "consume_batches"):
            # iterators, called plainly for ``async for`` (consume: a native iterator)
            assert not inspect.iscoroutinefunction(implemented), operation
            continue
        assert inspect.iscoroutinefunction(implemented) == (
            inspect.iscoroutinefunction(declared)), operation


def test_a_parameter_added_to_one_implementation_only_is_caught() -> None:
    def create_topic(self: Any, name: str, *, fifo: bool = False,
                     content_dedup: bool = False, dedup_window: float = 300.0,
                     durable: bool = False) -> None: ...

    assert shape(create_topic) != shape(BrokerAPI.create_topic)


# Broker's public methods beyond the API: its own lifecycle, embedded producer, timers,
# durability (commit, sync_due) and the one documented internal handle, server_port. A
# method added to Broker must be declared in fastfanout.api or listed here.
BROKER_ONLY = {"close", "producer", "next_due", "next_due_in", "commit", "sync_due",
               "server_port"}
# The server's plumbing: on the broker's internal port, off the public class.
SERVER_PLUMBING = {"receive_push", "publish_frame", "send_frame", "receive_frame",
                   "ack_frames", "ack_packed", "release_packed", "live_mask", "open_owner",
                   "nack_packed", "extend_packed", "term_packed",   # the batch settles
                   "close_owner", "outstanding",
                   "start_commit_writer", "commit_begin", "commit_end",   # pipelined commits
                   "has_room", "withdraw_refusal",   # a held publish: its room, its count
                   "deliver_reply", "route_replies"}   # replies between broker and sessions


def test_the_broker_offers_the_api_and_its_own_calls_only() -> None:
    assert public_operations(Broker) == set(BROKER_OPERATIONS) | BROKER_ONLY


def test_the_servers_plumbing_is_on_the_internal_port_only() -> None:
    assert public_operations(ServerPort) == SERVER_PLUMBING
    with Broker() as broker:
        assert isinstance(broker.server_port(), ServerPort)
