"""Child processes of the benchmarks: a broker process, and stopping with deadlines.

Every child is started with the ``spawn`` method (a fresh interpreter, no inherited
threads or sockets), every wait on one has a deadline, and whatever is still alive at
the end is terminated, then killed (``stop_processes``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastfanout.interrupts import start_process

START_DEADLINE = 30.0
"""Seconds a broker process or a benchmark child may take to start answering."""
START_ATTEMPTS = 3
"""Brokers started on fresh tcp ports before giving up: a port picked free can be taken
by another program before the broker binds it."""
JOIN_DEADLINE = 10.0
"""Seconds each process is given to exit, then to die after SIGTERM, then SIGKILL."""
MAX_REQUEST_BYTES = 65 * 1024 * 1024
"""The benchmark broker's ``max_request_bytes``: a publish call of
``payload.MAX_BATCH_BYTES`` of bodies (four of the largest, 16 MiB, messages) with its
framing (the default, 64 MiB, would refuse it)."""


SOCKET_PATH_ROOM = 40
"""Bytes a benchmark's socket directory leaves for the names in it (``ff.sock.stream``,
``pull12.3``): libzmq's ipc paths hold at most ``zmq.IPC_PATH_MAX_LEN`` (107) bytes."""


@contextmanager
def socket_directory(prefix: str) -> Iterator[str]:
    """A temporary directory for ipc sockets, removed at the end.

    Under ``$TMPDIR`` as any temporary directory; under ``/tmp`` when that leaves less
    than ``SOCKET_PATH_ROOM`` bytes of libzmq's path limit (a long ``TMPDIR``: a bench
    there failed to bind its broker's stream socket).
    """
    import zmq

    base = None
    if len(os.path.join(tempfile.gettempdir(), prefix + "x" * 8)) + SOCKET_PATH_ROOM \
            > zmq.IPC_PATH_MAX_LEN and os.path.isdir("/tmp"):
        base = "/tmp"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as directory:
        yield directory


def spawn() -> Any:
    """The multiprocessing context of every benchmark child (``spawn``)."""
    return mp.get_context("spawn")


def serve_broker(endpoint: str, data_dir: str | None = None, fsync: str = "always",
                 deliver_by_reference: bool = True) -> None:
    """A broker process's target: serve ``endpoint`` with the default settings.

    Requests are answered up to MAX_REQUEST_BYTES (a publish call of the largest batch).

    Args:
        endpoint: ``ipc://PATH`` or ``tcp://127.0.0.1:PORT``.
        data_dir: a directory for durable storage (``Broker(data_dir=...)``), or None for
            a memory-only broker.
        fsync: the durable broker's fsync policy (``always``: a publish is confirmed once
            on disk; ``interval``, ``never``).
        deliver_by_reference: the server setting (docs/arrays.md, "Deliveries by
            reference").
    """
    from fastfanout import Broker
    from fastfanout.server.loop import serve

    if data_dir is None:
        serve(endpoint, max_request_bytes=MAX_REQUEST_BYTES,
              deliver_by_reference=deliver_by_reference)
    else:
        serve(endpoint, broker=Broker(data_dir=data_dir, fsync=fsync),
              max_request_bytes=MAX_REQUEST_BYTES, deliver_by_reference=deliver_by_reference)


def connect_when_up(endpoint: str, broker: Any, **options: Any) -> Any:
    """A client of the broker process ``broker`` once it answers (START_DEADLINE at most).

    Raises:
        RuntimeError: the broker process exited.
        FastFanoutError: it did not answer within START_DEADLINE seconds.
    """
    from fastfanout.client import connect
    from fastfanout.errors import FastFanoutError

    deadline = time.monotonic() + START_DEADLINE
    while True:
        if not broker.is_alive():
            raise RuntimeError(f"the broker exited with {broker.exitcode}")
        try:
            return connect(endpoint, timeout=0.5, **options)
        except FastFanoutError:
            if time.monotonic() > deadline:
                raise


def stop_processes(processes: list[Any], deadline: float = JOIN_DEADLINE) -> None:
    """Join each process (``deadline`` s), then terminate, then kill what is still alive."""
    for process in processes:
        if process.pid is not None:
            process.join(deadline)
    for process in processes:
        if process.pid is None:
            continue
        if process.is_alive():
            process.terminate()
            process.join(deadline)
        if process.is_alive():
            process.kill()
            process.join(deadline)


def free_tcp_endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` where nothing listens on PORT and PORT + 1 now.

    PORT + 1 is a broker's stream endpoint (``fastfanout.server.loop.serve``); both are
    below the kernel's range of outgoing ports where it can be read (``free_port``).
    """
    from fastfanout.bench.servers import free_port

    return f"tcp://127.0.0.1:{free_port(2)}"


@contextmanager
def broker_process(transport: str = "ipc", data_dir: str | None = None,
                   fsync: str = "always", deliver_by_reference: bool = True
                   ) -> Iterator[tuple[str, Any]]:
    """A broker process on a fresh endpoint, serving once it answers: (endpoint, process).

    Args:
        transport: ``ipc`` (and ``local``: the same socket, the clients then attach local
            channels) or ``tcp`` (127.0.0.1, a free port).
        data_dir: passed to the broker (durable storage), or None.
        fsync: the durable broker's fsync policy (with ``data_dir``).
        deliver_by_reference: the broker's setting of that name.

    Terminated (and reaped) on exit, and its temporary directory removed.
    """
    with socket_directory("ffbench-") as directory:
        for attempt in range(1, START_ATTEMPTS + 1):
            if transport == "tcp":
                endpoint = free_tcp_endpoint()
            else:
                endpoint = f"ipc://{os.path.join(directory, 'ff.sock')}"
            broker = spawn().Process(
                target=serve_broker, args=(endpoint, data_dir, fsync, deliver_by_reference))
            start_process(broker)
            try:
                client = connect_when_up(endpoint, broker)
            except RuntimeError:
                # exited before answering: on tcp, a port taken since it was picked
                stop_processes([broker])
                if transport != "tcp" or attempt == START_ATTEMPTS:
                    raise
                continue
            except BaseException:
                broker.terminate()
                stop_processes([broker])
                raise
            client.close()
            break
        try:
            yield endpoint, broker
        finally:
            broker.terminate()
            stop_processes([broker])
