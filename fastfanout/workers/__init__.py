"""Workers: functions run on the messages of queues (the SNS → Lambda path).

``Worker`` registers handlers (``@worker.handler(queue)``, ``worker.subscribe(topic, f)``)
and runs them: sync ones on threads, async ones on an event loop, ``processes=N`` in
worker processes; ``fastfanout worker module:app`` runs one from the command line. See
docs/workers.md. This package's modules: ``app`` (the Worker), ``handlers`` (registration
records), ``threads`` and ``coroutines`` (the runners), ``processes``, ``sources``
(connections and embedded brokers), ``stats``.
"""

from fastfanout.workers.app import Worker
from fastfanout.workers.handlers import Handler
from fastfanout.workers.stats import HandlerStats, WorkerStats

__all__ = ["Handler", "HandlerStats", "Worker", "WorkerStats"]
