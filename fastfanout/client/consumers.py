"""What a client receives: push consumers, their delivery batches, stream listeners.

``Client.consume`` returns a ``Consumer`` (messages the broker pushes for one queue, under
credit-based flow control: the broker pushes while the consumer holds fewer than
``prefetch`` unsettled messages, counting them itself, so a message settled any way —
through the consumer, by receipt, or by its lease ending — gives its credit back and the
client keeps no credit of its own); ``Client.listen`` returns a ``Listener`` (a SUB socket on
the broker's stream endpoint, counting sequence gaps per topic). Deliveries stay in the
codec's record form until user code looks at them: a consumer that acks whole batches
makes no Python object per message.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol

from fastfanout._ext.received import AckBuffer, MessageCursor
from fastfanout.arrays import MessageBatch
from fastfanout.client.core import SETTLE_MAX_RECEIPTS, ConsumerState, check_inactivity_timeout
from fastfanout.client.driver import BlockingDriver
from fastfanout.client.messages import (
    DONE,
    Done,
    Owner,
    RemoteMessage,
)
from fastfanout.errors import (
    BlockingOnly,
    BrokenConnection,
    Closed,
    FastFanoutError,
    PeerLost,
    WrongClient,
)
from fastfanout.records import Attributes, Body
from fastfanout.semantics.replies import reply_frames
from fastfanout.server.streams import StreamBatch, StreamFollower, StreamMessage
from fastfanout.settings import (
    MAX_DELAY,
    MAX_VISIBILITY_TIMEOUT,
    check_wait,
    seconds_to_us,
)
from fastfanout.transport.sockets import CurveKeys, SubTransport
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode

__all__ = ["AsyncDeliveryBatch", "AsyncSettler", "Consumer", "DeliveryBatch", "Listener",
           "StreamListening", "ack_limit"]


def ack_limit(prefetch: int, linger: float) -> int:
    """Single messages' acks a consumer queues before it sends them at once.

    Half the prefetch (the broker counts queued acks as unsettled: it must not run out of
    credit), at most ``SETTLE_MAX_RECEIPTS``; 1 (each at once) with no linger.
    """
    if linger <= 0:
        return 1
    return max(1, min(prefetch // 2, SETTLE_MAX_RECEIPTS))


class Consumer(BlockingOnly, Iterator[RemoteMessage],
               what="a Consumer (what a blocking client's consume() returns)",
               await_instead="use it as it is ('for message in consumer:')"):
    """Messages pushed by the broker for one queue, as an iterator (``Client.consume``).

    Iterating it steps a native cursor (``fastfanout._ext.received.MessageCursor``): each
    message is made in C from the pushed frame, and ``message.ack()`` queues its receipt
    in C (sent with the consumer's other acks, see ``Client.consume``).

    Attributes:
        queue: the queue consumed.
        prefetch: most unsettled messages the broker pushes to this consumer.
        timeout: seconds the iteration waits for a message before it ends (and the
            consumer is cancelled), as pika's ``inactivity_timeout``; None: forever.
    """

    def __init__(self, connection: BlockingDriver, state: ConsumerState, owner: Owner) -> None:
        self.queue = state.queue
        self.prefetch = state.prefetch
        self.connection = connection
        self.owner = owner
        self._state = state
        # message.ack() queues its receipt here, in C; at ``ack_limit`` they are sent
        state.acks = AckBuffer(state, ack_limit(state.prefetch, connection.core.linger),
                               functools.partial(connection.settle, state))
        # Held by this consumer and by its cursor's refill: once both are gone (a ``for``
        # over ``client.consume(...)`` left by ``break``) nobody can read what the broker
        # pushes, so the consumer is cancelled (``abandon``) rather than left leasing
        # messages until they are dead-lettered. Neither refers back to the other's
        # holder: plain reference counting frees them, at once.
        life = _Lifeline()
        weakref.finalize(life, connection.abandon, state).atexit = False   # not at exit
        self._life = life
        # the messages are made and iterated in C, a frame at a time (the refill)
        self._cursor = MessageCursor(owner, state.acks, self.queue,
                                     _refiller(connection, state, life),
                                     connection.release_unread)
        state.cursor = weakref.ref(self._cursor)   # close() drops its frame

    @property
    def closed(self) -> bool:
        """True once cancelled (or its client closed)."""
        return self._state.closed

    @property
    def timeout(self) -> float | None:
        """Seconds the iteration waits for a message before it ends; None: forever.

        The consumer is then cancelled. It may be changed while iterating.
        """
        return self._state.timeout

    @timeout.setter
    def timeout(self, seconds: float | None) -> None:
        # checked as consume(timeout=...) checks it: a NaN set here hung the iteration
        self._state.timeout = check_inactivity_timeout(seconds)

    def defer_settle(self, receipts: bytes) -> None:
        """Queue a pipelined ack of a receipts frame (``ConnectionCore.defer_settle``)."""
        self.connection.defer_settle(self._state, receipts)

    def _next_frames(self, timeout: float | None) -> list[bytes] | None:
        return _next_frames(self.connection, self._state, timeout)

    def __aiter__(self) -> NoReturn:
        raise WrongClient("the blocking client's consumer is iterated with 'for'; in "
                          "asyncio code use 'async for' over the consume() of an asyncio "
                          "client (fastfanout.aio.connect())")

    def __iter__(self) -> Iterator[RemoteMessage]:
        """The native iterator over the pushed messages (one C step per message)."""
        return self._cursor

    def __next__(self) -> RemoteMessage:
        return next(self._cursor)

    def next_batch(self, timeout: float | None = None) -> DeliveryBatch | None:
        """The next pushed batch, waiting up to ``timeout`` seconds (None: forever).

        Raises:
            InvalidArgument: ``timeout`` is not a number of seconds (or None).
        """
        check_wait("timeout", timeout)
        frames = self._next_frames(timeout)
        return None if frames is None else DeliveryBatch(frames, self)

    def waiting(self) -> list[RemoteMessage]:
        """The messages of pushes that arrived and were not taken yet.

        Leased to this consumer as any it took (``next_batch`` and the iteration take
        them in order): a lease keeper extends them too. A snapshot, safe from another
        thread; each call makes new message objects of the same leases.
        """
        return [message for frames in list(self._state.batches)
                for message in DeliveryBatch(frames, self)]

    def cancel(self) -> None:
        """Stop the pushes; what was pushed and not yet read goes back to the queue.

        Messages already taken (iterated, or in a batch from ``next_batch``) stay
        leased until settled. Those the consumer holds unread — the rest of the frame
        being iterated, the frames not started, and what the broker pushes until the
        cancel reaches it — are released (visible again at once; the delivery stays
        counted in their ``receive_count``) and never yielded.
        """
        # the CANCEL first: released before it, the messages went back to this consumer
        # (its credit returned) and the CANCEL released them again, counted twice
        self.connection.cancel(self._state)
        self._cursor.release_unread()   # the rest of the frame being iterated

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()



class _Lifeline:
    """What a consumer and its cursor share; its finalizer cancels the consumer."""

    __slots__ = ("__weakref__",)


def _next_frames(connection: BlockingDriver, state: ConsumerState,
                 timeout: float | None) -> list[bytes] | None:
    """A consumer's next pushed frames, pumping up to ``timeout`` (None: forever)."""
    acks = state.acks
    deadline = None if timeout is None else time.monotonic() + timeout
    # after the client's close() (or in a forked child) a step raises as every call does
    connection.core.check_open()
    while not state.batches:
        if state.error is not None:
            raise state.error
        if state.closed:
            raise StopIteration
        now = time.monotonic()
        remaining = None if deadline is None else deadline - now
        if remaining is not None and remaining <= 0:
            return None
        wait = 0.1 if remaining is None else min(0.1, remaining)
        settle = (connection.settle(state, now)
                  if state.unsent or (acks is not None and acks.count) else None)
        connection.pump(wait if settle is None else min(wait, settle), consumer=state)
    return state.batches.popleft()


def _refiller(connection: BlockingDriver, state: ConsumerState, life: _Lifeline
              ) -> Callable[[], bytes]:
    """The cursor's refill: the next pushed frame, waiting up to the consumer's timeout.

    It holds ``life`` (the consumer's lifeline), not the consumer.
    """

    def refill() -> bytes:
        frames = _next_frames(connection, state, state.timeout)
        if frames is None:   # nothing came for ``timeout`` seconds: the iteration ends
            connection.cancel(state)
            raise StopIteration
        return frames[0]

    refill.life = life   # type: ignore[attr-defined]   # kept alive with the cursor
    return refill


class DeliveryBatch(MessageBatch):
    """One batch pushed to a blocking client's consumer (``Consumer.next_batch``)."""

    def __init__(self, frames: list[bytes], consumer: Consumer) -> None:
        super().__init__(frames[0], consumer.owner, consumer, consumer.queue)
        self._consumer = consumer

    def ack(self, wait: bool = False) -> None:
        """Ack every message of the batch (its credit returns when the broker has it).

        Args:
            wait: wait for the broker's answer (raising ``StaleReceipt``); by default the
                ack is pipelined and a failure is only logged by the broker's counters.

        Raises:
            Closed: the client is closed (the batch is left as it was).
        """
        consumer = self._consumer
        # before the batch is marked settled: until 2026-12-05 a refused call marked it
        # settled, and every later ack, nack or term did nothing, raising nothing
        consumer.connection.core.check_open()
        receipts = self._unsettled()
        if receipts is None:
            return
        connection = consumer.connection
        if not wait and not consumer.closed:
            # Queued with the consumer's other batch acks and sent within the client's
            # linger as one SETTLE (no reply unless the ack fails) instead of an ACK and
            # its reply each: the broker counts a failure (error.stale_receipt).
            consumer.defer_settle(receipts)
            return
        request = connection.request(Opcode.ACK, [receipts])
        if wait:
            connection.wait(request, None)

    def nack(self, *, delay: float | None = None) -> None:
        """Nack every message of the batch not settled on its own: all, or none.

        One NACK_BATCH request, sent after the consumer's queued acks; it waits for the
        broker's answer, as ``client.nack`` does. The credit returns at once.

        Args:
            delay: seconds before redelivery (0 to 31,536,000); None: the queue's
                redelivery backoff.

        Raises:
            InvalidArgument: ``delay`` is out of range (nothing was sent).
            StaleReceipt: a lease ended before (nothing was nacked).
        """
        if delay is not None:
            seconds_to_us("delay", delay, maximum=MAX_DELAY)
        self._settle(Opcode.NACK_BATCH, protocol.encode_payload(delay))

    def term(self) -> None:
        """Dead-letter every message of the batch not settled on its own: all, or none.

        One TERM_BATCH request, answered as ``nack``'s.

        Raises:
            StaleReceipt: a lease ended before (nothing was changed).
        """
        self._settle(Opcode.TERM_BATCH)

    def _settle(self, opcode: int, *arguments: bytes) -> None:
        connection = self._consumer.connection
        connection.core.check_open()   # before the batch is marked settled (``ack``)
        receipts = self._unsettled()
        if receipts is None:
            return
        connection.wait(connection.request(opcode, [receipts, *arguments]), None)


class AsyncSettling(Protocol):
    """How the asyncio client's messages settle: ``AsyncConnection``'s calls."""

    def check_open(self) -> None:
        """Raise ``Closed`` once the client is closed."""

    def check_loop(self) -> None:
        """Raise ``WrongEventLoop`` outside the event loop that connected the client."""

    def queue_receipts(self, receipts: bytes) -> None:
        """Queue a receipts frame for this loop iteration's SETTLE."""

    def fire(self, opcode: int, *args: Any, **kwargs: Any) -> None:
        """Send a control call whose answer is dropped."""

    def fire_frames(self, opcode: int, payload: list[bytes]) -> None:
        """Send a request of these payload frames whose answer is dropped."""


class AsyncSettler:
    """Settles messages of the asyncio client from synchronous code (``message.ack()``).

    The ``Owner`` and ``Settler`` of its messages and batches: an ack is queued for this
    loop iteration's SETTLE; nack, extend and term are sent at once, their answers
    dropped (the broker counts a failure). Their arguments are checked here first, as
    the broker checks them: a bad delay raises ``InvalidArgument`` and sends nothing
    (sent, the broker's refusal would only be counted, the message left leased).
    """

    __slots__ = ("_connection",)
    closed = False   # never: the acks go through the connection

    def __init__(self, connection: AsyncSettling) -> None:
        self._connection = connection

    def defer_settle(self, receipts: bytes) -> None:
        """Queue the ack of a receipts frame for this loop iteration's SETTLE."""
        self._connection.queue_receipts(receipts)

    def check_open(self) -> None:
        """Raise ``Closed`` once the client is closed (a batch checks before settling).

        Also ``WrongEventLoop`` outside the client's event loop, which would refuse the
        settle: until 2026-12-05 a batch settled from another thread was marked settled
        first, and every later ``ack()``, ``nack()`` or ``term()`` of it did nothing.
        """
        self._connection.check_open()
        self._connection.check_loop()

    def ack(self, receipt: int) -> None:
        """Queue the ack of a receipt (sent when this loop iteration ends)."""
        self._connection.queue_receipts(protocol.encode_receipt(receipt))

    def nack(self, receipt: int, *, delay: float | None = None) -> None:
        """End a lease early (sent at once).

        Raises:
            InvalidArgument: ``delay`` is not seconds in range (nothing is sent: the
                broker's refusal would be dropped with the answer).
        """
        if delay is not None:
            seconds_to_us("delay", delay, maximum=MAX_DELAY)
        self._connection.fire(Opcode.NACK, receipt, delay=delay)

    def extend(self, receipt: int, seconds: float) -> None:
        """Make the lease end ``seconds`` from now (sent at once).

        Raises:
            InvalidArgument: ``seconds`` is not seconds in range (nothing is sent).
        """
        seconds_to_us("seconds", seconds, maximum=MAX_VISIBILITY_TIMEOUT)
        self._connection.fire(Opcode.EXTEND, receipt, seconds)

    def term(self, receipt: int) -> None:
        """Dead-letter a leased message now (sent at once)."""
        self._connection.fire(Opcode.TERM, receipt)

    def reply(self, address: str, body: Body, *, attributes: Attributes | None = None
              ) -> None:
        """Answer a request (sent at once; ``message.reply``).

        Raises:
            InvalidArgument: a bad address, body or attributes (nothing is sent).
        """
        self._connection.fire_frames(Opcode.REPLY, reply_frames(address, body, attributes))

    def settle_packed(self, opcode: int, payload: list[bytes]) -> None:
        """Send a batch settle (NACK_BATCH, TERM_BATCH) of packed receipts at once.

        Its answer is dropped (the broker counts a failure); the queued acks go first.
        """
        self._connection.fire_frames(opcode, payload)


class AsyncDeliveryBatch(MessageBatch):
    """One batch pushed to an asyncio consumer (``AsyncClient.consume_batches``).

    Its messages' ``ack()`` and the batch's ``ack()`` are queued for the loop
    iteration's SETTLE, as the asyncio client's ``message.ack()`` is.
    """

    def __init__(self, frame: bytes, settler: AsyncSettler, queue: str) -> None:
        # its messages settle through the connection's settler, not through the batch: a
        # batch its messages pointed back to would live until a garbage collection (a
        # cycle), and with it a frame held in the client's ring
        super().__init__(frame, settler, settler, queue)
        self._acks = settler

    def ack(self) -> Done:
        """Ack every message not settled on its own, queued for this loop iteration.

        Returns ``DONE`` (awaitable). A stale receipt is counted by the broker.

        Raises:
            Closed: the client is closed (the batch is left as it was).
        """
        # before the batch is marked settled: until 2026-12-05 a refused call marked it
        # settled, and every later ack, nack or term did nothing, raising nothing
        self._acks.check_open()
        receipts = self._unsettled()
        if receipts is not None:
            self._acks.defer_settle(receipts)
        return DONE

    def nack(self, *, delay: float | None = None) -> Done:
        """Nack every message not settled on its own, all or none, sent at once.

        One NACK_BATCH after this loop iteration's queued acks; returns ``DONE``
        (awaitable). A stale receipt is counted by the broker (nothing nacked).

        Args:
            delay: seconds before redelivery (0 to 31,536,000); None: the queue's
                redelivery backoff.

        Raises:
            InvalidArgument: ``delay`` is out of range (nothing is sent).
        """
        if delay is not None:
            seconds_to_us("delay", delay, maximum=MAX_DELAY)
        self._acks.check_open()
        receipts = self._unsettled()
        if receipts is not None:
            self._acks.settle_packed(Opcode.NACK_BATCH,
                                     [receipts, protocol.encode_payload(delay)])
        return DONE

    def term(self) -> Done:
        """Dead-letter every message not settled on its own, all or none, sent at once.

        One TERM_BATCH, as ``nack``'s; returns ``DONE``.
        """
        self._acks.check_open()
        receipts = self._unsettled()
        if receipts is not None:
            self._acks.settle_packed(Opcode.TERM_BATCH, [receipts])
        return DONE


class StreamListening:
    """What both listeners share: the pattern, its follower and the batches not read yet.

    Args:
        pattern: the topic name or pattern (``orders.*``, ``orders.>``).

    Attributes:
        pattern: the topic name or pattern.
        follower: the subscription's state (``fastfanout.server.streams.StreamFollower``).
        early: batches that came before the probe, read first.
        unread: messages of the current batch not iterated yet.
        closed: True once ``close()`` was called.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.follower = StreamFollower(pattern)
        self.early: deque[StreamBatch] = deque()
        self.unread: deque[StreamMessage] = deque()
        self.closed = False

    def check_open(self) -> None:
        """Raise ``Closed`` once the listener is closed.

        Until 2026-12-05 a read after ``close()`` raised pyzmq's own ``ZMQError``
        ("Socket operation on non-socket").
        """
        if self.closed:
            raise Closed(f"the listener of {self.pattern!r} is closed")

    @property
    def gaps(self) -> int:
        """Messages missed so far, from sequence numbers and beacons per topic."""
        return self.follower.gaps

    @property
    def received(self) -> int:
        """Messages received so far."""
        return self.follower.received

    @property
    def malformed(self) -> int:
        """Stream messages dropped because they did not decode."""
        return self.follower.malformed

    def until_live(self, frames: list[bytes]) -> bool:
        """Feed a SUB message that came while waiting for the probe; True once live.

        A stream batch that came before the probe is kept in ``early`` (read first).
        """
        batch = self.follower.accept(frames)
        if batch is not None:
            self.early.append(batch)
        return self.follower.live

    def not_live(self, stream_endpoint: str, timeout: float) -> BrokenConnection:
        """The error when the broker did not apply the subscription within ``timeout``."""
        return BrokenConnection(
            f"the broker at {stream_endpoint} did not apply the stream subscription to "
            f"{self.pattern!r} within {timeout} s; is it running?")

    def lost(self, stream_endpoint: str, heartbeat: tuple[float, float] | None
             ) -> BrokenConnection:
        """Close the listener whose stream was lost; the error that says so.

        Lost: the broker's process ended, or it answered no heartbeat for
        ``heartbeat[1]`` seconds. A stream's sequence numbers begin again with a new
        broker process, and what was published meanwhile is gone (at most once), so
        the listener does not follow a broker that comes back: listen again.
        """
        self.close()
        silent = "" if heartbeat is None else (
            f", or it answered no heartbeat for {heartbeat[1]:g} s")
        return BrokenConnection(
            f"the stream of {self.pattern!r} from the broker at {stream_endpoint} was "
            f"lost (its process ended{silent}); the listener is closed: listen again")

    def close(self) -> object:
        """Close the listener (each listener's own)."""
        raise NotImplementedError


class Listener(BlockingOnly, StreamListening, Iterator[StreamMessage],
               what="a Listener (what a blocking client's listen() returns)",
               await_instead="use it as it is (listen() returned once the broker applied "
                             "its subscription)"):
    """Stream messages of the topics matching a pattern (``Client.listen``).

    Live when made: the constructor returns once the broker applies the subscription
    (its probe came back, see ``fastfanout.server.streams``), so every message published
    afterwards reaches this listener unless its queue overflows.

    Args:
        stream_endpoint: the broker's stream endpoint.
        pattern: the topic name or pattern (``orders.*``, ``orders.>``).
        curve: client keys when the broker uses CURVE.
        timeout: seconds to wait for the broker to apply the subscription.
        high_water_mark: stream batches this listener's socket queues; beyond them the
            broker drops batches for this listener only (counted here as ``gaps``).
        heartbeat: (seconds between heartbeats, seconds of silence after which the
            broker is taken for gone), or None: the stream's loss is seen only when the
            broker's process ends. ``Client.listen`` gives the broker's own
            ``heartbeat_interval`` and 1.5 times its ``heartbeat_timeout``, the
            client's rule.
        client_open: raises (``Closed``) once the client that made the listener is
            closed: the listener then closes itself, within a second for a read that
            waits in another thread (until 2026-12-05 a listener outlived its client and
            a read waited for ever); None: the listener has no client.

    Raises:
        BrokenConnection: the broker did not apply the subscription within ``timeout``,
            or its stream was lost meanwhile.

    Attributes:
        pattern: the topic name or pattern.
    """

    def __init__(self, stream_endpoint: str, pattern: str, curve: CurveKeys | None, *,
                 timeout: float = 10.0, high_water_mark: int = 100_000,
                 heartbeat: tuple[float, float] | None = None,
                 client_open: Callable[[], None] | None = None) -> None:
        super().__init__(pattern)
        follower = self.follower
        self._heartbeat = heartbeat
        self._client_open = client_open
        self._stream_endpoint = stream_endpoint
        self._transport = SubTransport(stream_endpoint, [follower.prefix, follower.probe],
                                       curve, high_water_mark, heartbeat)
        deadline = time.monotonic() + timeout
        while not follower.live:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._transport.close()
                raise self.not_live(stream_endpoint, timeout)
            try:
                frames = self._transport.recv(remaining)
            except PeerLost:
                raise self.lost(stream_endpoint, heartbeat) from None
            if frames is not None:
                self.until_live(frames)
        self._transport.unsubscribe(follower.probe)

    def recv_batch(self, timeout: float | None = None) -> StreamBatch | None:
        """The next stream batch (one publish), waiting up to ``timeout`` s; None on timeout.

        The batch decodes its messages only when indexed or iterated: counting and gap
        detection read the frame natively.

        Raises:
            InvalidArgument: ``timeout`` is not a number of seconds (or None): a NaN
                deadline was never reached.
            BrokenConnection: the stream was lost (the broker's process ended, or it
                answered no heartbeat): the batches that came before were read first;
                the listener is now closed (listen again).
            Closed: the listener, or the client that made it, is closed (the listener
                then is too).
        """
        check_wait("timeout", timeout)
        self.check_open()
        self._check_client()
        if self.early:
            return self.early.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        accept = self.follower.accept
        while True:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining < 0:
                return None
            try:
                frames = self._transport.recv(min(remaining, 1.0))
            except PeerLost:
                raise self.lost(self._stream_endpoint, self._heartbeat) from None
            except Exception:   # pyzmq's ZMQError when closed by another thread under it
                self.check_open()
                raise
            if frames is None:
                self._check_client()   # at least once a second while nothing comes
                continue
            batch = accept(frames)
            if batch is not None:
                return batch

    def __next__(self) -> StreamMessage:
        while not self.unread:
            batch = self.recv_batch(None)
            if batch:
                self.unread.extend(batch)
        return self.unread.popleft()

    def _check_client(self) -> None:
        """Close the listener and raise ``Closed`` once its client is closed."""
        if self._client_open is not None:
            try:
                self._client_open()
            except FastFanoutError:
                self.close()
                raise

    def close(self) -> None:
        """Close the SUB socket; a later read raises ``Closed``."""
        self.closed = True
        self._transport.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> NoReturn:
        raise self.misused("iterated with 'async for'", "iterate it with 'for'")
