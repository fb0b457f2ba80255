"""numpy views of a delivery batch: bodies, ids, receipts and receive counts as arrays.

A delivery batch arrives as one codec frame (docs/protocol.md): records of a 56-byte
header, the optional parts, the body, padding. ``FrameViews`` reads the frame's layout
natively once (``fastfanout._ext.wire.frame_columns``) and hands out numpy arrays that
view the frame itself, with no Python object per message:

- a batch of fixed-size bodies (every record the same length: no attributes or ids of
  varying size, no dead-letter record) is a strided table: ``ids``, ``receipts``,
  ``receive_counts`` are strided views of the record headers, and ``as_array`` views the
  bodies as one ``(n, *shape)`` array (zero-copy, read-only);
- any other batch gets its columns gathered natively into one small index (8 bytes per
  column per message); ``as_array`` then copies equal-size bodies into a new array.

``bodies`` is the frame as one read-only buffer, ``offsets`` and ``lengths`` where each
body lies in it: body ``i`` is ``bodies[offsets[i]:offsets[i] + lengths[i]]``. The
arrays keep the frame alive; they are read-only (the frame is the broker's delivery).

Each strided view is made over ``numpy.frombuffer(frame)``, never over the frame itself:
``numpy.ndarray(buffer=frame)`` lets go of the frame's buffer at once and keeps only a
reference to the object (a ``memoryview`` passed instead is unwrapped to its object
too), and a frame held in a local channel's ring counts the buffers exported from it to
know whether it is still viewed. An array made so looked unviewed: the ring moved the
frame's bytes out and gave its room back to the broker, and the array read later pushes
(found and fixed on 2026-12-04). ``frombuffer``'s array keeps a memoryview that holds
its export while it lives, and each view keeps that array.

numpy is imported by the first call that makes an array, not with this module: a process
that never asks for an array (a broker, the command line, most clients) pays neither
for loading it (~50 ms) nor for the threads its BLAS library starts, which spin at full
speed for their first ~0.1 s (measured on a 2-core machine, where that spin took the
core a benchmark's third process needed).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

from fastfanout._ext.wire import count_of, frame_columns, receipts_of
from fastfanout.errors import InvalidArgument
from fastfanout.wire import protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from fastfanout.client.messages import Owner, RemoteMessage, Settler

__all__ = ["FrameViews", "MessageBatch"]

_HEADER = 8            # "FFB1" + u32 count
_ID_AT = 24            # offsets in a record header (docs/protocol.md)
_RECEIPT_AT = 48
_RECEIVE_COUNT_AT = 20


def _holds_text(item: Any) -> bool:
    """True when a numpy dtype holds ``str`` (UCS-4) items, in a field or sub-array too."""
    if item.fields:
        return any(_holds_text(field[0]) for field in item.fields.values())
    if item.subdtype is not None:
        return _holds_text(item.subdtype[0])
    return bool(item.kind == "U")


def _dims(shape: Any) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints, numpy integers included) as a tuple.

    Raises:
        InvalidArgument: it is not one, or a dimension is negative.
    """
    dims: tuple[int, ...]
    if type(shape) is tuple and all(type(dim) is int and dim >= 0 for dim in shape):
        return shape   # the usual call, as_array(dtype, (256,)): no exception to catch
    try:
        dims = (operator.index(shape),)
    except TypeError:
        try:
            dims = tuple(operator.index(dim) for dim in shape)
        except TypeError:
            raise InvalidArgument(f"shape {shape!r} must be an int or a tuple of ints"
                                  ) from None
    if any(dim < 0 for dim in dims):
        raise InvalidArgument(f"shape {shape!r} has a negative dimension")
    return dims


