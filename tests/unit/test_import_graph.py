"""The package's import graph: no cycles (``TYPE_CHECKING`` imports included), no module
touching another module's private names (tests included), and every client module
importable on its own.

The private-name check reads the source (``ast``) of the package, the tests and the
benchmarks. A private name is one with a leading underscore (not a dunder). A module may
use its own: ``self._x`` and ``cls._x``, and ``obj._x`` where ``_x`` is declared by a class
of that module (a method, a class attribute, a slot, a ``self._x`` it sets or reads), as
``ServerPort`` does with its ``Broker``. Everything else is a reach: ``obj._x`` of a name
no class of the module declares, or of a parameter annotated with another module's
class; ``getattr(obj, "_x")`` and its kin; ``from fastfanout... import _x``. Tests reach
the code through public names and the documented test hooks (docs/testing.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fastfanout

PACKAGE = Path(fastfanout.__file__).parent
TESTS = Path(__file__).parents[1]

BENCH = TESTS.parent / "bench"

# Left for the modules' owners; the check fails on any cycle, and when one goes away.
KNOWN_CYCLES: list[list[str]] = []

# Reaches into another module's private names allowed on purpose, as "path: line N:
# source" -> why. Keep it empty: give the code a public name or a documented test hook.
ALLOWED_REACHES: dict[str, str] = {}

# Names with a leading underscore that are public API of the standard library (the
# named tuple's methods and fields, os._exit, sys._getframe), not private names.
PUBLIC_UNDERSCORE_NAMES = frozenset(
    {"_asdict", "_field_defaults", "_fields", "_make", "_replace", "_exit", "_getframe"})

# The package of the native modules: "_ext" marks them as compiled, each with its typed
# stub (fastfanout/_ext/*.pyi); their names are public unless they begin with "_".
NATIVE_PACKAGE = "fastfanout._ext"

# Annotations that say nothing of whose object a parameter is.
UNTYPED = frozenset({"Any", "None", "object", "Optional", "Union", "TYPE_CHECKING"})


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


def is_private(name: str) -> bool:
    """A leading underscore, and not a dunder (``__init__``, ``__slots__``)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def declared_by_classes(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(the attribute names the module's classes declare, the names of those classes)."""
    declared: set[str] = set()
    classes: set[str] = set()
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        classes.add(cls.name)
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                declared.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in ("self", "cls")):
                declared.add(node.attr)
        for statement in cls.body:
            targets = (statement.targets if isinstance(statement, ast.Assign) else
                       [statement.target] if isinstance(statement, ast.AnnAssign) else [])
            for target in targets:
                if isinstance(target, ast.Name):
                    declared.add(target.id)
                    if target.id == "__slots__" and statement.value is not None:
                        declared.update(node.value for node in ast.walk(statement.value)
                                        if isinstance(node, ast.Constant)
                                        and isinstance(node.value, str))
    return declared, classes


def foreign_parameters(function: ast.FunctionDef | ast.AsyncFunctionDef,
                       classes: set[str]) -> set[str]:
    """Parameters annotated with classes, none of them this module's."""
    found = set()
    arguments = function.args
    for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
        if argument.annotation is None:
            continue
        named = {node.id for node in ast.walk(argument.annotation) if isinstance(node, ast.Name)}
        named |= {node.value for node in ast.walk(argument.annotation)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        named = {name for name in named if name[:1].isupper()} - UNTYPED
        if named and not named & classes:
            found.add(argument.arg)
    return found


def private_reaches(source: str) -> list[str]:
    """Every place ``source`` touches another module's private name, as "line N: code"."""
    tree = ast.parse(source)
    declared, classes = declared_by_classes(tree)
    foreign: set[int] = set()   # ids of Name nodes that are parameters of foreign classes
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            parameters = foreign_parameters(function, classes)
            foreign.update(id(node) for node in ast.walk(function)
                           if isinstance(node, ast.Name) and node.id in parameters)
    reaches = []

    def reach(node: ast.AST) -> None:
        reaches.append(f"line {getattr(node, 'lineno', 0)}: {ast.unparse(node)}")

    def touches(owner: ast.expr, name: str) -> bool:
        if not is_private(name) or name in PUBLIC_UNDERSCORE_NAMES:
            return False
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            return False
        return id(owner) in foreign or name not in declared

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and touches(node.value, node.attr):
            reach(node)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)
              and touches(node.args[0], node.args[1].value)):
            reach(node)
        elif isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] == "fastfanout"):
            module = node.module or ""
            within = module.removeprefix(NATIVE_PACKAGE).split(".")
            if any(map(is_private, within)) or any(is_private(a.name) for a in node.names):
                reach(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.removeprefix(NATIVE_PACKAGE).split(".")
                if alias.name.startswith("fastfanout") and any(map(is_private, parts)):
                    reach(node)
    return reaches


def test_no_module_touches_another_modules_private_names() -> None:
    found = {}
    # the package may be imported from a copy (the debug build's build/debug): each file
    # is named from its own root
    for folder in (PACKAGE, TESTS, BENCH):
        for path in sorted(folder.rglob("*.py")):
            name = path.relative_to(folder.parent).as_posix()
            for place in private_reaches(path.read_text()):
                found[f"{name}: {place}"] = ALLOWED_REACHES.get(f"{name}: {place}",
                                                                "not allowed")
    assert found == ALLOWED_REACHES


@pytest.mark.parametrize(("source", "reaches"), [
    # another object's private names, in any form
    ("server._wait_timeout()", ["line 1: server._wait_timeout"]),
    ("server._deliveries.dirty = False", ["line 1: server._deliveries"]),
    ("getattr(server, '_lock')", ["line 1: getattr(server, '_lock')"]),
    ("from fastfanout.server.loop import _handle", [
        "line 1: from fastfanout.server.loop import _handle"]),
    ("from fastfanout.client._core import Core", [
        "line 1: from fastfanout.client._core import Core"]),
    ("from ._core import Core", ["line 1: from ._core import Core"]),
    ("import fastfanout._private", ["line 1: import fastfanout._private"]),
    ("from fastfanout._ext.ring import _pump", ["line 1: from fastfanout._ext.ring import _pump"]),
    # a parameter of another module's class, even where this module has a "_lock" too
    ("class Mine:\n    def __init__(self):\n        self._lock = None\n"
     "def peek(server: Server):\n    return server._lock\n", ["line 5: server._lock"]),
    # the module's own names, and the standard library's public ones
    ("self._x = cls._y", []),
    ("class Port:\n    def __init__(self, broker: Broker):\n        self._broker = broker\n"
     "class Broker:\n    def __init__(self):\n        self._store = 1\n"
     "def f(port: Port):\n    return port._broker._store\n", []),
    ("class Pair:\n    __slots__ = ('_a',)\ndef f(p):\n    return p._a\n", []),
    ("point._asdict(); os._exit(0); sys._getframe(); x.__class__", []),
    ("from fastfanout._ext import codec\nfrom fastfanout._ext.ring import Ring", []),
])
def test_the_private_name_check_sees_every_reach(source: str, reaches: list[str]) -> None:
    assert private_reaches(source) == reaches


@pytest.mark.parametrize("name", sorted(name for name in modules()
                                        if name.startswith("fastfanout.client")
                                        or name in ("fastfanout.aio", "fastfanout.api")))
def test_each_client_module_imports_on_its_own(name: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {name}"], check=True, timeout=60)


def test_the_broker_and_the_server_hold_their_parts() -> None:
    """Composed, not inherited or mixed in: ``Broker`` holds its ``Administration``, the
    ``Server`` its handlers' parts (deliveries, holds, streams, local sessions)."""
    from fastfanout.broker.administration import Administration
    from fastfanout.broker.embedded import Broker
    from fastfanout.server.loop import Server

    assert Broker.__bases__ == (object,)
    assert Server.__bases__ == (object,)
    assert Administration not in Broker.__mro__
    with Broker() as broker:
        broker.create_queue("q")
        assert broker.list_queues() == ["q"]


def test_numpy_is_loaded_by_the_first_array_not_by_importing_fastfanout() -> None:
    """A broker, the command line and a client that asks for no array do not load numpy
    (~50 ms, and BLAS threads that spin ~0.1 s of CPU each); the first array view does."""
    code = (
        "import sys\n"
        "import fastfanout, fastfanout.client, fastfanout.aio, fastfanout.cli\n"
        "import fastfanout.server.loop, fastfanout.workers, fastfanout.bridges\n"
        "assert 'numpy' not in sys.modules, 'numpy loaded by an import'\n"
        "broker = fastfanout.Broker()\n"
        "broker.create_queue('q')\n"
        "broker.send_batch('q', [b'abcd', b'efgh'])\n"
        "batch = broker.consume('q').next_batch()\n"
        "assert 'numpy' not in sys.modules, 'numpy loaded with no array asked for'\n"
        "table = batch.as_array('u1', (4,))\n"
        "assert 'numpy' in sys.modules and table.shape == (2, 4)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
