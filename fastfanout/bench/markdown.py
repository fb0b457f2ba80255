"""Markdown tables of ``fastfanout bench`` result files (``fastfanout bench report``).

docs/benchmarks.md is made of these tables: one per result file, the medians over runs
with their min-max, losses and duplicates, and the ratio to the run's baseline, in the
order the measurements were taken; then one line per system skipped, with its reason.
"""

from __future__ import annotations

from typing import Any

from fastfanout.bench.display import rate_text
from fastfanout.bench.results import size_label

__all__ = ["markdown"]


def _scenario(item: dict[str, Any]) -> str:
    spec = item["spec"]
    if item["scenario"] == "latency":
        text = f"latency @{spec['rate']:g}/s"
    else:
        text = f"{item['scenario']} {spec['groups']}x{spec['members']}"
    if spec.get("durable"):
        text += f" durable, fsync {spec.get('fsync', 'always')}"
    return text


def markdown(document: dict[str, Any]) -> str:
    """The table of one result document (``fastfanout.bench.results.load``)."""
    ran = [item for item in document["measurements"] if item.get("summary")]
    with_latency = any("latency" in item["summary"] for item in ran)
    headers = ["scenario", "size", "system", "msg/s", "min-max"]
    if with_latency:
        headers += ["p50 µs", "p99 µs", "p99.9 µs"]
    headers += ["lost", "dup", "ratio"]
    right = {"size", "msg/s", "min-max", "p50 µs", "p99 µs", "p99.9 µs", "lost", "dup",
             "ratio"}
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if h in right else "---" for h in headers) + "|"]
    for item in ran:
        summary = item["summary"]
        rate = summary["rate"]
        cells = [_scenario(item), size_label(item["size"]), item.get("label") or item["system"],
                 rate_text(rate["median"]),
                 f"{rate_text(rate['min'])}-{rate_text(rate['max'])}"]
        if with_latency:
            latency = summary.get("latency", {})
            cells += [f"{latency[name]:,.0f}" if name in latency else ""
                      for name in ("p50", "p99", "p99.9")]
        ratio = summary.get("ratio")
        cells += [f"{summary['lost']:,}", f"{summary['duplicates']:,}",
                  "" if ratio is None else f"{ratio:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    skipped: dict[tuple[str, str], None] = {}
    for item in document["measurements"]:
        if item.get("skipped") and not item.get("runs"):
            skipped[(item.get("label") or item["system"], item["skipped"])] = None
    if skipped:
        lines.append("")
        lines += [f"skipped {label}: {reason}" for label, reason in skipped]
    return "\n".join(lines)
