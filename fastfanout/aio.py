"""The asyncio client's public import path: ``fastfanout.aio.connect``, ``AsyncClient``.

It re-exports ``fastfanout.client.asyncio``, where the asyncio driver lives.
"""

from fastfanout.client.asyncio import AsyncClient, AsyncListener, Opening, connect

__all__ = ["AsyncClient", "AsyncListener", "Opening", "connect"]
