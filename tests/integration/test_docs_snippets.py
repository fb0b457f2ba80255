"""The Python samples of docs/*.md run as written (the README's: test_readme.py).

Every ```python block of a page carries a marker on the line above it, an HTML comment a
rendered page does not show, saying how it runs (docs/testing.md, "Samples of the docs"):

- ``<!-- snippet: run; given: NAMES -->``: executed in this process;
- ``<!-- snippet: run with a broker; given: NAMES -->``: executed against a server on the
  default endpoint (under the test's temp dir) holding the topology of ``TOPOLOGY``;
- ``<!-- snippet: process with a broker, stopped by SIGTERM; given: NAMES -->``: a program
  that serves until stopped (``Worker.run()``): run as a process, stopped by SIGTERM once
  it consumes, and it must exit 0;
- ``<!-- snippet: fragment: WHY -->``: not a program (a signature, a piece of a loop);
  only compiled.

``given:`` names what the sample leaves to the reader (a function of theirs, data they
have): the test defines each from ``STAND_INS``, and checks that the sample uses it. Any
other name the sample uses must be its own: a missing import fails with NameError.
"""

from __future__ import annotations

import ast
import pathlib
import re
import shlex
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import Tracker, wait_until

import fastfanout
from fastfanout.runtime import default_endpoint

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"(?:^(?P<marker>[^\n]*)\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!-- snippet: (?P<kind>run with a broker|run|process with a broker, "
                    r"stopped by SIGTERM|fragment: [^>]+?)(?:; given: (?P<given>[\w, ]+))? -->")


class Model:
    """What a model's ``update`` sees: the rows of every table."""

    def __init__(self) -> None:
        self.rows = 0

    def update(self, table: np.ndarray) -> None:
        assert table.dtype == np.float32 and table.shape[1:] == (256,)
        self.rows += len(table)


STAND_INS: dict[str, str] = {
    "blob": "blob = b'first' + b'second'",
    "offsets": "import numpy\noffsets = numpy.array([0, 5, 11], dtype=numpy.int64)",
    "model": "model = __model__",
    "sub_id": "sub_id = 7",
    "attributes": "attributes = {'event': 'order_placed'}",
    "body": "body = None",
    "charge": "def charge(body):\n    print('charged', bytes(body), flush=True)",
    "render": "async def render(batch):\n    return []",
    "audit": "def audit(message):\n    print('audited', bytes(message.body), flush=True)",
}
"""Python defining each name a sample leaves to its reader."""

TOPOLOGY: dict[str, tuple[list[str], list[str], list[tuple[str, str]]]] = {
    # page: topics, queues, subscriptions the samples expect to exist
    "arrays.md": (["features"], ["features", "raw"], [("features", "features")]),
    "workers.md": (["orders"], ["billing", "thumbnails"], []),
}


def snippets() -> Iterator[tuple[str, int, str | None, str]]:
    """(page, index on the page, marker line or None, code) of every python block."""
    for page in sorted(DOCS.glob("*.md")):
        for index, found in enumerate(BLOCK.finditer(page.read_text())):
            yield page.name, index, found.group("marker"), found.group("code")


SNIPPETS = list(snippets())


def marker_of(marker: str | None) -> tuple[str, list[str]]:
    found = MARKER.fullmatch((marker or "").strip())
    assert found, f"no snippet marker above the block (docs/testing.md): {marker!r}"
    given = [name.strip() for name in (found.group("given") or "").split(",") if name.strip()]
    return found.group("kind"), given


def ids(case: tuple[str, int, str | None, str]) -> str:
    return f"{case[0]}#{case[1]}"


@pytest.mark.parametrize("case", SNIPPETS, ids=ids)
def test_every_block_says_how_it_runs(case: tuple[str, int, str | None, str]) -> None:
    page, _, marker, code = case
    _, given = marker_of(marker)
    compile(code, page, "exec")
    used = {node.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Name)}
    for name in given:
        assert name in STAND_INS, f"{page}: no stand-in for {name!r}"
        assert name in used, f"{page}: the marker gives {name!r}, which the sample never uses"


def test_the_docs_have_samples_of_each_kind() -> None:
    kinds = {marker_of(case[2])[0] for case in SNIPPETS}
    assert {"run", "run with a broker", "process with a broker, stopped by SIGTERM"} <= kinds


def prelude(given: list[str]) -> str:
    return "\n".join(STAND_INS[name] for name in given) + "\n"


@pytest.fixture
def default_broker(short_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                   track: Tracker) -> fastfanout.Server:
    """A server on the default endpoint, under a short temp dir (for this process and its
    children)."""
    runtime = short_dir / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return track.server(default_endpoint())


