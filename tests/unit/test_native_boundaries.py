"""The native modules' boundaries: which ``ext/`` modules each one cimports.

The delivery core writes pushes into the sink interface (``ext/sinks.pxd``), not into a
transport; the filter matcher reads the policy compiler's plain form and cimports no
transport either. Read from the sources, since a cimport leaves no trace at run time
that tells it from the package's own imports.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

EXT = Path(__file__).parents[2] / "ext"
TRANSPORTS = {"shmring"}   # native modules that belong to a transport


def cimported(module: str) -> set[str]:
    """The ext/ modules that ``ext/<module>.pyx`` (and its .pxd) cimport."""
    found: set[str] = set()
    for suffix in (".pyx", ".pxd"):
        path = EXT / f"{module}{suffix}"
        if path.exists():
            found.update(re.findall(r"^\s*from fastfanout\._ext\.(\w+) cimport",
                                    path.read_text(), re.MULTILINE))
    return found


def test_the_sources_are_here() -> None:
    assert (EXT / "deliveries.pyx").exists(), f"no ext/ sources under {EXT.parent}"


@pytest.mark.parametrize("module", ["deliveries", "store", "fanout", "filters", "sinks"])
def test_the_core_cimports_no_transport(module: str) -> None:
    assert not cimported(module) & TRANSPORTS


def test_the_delivery_core_writes_into_the_sink_interface() -> None:
    assert "sinks" in cimported("deliveries")


def test_the_filter_matcher_imports_nothing_of_the_policy_compiler() -> None:
    source = (EXT / "filters.pyx").read_text()
    imported = re.findall(r"^\s*(?:from|import) ([\w.]+)", source, re.MULTILINE)
    assert imported and not [name for name in imported if name.endswith("filter_policy")]
