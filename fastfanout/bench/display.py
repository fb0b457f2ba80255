"""What a benchmark shows on the terminal: live progress (rich) and the summary table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fastfanout.bench.results import Measurement, size_label


def rate_text(rate: float) -> str:
    """``1.23M``, ``456k``, ``789`` (messages per second)."""
    if rate >= 1e6:
        return f"{rate / 1e6:.2f}M"
    if rate >= 1e3:
        return f"{rate / 1e3:.0f}k"
    return f"{rate:.0f}"


class Live:
    """The live progress display: one bar per (measurement, run), updated ~10x a second."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=console, transient=False)
        self.task: Any = None

    @contextmanager
    def run(self, description: str) -> Iterator[Any]:
        """A bar for one run; yields the progress callback of ``runner.run_once``."""
        task = self.progress.add_task(description, total=None, info="starting")

        def update(sent: int, received: int, target: int) -> None:
            self.progress.update(task, completed=received, total=max(target, received) or None,
                                 info=f"sent {sent:,} received {received:,}")

        try:
            yield update
        finally:
            self.progress.update(task, info="done")
            self.progress.stop_task(task)

    def __enter__(self) -> Live:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def summary_table(measurements: list[Measurement], baseline: str) -> Table:
    """The medians over runs with min-max, and the ratio to ``baseline`` of each cell.

    Skipped measurements are left out (``skipped_lines`` lists them); latency columns
    appear when some measurement has latencies.
    """
    ran = [item for item in measurements if item.summary() is not None]
    with_latency = any("latency" in (item.summary() or {}) for item in ran)
    table = Table(title=f"median of runs (min-max); ratio to {baseline}")
    columns = [("scenario", "left"), ("size", "right"), ("system", "left"),
               ("msg/s", "right"), ("min-max", "right")]
    if with_latency:
        columns += [("p50 µs", "right"), ("p99 µs", "right"), ("p99.9 µs", "right"),
                    ("max µs", "right")]
    columns += [("lost", "right"), ("dup", "right"), ("ratio", "right")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for item in ran:
        spec = item.spec
        scenario = spec.scenario + (f" {spec.groups}x{spec.members}"
                                    if spec.scenario != "latency" else f" @{spec.rate:g}/s")
        if spec.durable:
            scenario += f" durable, fsync {spec.fsync}"
        summary = item.summary() or {}
        rate = summary["rate"]
        latency = summary.get("latency", {})

        def micro(name: str, latency: dict[str, float] = latency) -> str:
            return f"{latency[name]:,.0f}" if name in latency else ""

        lost = summary["lost"]
        cells = [scenario, size_label(spec.size), item.label, rate_text(rate["median"]),
                 f"{rate_text(rate['min'])}-{rate_text(rate['max'])}"]
        if with_latency:
            cells += [micro("p50"), micro("p99"), micro("p99.9"), micro("p100")]
        cells += [f"[red]{lost:,}[/red]" if lost else "0", f"{summary['duplicates']:,}",
                  "" if item.ratio is None else f"{item.ratio:.2f}x"]
        table.add_row(*cells)
    return table


def skipped_lines(measurements: list[Measurement]) -> list[str]:
    """One line per system skipped (or failed), with its reason, each reason once."""
    seen: dict[tuple[str, str], None] = {}
    for item in measurements:
        if item.skipped is not None and not item.runs:
            seen[(item.label, item.skipped)] = None
    return [f"skipped {label}: {reason}" for label, reason in seen]
