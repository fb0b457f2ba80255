"""Server mode: one embedded broker served to client processes (``fastfanout serve``).

Clients reach it over ZeroMQ and local channels.

- ``loop``: ``Server``, its sockets and its event loop; the request handlers.
- ``deliveries``: receive and long polls, push consumers, settling.
- ``sessions``: what the server knows of each client connection.
- ``local_sessions``: the broker's side of local (shared-memory) channels.
- ``holds``: publishes held while a ``hold`` queue is full.
- ``streams``: stream listeners, their sequences, probes and beacons.
- ``config``: the keys of ``fastfanout serve --config FILE``.
- ``allocator``: the broker process's C allocator settings.
"""

from fastfanout.server.loop import Server

__all__ = ["Server"]
