"""An HTTP endpoint serving a broker's metrics to Prometheus (``serve_metrics``).

Prometheus scrapes ``http://HOST:PORT/metrics``; each scrape reads the broker once
(``BrokerCollector``). The server is ``prometheus_client``'s, in a daemon thread.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from fastfanout.errors import BrokenConnection, InvalidArgument
from fastfanout.metrics.families import BrokerCollector
from fastfanout.runtime import ipc_problem

if TYPE_CHECKING:
    from fastfanout.client import Client
    from fastfanout.stats import BrokerStats
    from fastfanout.transport.sockets import CurveKeys

__all__ = ["DEFAULT_METRICS_ADDRESS", "MetricsServer", "ServedBroker", "exposition",
           "parse_address", "serve_metrics"]

DEFAULT_METRICS_ADDRESS: Final = "127.0.0.1:9771"
"""Where ``fastfanout metrics`` listens unless told: loopback only (the endpoint has no
authentication; give ``0.0.0.0:PORT`` to let other hosts scrape it)."""


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any free port) as (host, port).

    Raises:
        InvalidArgument: not HOST:PORT with a port of 0 to 65535.
    """
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"metrics address {address!r} must be HOST:PORT (port 0 to "
                              f"65535), e.g. {DEFAULT_METRICS_ADDRESS}")
    return host, int(port)


def _registry(collector: BrokerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(source: Any) -> bytes:
    """``source``'s metrics once, in Prometheus's text format.

    What ``fastfanout stats --prometheus`` prints (node_exporter's textfile collector
    reads such files).

    Raises:
        FastFanoutError: the broker did not answer (``BrokenConnection``, say).
    """
    return generate_latest(_registry(BrokerCollector(source, raise_errors=True)))


class MetricsServer:
    """A running metrics endpoint (``serve_metrics``); ``close()`` stops it."""

    def __init__(self, source: Any, host: str, port: int) -> None:
        """Listen on ``host``:``port`` (OSError when it cannot) for ``source``'s metrics."""
        self._server, self._thread = start_http_server(port, host,
                                                       _registry(BrokerCollector(source)))
        self.host = host
        self.port: int = self._server.server_address[1]
        """The port it listens on (the one picked when asked for port 0)."""

    @property
    def url(self) -> str:
        """Where Prometheus scrapes: ``http://HOST:PORT/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop listening; a scrape under way ends first. Idempotent."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        """The server itself (``with serve_metrics(...) as server``)."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop it (``close()``)."""
        self.close()


def serve_metrics(source: Any, address: str = DEFAULT_METRICS_ADDRESS) -> MetricsServer:
    """Serve ``source``'s metrics at ``http://ADDRESS/metrics`` until ``close()``.

    ``source`` is an embedded ``Broker`` or a blocking ``Client``; the endpoint runs in
    a daemon thread.

    Raises:
        InvalidArgument: ``address`` is not HOST:PORT.
        OSError: it cannot listen there (the port is taken, say).
    """
    host, port = parse_address(address)
    return MetricsServer(source, host, port)


class ServedBroker:
    """A broker server read through a client of its own, made when the broker answers.

    What ``fastfanout serve --metrics`` scrapes: the endpoint listens before the broker
    binds (so a taken port fails the start, before anything else), and scrapes read
    ``fastfanout_up 0`` until the server calls ``attach`` once bound; the client is made
    at the first scrape after that, when the server's loop answers it.

    What ``fastfanout metrics`` scrapes too, attached at once: a broker that is not
    there yet (the exporter started first) reads ``fastfanout_up 0``, and each scrape
    tries again until one answers; from then on the client reconnects by itself.
    """

    def __init__(self, endpoint: str) -> None:
        """Read the broker at ``endpoint`` once attached."""
        self.endpoint = endpoint
        self._curve: CurveKeys | None = None
        self._attached = False
        self._closed = False
        self._client: Client | None = None
        self._lock = threading.Lock()

    def attach(self, curve: CurveKeys | None) -> None:
        """The server is bound: connect at the next scrape (with ``curve``, if given)."""
        with self._lock:
            self._curve = curve
            self._attached = True

    def _connected(self) -> Client:
        from fastfanout.client import Client

        with self._lock:
            if not self._attached or self._closed:
                raise BrokenConnection(f"the broker at {self.endpoint} is not serving")
            if self._client is None:
                # no socket file, or nothing listens on it: say so at once, not after
                # the handshake's timeout (a scrape while the broker is down)
                problem = ipc_problem(self.endpoint)
                if problem is not None:
                    raise BrokenConnection(f"no broker at {self.endpoint} ({problem})")
                self._client = Client(self.endpoint, curve=self._curve, timeout=5.0)
            return self._client

    def stats(self) -> BrokerStats:
        """The broker's ``stats()``."""
        return self._connected().stats()

    def server_stats(self) -> dict[str, Any]:
        """The server's ``server_stats()``."""
        return self._connected().server_stats()

    def worker_stats(self) -> list[dict[str, Any]]:
        """The workers' reports (``worker_stats()``)."""
        return self._connected().worker_stats()

    def close(self) -> None:
        """Close the client (scrapes read ``fastfanout_up 0`` from now on). Idempotent."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close(timeout=1.0)
