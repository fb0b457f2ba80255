"""The defaults and options the docs state are the code's.

docs/configuration.md's table of keys gives each key's default and its ``serve`` option;
docs/tuning.md's tables give the defaults of ``Server``, ``connect`` and ``listen``
arguments. Each is read from the page and compared with what the code does: the default
a ``ServerConfig`` (the config file) takes, the one ``Server(...)`` takes when called
without it (the same broker whether started by ``fastfanout serve`` or in code), and the
options ``fastfanout serve`` has.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
from typing import Any

import pytest

import fastfanout
from fastfanout.cli import serve
from fastfanout.server.config import ServerConfig, server_options

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def table_rows(page: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``heading`` on ``page`` (header row left out)."""
    text = (DOCS / page).read_text().split(heading, 1)[1]
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [row for row in rows[1:] if not set(row[0]) <= {"-"}]


UNITS = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "s": 1}


def documented_value(cell: str) -> Any:
    """The value a default cell states: a literal in backticks, or `1.0 s`, `4 MiB`,
    `10,000`; None for a sentence (``none (no CURVE)``, ``per-user ipc socket``)."""
    literal = re.fullmatch(r"`([^`]+)`(?: \(.*\))?", cell)
    if literal:
        text = literal.group(1)
        if text in ("true", "false"):
            return text == "true"
        if re.fullmatch(r"-?[\d_]+", text):
            return int(text)
        if re.fullmatch(r"-?[\d_]*\.[\d_]+", text):
            return float(text)
        return text.strip('"')
    quantity = re.fullmatch(r"([\d,.]+)(?: (KiB|MiB|GiB|s))?", cell)
    if quantity:
        number = float(quantity.group(1).replace(",", "")) * UNITS[quantity.group(2) or ""]
        return int(number) if number.is_integer() and quantity.group(2) != "s" else number
    return None


KEYS = table_rows("configuration.md", "## Keys")


def test_the_keys_table_is_read() -> None:
    assert [row[0].strip("`") for row in KEYS] == list(ServerConfig.__struct_fields__)


@pytest.mark.parametrize("row", KEYS, ids=[row[0].strip("`") for row in KEYS])
def test_each_documented_default_is_the_config_default(row: list[str]) -> None:
    key, default = row[0].strip("`"), documented_value(row[2])
    actual = getattr(ServerConfig(), key)
    if default is None:
        assert actual in (None, False) or key == "endpoint", (
            f"{key}: docs/configuration.md gives no value ({row[2]!r}), the code {actual!r}")
    else:
        assert actual == default, (
            f"{key}: docs/configuration.md says {default!r}, the code {actual!r}")


def test_serve_and_server_take_the_same_defaults() -> None:
    """A key left at its default gives ``Server`` the value ``Server()`` takes on its own."""
    parameters = inspect.signature(fastfanout.Server).parameters
    options = server_options(ServerConfig())
    assert options, "server_options gave nothing"
    for key, value in options.items():
        assert key in parameters, key
        if key in ("endpoint", "stream_endpoint", "data_dir"):
            continue                              # the runtime picks them: documented above
        assert parameters[key].default == value, (
            f"{key}: serve uses {value!r}, Server() {parameters[key].default!r}")


def test_each_documented_option_is_an_option_of_serve() -> None:
    options = {name for parameter in serve.params
               for name in (*parameter.opts, *parameter.secondary_opts)}
    documented: set[str] = set()
    for row in KEYS:
        for option in re.findall(r"`(--[a-z-]+)`", row[4]):
            assert option in options, f"{row[0]}: `serve` has no option {option}"
            documented.add(option)
    missing = {parameter.opts[0] for parameter in serve.params
               if parameter.opts[0].startswith("--") and parameter.opts[0] != "--config"
               } - documented
    assert not missing, f"serve options missing from the table of keys: {sorted(missing)}"


def signature_default(call: str) -> Any:
    """The default of ``name=`` in a documented call such as ``Server(stream_wait=...)``."""
    found = re.match(r"`(?:fastfanout\.)?(\w+)(?:\.(\w+))?\((?:[\w ,]+, )?(\w+)=\.\.\.\)`", call)
    assert found, call
    owner, method, name = found.groups()
    target: Any = {"Server": fastfanout.Server, "connect": fastfanout.Client,
                   "client": fastfanout.Client}[owner]
    if method:
        target = getattr(target, method)
    return inspect.signature(target).parameters[name].default


TUNING = [row for heading in ("## Local channels", "## Streams")
          for row in table_rows("tuning.md", heading) if "=..." in row[0]]


@pytest.mark.parametrize("row", TUNING, ids=[row[0] for row in TUNING])
def test_the_tuning_defaults_are_the_code_defaults(row: list[str]) -> None:
    call = row[0].split(",")[0] if row[0].startswith("`Server") else row[0]
    assert signature_default(call) == documented_value(row[1]), row


def test_the_tuning_tables_are_read() -> None:
    assert len(TUNING) >= 5


ERRORS = [row for heading in ("## Errors of calls", "## Errors of the wire",
                              "## Errors of the process")
          for row in table_rows("errors.md", heading)]


@pytest.mark.parametrize("row", ERRORS, ids=[row[0].strip("`") for row in ERRORS])
def test_each_documented_error_has_its_code_and_family(row: list[str]) -> None:
    cls = getattr(fastfanout, row[0].strip("`"))
    assert re.match(r"`(\w+)`", row[1]).group(1) == cls.code  # type: ignore[union-attr]
    families = {"a `ValueError`": ValueError, "an `OSError`": OSError,
                "a `ConnectionError`": ConnectionError, "a builtin `TimeoutError`": TimeoutError,
                "a `TypeError`": TypeError}
    for said, family in families.items():
        if f"also {said}".lower() in row[2].lower() or f". {said}" in row[2]:
            assert issubclass(cls, family), f"{cls.__name__} is documented as {said}"


def test_the_errors_tables_list_every_error() -> None:
    documented = {row[0].strip("`") for row in ERRORS}
    exported = {name for name in fastfanout.__all__
                if isinstance(getattr(fastfanout, name), type)
                and issubclass(getattr(fastfanout, name), fastfanout.FastFanoutError)}
    assert documented == exported


def documented_names() -> list[tuple[str, str]]:
    """(page, dotted name) of every ``fastfanout.x.y`` the README and docs/*.md name in
    code spans, but logger names (``logger `fastfanout.auth```)."""
    names: dict[str, str] = {}
    for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        for found in re.finditer(r"(logger )?`(fastfanout(?:\.[A-Za-z_]\w*)+)[`(\[ ]",
                                 page.read_text()):
            if not found.group(1):
                names.setdefault(found.group(2), page.name)
    return sorted((page, name) for name, page in names.items())


NAMES = documented_names()


@pytest.mark.parametrize("named", NAMES, ids=[name for _, name in NAMES])
def test_each_documented_name_exists(named: tuple[str, str]) -> None:
    page, dotted = named
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            assert hasattr(found, part), f"{page} names {dotted}: no {part} in {found!r}"
            found = getattr(found, part)
        return


def test_the_docs_name_things() -> None:
    assert len(NAMES) > 20
