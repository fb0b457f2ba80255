"""The client wing: a sans-I/O connection core under a blocking and an asyncio driver.

Layout (one concept per module):

- ``core``: ``ConnectionCore``, the whole protocol state of a client connection (request
  ids, pending requests, publish batching, consumers and their settle queues,
  heartbeats, session end), fed frames and time, with no I/O;
- ``blocking``: the blocking driver (``Connection``) and the ``Client`` API over it;
- ``asyncio``: the asyncio driver and the ``AsyncClient`` API over it;
- ``driver``: what both drivers share, and their interfaces as others see them;
- ``face``: what both clients share (options, the plain pipelined calls);
- ``consumers``: blocking push consumers, delivery batches, stream listeners;
- ``producers``: the per-message fast path (``ProducerCore`` under ``RemoteProducer``
  and ``AsyncProducer``);
- ``futures``: the blocking client's publish futures;
- ``messages``: what both receive (remote messages, publish results, stream batches).

This module re-exports the blocking client: ``from fastfanout.client import connect``.
"""

from fastfanout.client.blocking import Client, connect

__all__ = ["Client", "connect"]
