"""Turn a pytest-benchmark JSON file into a table of rates and ratios to the baseline.

Usage: python bench/report.py bench/results/micro.json

Each benchmark's ``extra_info["items"]`` is the work of one round; rate = items / median.
Within a group, the benchmark whose name ends in ``baseline`` is the baseline.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def rows(path: str) -> list[tuple[str, str, float, float | None]]:
    """(group, name, items per second, ratio to the group's baseline) per benchmark."""
    with open(path) as handle:
        data = json.load(handle)
    groups: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for bench in data["benchmarks"]:
        items = bench.get("extra_info", {}).get("items")
        if not items:
            continue
        groups[bench["group"] or ""].append((bench["name"], items / bench["stats"]["median"]))
    table = []
    for group, entries in groups.items():
        baseline = next((rate for name, rate in entries if name.endswith("baseline")), None)
        for name, rate in entries:
            table.append((group, name, rate, rate / baseline if baseline else None))
    return table


def main() -> int:
    """Print the markdown table for the JSON file named on the command line."""
    print("| group | benchmark | median rate (items/s) | ratio to baseline |")
    print("|---|---|---:|---:|")
    for group, name, rate, ratio in rows(sys.argv[1]):
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        shown_rate = f"{rate / 1e6:.2f} M" if rate >= 10_000 else f"{rate:,.0f}"
        print(f"| {group} | {name} | {shown_rate} | {shown} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
