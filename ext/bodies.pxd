# How a message body is read: any C-contiguous buffer (bytes, bytearray, memoryview of any
# format, array.array, numpy arrays ...) as its flat bytes. Header-only: inline helpers
# that batches (the embedded broker), wire (the clients) and ring (the embedded producer)
# share, so every face takes the same bodies and words a refusal the same way. Each
# caller keeps its own exact-bytes fast path in front; these run only for other types.
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_CheckBuffer, PyObject_GetBuffer


cdef inline int _refuse_body(object body, Py_ssize_t index, bint buffer) except -1:
    from fastfanout.errors import InvalidArgument
    if buffer:
        raise InvalidArgument(
            f"entry {index}: a body must be a C-contiguous buffer; this "
            f"{type(body).__name__} is not (copy it first: bytes(body), or "
            f"numpy.ascontiguousarray)")
    raise InvalidArgument(
        f"entry {index}: a body must be bytes-like (bytes, bytearray, memoryview or any "
        f"C-contiguous buffer), got {type(body).__name__}")


cdef inline int ff_body_buffer(object body, Py_buffer* view, Py_ssize_t index) except -1:
    """Fill ``view`` with ``body``'s bytes (release it with PyBuffer_Release).

    A ``PyBUF_SIMPLE`` request: the exporter hands out its bytes only when they are
    C-contiguous (the buffer protocol's rule), whatever its item format.
    ``index``: the entry's position in the caller's list (0 for a single body), named
    in the error.

    Raises:
        InvalidArgument: ``body`` is not a buffer, or not a C-contiguous one.
    """
    if PyObject_CheckBuffer(body):
        try:
            PyObject_GetBuffer(body, view, PyBUF_SIMPLE)
            return 0
        except (BufferError, ValueError, TypeError):   # memoryview, numpy, others: refused
            pass
        _refuse_body(body, index, True)
    _refuse_body(body, index, False)
    return -1
