"""The package's import graph: no cycles (``TYPE_CHECKING`` imports included), no private
names imported from another module, and every client module importable on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fastfanout

PACKAGE = Path(fastfanout.__file__).parent
TESTS = Path(__file__).parents[1]

# Left for the modules' owners (the native ring is being reworked now); the check fails
# on any cycle or other private import, and when one of these goes away.
KNOWN_CYCLES: list[list[str]] = []
KNOWN_PRIVATE_IMPORTS = ["test_ring.py: fastfanout._ext.ring._pump_consume",
                         "test_ring.py: fastfanout._ext.ring._pump_produce"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, explicitly (not parent packages)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in known:
                    found.add(f"{node.module}.{alias.name}")
                elif node.module in known:
                    found.add(node.module)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self edge."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    known = set(modules())
    graph = {name: imported(path, known) - {"fastfanout"} for name, path in modules().items()}
    assert cycles(graph) == KNOWN_CYCLES


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *TESTS.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastfanout"):
                offenders += [f"{path.name}: {node.module}.{alias.name}" for alias in node.names
                              if alias.name.startswith("_") and not alias.name.startswith("__")
                              and node.module != "fastfanout._ext"]
    assert sorted(offenders) == KNOWN_PRIVATE_IMPORTS


@pytest.mark.parametrize("name", sorted(name for name in modules()
                                        if name.startswith("fastfanout.client")
                                        or name in ("fastfanout.aio", "fastfanout.api")))
def test_each_client_module_imports_on_its_own(name: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {name}"], check=True, timeout=60)
