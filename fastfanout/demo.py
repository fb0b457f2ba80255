"""The fan-out demo: a broker process, a producer process and three consumer processes.

Run it with ``python -m fastfanout.demo`` (README: ``bash ci/demo.sh``). It starts
``fastfanout serve`` on the default per-user ipc endpoint (or ``--endpoint``), creates one
topic ``orders`` fanning out to ``billing``, ``shipping`` and ``audit``, then a producer
publishes and three consumer processes, each a ``fastfanout.Worker`` running one handler
on push delivery, consume. ``billing`` and ``shipping`` return (the worker acks); the
``audit`` handler raises on every message (the worker nacks it), so after
``max_receive_count`` deliveries each lands in ``audit-dlq``. The demo prints what each
process did and the queue counters, reads one dead letter, redrives, and stops every
process it started (SIGTERM, then SIGKILL past a deadline). Its broker keeps its data in
a temporary directory removed at the end, so every run starts from an empty broker.
``--embedded`` runs the old single-process version on an in-process ``Broker``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fastfanout.interrupts import (
    resource_tracker_deaf_to_hangups,
    sigterm_as_interrupt,
    start_process,
)

__all__ = ["main", "run_embedded", "run_processes"]

_DESCRIPTION = (__doc__ or "").replace("``", "")
"""The module's story as ``--help`` prints it (no reStructuredText quotes)."""

TOPIC = "orders"
QUEUES = ("billing", "shipping", "audit")
FAILING_QUEUE = "audit"
DEADLINE = 60.0


def _handle(message: Any) -> None:
    """The handler of ``billing`` and ``shipping``: the work is done, the message acked."""


def _fail(message: Any) -> None:
    """The handler of ``audit``: it raises, so the worker nacks until the DLQ takes it."""
    raise RuntimeError(f"audit is down; message {message.id} is nacked")


def _consume_process(endpoint: str, queue: str, expected: int, fail: bool,
                     results: Any) -> None:
    """A consumer process: a ``fastfanout.Worker`` running one handler on ``queue``.

    It stops (gracefully) once ``expected`` messages were acked or, for the failing
    queue, dead-lettered.
    """
    import logging

    from fastfanout.client import connect
    from fastfanout.workers import Worker

    # the audit failures are the demo's point: one log line each would drown it
    logging.getLogger("fastfanout.worker").setLevel(logging.CRITICAL)
    worker = Worker(endpoint, concurrency=2, shutdown_timeout=5.0)
    worker.handler(queue, prefetch=200, visibility_timeout=5.0)(_fail if fail else _handle)
    name = (_fail if fail else _handle).__name__
    with connect(endpoint) as client, worker:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if fail:
                if client.stats().queues[queue].dead_lettered >= expected:
                    break
            elif worker.stats().handlers[name].processed >= expected:
                break
            time.sleep(0.05)
    stats = worker.stats().handlers[name]
    results.put((queue, os.getpid(), stats.processed, stats.failed))


def _produce_process(endpoint: str, messages: int, results: Any) -> None:
    """The producer process: pipelined publishes, batched by the client."""
    from fastfanout.client import connect

    started = time.perf_counter()
    with connect(endpoint) as client:
        futures = [client.publish_nowait(TOPIC, f"order {n}".encode(),
                                         attributes={"n": n} if n % 1000 == 0 else None)
                   for n in range(messages)]
        client.flush()
        deliveries = sum(future.result().deliveries for future in futures)
    results.put(("producer", os.getpid(), deliveries, time.perf_counter() - started))


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def _stop_children(children: list[Any], interrupted: bool, timeout: float = 5.0) -> None:
    """Wait for the demo's children to end, all within one ``timeout``, then kill the rest.

    Interrupted, each is sent SIGTERM first (it would wait for messages, or its report),
    all at once: one at a time, each waiting its turn, a stop could outlast a service
    manager's patience (four children, five seconds each).
    """
    started = [child for child in children if child.pid is not None]   # None: its
    if interrupted:                               # start() was interrupted, it exits alone
        for child in started:
            if child.is_alive():
                child.terminate()
    deadline = time.monotonic() + timeout
    for child in started:
        child.join(timeout=max(0.0, deadline - time.monotonic()))
    for child in started:
        if child.is_alive():
            child.kill()
    for child in started:
        child.join(timeout=timeout)