class FrameViews:
    """Array views of one delivery frame (the base of the delivery batch classes).

    Args:
        frame: the delivery frame (any buffer holding exactly one record batch).
    """

    def __init__(self, frame: Any) -> None:
        self._frame = frame
        self._layout: tuple[int, int, int, int, bytes | None] | None = None

    def _columns(self) -> tuple[int, int, int, int, bytes | None]:
        if self._layout is None:
            self._layout = frame_columns(self._frame)
        return self._layout

    def _header_view(self, dtype: str, at: int, column: int) -> npt.NDArray[Any]:
        import numpy as np

        count, stride, _, _, index = self._columns()
        if index is None:
            return np.ndarray((count,), dtype=dtype, buffer=self._exported(),
                              offset=_HEADER + at if count else 0,
                              strides=(stride,))
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(index, dtype=dtype, count=count, offset=8 * column * count
                             if itemsize == 8 else 32 * count)

    def _exported(self) -> npt.NDArray[np.uint8]:
        """The frame as a uint8 array holding a buffer export of it while it lives.

        The base of the strided views (see the module essay).
        """
        import numpy as np

        return np.frombuffer(self._frame, dtype=np.uint8)

    @property
    def bodies(self) -> memoryview:
        """The frame as one read-only byte buffer holding every body (see ``offsets``)."""
        return memoryview(self._frame).cast("B").toreadonly()

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        """Where each body starts in ``bodies`` (int64, one per message)."""
        import numpy as np

        count, stride, first_body, _, index = self._columns()
        if index is None:
            return first_body + stride * np.arange(count, dtype=np.int64)
        return np.frombuffer(index, dtype="<i8", count=count)

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """The length of each body in bytes (int64, one per message)."""
        import numpy as np

        count, _, _, body_len, index = self._columns()
        if index is None:
            return np.full(count, max(body_len, 0), dtype=np.int64)
        return np.frombuffer(index, dtype="<i8", count=count, offset=8 * count)

    @property
    def ids(self) -> npt.NDArray[np.uint64]:
        """The message id of every message (uint64), a view of the frame when it can be."""
        return self._header_view("<u8", _ID_AT, 2)

    @property
    def receipts(self) -> npt.NDArray[np.uint64]:
        """The receipt of every message (uint64): ``ack_batch`` takes it as it is."""
        return self._header_view("<u8", _RECEIPT_AT, 3)

    @property
    def receive_counts(self) -> npt.NDArray[np.uint32]:
        """How many times each message was delivered, this time included (uint32)."""
        return self._header_view("<u4", _RECEIVE_COUNT_AT, 4)

    def body(self, index: int) -> memoryview:
        """Body ``index`` as a read-only view of the frame (``bytes(...)`` copies it)."""
        count = self._columns()[0]
        try:   # an int or what stands for one (numpy's): a str met `<=` (TypeError)
            index = operator.index(index)
        except TypeError:
            raise InvalidArgument(
                f"a body index is an int, got {type(index).__name__}") from None
        if not -count <= index < count:
            raise IndexError(f"body index {index} out of range for {count} messages")
        start = int(self.offsets[index])
        return self.bodies[start:start + int(self.lengths[index])]

    def body_list(self) -> list[bytes]:
        """Every body as ``bytes`` (a copy each: for code that wants Python objects)."""
        frame = self.bodies
        return [bytes(frame[start:start + length])
                for start, length in zip(self.offsets.tolist(), self.lengths.tolist(),
                                         strict=True)]

    def as_array(self, dtype: npt.DTypeLike, shape: int | tuple[int, ...] | None = None
                 ) -> npt.NDArray[Any]:
        """The bodies as one ``(n, *shape)`` array of ``dtype``: one row per message.

        A zero-copy, read-only view of the frame when its records are all alike (fixed-
        size bodies without attributes or ids of varying size); otherwise a copy.

        Args:
            dtype: the item type of a body (``numpy.float32``, a structured dtype ...).
            shape: the shape of one body in items (default: ``(body_len // itemsize,)``).

        Raises:
            InvalidArgument: the bodies differ in size, a body's size is not that of
                ``shape`` items of ``dtype``, ``shape`` is not an int or a tuple of
                ints, or ``dtype`` is not a dtype or holds Python objects or text
                (``str`` items, as ``"U1"``: not every body is valid UCS-4).
        """
        import numpy as np

        count, stride, first_body, body_len, index = self._columns()
        try:
            item = np.dtype(dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"as_array: dtype {dtype!r} is not a numpy dtype ({exc})"
                                  ) from None
        if item.hasobject:
            # a view would read the body bytes as object pointers: a crash on first use
            raise InvalidArgument(
                f"as_array cannot view bodies as {item}: it holds Python objects; use a "
                f"dtype of plain data (numeric, bytes, records of those)")
        if _holds_text(item):
            # UCS-4 items: most 4-byte values are no code point, and numpy fails on them
            # with its own SystemError when the array is printed or read
            raise InvalidArgument(
                f"as_array cannot view bodies as {item}: it holds text (str items), which "
                f"arbitrary bytes are not; use bytes items ('S<n>') and decode them")
        if count and body_len < 0:
            lengths = self.lengths
            raise InvalidArgument(
                f"as_array needs bodies of one size; this batch's run from "
                f"{int(lengths.min())} to {int(lengths.max())} bytes")
        size = max(body_len, 0)
        if shape is None:
            if item.itemsize == 0 or size % item.itemsize:
                raise InvalidArgument(
                    f"a body of {size} bytes is not a whole number of {item} items "
                    f"({item.itemsize} bytes each)")
            dims: tuple[int, ...] = (size // item.itemsize,)
        else:
            dims = _dims(shape)
            if math.prod(dims) * item.itemsize != size:
                raise InvalidArgument(
                    f"shape {shape!r} of {item} items is not a body of {size} bytes")
        if count == 0:
            return np.empty((0, *dims), dtype=item)
        if index is None:
            inner: list[int] = []
            step = item.itemsize
            for dim in reversed(dims):
                inner.append(step)
                step *= dim
            return np.ndarray((count, *dims), dtype=item, buffer=self._exported(),
                              offset=first_body, strides=(stride, *reversed(inner)))
        rows = self._exported()[self.offsets[:, None] + np.arange(size, dtype=np.int64)]
        table: npt.NDArray[Any] = rows.view(item).reshape((count, *dims))
        return table


class MessageBatch(FrameViews, Sequence["RemoteMessage"]):
    r"""A delivery frame as a sequence of messages, built only when indexed or iterated.

    The array views of ``FrameViews`` (``bodies`` with ``offsets`` and ``lengths``,
    ``ids``, ``receipts``, ``receive_counts``, ``as_array``) read the frame itself, with
    no Python object per message (see ``fastfanout.arrays``). The base of the blocking
    client's ``DeliveryBatch``, the asyncio client's ``AsyncDeliveryBatch`` and the
    embedded broker's ``BrokerBatch``. Its messages are ``RemoteMessage``\ s (the fields
    and settle calls of ``fastfanout.Message``).

    Args:
        frame: the delivery frame (bytes, or a read-only buffer: a frame held in a local
            channel's ring, which stays there while this batch or a view of it lives).
        owner: what settles a message by receipt (the client, or the broker).
        settler: where the messages' pipelined acks go (``defer_settle``).
        queue: the queue the batch came from.
    """

    def __init__(self, frame: Any, owner: Owner, settler: Settler, queue: str) -> None:
        super().__init__(frame)
        self._owner = owner
        self._settler = settler
        self._queue = queue
        # Records are decoded only when messages are looked at: a consumer that acks a
        # whole batch never makes a Python object per message.
        self._count = count_of(frame)
        self._messages: list[RemoteMessage] | None = None
        self._settled = False

    @property
    def frame(self) -> bytes:
        """The delivery frame as received (codec layout, see docs/protocol.md).

        A copy when the frame is held in place in a local channel's ring (``bodies``
        and the array views read it there).
        """
        frame = self._frame
        return frame if type(frame) is bytes else bytes(frame)

    def _materialise(self) -> list[RemoteMessage]:
        if self._messages is None:
            # The client's message class, imported when first needed: the embedded broker
            # (BrokerBatch) must not load the client package while it loads itself.
            from fastfanout.client.messages import RemoteMessage, dead_letters

            records = protocol.codec_module().decode_batch(self._frame)
            dead = dead_letters(records)
            self._messages = [RemoteMessage(record, self._owner, self._settler,
                                            dead.get(index), self._queue)
                              for index, record in enumerate(records)]
            if self._settled:
                # made after the batch's ack: settled with it, so their own ack goes to
                # the owner (and a stale receipt raises there, as in the embedded broker)
                for message in self._messages:
                    message.detach()
        return self._messages

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> RemoteMessage: ...
    @overload
    def __getitem__(self, index: slice) -> list[RemoteMessage]: ...

    def __getitem__(self, index: int | slice) -> RemoteMessage | list[RemoteMessage]:
        return self._materialise()[index]

    def _unsettled(self) -> bytes | None:
        """The receipts a batch ack settles (packed), or None: nothing to do.

        Marks the batch settled.
        """
        if self._settled:
            return None
        self._settled = True
        if self._messages is not None:
            live = [message for message in self._messages if message.detach()]
            if len(live) < self._count:
                # some were settled one by one: ack only the others (the batch's frame
                # would be refused whole for the receipts already acked)
                if not live:
                    return None
                return protocol.encode_receipts([message.receipt for message in live])
        if self._layout is not None and self._layout[4] is None:
            # the layout is known (an array view was made) and alike for every record:
            # gather the receipts at their stride, without decoding the frame again
            return self.receipts.tobytes()
        return receipts_of(self._frame)
