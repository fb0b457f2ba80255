"""A client's ring pinned full: requests go over the socket unannounced, and a count
record keeps the broker's order (fastfanout.transport.local_channel, "Unannounced
spills"; the broker's side in fastfanout.server.local_sessions)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastfanout.server.local_sessions import LocalSessions
from fastfanout.server.sessions import Session
from fastfanout.transport.local_channel import HOLD_MIN_BYTES, LocalChannel


class Broker:
    """A ``LocalSessions`` with one session, its socket a list the test delivers."""

    def __init__(self, client: LocalChannel) -> None:
        self.handled: list[bytes] = []
        self.ended: list[Session] = []
        self.sessions = LocalSessions(
            Counter(), watch=lambda fd: None, unwatch=lambda fd: None,
            spill=lambda session, frames: None, handle=self._handle, end=self.ended.append)
        self.session = Session(identity=b"client", last_seen=0.0, owner=1)
        self.sessions.attach(self.session, client.attach_request())
        client.attached()
        self.channel = self.sessions.sessions[self.session]
        self.socket: list[list[bytes]] = []
        client.spill = self.socket.append

    def _handle(self, message: list[Any]) -> None:
        self.handled.append(bytes(message[-1]))

    def read_ring(self) -> None:
        """A round: the ring read as far as it may be."""
        self.sessions.round([])

    def take_socket(self) -> None:
        """Every request on the socket, in order, as the server takes them."""
        while self.socket:
            self.sessions.before_socket_message(self.session)
            self._handle([self.session.identity, *self.socket.pop(0)])

    def sleep(self) -> None:
        """As before a poll (False, once, while the client waits for room its held
        frames pin: the next round rings it, and it finds the broker asleep then)."""
        self.sessions.may_sleep()


def test_a_pinned_full_ring_goes_unannounced_and_a_count_keeps_the_order():
    client = LocalChannel.create(1 << 18)
    broker = Broker(client)
    try:
        # the broker holds a large request in place for good (a consumer keeps a view
        # of it, say): the client's ring cannot be reused past it
        assert client.try_send([b"x" * HOLD_MIN_BYTES])
        (held,) = broker.channel.read(1)
        view = memoryview(held[-1])   # viewed: it cannot move out of the ring either
        del held
        sent: list[bytes] = []
        while client.unannounced < 3:
            body = b"%06d" % len(sent)
            if client.try_send([body]):
                sent.append(body)
            broker.read_ring()
            broker.take_socket()
            broker.sleep()
            assert len(sent) < 100_000, "the client never went unannounced"
        assert client.owes_count and broker.channel.unannounced == 3
        assert broker.handled == sent   # markers and unannounced requests alike in order
        # one more, unannounced too, that the broker has not taken off its socket yet
        body = b"%06d" % len(sent)
        assert client.try_send([body]) and broker.socket == [[body]]
        sent.append(body)
        # the frame is let go: room again. The next request writes the count record
        # first; the broker reads the ring before the socket's last request comes, and
        # stops at the count until it has
        view.release()
        count = client.unannounced
        for _ in range(3):
            body = b"%06d" % len(sent)
            assert client.try_send([body])
            sent.append(body)
        assert not client.owes_count
        broker.read_ring()
        assert broker.channel.count_wanted == count and broker.channel.stopped
        assert broker.handled == sent[:len(broker.handled)]
        assert len(broker.handled) < len(sent)   # the ring's records wait for the socket
        broker.take_socket()
        assert not broker.channel.stopped
        broker.read_ring()
        assert broker.handled == sent
        assert broker.sessions.counts()["local_unannounced"] == count
    finally:
        client.close()
        broker.sessions.detach(broker.session)
