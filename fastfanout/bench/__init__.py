"""The benchmark harness behind ``fastfanout bench`` (docs/bench.md).

Modules: ``scenarios`` (topologies and the spec of one measurement), ``payload`` (bodies,
the sequence check, latency histograms), ``servers`` (peer servers started on loopback
and stopped by PID), ``adapters`` (fastfanout and each peer on one interface),
``processes`` and ``runner`` (child processes, one run), ``results`` (summaries, the JSON
file, compare), ``display`` (live progress, the table), ``plot`` (the PNG), ``cli`` (the
commands).
"""