def run_processes(messages: int, endpoint: str | None, console: Console) -> int:
    """Run the demo across processes; returns the exit status."""
    from fastfanout.client import connect
    from fastfanout.errors import FastFanoutError
    from fastfanout.runtime import default_endpoint

    endpoint = endpoint or default_endpoint()
    # The demo creates its topology on a broker of its own: one that already serves the
    # endpoint may hold queues of the same names (or someone's real work).
    try:
        with connect(endpoint, timeout=0.5, local_channel=False) as running:
            running.server_stats()
    except FastFanoutError:
        pass   # nobody serves it: start ours
    else:
        console.print(
            f"[red]a broker already serves {endpoint}[/red]: stop it (the demo runs its own "
            f"broker), or give the demo another endpoint, e.g. "
            f"--endpoint ipc:///tmp/fastfanout-demo.sock", soft_wrap=True)   # one line
        return 1
    data_dir = tempfile.mkdtemp(prefix="fastfanout-demo-")
    broker = subprocess.Popen(
        [sys.executable, "-m", "fastfanout", "serve", "--endpoint", endpoint,
         "--data-dir", data_dir, "--log-level", "WARNING"])
    context = multiprocessing.get_context("spawn")
    resource_tracker_deaf_to_hangups()   # the children start it: SIGHUP stops us cleanly
    children: list[Any] = []
    finished = False
    try:
        deadline = time.monotonic() + 15.0
        client = None
        while client is None:
            if broker.poll() is not None:
                console.print(f"[red]the broker exited with status {broker.returncode}[/red]")
                return 1
            try:
                client = connect(endpoint, timeout=0.5)
            except FastFanoutError:
                if time.monotonic() > deadline:
                    raise
        console.print(f"[bold]fastfanout demo[/bold]: broker pid {broker.pid} on {endpoint}")
        with client:
            client.create_queue(f"{FAILING_QUEUE}-dlq")
            client.create_topic(TOPIC)
            for queue in QUEUES:
                failing = queue == FAILING_QUEUE
                client.create_queue(queue, max_receive_count=3 if failing else None,
                                    dead_letter_queue=f"{FAILING_QUEUE}-dlq" if failing else None)
                client.subscribe(TOPIC, queue)
            results = context.Queue()
            started = time.perf_counter()
            for queue in QUEUES:
                children.append(context.Process(
                    target=_consume_process, name=f"consumer-{queue}",
                    args=(endpoint, queue, messages, queue == FAILING_QUEUE, results)))
            children.append(context.Process(target=_produce_process, name="producer",
                                            args=(endpoint, messages, results)))
            for child in children:
                start_process(child)
            reports = []
            for _ in children:
                reports.append(results.get(timeout=DEADLINE))
            elapsed = time.perf_counter() - started
            for name, pid, first, second in sorted(reports, key=lambda r: str(r[0])):
                if name == "producer":
                    console.print(f"  producer  (pid {pid}): {messages} messages -> "
                                  f"{first} queue copies in {second * 1000:.0f} ms")
                elif name == FAILING_QUEUE:
                    console.print(f"  {name:9} (pid {pid}): nacked {second} deliveries "
                                  f"(failing consumer)")
                else:
                    console.print(f"  {name:9} (pid {pid}): acked {first}")
            console.print(f"all processes done in {elapsed * 1000:.0f} ms")
            server = client.server_stats()
            console.print(f"transport: {server.get('local_channels', 0)} of "
                          f"{server.get('sessions', 0)} connections on local channels "
                          f"(shared memory)")
            _report(client, console)
        finished = True
        return 0
    finally:
        _stop_children(children, interrupted=not finished)
        _stop(broker)
        shutil.rmtree(data_dir, ignore_errors=True)
        console.print(f"broker stopped (exit status {broker.returncode}); its data "
                      f"directory removed")