def build_topology(page: str) -> None:
    topics, queues, subscriptions = TOPOLOGY[page]
    with fastfanout.connect() as client:
        for topic in topics:
            client.create_topic(topic)
        for queue in queues:
            client.create_queue(queue)
        for topic, queue in subscriptions:
            client.subscribe(topic, queue)


def cases_of(kind: str) -> list[tuple[str, int, str | None, str]]:
    return [case for case in SNIPPETS if marker_of(case[2])[0] == kind]


@pytest.mark.parametrize("case", cases_of("run"), ids=ids)
def test_sample_runs(case: tuple[str, int, str | None, str]) -> None:
    page, index, marker, code = case
    namespace: dict[str, Any] = {}
    exec(compile(prelude(marker_of(marker)[1]) + code, f"{page}#{index}", "exec"), namespace)


def test_the_arrays_samples_publish_and_read_back(default_broker: fastfanout.Server) -> None:
    build_topology("arrays.md")
    model = Model()
    for page, index, marker, code in cases_of("run with a broker"):
        assert page == "arrays.md", "a new page's samples need a test of what they did"
        namespace: dict[str, Any] = {"__model__": model}
        exec(compile(prelude(marker_of(marker)[1]) + code, f"{page}#{index}", "exec"),
             namespace)
    assert model.rows == 10_000
    with fastfanout.connect() as client:
        stats = client.stats().queues
        assert (stats["features"].acked, stats["features"].visible) == (10_000, 0)
        raw = client.receive("raw", max_messages=10)
    assert [message.body for message in raw] == [b"first", b"second"]


def test_the_workers_sample_serves_until_sigterm(default_broker: fastfanout.Server,
                                                 track: Tracker,
                                                 tmp_path: pathlib.Path) -> None:
    (case,) = cases_of("process with a broker, stopped by SIGTERM")
    page, _, marker, code = case
    build_topology(page)
    program = tmp_path / "worker_sample.py"
    program.write_text(prelude(marker_of(marker)[1]) + code)
    process = track.process([str(program)])
    with fastfanout.connect() as client:
        def subscribed() -> bool:
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            return len(client.list_subscriptions()) == 1

        wait_until(subscribed, 20.0, "the sample's worker to subscribe audit to orders")
        client.publish("orders", b"refund 1", attributes={"kind": "refund"})
        client.publish("orders", b"new 1", attributes={"kind": "new"})
        client.send("billing", b"invoice 1")
        client.send("thumbnails", b"picture 1")
        wait_until(lambda: [client.stats().queues[name].acked
                            for name in ("audit", "billing", "thumbnails")] == [1, 1, 1],
                   20.0, "the sample's three handlers to ack")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=40.0)
    assert process.returncode == 0, err.decode()
    assert b"charged b'invoice 1'" in out and b"audited b'refund 1'" in out
    assert b"new 1" not in out                 # the filter policy kept it out


def test_fragments_say_why() -> None:
    for page, _, marker, _ in SNIPPETS:
        kind, _ = marker_of(marker)
        if kind.startswith("fragment"):
            assert len(kind) > len("fragment: ") + 10, f"{page}: say why it is a fragment"


def documented_commands() -> Iterator[tuple[str, str]]:
    """(page, command) of each ``fastfanout`` command line in a code block of the README
    and docs/*.md (a prompt such as ``host-a$`` and a trailing comment or ``&`` left out)."""
    for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in re.finditer(r"^```(\w*)\n(.*?)^```", page.read_text(), re.M | re.S):
            if block.group(1) not in ("", "sh"):
                continue
            for line in block.group(2).splitlines():
                line = re.sub(r"^\S+\$ ", "", line.strip())
                line = re.sub(r"^\.venv/bin/fastfanout ", "fastfanout ", line)
                if line.startswith("fastfanout "):
                    yield page.name, line.split(" #")[0].rstrip(" &")


COMMANDS = list(documented_commands())


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{page}: {line}" for page, line in COMMANDS])
def test_every_documented_command_parses(command: tuple[str, str]) -> None:
    """Its command, options and values are the command line's (parsed, not run)."""
    import warnings

    import click

    from fastfanout.cli import cli

    page, line = command
    args = shlex.split(line)[1:]
    with warnings.catch_warnings():
        # Click 8.2 deprecates protected_args, the only public way to a group's rest
        warnings.simplefilter("ignore", DeprecationWarning)
        context = cli.make_context("fastfanout", args)
        command_: click.Command = cli
        while isinstance(command_, click.Group):
            rest = [*context.protected_args, *context.args]
            assert rest, f"{page}: {line!r} names no command"
            name, found, rest = command_.resolve_command(context, rest)
            assert found is not None and name is not None
            context = found.make_context(name, rest, parent=context)
            command_ = found


def test_the_docs_show_the_commands() -> None:
    assert {"README.md", "bench.md", "bridge.md", "workers.md"} <= {page for page, _ in COMMANDS}
