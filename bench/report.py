"""Turn pytest-benchmark JSON files into a table of rates and ratios to the baseline.

Usage: python bench/report.py RUN1.json [RUN2.json ...]

Each benchmark's ``extra_info["items"]`` is the work of one round; its rate in one run is
items / median round time. With several runs (files), the table shows the median of the
per-run rates, and the ratio of that median to the baseline's median. Within a group, the
benchmark whose name ends in ``baseline`` is the baseline.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def rows(paths: list[str]) -> list[tuple[str, str, float, float | None, int]]:
    """(group, name, median rate, ratio to the group's baseline, runs) per benchmark."""
    rates: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in paths:
        with open(path) as handle:
            data = json.load(handle)
        for bench in data["benchmarks"]:
            items = bench.get("extra_info", {}).get("items")
            if items:
                key = (bench["group"] or "", bench["name"])
                rates[key].append(items / bench["stats"]["median"])
    groups: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
    for (group, name), values in rates.items():
        groups[group].append((name, statistics.median(values), len(values)))
    table = []
    for group, entries in groups.items():
        baseline = next((rate for name, rate, _ in entries if name.endswith("baseline")), None)
        for name, rate, runs in entries:
            table.append((group, name, rate, rate / baseline if baseline else None, runs))
    return table


def main() -> int:
    """Print the markdown table for the JSON files named on the command line."""
    print("| group | benchmark | median rate (items/s) | ratio to baseline | runs |")
    print("|---|---|---:|---:|---:|")
    for group, name, rate, ratio, runs in rows(sys.argv[1:]):
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        shown_rate = f"{rate / 1e6:.2f} M" if rate >= 10_000 else f"{rate:,.0f}"
        print(f"| {group} | {name} | {shown_rate} | {shown} | {runs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
