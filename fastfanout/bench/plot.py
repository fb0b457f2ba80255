"""The ``--plot FILE.png`` figure (matplotlib, the ``bench`` extra).

Left: throughput bars per system, grouped by scenario and size, with min-max whiskers;
right: the latency percentile curves (p50 to max) of the latency scenario, on a log scale.
"""

from __future__ import annotations

from typing import Any

from fastfanout.bench.results import Measurement, size_label


def plot_unavailable() -> str | None:
    """Why a plot cannot be drawn here (one line), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'fastfanout[bench]')"
    return None


def plot(measurements: list[Measurement], path: str) -> None:
    """Draw the figure of ``measurements`` into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [item for item in measurements if item.runs]
    throughput = [item for item in ran if item.spec.scenario != "latency"]
    latency = [item for item in ran if item.spec.scenario == "latency"]
    panels = [panel for panel in (throughput, latency) if panel] or [[]]
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    column = 0
    if throughput:
        _bars(axes[0][column], throughput)
        column += 1
    if latency:
        _curves(axes[0][column], latency)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def _bars(axis: Any, items: list[Measurement]) -> None:
    cells: list[str] = []
    systems: list[str] = []
    for item in items:
        cell = (f"{item.spec.scenario} {item.spec.groups}x{item.spec.members}\n"
                f"{size_label(item.spec.size)}")
        if cell not in cells:
            cells.append(cell)
        if item.label not in systems:
            systems.append(item.label)
    width = 0.8 / max(1, len(systems))
    for index, system in enumerate(systems):
        xs, heights, low, high = [], [], [], []
        for item in items:
            if item.label != system:
                continue
            rates = item.rates()
            median = sorted(rates)[len(rates) // 2]
            xs.append(cells.index(f"{item.spec.scenario} {item.spec.groups}x"
                                  f"{item.spec.members}\n{size_label(item.spec.size)}")
                      + (index - (len(systems) - 1) / 2) * width)
            heights.append(median)
            low.append(median - min(rates))
            high.append(max(rates) - median)
        axis.bar(xs, heights, width, yerr=[low, high], capsize=3, label=system)
    from matplotlib.ticker import FuncFormatter

    from fastfanout.bench.display import rate_text

    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: rate_text(value)))
    axis.set_xticks(range(len(cells)), cells)
    axis.set_ylabel("messages/s per group (median, min-max)")
    axis.set_title("throughput")
    axis.legend(fontsize="small")


def _curves(axis: Any, items: list[Measurement]) -> None:
    for item in items:
        summary = item.summary() or {}
        latency = summary.get("latency", {})
        names = [name for name in latency if name.startswith("p")]
        if not names:
            continue
        xs = [float(name[1:]) for name in names]
        # the x axis is 1 / (1 - percentile): each nine takes the same width
        positions = [1 / max(1e-6, 1 - x / 100) for x in xs]
        axis.plot(positions, [latency[name] for name in names], marker="o",
                  label=f"{item.label} {size_label(item.spec.size)}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    ticks = [2, 10, 100, 1000, 10000]
    axis.set_xticks(ticks, ["p50", "p90", "p99", "p99.9", "p99.99"])
    axis.set_ylabel("latency µs (median of runs, from intended send time)")
    axis.set_title("latency percentiles")
    axis.legend(fontsize="small")