def _report(broker: Any, console: Console) -> None:
    stats = broker.stats()
    # Short headers and a queue column that never wraps or cuts: fits 80 columns.
    table = Table(title="queues after the run", box=box.SIMPLE_HEAD, padding=(0, 1),
                  pad_edge=False)
    table.add_column("queue", no_wrap=True, min_width=max(map(len, stats.queues), default=5))
    for column in ("enqueued", "delivered", "acked", "redeliv.", "dead", "visible", "leased"):
        table.add_column(column, justify="right")
    for name, queue in stats.queues.items():
        table.add_row(name, str(queue.enqueued), str(queue.delivered), str(queue.acked),
                      str(queue.redelivered), str(queue.dead_lettered), str(queue.visible),
                      str(queue.leased))
    console.print(table)
    dead = broker.receive(f"{FAILING_QUEUE}-dlq", max_messages=1, visibility_timeout=1.0)
    if dead and dead[0].dead_letter is not None:
        info = dead[0].dead_letter
        console.print(
            f"dead letter: message {dead[0].id} {dead[0].body!r} from {info.source_queue!r}, "
            f"reason {info.reason!r} after {info.receive_count} deliveries")
    if dead:
        broker.nack(dead[0].receipt)
    moved = broker.redrive(f"{FAILING_QUEUE}-dlq")
    console.print(f"redrive moved {moved} messages back to {FAILING_QUEUE!r}")


def _consume_thread(broker: Any, queue: str, expected: int, fail: bool) -> None:
    settled = 0
    deadline = time.monotonic() + DEADLINE
    while settled < expected and time.monotonic() < deadline:
        messages = broker.receive(queue, max_messages=50, wait=0.2, visibility_timeout=5.0)
        if fail:
            for message in messages:
                broker.nack(message.receipt)
            settled = broker.stats().queues[queue].dead_lettered
        else:
            broker.ack_batch([message.receipt for message in messages])
            settled += len(messages)


def run_embedded(messages: int, console: Console) -> Any:
    """Run the demo in this process with one consumer thread per queue; returns the broker."""
    from fastfanout.broker.embedded import Broker

    broker = Broker()
    broker.create_queue(f"{FAILING_QUEUE}-dlq")
    broker.create_topic(TOPIC)
    for queue in QUEUES:
        failing = queue == FAILING_QUEUE
        broker.create_queue(queue, max_receive_count=3 if failing else None,
                            dead_letter_queue=f"{FAILING_QUEUE}-dlq" if failing else None)
        broker.subscribe(TOPIC, queue)
    threads = [threading.Thread(target=_consume_thread,
                                args=(broker, queue, messages, queue == FAILING_QUEUE))
               for queue in QUEUES]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    bodies = [f"order {n}".encode() for n in range(messages)]
    for start in range(0, messages, 1000):
        broker.publish_batch(TOPIC, bodies[start:start + 1000])
    for thread in threads:
        thread.join(timeout=DEADLINE)
    console.print(f"published {messages} messages to topic {TOPIC!r} -> {len(QUEUES)} queues "
                  f"in {(time.perf_counter() - started) * 1000:.1f} ms")
    return broker


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastfanout.demo``."""
    parser = argparse.ArgumentParser(prog="python -m fastfanout.demo",
                                     description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="messages to publish")
    parser.add_argument("--endpoint", default=None, help="broker endpoint (default: per user)")
    parser.add_argument("--embedded", action="store_true",
                        help="one process, an in-process Broker and consumer threads")
    args = parser.parse_args(argv)
    # lines as long as they are: not cut at 80 columns when the output is no terminal
    console = Console(soft_wrap=True)
    if args.embedded:
        console.print("[bold]fastfanout demo[/bold]: embedded broker, consumer threads")
        broker = run_embedded(args.messages, console)
        _report(broker, console)
        broker.close()
        return 0
    try:
        # SIGTERM ends the demo as Ctrl-C does: Python's default dies at once and would
        # leave its broker (on the user's endpoint) and its children running, orphaned
        with sigterm_as_interrupt():
            return run_processes(args.messages, args.endpoint, console)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: what it started is stopped already
        print("aborted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
