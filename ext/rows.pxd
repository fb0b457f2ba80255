# Array batches: many bodies given as one buffer, read with no Python object per message.
# Header-only, like bodies.pxd: batches (the embedded broker) and wire (the clients) read
# the same forms and word a refusal the same way.
#
# The forms (``entries`` of publish_batch / send_batch / a producer's offer_batch):
# - a buffer of two or more dimensions (a 2-D uint8 numpy array, any 2-D array, a 2-D
#   memoryview ...) or a 1-D structured one (numpy record dtype): one row along the first
#   axis = one body, its bytes. The rows may be strided (``array[::2]``); each row must be
#   C-contiguous. (Another 1-D buffer is iterated as before: each item a body.)
# - a 2-tuple ``(buffer, offsets)``: ``buffer`` any C-contiguous buffer, ``offsets`` a 1-D
#   integer buffer (items of 4 or 8 bytes) of n + 1 non-decreasing byte offsets into it
#   (a tuple whose second item holds numbers wider than a byte, integers or floats, is
#   read as this form, and refused if its offsets are not of that kind: float offsets
#   were taken for a second body until 2026-12-07);
#   body i is ``buffer[offsets[i]:offsets[i + 1]]`` (Arrow's layout).
# A buffer of Python objects (numpy's object dtype, or records with such a field) is
# refused in every form: its bytes are pointers into this process. So is a 0-d buffer
# (no rows), which used to reach the list path and fail there with a TypeError.
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBUF_RECORDS_RO,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fastfanout._ext.bodies cimport ff_format_has_objects, ff_refuse_objects


cdef struct ff_rows:
    const char* base          # the data buffer
    Py_ssize_t count          # bodies
    Py_ssize_t stride         # fixed rows: bytes from one row to the next (may be < 0)
    Py_ssize_t row_len        # fixed rows: bytes of one row
    const char* offsets       # NULL: fixed rows; else the offsets buffer's first item
    Py_ssize_t offsets_stride
    bint offsets_signed
    int offsets_size          # bytes of one offset: 4 or 8
    Py_buffer data
    Py_buffer offs
    bint have_offs


cdef inline int _rows_refuse(str message) except -1:
    from fastfanout.errors import InvalidArgument
    raise InvalidArgument(message)


cdef inline int ff_int_kind(const char* fmt, Py_ssize_t itemsize) noexcept:
    """The letter of a buffer format of 4- or 8-byte native integers (after an optional
    '@', '=' or '<' on this little-endian build), or 0."""
    cdef char letter
    if fmt == NULL:
        return 0
    if fmt[0] == b'@' or fmt[0] == b'=' or fmt[0] == b'<':
        fmt += 1
    letter = fmt[0]
    if fmt[1] != 0:
        return 0
    if letter in b"qQlLiIn" and (itemsize == 4 or itemsize == 8):
        return letter
    return 0


cdef inline int64_t ff_load_int(const char* at, int size, bint signed) noexcept:
    """An integer of ``size`` (4 or 8) bytes as int64 (a u64 beyond int64 reads < 0)."""
    cdef int64_t value = 0
    cdef int32_t small = 0
    if size == 8:
        memcpy(&value, at, 8)
        return value
    memcpy(&small, at, 4)
    return <int64_t>small if signed else <int64_t><uint32_t>small


cdef inline int64_t _offset_at(ff_rows* rows, Py_ssize_t i) noexcept:
    """Offset ``i`` as int64 (an unsigned value beyond int64 reads negative: refused)."""
    return ff_load_int(rows.offsets + i * rows.offsets_stride, rows.offsets_size,
                       rows.offsets_signed)


cdef inline int _offset_refuse(ff_rows* rows, Py_ssize_t i, int64_t value) except -1:
    """Refuse offset ``i``, read as the negative ``value``: below 0, or (unsigned 8-byte
    offsets) beyond int64, and so beyond any buffer."""
    if rows.offsets_signed:
        _rows_refuse(f"offsets[{i}]={value} must be >= 0")
    _rows_refuse(f"offsets[{i}]={<uint64_t>value} is beyond the buffer's {rows.data.len} bytes")


