"""The C allocator of a broker process: keep freed memory for reuse instead of returning it.

A broker pushes deliveries in frames of up to a megabyte (8,192 records) and frees each
once ZeroMQ has sent it. glibc's ``malloc`` serves blocks that large with a fresh
``mmap`` (or hands the freed top of its heap back to the system), so every frame is new
memory, and touching new memory costs a page fault per 4 KiB (about 2 µs each on the
benchmark machines: half a millisecond per frame). Raising the mmap threshold and the
trim threshold makes the freed frames come back from the heap instead; what the process
keeps is bounded by ``retain_bytes``.

``serve()`` (a process that is only a broker: the ``fastfanout serve`` command) applies it;
an embedding program may call ``keep_freed_memory()`` itself. Elsewhere than glibc it does
nothing.

``memory_stats()`` reports the broker core's own message memory: the blob slab (messages
of up to ``BLOB_SLAB_MAX`` bytes with their header) and the pool of bigger blobs, with the
counters of their two limits (``BLOB_SLAB_KEEP_BYTES``, ``BLOB_BIG_POOL_MAX_BYTES``);
SERVER_STATS carries them.

``freeze_startup_objects()`` (``serve()`` calls it once the broker is bound and its
companion started) moves what the process built to start — modules, functions, the
recovered topology, some 50,000 objects — out of the cyclic garbage collector's reach
(``gc.freeze``): they live as long as the process anyway, and every full collection used
to walk them all, 12 to 27 ms during which the loop served nothing (the p99 of a bridged
message, docs/bridge.md "Speed"). ``collector_stats()`` reports it with the collections
run so far; SERVER_STATS carries them too.
"""

from __future__ import annotations

import ctypes
import gc
import platform
from typing import Final

from fastfanout._ext import blobs

__all__ = ["DEFAULT_RETAIN_BYTES", "MMAP_THRESHOLD_BYTES", "collector_stats",
           "freeze_startup_objects", "keep_freed_memory", "memory_stats"]

DEFAULT_RETAIN_BYTES: Final = 256 * 1024 * 1024
"""Freed heap memory a broker process keeps for reuse at most (glibc ``M_TRIM_THRESHOLD``)."""
MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024
"""Blocks at least this big still get their own mmap (glibc's largest ``M_MMAP_THRESHOLD``)."""

_frozen: int | None = None   # what freeze_startup_objects froze (None: it has not run)

_M_TRIM_THRESHOLD: Final = -1   # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD: Final = -3


def keep_freed_memory(retain_bytes: int = DEFAULT_RETAIN_BYTES) -> bool:
    """Make glibc reuse freed blocks up to 32 MiB and keep up to ``retain_bytes`` freed.

    Returns True when the settings were applied (glibc), False when the C library is
    another one (nothing changes).

    Raises:
        ValueError: ``retain_bytes`` is not an int from 0 to 2**31 - 1.
    """
    if type(retain_bytes) is not int or not 0 <= retain_bytes < 2**31:
        raise ValueError(f"retain_bytes={retain_bytes!r} must be an int from 0 to 2**31 - 1")
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and mallopt(_M_TRIM_THRESHOLD, retain_bytes))


def memory_stats() -> dict[str, int]:
    """The process's message memory, as SERVER_STATS reports it (bytes and counts).

    Keys: ``blob_slab_live_bytes`` (messages' blobs of up to ``BLOB_SLAB_MAX`` bytes held
    now), ``blob_slab_kept_bytes`` (empty slab chunks kept for reuse, at most
    ``BLOB_SLAB_KEEP_BYTES``), ``blob_slab_released`` (empty chunks handed back to the
    kernel because the kept ones were at that limit), ``blob_slab_mapped_bytes`` (address
    space mapped for chunks), ``blob_big_pool_bytes`` (freed bigger blobs kept for reuse,
    at most ``BLOB_BIG_POOL_MAX_BYTES``), ``blob_big_pool_overflows`` (freed bigger
    blobs given back to malloc because the pool was at that limit), and the bodies left
    in place in local clients' rings (blobs.pyx): ``bodies_in_place_frames`` (frames their
    messages keep now), ``bodies_evacuated`` and ``bodies_evacuated_bytes`` (bodies copied
    out when their producer waited for the room they filled) and
    ``bodies_evacuations`` (frames so emptied).
    """
    slab = blobs.blob_slab_stats()
    big_bytes, big_overflows = blobs.blob_big_pool_stats()
    frames, evacuations, evacuated, evacuated_bytes = blobs.in_place_stats()
    return {"blob_slab_live_bytes": slab["live_bytes"],
            "blob_slab_kept_bytes": slab["kept_bytes"],
            "blob_slab_released": slab["released"],
            "blob_slab_mapped_bytes": slab["mapped_bytes"],
            "blob_big_pool_bytes": big_bytes,
            "blob_big_pool_overflows": big_overflows,
            "bodies_in_place_frames": frames,
            "bodies_evacuations": evacuations,
            "bodies_evacuated": evacuated,
            "bodies_evacuated_bytes": evacuated_bytes}


def freeze_startup_objects() -> int:
    """Collect, then move every object alive now out of the collector's reach.

    Returns how many objects are frozen (``gc.get_freeze_count()``). Objects made later
    are collected as usual; a frozen one that becomes garbage is never collected, so call
    it once, when what is alive is what lives as long as the process.
    """
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = gc.get_freeze_count()
    return _frozen


def collector_stats() -> dict[str, int]:
    """The cyclic garbage collector, as SERVER_STATS reports it.

    Keys: ``gc_frozen`` (objects out of its reach: the count ``freeze_startup_objects``
    froze, once it ran — ``gc.get_freeze_count()`` walks every frozen object, ~0.5 ms
    for a broker's 50,000, which made each SERVER_STATS that slow),
    ``gc_collections`` (collections of every generation so far), ``gc_full_collections``
    (of the oldest generation: those that walk every tracked object).
    """
    generations = gc.get_stats()
    return {"gc_frozen": gc.get_freeze_count() if _frozen is None else _frozen,
            "gc_collections": sum(generation["collections"] for generation in generations),
            "gc_full_collections": generations[-1]["collections"]}
