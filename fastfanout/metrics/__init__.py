"""Prometheus metrics of a broker: its statistics as metric families, and an endpoint.

- ``BrokerCollector(broker_or_client)``: a ``prometheus_client`` collector; register it
  with an application's own registry to expose an embedded broker next to its metrics;
- ``serve_metrics(source, "127.0.0.1:9771")``: an HTTP endpoint of its own;
- ``exposition(source)``: the text format once.

``fastfanout metrics`` runs the endpoint for a broker server, as an exporter beside it;
``fastfanout stats --prometheus`` prints the text once. docs/metrics.md lists the names.
"""

from fastfanout.metrics.exporter import (
    DEFAULT_METRICS_ADDRESS,
    MetricsServer,
    ServedBroker,
    exposition,
    parse_address,
    serve_metrics,
)
from fastfanout.metrics.families import PREFIX, SERVER_GAUGES, BrokerCollector

__all__ = ["DEFAULT_METRICS_ADDRESS", "PREFIX", "SERVER_GAUGES", "BrokerCollector",
           "MetricsServer", "ServedBroker", "exposition", "parse_address", "serve_metrics"]
