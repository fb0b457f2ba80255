"""A broker's statistics as Prometheus metric families (``BrokerCollector``).

One scrape reads the broker's counters once (``stats()``; for a client also
``server_stats()`` and ``worker_stats()``) and turns every number into a sample:

- ``fastfanout_topic_*{topic}``, ``fastfanout_subscription_*{subscription,topic,queue}``,
  ``fastfanout_queue_*{queue}`` (``QueueStats``'s ``dropped`` map as
  ``fastfanout_queue_dropped_total{queue,reason}``), ``fastfanout_topology_*``,
  ``fastfanout_storage_*`` (a durable broker), ``fastfanout_replies_*`` (an embedded
  broker's own requests);
- through a client, the server's: ``fastfanout_server_*`` (``error.<code>`` as
  ``fastfanout_server_errors_total{code}``), ``fastfanout_connection_*{connection}``,
  ``fastfanout_bridge_*{rule}`` and ``fastfanout_handler_*{worker,pid,handler,queue}``;
- ``fastfanout_up``: 1 when the broker answered the scrape, 0 when it did not (then
  nothing else but ``fastfanout_scrape_failures_total``, which counts such scrapes).

A counter that only grows is a Prometheus counter (its name ends in ``_total``); a level
(messages held now, bytes, a limit, an age) is a gauge. Each help text is the field's own
documentation in ``fastfanout.stats`` (the server's, connections', bridge rules' and
handlers' name the page that documents them). The names are the stats' field names, so
docs/semantics.md and docs/protocol.md say what each one means.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fastfanout.errors import FastFanoutError
from fastfanout.stats import (
    HANDLER_COUNTERS,
    HANDLER_TIMES,
    QueueStats,
    ReplyStats,
    SubscriptionStats,
    TopicStats,
    TopologyStats,
)

__all__ = ["PREFIX", "SERVER_GAUGES", "BrokerCollector"]

PREFIX: Final = "fastfanout_"
"""Every metric's name begins with this."""

_TOPIC_GAUGES: Final = frozenset({"subscriptions", "dedup_entries", "fifo", "content_dedup"})
_QUEUE_GAUGES: Final = frozenset({"dedup_entries", "groups", "visible", "leased", "delayed",
                                  "messages", "bytes", "oldest_age"})
_TOPOLOGY_GAUGES: Final = frozenset({"topics", "queues", "subscriptions", "max_topics",
                                     "max_queues", "max_subscriptions_per_topic",
                                     "pattern_subscriptions", "max_pattern_subscriptions"})
_STORAGE_GAUGES: Final = frozenset({"journal_bytes", "segments", "records", "buffered_bytes",
                                    "written_seq", "synced_seq", "dedup_snapshot_bytes",
                                    "max_disk_bytes", "fsync_interval", "reserve_bytes"})
SERVER_GAUGES: Final = frozenset({
    "connections", "ended_sessions", "consumers", "long_polls", "held", "held_bytes",
    "stream_subscriptions", "stream_listener_peers", "stream_topics", "held_receipts",
    "accepting", "local_sessions", "local_backlog_bytes", "local_backlog_peak_bytes",
    "local_pinned_frames", "local_lingering_rings",
    "blob_slab_live_bytes", "blob_slab_kept_bytes", "blob_slab_mapped_bytes",
    "blob_big_pool_bytes", "bodies_in_place_frames", "gc_frozen"})
"""The SERVER_STATS keys that are levels (docs/protocol.md: "now"); every other number
there only grows and is exported as a counter."""
_CONNECTION_GAUGES: Final = frozenset({"consumers"})
_BRIDGE_GAUGES: Final = frozenset({"rate", "lag", "in_flight", "connected"})
_HANDLER_GAUGES: Final = frozenset({"in_flight", "processes"})
_ERROR_PREFIX: Final = "error."
_NOT_A_NAME: Final = re.compile(r"[^a-zA-Z0-9_]")


