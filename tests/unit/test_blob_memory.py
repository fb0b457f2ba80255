"""The blob slab gives memory back: a million consumed messages leave the process about
as large as it was (ext/blobs.pyx, "Design")."""

from __future__ import annotations

import json
import subprocess
import sys

from fastfanout._ext.blobs import BLOB_SLAB_KEEP_BYTES, blob_bytes

# In a fresh process: a million 64-byte messages sent, then received and acked (consumed)
# twice over; prints the resident set (bytes) before, full and after each round. The
# store's entry slab keeps its size once grown (it is not what this measures), so the
# figure is how much of the full process's growth the consumption gave back.
CONSUME = """
import json
from fastfanout import Broker

def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096

figures = []
with Broker() as broker:
    broker.create_queue("q", max_messages=None)
    bodies = [b"x" * 64] * 10_000
    for _ in range(2):
        figures.append(rss())
        for _ in range(100):
            broker.send_batch("q", bodies)
        figures.append(rss())
        while True:
            got = broker.receive("q", max_messages=10_000)
            if not got:
                break
            broker.ack_batch([m.receipt for m in got])
            del got
        figures.append(rss())
print(json.dumps(figures))
"""


def test_a_million_consumed_messages_give_their_blobs_memory_back() -> None:
    done = subprocess.run([sys.executable, "-c", CONSUME], capture_output=True, text=True,
                          timeout=300, check=True)
    _, full, after, before2, full2, after2 = json.loads(done.stdout)
    blobs = 1_000_000 * blob_bytes(64)
    slack = 8 << 20   # the interpreter's and the allocator's own pages
    # Every blob's pages went back but the empty chunks the slab keeps (glibc's malloc,
    # which held them before, gave back none of its 112 MB).
    assert full - after >= blobs - BLOB_SLAB_KEEP_BYTES - slack
    # A second million takes those pages again and gives them back again.
    assert full2 - before2 >= blobs - slack
    assert abs(after2 - after) <= BLOB_SLAB_KEEP_BYTES + slack
