# Frame building and reading for the wire, without a Python object per message.
from libc.stdint cimport uint32_t

from fastfanout._ext.codec cimport ff_out_buffer


cdef class FrameBuilder:
    cdef ff_out_buffer out
    cdef readonly Py_ssize_t body_bytes
    cdef bytes _group   # the group id every record gets (a producer's), or None

    cdef int _append_bytes(self, bytes body) except -1
    cdef int _append_row(self, const char* body, Py_ssize_t length, Py_ssize_t index) except -1
    cdef void _rewind(self, uint32_t count, size_t length, Py_ssize_t body_bytes) noexcept


cdef int check_body_size(object body, Py_ssize_t limit, object too_large) except -1