def _field_help(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s docstring: field name -> its text."""
    doc = inspect.getdoc(cls) or ""
    helps: dict[str, str] = {}
    name = None
    inside = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            name = match.group(1)
            helps[name] = match.group(2).strip()
        elif line.startswith("        ") and name is not None:
            helps[name] += " " + line.strip()
        elif line.strip():
            break
    return helps


_RECORDS: Final = (TopicStats, SubscriptionStats, QueueStats, TopologyStats, ReplyStats)
_HELP: Final = {cls: _field_help(cls) for cls in _RECORDS}
_FIELDS: Final = {cls: tuple(field.name for field in dataclasses.fields(cls))
                  for cls in _RECORDS}


class _Families:
    """Metric families by name, made on first use, kept in order of first use.

    A scrape of a broker with many queues adds a sample per field and queue, so the
    per-sample path only looks its family up by the unprefixed name.
    """

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def _family(self, name: str, help_text: str, gauge: bool, labels: Iterable[str]
                ) -> GaugeMetricFamily | CounterMetricFamily:
        family = (GaugeMetricFamily if gauge else CounterMetricFamily)(
            PREFIX + _NOT_A_NAME.sub("_", name), help_text, labels=list(labels))
        self._families[name] = family
        return family

    def add(self, name: str, help_text: str, gauge: bool, labels: dict[str, str],
            value: float) -> None:
        """One sample of family ``name`` (``fastfanout_`` prefixed, made if new)."""
        family = self._families.get(name) or self._family(name, help_text, gauge, labels)
        family.add_metric(list(labels.values()), value)

    def numbers(self, group: str, values: dict[str, Any], gauges: frozenset[str],
                labels: dict[str, str], helps: dict[str, str] | None = None,
                what: str = "") -> None:
        """One sample per number of ``values`` (bools as 0/1); maps and texts skipped."""
        label_values = list(labels.values())
        families = self._families
        for key, value in values.items():
            kind = type(value)
            if kind is bool:
                value = int(value)
            elif kind is not int and kind is not float:
                continue
            name = f"{group}_{key}"
            family = families.get(name)
            if family is None:
                help_text = (helps or {}).get(key) or f"{key} of {what or group} (fastfanout)"
                family = self._family(name, help_text, key in gauges, labels)
            family.add_metric(label_values, value)

    def stats(self, group: str, record: Any, gauges: frozenset[str],
              labels: dict[str, str]) -> None:
        """A ``fastfanout.stats`` record's numbers, and its ``dropped`` map by reason."""
        helps = _HELP[type(record)]
        values = {name: getattr(record, name) for name in _FIELDS[type(record)]}
        self.numbers(group, values, gauges, labels, helps)
        for reason, count in (values.get("dropped") or {}).items():
            self.add(f"{group}_dropped",
                     helps.get("dropped", "dropped").replace("reason -> ", "by reason: "),
                     False, {**labels, "reason": reason}, count)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class BrokerCollector(Collector):
    """A Prometheus collector of one broker's statistics (see the module's docstring).

    ``source`` is an embedded ``fastfanout.Broker`` or a blocking ``fastfanout.Client``
    (through which the server's own counters, its connections', its bridge's and its
    workers' come too). Register it with a ``prometheus_client`` registry (an
    application's own ``/metrics``), or serve it with ``fastfanout.metrics.serve_metrics``
    or ``fastfanout metrics``. Each scrape reads the broker once, under this collector's
    lock (scrapes may come from several threads). A broker that does not answer (a
    client whose broker is gone: ``BrokenConnection``, ``CallTimeout``) makes the scrape
    ``fastfanout_up 0`` and counts it, rather than fail it.
    """

    def __init__(self, source: Any, *, raise_errors: bool = False) -> None:
        """Collect ``source``'s statistics (an embedded ``Broker`` or a ``Client``).

        With ``raise_errors`` a broker that does not answer fails the scrape with its
        error (a one-off read, as ``fastfanout stats --prometheus``), instead of
        ``fastfanout_up 0``.
        """
        if not callable(getattr(source, "stats", None)):
            raise TypeError(f"BrokerCollector needs a fastfanout Broker or Client, not "
                            f"{type(source).__name__}")
        self.source = source
        self.raise_errors = raise_errors
        self.scrape_failures = 0
        """Scrapes the broker did not answer (``fastfanout_scrape_failures_total``)."""
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        """The families of one scrape (``prometheus_client`` calls this)."""
        families = _Families()
        with self._lock:
            try:
                self._read(families)
                up = 1
            except FastFanoutError:
                if self.raise_errors:
                    raise
                families = _Families()
                self.scrape_failures += 1
                up = 0
            families.add("up", "1 when the broker answered this scrape, 0 when it did not",
                         True, {}, up)
            families.add("scrape_failures", "scrapes the broker did not answer", False, {},
                         self.scrape_failures)
        return families

    def _read(self, families: _Families) -> None:
        source = self.source
        stats = source.stats()
        for name, topic in stats.topics.items():
            families.stats("topic", topic, _TOPIC_GAUGES, {"topic": name})
        for sid, subscription in stats.subscriptions.items():
            families.stats("subscription", subscription, frozenset(),
                           {"subscription": str(sid), "topic": subscription.topic,
                            "queue": subscription.queue})
        for name, queue in stats.queues.items():
            families.stats("queue", queue, _QUEUE_GAUGES, {"queue": name})
        families.stats("topology", stats.topology, _TOPOLOGY_GAUGES, {})
        if stats.storage is not None:
            families.numbers("storage", stats.storage, _STORAGE_GAUGES, {},
                             what="the broker's storage (docs/storage.md)")
            families.numbers("storage_recovery", stats.storage.get("recovery") or {},
                             frozenset({"records", "bytes", "seconds", "messages",
                                        "orphan_records"}), {},
                             what="the broker's last start (docs/storage.md)")
        server_stats = getattr(source, "server_stats", None)
        if server_stats is None:   # an embedded broker: its own requests
            families.stats("replies", stats.replies, frozenset(), {})
            return
        self._read_server(families, server_stats(), source.worker_stats())

    @staticmethod
    def _read_server(families: _Families, server: dict[str, Any],
                     reports: list[dict[str, Any]]) -> None:
        what = "the broker server (SERVER_STATS, docs/protocol.md)"
        errors = {key: value for key, value in server.items()
                  if key.startswith(_ERROR_PREFIX)}
        families.numbers("server", {key: value for key, value in server.items()
                                    if key not in errors}, SERVER_GAUGES, {}, what=what)
        for key, count in errors.items():
            families.add("server_errors", "ERROR replies, by error code", False,
                         {"code": key[len(_ERROR_PREFIX):]}, count)
        for connection, counters in (server.get("connection_stats") or {}).items():
            counters = {key: value for key, value in counters.items()
                        if key != "owner"}   # a tag, not a quantity
            families.numbers("connection", counters, _CONNECTION_GAUGES,
                             {"connection": connection},
                             what="a connection's session (docs/protocol.md)")
        for rule, values in (server.get("bridge") or {}).items():
            families.numbers("bridge", values, _BRIDGE_GAUGES, {"rule": rule},
                             what="a bridge rule (docs/bridge.md)")
        # Reports of one worker name, pid and handler (two Worker objects of one process,
        # say) are one series: their counters summed, their times the longest.
        handlers: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for report in reports:
            for handler, counters in report.get("handlers", {}).items():
                series = (report["worker"], str(report["pid"]), handler, counters["queue"])
                numbers = handlers.setdefault(series, dict.fromkeys(HANDLER_COUNTERS, 0))
                for name in HANDLER_COUNTERS:
                    numbers[name] += counters[name]
                for name in HANDLER_TIMES:
                    if counters.get(name) is not None:
                        seconds = f"{name}_seconds"
                        numbers[seconds] = max(numbers.get(seconds, 0.0), counters[name])
        for (worker, pid, handler, queue), numbers in handlers.items():
            families.numbers("handler", numbers, _HANDLER_GAUGES | {
                f"{name}_seconds" for name in HANDLER_TIMES},
                {"worker": worker, "pid": pid, "handler": handler, "queue": queue},
                what="a worker's handler (docs/workers.md)")
