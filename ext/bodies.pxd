# How a message body is read: any C-contiguous buffer (bytes, bytearray, memoryview of any
# format, array.array, numpy arrays ...) as its flat bytes, but not one of Python objects
# (a numpy object array: its bytes are pointers, meaningless anywhere else). Header-only: inline helpers
# that batches (the embedded broker), wire (the clients) and ring (the embedded producer)
# share, so every face takes the same bodies and words a refusal the same way. Each
# caller keeps its own exact-bytes fast path in front; these run only for other types.
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_FULL_RO,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)


cdef inline bint ff_format_has_objects(const char* fmt) noexcept:
    """A buffer format holding Python object references (``O``, numpy's object dtype, or
    a record with such a field): its bytes are pointers into this process, not data.
    Field names (``:name:``) are skipped."""
    cdef Py_ssize_t i = 0
    if fmt == NULL:
        return False
    while fmt[i] != 0:
        if fmt[i] == b':':
            i += 1
            while fmt[i] != 0 and fmt[i] != b':':
                i += 1
            if fmt[i] == 0:
                return False
        elif fmt[i] == b'O':
            return True
        i += 1
    return False


cdef inline int ff_refuse_objects(object value, str what) except -1:
    from fastfanout.errors import InvalidArgument
    raise InvalidArgument(
        f"{what} must hold plain data; this {type(value).__name__} holds Python objects "
        f"(its bytes would be pointers into this process): encode them to bytes first")


cdef inline str ff_entry(Py_ssize_t index):
    """How an error names the body's place: ``entry N: `` in a batch, nothing for the one
    body of a single call (``index`` -1)."""
    return f"entry {index}: " if index >= 0 else ""


cdef inline int _refuse_body(object body, Py_ssize_t index, bint buffer) except -1:
    from fastfanout.errors import InvalidArgument
    cdef Py_buffer any_layout
    if buffer:
        # refused as C-contiguous: is it another layout, or no buffer at all? (a numpy
        # datetime64/timedelta64 array has the buffer slot but exports no buffer)
        try:
            PyObject_GetBuffer(body, &any_layout, PyBUF_FULL_RO)
        except (BufferError, ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"{ff_entry(index)}a body must be bytes-like; this {type(body).__name__} "
                f"exports no buffer ({exc}): view its data as plain bytes first (a numpy "
                f"datetime64 or timedelta64 array: array.view('int64'))") from None
        PyBuffer_Release(&any_layout)
        raise InvalidArgument(
            f"{ff_entry(index)}a body must be a C-contiguous buffer; this "
            f"{type(body).__name__} is not (copy it first: bytes(body), or "
            f"numpy.ascontiguousarray)")
    raise InvalidArgument(
        f"{ff_entry(index)}a body must be bytes-like (bytes, bytearray, memoryview or any "
        f"C-contiguous buffer), got {type(body).__name__}")


cdef inline int ff_body_buffer(object body, Py_buffer* view, Py_ssize_t index) except -1:
    """Fill ``view`` with ``body``'s bytes (release it with PyBuffer_Release).

    A C-contiguous request: the exporter hands out its bytes only when they are
    C-contiguous (the buffer protocol's rule), whatever its item format, except a
    format of Python objects (a numpy object array: its bytes are pointers).
    ``index``: the entry's position in the caller's list (0 for a single body), named
    in the error.

    Raises:
        InvalidArgument: ``body`` is not a buffer, not a C-contiguous one, or one of
            Python objects.
    """
    cdef bint have_view = False
    if PyObject_CheckBuffer(body):
        try:
            PyObject_GetBuffer(body, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
            have_view = True
        except (BufferError, ValueError, TypeError):   # memoryview, numpy, others: refused
            pass
        if not have_view:
            _refuse_body(body, index, True)
        if ff_format_has_objects(view.format):
            PyBuffer_Release(view)
            ff_refuse_objects(body, f"{ff_entry(index)}a body")
        return 0
    _refuse_body(body, index, False)
    return -1
