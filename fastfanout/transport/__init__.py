"""How bytes move between a broker and its clients on one host.

- ``sockets``: ZeroMQ sockets of the broker and of its clients (the one module that
  imports ``zmq``).
- ``local_channel``: shared-memory rings and bells between a broker and a client.
- ``local``: client transports over local channels, blocking and asyncio.
"""
