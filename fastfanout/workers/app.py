"""``Worker``: functions as subscribers, run on the messages of queues.

Design
------
Prior art: AWS Lambda's SQS event source mappings (a function per queue, batches with a
window, ``ReportBatchItemFailures`` for partial batch failure, failures retried with the
queue's redrive policy), leases renewed while a call runs (NATS's "in progress", Google
Pub/Sub's client lease management),
SNS → Lambda subscriptions (``subscribe``: a topic invokes a function), dramatiq and
Celery workers (a decorator per actor or task, a thread pool per process, ``processes``
for CPU-bound work, SIGTERM as a warm shutdown).

Semantics: a call that returns acks its message(s); one that raises nacks them with the
queue's ``redelivery_backoff``, and the queue's ``max_receive_count`` dead-letters a
message that failed that many times. Sync handlers run on threads
(``fastfanout.workers.threads``), async ones on an event loop in its own thread
(``fastfanout.workers.coroutines``), a handler with ``processes=N`` in N child processes
(``fastfanout.workers.processes``). Stopping (``stop()``, or SIGTERM/SIGINT in ``run()``)
takes no more messages, lets running calls finish within ``shutdown_timeout``, and nacks
the rest with no delay, so they are redelivered at once: no message is acked unprocessed
and none waits for a lease to end.

A ``Worker`` talks to a broker server (an endpoint: each thread its own connection) or
to an embedded ``Broker`` (``Worker(broker)``, one process, long polls woken by
publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import FrameType, TracebackType
from typing import Any, TypeVar

from fastfanout.broker.embedded import Broker
from fastfanout.client import Client
from fastfanout.errors import (
    AlreadyExists,
    BrokenConnection,
    FastFanoutError,
    InvalidArgument,
    NotFound,
)
from fastfanout.runtime import check_endpoint, default_endpoint, ipc_problem
from fastfanout.semantics.filter_policy import SCOPES, parse_policy
from fastfanout.settings import QueueSettings, check_count, check_name, check_queue_settings
from fastfanout.stats import MAX_REPORT_NAME
from fastfanout.transport.sockets import CurveKeys
from fastfanout.workers.coroutines import AsyncRunner, LoopWatch
from fastfanout.workers.handlers import (
    MAX_CONCURRENCY,
    MAX_PROCESSES,
    Handler,
    check_seconds,
    make_handler,
)
from fastfanout.workers.processes import STATS_INTERVAL, ProcessGroup
from fastfanout.workers.reports import REPORT_INTERVAL, Reporter, worker_report
from fastfanout.workers.sources import (
    STOP_GRACE,
    AsyncBrokerSource,
    AsyncClientSource,
    BrokerSource,
    ClientSource,
    Source,
)
from fastfanout.workers.stats import WorkerStats
from fastfanout.workers.threads import LeaseKeeper, ThreadRunner

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_SHUTDOWN_TIMEOUT", "Worker", "run_child"]

log = logging.getLogger("fastfanout.worker")

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONCURRENCY = 4
"""Calls at once per handler and process when neither the handler nor the worker says."""
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
"""Seconds running calls get to finish when the worker stops."""
MAX_SHUTDOWN_TIMEOUT = 86_400.0
"""Longest ``shutdown_timeout`` (and ``stop(timeout)``), seconds: a day, as the broker's
settings (a larger one overflowed the thread joins of the stop: ``OverflowError``)."""
START_TIMEOUT = 30.0
"""Seconds ``start()`` waits for every connection and consumer to open."""


def run_child(endpoint: str | None, options: dict[str, Any], handler: Handler,
               shutdown_timeout: float, log_level: int,
               report: multiprocessing.connection.Connection) -> None:
    """A worker process: run one handler until SIGTERM, reporting stats to the parent."""
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    # the parent turns Ctrl-C, and SIGHUP (the terminal closed), into SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = threading.Event()
    # its parent reports the handler's stats to the broker, combined over the processes
    worker = Worker(endpoint, shutdown_timeout=shutdown_timeout, report_interval=None,
                    **options)

    def on_sigterm(number: int, frame: FrameType | None) -> None:
        if stop.is_set():   # the second one: the parent's stop_now()
            worker.stop_now()
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    worker.add(replace(handler, processes=1))
    try:
        worker.start()
    except FastFanoutError as error:   # one line, not a traceback per restart
        log.error("worker process of %s cannot start: %s", handler.name, error)
        report.close()
        sys.exit(1)
    try:
        while not stop.wait(STATS_INTERVAL):
            try:
                report.send(worker.stats().handlers[handler.name])
            except OSError:   # the pipe's other end is gone: the parent died (kill -9)
                log.warning("worker process of %s: its parent process is gone; stopping "
                            "(running calls get %g s)", handler.name, shutdown_timeout)
                break
    finally:
        worker.stop()
        with contextlib.suppress(OSError):   # no parent to read it any more
            report.send(worker.stats().handlers[handler.name])
        report.close()


class _Subscription:
    __slots__ = ("dead_letter_queue", "filter_policy", "filter_scope", "queue",
                 "queue_settings", "topic")

    def __init__(self, topic: str, queue: str, dead_letter_queue: str | None,
                 filter_policy: Mapping[str, Any] | str | None, filter_scope: str,
                 queue_settings: dict[str, Any]) -> None:
        self.topic = topic
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue
        self.filter_policy = filter_policy
        self.filter_scope = filter_scope
        self.queue_settings = queue_settings


def _check_endpoint(endpoint: object) -> str:
    """``endpoint`` if it is a well-formed endpoint string, else ``InvalidArgument``.

    Checked when the worker is made or configured, not at its start's first connection.
    """
    check_endpoint(endpoint)
    assert isinstance(endpoint, str)   # checked just above
    return endpoint


class Worker:
    """Runs handler functions on the messages of queues.

    Args:
        broker: an endpoint (``ipc://``, ``tcp://``; None: the default endpoint) or an
            embedded ``Broker`` to run in this process.
        concurrency: calls at once per handler and process, for handlers that do not
            set their own (1 to 1,024).
        processes: worker processes per handler, for handlers that do not set their own
            (1: this process). Not with an embedded broker.
        shutdown_timeout: seconds running calls get to finish when the worker stops.
        name: the worker's name in ``fastfanout stats`` (None: ``host:pid``;
            ``fastfanout worker`` names it ``MODULE:APP``).
        report_interval: seconds between the reports of its handlers' stats to a broker
            server (shown by ``fastfanout stats``); None: no reports.
        **client_options: keyword arguments of ``fastfanout.Client`` for the worker's
            connections (``timeout``, ``curve_server_key``, ``local_channel`` ...).

    Raises:
        InvalidArgument: an option is out of range, or a client option is not one of
            ``Client``'s.
    """

    def __init__(self, broker: Broker | str | None = None, *,
                 concurrency: int = DEFAULT_CONCURRENCY, processes: int = 1,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                 name: str | None = None, report_interval: float | None = REPORT_INTERVAL,
                 **client_options: Any) -> None:
        if broker is not None and not isinstance(broker, (Broker, str)):
            raise InvalidArgument(f"broker={broker!r} must be an endpoint string, a Broker, "
                                  f"or None (the default endpoint)")
        if isinstance(broker, str):
            _check_endpoint(broker)
        if client_options:
            if isinstance(broker, Broker):
                raise InvalidArgument(f"client options {sorted(client_options)} need a "
                                      f"broker server, not an embedded Broker")
            try:
                inspect.signature(Client).bind(None, **client_options)
            except TypeError as exc:
                raise InvalidArgument(f"bad client option: {exc}") from None
        self.broker = broker
        self.client_options = client_options
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.report_interval = (None if report_interval is None else
                                check_seconds("report_interval", report_interval))
        self._reporter: Reporter | None = None
        self._handlers: dict[str, Handler] = {}
        self._subscriptions: list[_Subscription] = []
        self.configure(concurrency=concurrency, processes=processes,
                       shutdown_timeout=shutdown_timeout, name=name)
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._stop_finished = threading.Event()   # a stop() (any thread's) is done
        # start() and stop() one at a time: a stop() while another thread is starting the
        # worker (its first calls may run meanwhile) must find all it has to stop
        self._lifecycle = threading.RLock()
        self._hurry = threading.Event()
        self._stop_deadline = 0.0   # monotonic: when running calls are abandoned
        self._loop_hurry: asyncio.Event | None = None
        self._loop_watch: LoopWatch | None = None   # warns while the loop is blocked
        self._started = False
        self._stopped = False
        self._threads: list[ThreadRunner] = []
        self._asyncs: list[AsyncRunner] = []
        self._groups: list[ProcessGroup] = []
        self._keeper: LeaseKeeper | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_stop: asyncio.Event | None = None
        self._loop_ready = threading.Event()
        self._loop_finished = threading.Event()   # the loop's runners have stopped
        self._loop_error: BaseException | None = None

    # -- configuration -----------------------------------------------------------------

    def configure(self, *, endpoint: str | None = None, concurrency: int | None = None,
                  processes: int | None = None, shutdown_timeout: float | None = None,
                  name: str | None = None, curve: CurveKeys | None = None) -> Worker:
        """Change the worker's defaults before it starts (the command line's options).

        Args:
            endpoint: the broker endpoint (not for a worker of an embedded broker).
            curve: the CURVE keys of its connections, for a broker that requires them
                (``Client``'s ``curve``; not for a worker of an embedded broker).
            name: the worker's name in ``fastfanout stats``.
            concurrency: the default calls at once per handler and process.
            processes: the default processes per handler.
            shutdown_timeout: seconds running calls get when the worker stops.

        Returns:
            The worker.

        Raises:
            InvalidArgument: a value is out of range, or the worker has started.
        """
        if getattr(self, "_started", False):
            raise InvalidArgument("a worker cannot be configured once started")
        if endpoint is not None:
            if isinstance(self.broker, Broker):
                raise InvalidArgument("this worker runs on an embedded Broker; it has no "
                                      "endpoint")
            self.broker = _check_endpoint(endpoint)
        if curve is not None:
            if isinstance(self.broker, Broker):
                raise InvalidArgument("this worker runs on an embedded Broker; it has no "
                                      "connection to secure")
            self.client_options = {**self.client_options, "curve": curve}
        if concurrency is not None:
            self.concurrency = check_count("concurrency", concurrency, maximum=MAX_CONCURRENCY)
        if processes is not None:
            self.processes = check_count("processes", processes, maximum=MAX_PROCESSES)
            if processes > 1 and isinstance(self.broker, Broker):
                raise InvalidArgument("processes > 1 needs a broker server: an embedded "
                                      "Broker lives in one process")
        if shutdown_timeout is not None:
            self.shutdown_timeout = check_seconds("shutdown_timeout", shutdown_timeout,
                                                  maximum=MAX_SHUTDOWN_TIMEOUT,
                                                  allow_zero=True)
        if name is not None:
            if type(name) is not str or not name or len(name) > MAX_REPORT_NAME:
                raise InvalidArgument(f"name={name!r:.80} must be a non-empty string of at "
                                      f"most {MAX_REPORT_NAME} characters")
            self.name = name
        return self

    @property
    def handlers(self) -> dict[str, Handler]:
        """The registered handlers, by name."""
        return dict(self._handlers)

    def add(self, handler: Handler) -> Handler:
        """Register a ``Handler`` made elsewhere (``make_handler``, a child process).

        A handler whose name (its function's ``__name__``) another handler has already
        is named ``NAME@QUEUE``: one function may serve several queues, and two lambdas
        may (until 2026-12-07 the second was refused, "a handler named 'f' is registered
        already"). Names key the stats and the logs.

        Returns:
            The handler registered (renamed so).

        Raises:
            InvalidArgument: the queue has a handler already, or both the handler's name
                and ``NAME@QUEUE`` are taken.
        """
        if self._started:
            raise InvalidArgument("handlers must be registered before the worker starts")
        for other in self._handlers.values():
            if other.queue == handler.queue:
                raise InvalidArgument(f"queue {handler.queue!r} has a handler already "
                                      f"({other.name}); one handler per queue")
        if handler.name in self._handlers:
            unique = f"{handler.name}@{handler.queue}"
            if unique in self._handlers:
                raise InvalidArgument(
                    f"handlers named {handler.name!r} and {unique!r} are registered "
                    f"already: handler names, which name their stats, must be unique")
            handler = replace(handler, name=unique)
        if (isinstance(self.broker, Broker) and handler.processes is not None
                and handler.processes > 1):
            raise InvalidArgument("processes > 1 needs a broker server: an embedded Broker "
                                  "lives in one process")
        self._handlers[handler.name] = handler
        return handler

    def handler(self, queue: str, *, concurrency: int | None = None, batch_size: int = 1,
                batch_window: float = 0.0, timeout: float | None = None,
                processes: int | None = None, prefetch: int | None = None,
                visibility_timeout: float | None = None) -> Callable[[F], F]:
        """Decorator: run the function on every message of ``queue``.

        The function takes one message (or, with ``batch_size`` > 1, a list of up to that
        many). Returning acks; raising nacks with the queue's backoff, and the queue's
        ``max_receive_count`` dead-letters a message that failed that often. A batch
        handler may return the messages (or message ids) that failed: only those are
        nacked, the others acked (SQS's ``ReportBatchItemFailures``); a return naming
        anything else fails the whole batch.

        Args:
            queue: the queue to consume (it must exist when the worker starts).
            concurrency: calls at once in each process (None: the worker's).
            batch_size: messages per call (1: one message, not a list), up to 10,000.
            batch_window: seconds to wait for a batch to fill after its first message
                (0: call with what is there), up to 20.
            timeout: seconds a call may run; past it the call is abandoned and its
                messages nacked (async calls are cancelled; a thread runs on, its result
                ignored).
            processes: worker processes for this handler (None: the worker's).
            prefetch: most unsettled messages per connection (None: 2 x concurrency x
                batch_size; each thread of a sync handler has its own connection and
                takes 2 x batch_size).
            visibility_timeout: lease seconds, renewed while calls run (None: the
                queue's).

        Raises:
            InvalidArgument: ``queue`` is not a queue name (a function: ``@worker.handler``
                without its queue; raised at once), the function does not take one
                positional argument, an option is out of range, or the queue has a
                handler already.
        """
        if callable(queue):
            # ``@worker.handler`` with no (queue): the function was taken for the queue
            # and replaced by the decorator, and no handler was ever registered
            raise InvalidArgument(
                f"@handler needs the queue: write @worker.handler(\"QUEUE\") above "
                f"{getattr(queue, '__name__', 'the function')} (or worker.subscribe(topic, "
                f"function) to have one made)")
        check_name("queue", queue)

        def register(function: F) -> F:
            self.add(make_handler(function, queue, concurrency=concurrency,
                                  batch_size=batch_size, batch_window=batch_window,
                                  timeout=timeout, processes=processes, prefetch=prefetch,
                                  visibility_timeout=visibility_timeout))
            return function
        return register

    def subscribe(self, topic: str, function: Callable[..., Any] | None = None, *,
                  filter_policy: Mapping[str, Any] | str | None = None,
                  filter_scope: str = "attributes", queue: str | None = None,
                  dead_letter_queue: str | None = None, max_receive_count: int = 3,
                  visibility_timeout: float = 30.0,
                  redelivery_backoff: Any = None, **options: Any) -> Any:
        """Run a function on every message of a topic, as SNS → Lambda subscribes one.

        When the worker starts it creates (or reuses, when it exists with the same
        settings) a queue named after the function, its dead-letter queue, and the
        subscription of the queue to the topic with ``filter_policy``. Usable as
        ``app.subscribe(topic, function)`` or as a decorator ``@app.subscribe(topic)``.

        Args:
            topic: the topic (or pattern) to follow; it must exist at start.
            function: the handler; None returns a decorator.
            filter_policy: an SNS filter policy (dict or JSON); None: every message.
            filter_scope: ``"attributes"`` or ``"body"``.
            queue: the queue's name (default: the function's ``__name__``).
            dead_letter_queue: its dead-letter queue (default: ``<queue>-dlq``).
            max_receive_count: deliveries before a message is dead-lettered.
            visibility_timeout: the queue's lease, seconds.
            redelivery_backoff: the queue's backoff (see ``Broker.create_queue``).
            **options: the handler's options (see ``handler``).

        Raises:
            InvalidArgument: as ``handler``.
        """
        if function is None:
            def register(given: F) -> F:
                self.subscribe(topic, given, filter_policy=filter_policy,
                               filter_scope=filter_scope, queue=queue,
                               dead_letter_queue=dead_letter_queue,
                               max_receive_count=max_receive_count,
                               visibility_timeout=visibility_timeout,
                               redelivery_backoff=redelivery_backoff, **options)
                return given
            return register
        if type(topic) is not str or not topic:
            raise InvalidArgument(f"topic {topic!r} must be a non-empty string")
        name = queue or getattr(function, "__name__", None)
        if not isinstance(name, str) or not name or name == "<lambda>":
            raise InvalidArgument("name the queue (queue=...) of a function without a name")
        dead = dead_letter_queue or f"{name}-dlq"
        settings = {"visibility_timeout": visibility_timeout,
                    "max_receive_count": max_receive_count, "dead_letter_queue": dead}
        if redelivery_backoff is not None:
            settings["redelivery_backoff"] = redelivery_backoff
        # every mistake is refused now, not when the worker starts
        check_queue_settings(name, QueueSettings(**settings))   # type: ignore[arg-type]
        check_name("dead-letter queue", dead)
        if filter_policy is not None:
            parse_policy(filter_policy, filter_scope)
        elif filter_scope not in SCOPES:
            raise InvalidArgument(f"filter_scope={filter_scope!r} must be one of {SCOPES}")
        self.handler(name, **options)(function)
        self._subscriptions.append(_Subscription(topic, name, dead, filter_policy,
                                                 filter_scope, settings))
        return function

    # -- running -----------------------------------------------------------------------

    def _admin(self) -> Broker | Client:
        if isinstance(self.broker, Broker):
            return self.broker
        return Client(self.broker, **self.client_options)

    def _prepare(self, admin: Broker | Client) -> dict[str, tuple[int | None, float]]:
        """Create the subscriptions' topology; the (max_receive_count, lease) of each queue.

        Raises:
            NotFound: a handler's queue, or a subscription's topic, does not exist.
        """
        for subscription in self._subscriptions:
            if subscription.dead_letter_queue is not None:
                try:
                    admin.create_queue(subscription.dead_letter_queue)
                except AlreadyExists:
                    pass   # it exists with settings of its own: used as it is
            admin.create_queue(subscription.queue, **subscription.queue_settings)
            try:
                admin.subscribe(subscription.topic, subscription.queue,
                                filter_policy=subscription.filter_policy,
                                filter_scope=subscription.filter_scope)
            except NotFound:
                raise NotFound(f"topic {subscription.topic!r} does not exist; create it "
                               f"before the worker subscribes {subscription.queue!r} to "
                               f"it") from None
        queues: dict[str, tuple[int | None, float]] = {}
        for handler in self._handlers.values():
            try:
                settings = admin.queue_settings(handler.queue)
            except NotFound:
                if handler.queue in admin.list_topics():
                    # a queue of that name would get none of the topic's messages
                    raise NotFound(f"{handler.queue!r} of handler {handler.name} is a topic, "
                                   f"not a queue: a handler consumes a queue; subscribe one "
                                   f"to the topic with Worker.subscribe({handler.queue!r}, "
                                   f"{handler.name}) (or fastfanout create-queue QUEUE and "
                                   f"fastfanout subscribe {handler.queue} QUEUE)") from None
                raise NotFound(f"queue {handler.queue!r} of handler {handler.name} does not "
                               f"exist; create it first (fastfanout create-queue "
                               f"{handler.queue}) or use Worker.subscribe") from None
            lease = handler.visibility_timeout or settings.visibility_timeout
            queues[handler.queue] = (settings.max_receive_count, lease)
        return queues

    def start(self) -> Worker:
        """Create the topology, open the connections and start handling; returns at once.

        Raises:
            NotFound: a handler's queue (or a subscription's topic) does not exist.
            BrokenConnection: the broker cannot be reached.
            InvalidArgument: no handler is registered, or the worker ran (or was
                stopped) already.
        """
        if self._started:
            raise InvalidArgument("a worker starts once")
        if self._stopped:   # stop() could not stop what starts after it
            raise InvalidArgument("this worker was stopped before it started; a worker "
                                  "starts once: make a new Worker")
        if not self._handlers:
            raise InvalidArgument("the worker has no handler: register one with "
                                  "@worker.handler(queue) or worker.subscribe(topic, f)")
        if not isinstance(self.broker, Broker):   # a server: fail now if none can be there
            endpoint = self.broker or default_endpoint()
            problem = ipc_problem(endpoint)
            if problem:
                raise BrokenConnection(f"no broker at {endpoint} ({problem}): start one "
                                       f"with fastfanout serve --endpoint {endpoint}")
        admin = self._admin()
        try:
            queues = self._prepare(admin)
        finally:
            if isinstance(admin, Client):
                admin.close()
        with self._lifecycle:   # a stop() from another thread waits for the start
            self._started = True
            try:
                self._start_runners(queues)
            except BaseException:
                self.stop(0.0)
                raise
        log.info("worker started: %s", ", ".join(
            f"{h.name} on {h.queue}" for h in self._handlers.values()))
        return self

    def _start_runners(self, queues: dict[str, tuple[int | None, float]]) -> None:
        endpoint = None if isinstance(self.broker, Broker) else self.broker
        resolved = [h.resolved(self.concurrency, self.processes)
                    for h in self._handlers.values()]
        for handler in resolved:
            if (handler.processes or 1) > 1:
                group = ProcessGroup(handler, endpoint, self.client_options,
                                     self.shutdown_timeout, run_child)
                self._groups.append(group)
        for group in self._groups:
            group.start()
        leases = []
        for handler in resolved:
            if (handler.processes or 1) > 1 or handler.is_async:
                continue
            max_receive_count, lease = queues[handler.queue]
            runner = ThreadRunner(handler, self._source_factory(handler, lease),
                                  max_receive_count, self._stopping)
            self._threads.append(runner)
            leases.append((runner, lease))
            runner.start()
        for runner in self._threads:
            if not runner.started.wait(START_TIMEOUT) or runner.error is not None:
                raise runner.error or TimeoutError("worker connections did not open")
        if leases:
            self._keeper = LeaseKeeper(leases)
            self._keeper.start()
        asyncs = [h for h in resolved if h.is_async and (h.processes or 1) == 1]
        if asyncs:
            self._loop_thread = threading.Thread(
                target=self._run_loop, args=(asyncs, queues), daemon=True,
                name="fastfanout-worker-loop")
            self._loop_thread.start()
            self._loop_ready.wait(START_TIMEOUT)
            if self._loop_error is not None:
                raise self._loop_error
        if self.report_interval is not None and not isinstance(self.broker, Broker):
            pid = os.getpid()
            self._reporter = Reporter(endpoint, self.client_options, self.report_interval,
                                      lambda: worker_report(self.name, pid, self.stats()))
            self._reporter.start()

    def _source_factory(self, handler: Handler, lease: float) -> Callable[[], Source]:
        broker = self.broker
        prefetch = handler.prefetch_for(1)
        if isinstance(broker, Broker):
            return lambda: BrokerSource(broker, handler.queue, prefetch, lease)
        return lambda: ClientSource(broker, self.client_options, handler.queue, prefetch,
                                    lease)

    def _async_source_factory(self, handler: Handler, lease: float
                              ) -> Callable[[], Awaitable[AsyncClientSource | AsyncBrokerSource]]:
        """Opens a new source for an async handler each time it is called."""
        broker = self.broker
        prefetch = handler.prefetch_for(handler.concurrency or 1)

        async def open_source() -> AsyncClientSource | AsyncBrokerSource:
            if isinstance(broker, Broker):
                return await AsyncBrokerSource(broker, handler.queue, prefetch, lease).open()
            return await AsyncClientSource(broker, self.client_options, handler.queue,
                                           prefetch, lease).open()
        return open_source

    def _run_loop(self, handlers: list[Handler],
                  queues: dict[str, tuple[int | None, float]]) -> None:
        try:
            asyncio.run(self._main(handlers, queues))
        finally:
            self._loop_finished.set()

    async def _main(self, handlers: list[Handler],
                    queues: dict[str, tuple[int | None, float]]) -> None:
        self._loop = asyncio.get_running_loop()
        stop = self._loop_stop = asyncio.Event()
        hurry = self._loop_hurry = asyncio.Event()
        runners = []
        for handler in handlers:
            max_receive_count, lease = queues[handler.queue]
            runner = AsyncRunner(handler, self._async_source_factory(handler, lease),
                                 max_receive_count, lease)
            runners.append(runner)
        self._asyncs = runners
        try:
            for runner in runners:
                await runner.open()
        except BaseException as exc:   # raised by start()
            self._loop_error = exc
            self._loop_ready.set()
            for runner in runners:
                await runner.stop(time.monotonic(), hurry)
            return
        self._loop_ready.set()
        watch = self._loop_watch = LoopWatch(self._loop, lambda: [
            f"handler {runner.handler.name}" for runner in runners
            if runner.tally.in_flight])
        watch.start()
        try:
            await asyncio.gather(*(runner.run(stop) for runner in runners))
            deadline = self._stop_deadline   # set by stop() before it set ``stop``
            await asyncio.gather(*(runner.stop(deadline, hurry) for runner in runners))
        finally:
            watch.stop()
        # the stop is done; calls that ignored their cancellation still run on this loop
        # (asyncio.run awaits them before it returns), as a sync call past its timeout
        # keeps its thread: the stop does not wait for them
        self._loop_finished.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: take no more, let running calls finish, nack the rest.

        Called from a handler (a sync handler's thread, or an async handler on the
        worker's event loop), it starts the stop and returns at once: that call then
        finishes and is acked or nacked as usual.

        Args:
            timeout: seconds running calls get (None: ``shutdown_timeout``); calls still
                running then are abandoned and their messages nacked with no delay
                (redelivered at once), as is every message taken and not started.

        Raises:
            InvalidArgument: ``timeout`` is not None nor seconds from 0 to
                ``MAX_SHUTDOWN_TIMEOUT``; nothing is stopped.
        """
        if timeout is not None:
            timeout = check_seconds("timeout", timeout, maximum=MAX_SHUTDOWN_TIMEOUT,
                                    allow_zero=True)
        if self._stopped or not self._started:
            if not self._stopped:
                self._stopped = True
                self._stop_finished.set()
            return
        self._stopped = True
        self._stop_requested.set()   # a run() in another thread returns (once this ends)
        if self._on_own_thread():
            # a handler stopping its worker cannot wait for its own call to end (nor can
            # the event loop join itself): the stop runs in a thread of its own. No
            # thread takes another message from this moment (until 2026-12-07 the others
            # went on taking until that thread got to it: up to 170 more calls)
            deadline = time.monotonic() + (self.shutdown_timeout if timeout is None
                                           else timeout)
            for runner in self._threads:
                runner.stop_deadline = deadline
            self._stopping.set()
            threading.Thread(target=self._stop_and_finish, args=(timeout,), daemon=True,
                             name="fastfanout-worker-stop").start()
            return
        self._stop_and_finish(timeout)

    def _stop_and_finish(self, timeout: float | None) -> None:
        try:
            with self._lifecycle:   # after a start() under way in another thread
                self._stop(timeout)
        finally:
            self._stop_finished.set()

    def _on_own_thread(self) -> bool:
        """True in a thread of this worker's: a sync handler's, or the event loop's."""
        current = threading.current_thread()
        return current is self._loop_thread or any(
            slot.thread is current for runner in self._threads for slot in runner.slots)

    def _stop(self, timeout: float | None) -> None:
        seconds = self.shutdown_timeout if timeout is None else timeout
        deadline = self._stop_deadline = time.monotonic() + seconds
        log.info("worker stopping: running calls get %g s", seconds)
        for runner in self._threads:
            runner.stop_deadline = deadline
        self._stopping.set()
        if self._loop is not None and self._loop_stop is not None:
            self._loop.call_soon_threadsafe(self._loop_stop.set)
        for runner in self._threads:
            for slot in runner.join(deadline, self._hurry):
                runner.abandon(slot, 0.0, "was still running at the shutdown deadline")
                if slot.source is not None:
                    slot.source.close(STOP_GRACE)   # past the deadline already
        if self._keeper is not None:
            self._keeper.stop()
        if self._loop_thread is not None:
            self._loop_finished.wait()
            if not any(runner.abandoned for runner in self._asyncs):
                self._loop_thread.join()
            if self._loop_watch is not None:
                self._loop_watch.join(STOP_GRACE)
        for group in self._groups:
            group.stop(seconds)
        if self._reporter is not None:
            self._reporter.stop(max(STOP_GRACE, deadline - time.monotonic()))
        log.info("worker stopped")

    def stop_now(self) -> None:
        """Stop without waiting for running calls (what a second SIGTERM, SIGINT or SIGHUP does).

        Their messages are nacked with no delay, as at the shutdown deadline; a ``stop()``
        in progress in another thread returns promptly.
        """
        self._hurry.set()
        loop, hurry = self._loop, self._loop_hurry
        if loop is not None and hurry is not None:
            with contextlib.suppress(RuntimeError):   # the loop has ended already
                loop.call_soon_threadsafe(hurry.set)
        for group in self._groups:
            group.hurry()
        self.stop(0.0)

    def request_stop(self) -> None:
        """Ask ``run()`` to stop (what SIGTERM, SIGINT and SIGHUP do); returns at once."""
        self._stop_requested.set()

    def run(self) -> None:
        """Start, run until SIGTERM, SIGINT or SIGHUP (or ``request_stop()``), then stop gracefully.

        A second such signal while it stops is ``stop_now()``. In the main thread it
        installs handlers for SIGTERM, SIGINT and SIGHUP (the previous ones come back
        when it returns; until 2026-12-06 a SIGHUP, the terminal closing, killed it
        without stopping its processes).

        Raises:
            NotFound, BrokenConnection, InvalidArgument: as ``start()``.
        """
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(number: int, frame: FrameType | None) -> None:
                if self._stop_requested.is_set():
                    log.warning("worker got %s again: running calls are not waited for",
                                signal.Signals(number).name)
                    self.stop_now()
                    return
                log.info("worker got %s", signal.Signals(number).name)
                self._stop_requested.set()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous[signum] = signal.signal(signum, on_signal)
        try:
            self.start()
            while not self._stop_requested.wait(0.5):
                if self._dead() and not self._stopped:
                    log.error("every worker thread stopped (is the broker gone?)")
                    break
        finally:
            self.stop()
            self._stop_finished.wait()   # another thread's stop() may still be running
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _dead(self) -> bool:
        """True when nothing runs any more (every thread ended on its own)."""
        threads = [slot.thread for runner in self._threads for slot in runner.slots]
        alive = any(t is not None and t.is_alive() for t in threads)
        loop = self._loop_thread is not None and self._loop_thread.is_alive()
        return bool(threads or self._loop_thread) and not (alive or loop or self._groups)

    def stats(self) -> WorkerStats:
        """Every handler's counters and handler times (see ``HandlerStats``).

        Stats are kept after ``stop()``.
        """
        handlers = {}
        for runner in self._threads:
            handlers[runner.handler.name] = runner.stats()
        for async_runner in self._asyncs:
            handlers[async_runner.handler.name] = async_runner.stats()
        for group in self._groups:
            handlers[group.handler.name] = group.stats()
        return WorkerStats(handlers=handlers,
                           restarts=sum(group.restarts for group in self._groups))

    @property
    def pids(self) -> list[int]:
        """The process ids of the worker processes (``processes`` > 1)."""
        return [pid for group in self._groups for pid in group.pids]

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

