"""docs/protocol.md keeps up with the code: a subsection for every opcode and every call.

The operations reference of docs/protocol.md has one heading per opcode,
``### 0xNN NAME`` (``### 0xNN NAME: `call_name``` for the operations of
``protocol.CALLS``), each with its request, reply and errors written out. These tests
fail when an opcode or a call is added, renamed or renumbered without its subsection,
or when a subsection names one that no longer exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastfanout.wire.protocol import CALLS, Opcode

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

_HEADING = re.compile(r"^(#{2,6})\s+(.*?)\s*$")
_OPERATION = re.compile(r"^0x([0-9A-Fa-f]{2}) ([A-Z][A-Z_]*)(?::\s*`([a-z_]+)`)?$")


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading text, body up to the next heading) for every heading outside code."""
    sections: list[tuple[str, str]] = []
    heading: str | None = None
    body: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            if heading is not None:
                sections.append((heading, "\n".join(body)))
            heading, body = match.group(2), []
        else:
            body.append(line)
    if heading is not None:
        sections.append((heading, "\n".join(body)))
    return sections


def _operations() -> dict[str, tuple[int, str | None, str]]:
    """Operation subsections: opcode name -> (value, call name or None, body)."""
    found: dict[str, tuple[int, str | None, str]] = {}
    for heading, body in _sections(DOC.read_text(encoding="utf-8")):
        match = _OPERATION.match(heading)
        if match:
            value, name, call = int(match.group(1), 16), match.group(2), match.group(3)
            assert name not in found, f"two subsections for {name} in {DOC.name}"
            found[name] = (value, call, body)
    return found


OPERATIONS = _operations()


@pytest.mark.parametrize("opcode", list(Opcode), ids=lambda op: op.name)
def test_every_opcode_has_a_subsection(opcode: Opcode) -> None:
    assert opcode.name in OPERATIONS, (
        f"docs/protocol.md has no subsection '### 0x{opcode.value:02X} {opcode.name}' "
        f"in its operations reference")
    value, _, _ = OPERATIONS[opcode.name]
    assert value == opcode.value, (
        f"docs/protocol.md numbers {opcode.name} 0x{value:02X}; the code says "
        f"0x{opcode.value:02X}")


@pytest.mark.parametrize("opcode", list(CALLS), ids=lambda op: CALLS[op])
def test_every_call_names_its_operation(opcode: int) -> None:
    name = Opcode(opcode).name
    assert name in OPERATIONS, f"docs/protocol.md has no subsection for {name}"
    _, call, _ = OPERATIONS[name]
    assert call == CALLS[opcode], (
        f"the subsection of {name} must be headed '### 0x{opcode:02X} {name}: "
        f"`{CALLS[opcode]}`' (it says {call!r})")


def test_only_calls_name_a_call() -> None:
    stray = {name for name, (_, call, _) in OPERATIONS.items()
             if call is not None and Opcode[name] not in CALLS}
    assert not stray, f"subsections name a call for opcodes outside CALLS: {stray}"


def test_no_subsection_for_an_opcode_that_does_not_exist() -> None:
    unknown = set(OPERATIONS) - {opcode.name for opcode in Opcode}
    assert not unknown, f"docs/protocol.md documents opcodes the code lacks: {unknown}"


@pytest.mark.parametrize("opcode", list(Opcode), ids=lambda op: op.name)
def test_every_subsection_gives_request_reply_and_errors(opcode: Opcode) -> None:
    if opcode.name not in OPERATIONS:
        pytest.fail(f"docs/protocol.md has no subsection for {opcode.name}")
    _, _, body = OPERATIONS[opcode.name]
    for part in ("**Request**", "**Reply**", "**Errors**"):
        assert part in body, f"the subsection of {opcode.name} lacks its {part} item"
