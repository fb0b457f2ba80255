from typing import Final

FULL: Final[int]
WROTE: Final[int]
WROTE_WAKE: Final[int]
TOO_LARGE: Final[int]
PINNED: Final[int]
REFUSED: Final[int]

class FrameSink:
    """Where the native delivery path writes a push in place (see ext/sinks.pyx)."""

    def __init__(self) -> None: ...

class FrameSource:
    """A frame that writes itself where it goes (see ext/sinks.pyx); len() is its size."""

    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int: ...
