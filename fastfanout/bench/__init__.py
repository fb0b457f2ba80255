"""The benchmark harness behind ``fastfanout bench`` (docs/bench.md).

Modules: ``scenarios`` (topologies and the spec of one measurement), ``payload`` (bodies,
the sequence check, latency histograms), ``servers`` (peer servers started on loopback
and stopped by PID), ``adapters`` (fastfanout and each peer on one interface),
``processes`` and ``runner`` (child processes, one run), ``results`` (summaries, the JSON
file, compare), ``display`` (live progress, the table), ``plot`` (the PNG), ``cli`` (the
commands).
"""

import os

# numpy (the payload check's) loads a BLAS library whose threads, one per core, spin at
# full speed for ~0.1 s after it loads: in every process of a run, on a 2-core machine
# right into the start of the timed window, where they take the cores the publisher,
# the broker and the receivers need (the shorter a run, the more it weighs). Nothing
# here calls BLAS. Set before numpy is imported; children inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
