"""Reading a request's payload frames: the checks every handler of the server shares.

A request is a header frame and payload frames (docs/protocol.md). A frame a handler
needs and does not get, a name that is not UTF-8, arguments that are not a msgpack
``[args, kwargs]``: each is ``MalformedFrame``, answered to the request, never a crash of
the loop.
"""

from __future__ import annotations

from typing import Any

from fastfanout.errors import MalformedFrame
from fastfanout.wire import protocol

__all__ = ["arguments", "frame", "text"]


def frame(frames: list[bytes], index: int, what: str) -> bytes:
    """Payload frame ``index`` of a request; ``MalformedFrame`` naming ``what`` if absent."""
    if len(frames) <= index:
        raise MalformedFrame(f"missing payload frame {index} ({what})")
    return frames[index]


def text(data: bytes, what: str) -> str:
    """A frame holding a name, decoded; ``MalformedFrame`` naming ``what`` if not UTF-8."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise MalformedFrame(f"{what} is not UTF-8") from None


def arguments(frames: list[bytes]) -> tuple[list[Any], dict[str, Any]]:
    """A call's ``(args, kwargs)`` from its first payload frame (none: no arguments)."""
    value = protocol.decode_payload(frame(frames, 0, "arguments")) if frames else [[], {}]
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], list)
            or not isinstance(value[1], dict)):
        raise MalformedFrame("arguments must be a msgpack array [args, kwargs]")
    return value[0], value[1]
