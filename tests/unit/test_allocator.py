"""keep_freed_memory: glibc's allocator keeps freed frames for reuse (server.allocator)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from fastfanout.server.allocator import keep_freed_memory

# Allocate and free 1 MiB then 3 MiB in a fresh process; print whether the second block
# came back at the first one's address (reused from the heap, not a new mapping).
PROBE = """
import ctypes, sys
from fastfanout.server.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
first = libc.malloc(1 << 20)
libc.free(first)
second = libc.malloc(3 << 20)
libc.free(second)
print(first == second)
"""


@pytest.mark.parametrize("bad", [-1, 2**31, 1.5, "1", None, True])
def test_bad_retain_bytes_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="retain_bytes"):
        keep_freed_memory(bad)  # type: ignore[arg-type]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.parametrize(("mode", "reused"), [("default", "False"), ("keep", "True")])
def test_on_glibc_freed_megabytes_are_reused(mode: str, reused: str) -> None:
    # By default glibc maps each such block afresh (a page fault per 4 KiB on first
    # touch); kept, the freed heap block is handed out again.
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == reused


def test_the_frozen_count_is_the_one_freeze_startup_objects_made() -> None:
    # In a child process: freezing is for a whole process. collector_stats() reports the
    # count the freeze made (gc.get_freeze_count() walks every frozen object: too slow
    # for each SERVER_STATS), and asks gc itself before any freeze of ours.
    code = textwrap.dedent("""
        import gc
        from fastfanout.server.allocator import collector_stats, freeze_startup_objects
        assert collector_stats()["gc_frozen"] == gc.get_freeze_count() == 0
        frozen = freeze_startup_objects()
        assert frozen > 1000 and collector_stats()["gc_frozen"] == frozen
        assert frozen == gc.get_freeze_count()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