cdef inline bint _structured(const char* fmt) noexcept:
    """A buffer format of records: numpy's ``T{...}`` or ``<n>x`` (void)."""
    cdef Py_ssize_t i = 0
    if fmt == NULL:
        return False
    while fmt[i] != 0:
        if fmt[i] == b'{':
            return True
        i += 1
    return i > 0 and fmt[i - 1] == b'x'


cdef inline bint _wide_number_format(const char* fmt, Py_ssize_t itemsize) noexcept:
    """A buffer format of one number wider than a byte: an integer (any size, any
    order) or a float (half, single, double)."""
    if fmt == NULL or itemsize < 2:
        return False
    if fmt[0] in b"@=<>!":
        fmt += 1
    return fmt[0] != 0 and fmt[1] == 0 and fmt[0] in b"hHiIlLqQnNefd"


cdef inline bint _is_offsets(object value) noexcept:
    """``value`` is meant as offsets: a buffer of numbers wider than a byte (whether
    it is a usable one, 1-D of 4- or 8-byte integers, is ``ff_rows_open``'s check; bytes
    and 1-byte items stay bodies). Floats count: ``(buffer, numpy.array([0.0, 4.0]))``
    was published as two bodies, the buffer and the offsets' own bytes."""
    cdef Py_buffer view
    cdef bint found = False
    if type(value) is bytes or type(value) is bytearray or not PyObject_CheckBuffer(value):
        return False
    try:
        PyObject_GetBuffer(value, &view, PyBUF_RECORDS_RO)
    except Exception:
        return False
    found = _wide_number_format(view.format, view.itemsize)
    PyBuffer_Release(&view)
    return found


