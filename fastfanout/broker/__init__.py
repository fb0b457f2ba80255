"""The embedded broker: ``Broker`` and what it is made of.

- ``embedded``: ``Broker``, the typed face of the native core (topics, queues, publish,
  receive, settle, stats), and ``ServerPort``, its internal port for the server
  (``Broker.server_port()``: encoded fast paths, packed settles, owner tags).
- ``administration``: the broker's state and name tables (topics, queues, subscriptions).
- ``consumer``: the embedded push path, ``Broker.consume``.
- ``producer``: a lock-free producer, a thread offers and the broker publishes.

Only ``Broker`` is exported here; the rest is reached through it.
"""

from fastfanout.broker.embedded import Broker

__all__ = ["Broker"]