cdef inline int ff_rows_open(object entries, ff_rows* rows) except -1:
    """Read ``entries`` as an array batch into ``rows`` (release with ``ff_rows_close``).

    Returns:
        1 when ``entries`` is an array form (``rows`` filled), 0 when it is not (nothing
        to release: the caller iterates it as bodies and entries).

    Raises:
        InvalidArgument: an array form that cannot be read: a row or the buffer not
            C-contiguous, offsets out of order or outside the buffer, a 0-d array, a
            buffer of Python objects.
    """
    cdef Py_ssize_t i
    cdef Py_ssize_t k
    cdef Py_ssize_t expected
    cdef int64_t previous
    cdef int64_t current
    rows.have_offs = False
    rows.offsets = NULL
    if type(entries) is list or type(entries) is bytes or type(entries) is bytearray \
            or type(entries) is str:
        return 0
    if type(entries) is tuple:
        if len(<tuple>entries) != 2 or not _is_offsets((<tuple>entries)[1]):
            return 0
        data, offsets = <tuple>entries
        if not PyObject_CheckBuffer(data):
            _rows_refuse(f"a (buffer, offsets) batch needs a buffer first, got "
                         f"{type(data).__name__}")
        try:
            PyObject_GetBuffer(data, &rows.data, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except (BufferError, ValueError, TypeError):
            _rows_refuse(f"the buffer of a (buffer, offsets) batch must be C-contiguous; "
                         f"this {type(data).__name__} is not (numpy.ascontiguousarray)")
        if ff_format_has_objects(rows.data.format):
            PyBuffer_Release(&rows.data)
            ff_refuse_objects(data, "the buffer of a (buffer, offsets) batch")
        try:
            PyObject_GetBuffer(offsets, &rows.offs, PyBUF_RECORDS_RO)
        except BaseException:
            PyBuffer_Release(&rows.data)
            raise
        if rows.offs.ndim != 1 or ff_int_kind(rows.offs.format, rows.offs.itemsize) == 0:
            shape = (f"{rows.offs.ndim}-D of {rows.offs.itemsize}-byte items of format "
                     f"{(<bytes>rows.offs.format).decode('ascii', 'replace')!r}")
            PyBuffer_Release(&rows.offs)
            PyBuffer_Release(&rows.data)
            _rows_refuse(f"the offsets of a (buffer, offsets) batch must be a 1-D array of "
                         f"4- or 8-byte integers in native byte order; these are {shape}")
        rows.have_offs = True
        rows.base = <const char*>rows.data.buf
        rows.offsets = <const char*>rows.offs.buf
        rows.offsets_stride = rows.offs.strides[0]
        rows.offsets_signed = ff_int_kind(rows.offs.format, rows.offs.itemsize) in b"qlin"
        rows.offsets_size = <int>rows.offs.itemsize
        rows.count = rows.offs.shape[0] - 1
        rows.stride = 0
        rows.row_len = 0
        try:
            if rows.count < 0:
                _rows_refuse("a (buffer, offsets) batch needs n + 1 offsets, got none")
            previous = _offset_at(rows, 0)
            if previous < 0:
                _offset_refuse(rows, 0, previous)
            for i in range(1, rows.count + 1):
                current = _offset_at(rows, i)
                if current < 0:
                    _offset_refuse(rows, i, current)
                if current < previous:
                    _rows_refuse(f"offsets[{i}]={current} is below offsets[{i - 1}]="
                                 f"{previous}: offsets must not decrease")
                previous = current
            if previous > rows.data.len:
                _rows_refuse(f"offsets[{rows.count}]={previous} is beyond the buffer's "
                             f"{rows.data.len} bytes")
        except BaseException:
            ff_rows_close(rows)
            raise
        return 1
    if not PyObject_CheckBuffer(entries):
        return 0
    try:
        PyObject_GetBuffer(entries, &rows.data, PyBUF_RECORDS_RO)
    except (BufferError, ValueError, TypeError):
        return 0
    if rows.data.ndim == 0:
        PyBuffer_Release(&rows.data)
        _rows_refuse(f"an array batch needs rows (one body each); this 0-d "
                     f"{type(entries).__name__} has none (array[None] is one row)")
    if rows.data.ndim < 2 and not (rows.data.ndim == 1 and _structured(rows.data.format)):
        PyBuffer_Release(&rows.data)
        return 0
    try:
        if ff_format_has_objects(rows.data.format):
            ff_refuse_objects(entries, "an array batch")
        rows.base = <const char*>rows.data.buf
        rows.count = rows.data.shape[0]
        rows.stride = rows.data.strides[0]
        rows.row_len = rows.data.itemsize
        for k in range(1, rows.data.ndim):
            rows.row_len *= rows.data.shape[k]
        expected = rows.data.itemsize
        for k in range(rows.data.ndim - 1, 0, -1):
            if rows.data.shape[k] > 1 and rows.data.strides[k] != expected:
                _rows_refuse(
                    f"an array batch's rows must each be C-contiguous; this "
                    f"{type(entries).__name__}'s are not (numpy.ascontiguousarray)")
            expected *= rows.data.shape[k]
    except BaseException:
        PyBuffer_Release(&rows.data)
        raise
    return 1


cdef inline void ff_rows_get(ff_rows* rows, Py_ssize_t i, const char** body,
                             Py_ssize_t* length) noexcept:
    """Body ``i`` of an open array batch."""
    cdef int64_t start
    if rows.offsets == NULL:
        body[0] = rows.base + i * rows.stride
        length[0] = rows.row_len
    else:
        start = _offset_at(rows, i)
        body[0] = rows.base + start
        length[0] = <Py_ssize_t>(_offset_at(rows, i + 1) - start)


cdef inline void ff_rows_close(ff_rows* rows) noexcept:
    PyBuffer_Release(&rows.data)
    if rows.have_offs:
        PyBuffer_Release(&rows.offs)
        rows.have_offs = False
