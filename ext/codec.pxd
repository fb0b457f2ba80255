# Batch record codec: the one frame/record layout shared by ring, store, fanout and wire.
#
# The layout is written down in the opening essay of codec.pyx. This file is the contract
# other extension modules cimport: little-endian field access, a bounds-checked frame
# reader that yields zero-copy record views, a growable frame writer, and the "ring
# batch" form (u32 length + bytes, repeated) the ring moves. Every function here is
# `noexcept nogil` and reports faults with the status codes below, so callers may use it
# with the GIL released and turn a status into an exception only at the Python edge.
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef enum:
    FF_BATCH_HEADER_SIZE = 8
    FF_RECORD_HEADER_SIZE = 56
    FF_RECORD_ALIGN = 8
    FF_RING_BATCH_PREFIX = 4           # u32 length in front of each ring-batch record
    FF_MAX_SHORT_FIELD = 0xFFFF        # name, group and dedup lengths are u16

# Limits beyond INT_MAX cannot be enum constants in C, so they are typed macros.
cdef extern from *:
    """
    #define FF_MAX_RECORD_LEN ((uint64_t)0xFFFFFFF8u)
    #define FF_MAX_U32 ((uint32_t)0xFFFFFFFFu)
    """
    const uint64_t FF_MAX_RECORD_LEN   # largest multiple of 8 a u32 record_len holds
    const uint32_t FF_MAX_U32

# b"FFB1" read as a little-endian u32.
cdef enum:
    FF_BATCH_MAGIC = 0x31424646

cdef enum:
    FF_FLAG_DELIVER_AT = 0x01
    FF_FLAG_PRIORITY = 0x02
    FF_FLAG_RECEIPT = 0x04
    FF_FLAG_DEAD_LETTER = 0x08         # delivery record: name holds the dead-letter record (JSON)
    FF_FLAG_EXPIRES = 0x10             # publish record: the receipt slot holds expires_at_us
    FF_FLAG_TOPIC = 0x20               # delivery record: name holds the topic it was published on
    # Publish records: a relative time, counted from the broker's acceptance on the
    # broker's clock (a client's clock may differ from it): with bit0, deliver_at_us holds
    # a delay in µs; with bit4, the receipt slot holds a ttl in µs.
    FF_FLAG_DELAY = 0x40
    FF_FLAG_TTL = 0x80
    FF_FLAGS_KNOWN = 0xFF

# Status codes: 0 ok, 1 clean end of frame, negative = the specific malformation.
cdef enum:
    FF_CODEC_OK = 0
    FF_CODEC_END = 1
    FF_CODEC_SHORT_HEADER = -1         # frame shorter than the 8-byte batch header
    FF_CODEC_BAD_MAGIC = -2            # header does not start with b"FFB1"
    FF_CODEC_SHORT_RECORD = -3         # fewer bytes left than a record header / prefix
    FF_CODEC_BAD_RECORD_LEN = -4       # record_len < 56 or not a multiple of 8
    FF_CODEC_RECORD_OVERRUN = -5       # record_len runs past the end of the frame
    FF_CODEC_PARTS_OVERRUN = -6        # variable parts do not fit in record_len
    FF_CODEC_BAD_PADDING = -7          # padding longer than 7 bytes, or not zero
    FF_CODEC_BAD_FLAGS = -8            # a flag bit outside FF_FLAGS_KNOWN is set
    FF_CODEC_COUNT_MISMATCH = -9       # header count disagrees with the records present
    FF_CODEC_FIELD_TOO_LONG = -10      # writer: a part exceeds its length field
    FF_CODEC_NO_MEMORY = -11           # writer: the output buffer could not grow
    FF_CODEC_TOO_MANY_RECORDS = -12    # writer: the u32 record count would overflow
    FF_CODEC_STRAY_FIELD = -13         # an optional field is non-zero but its flag is clear


# A record inside a frame (reader output) or to be written (writer input). Pointers
# point into the caller's buffer: no copy is made, so a view is valid only as long as
# the buffer it was read from. Optional scalar fields are meaningful only when their
# flag bit is set and must be 0 otherwise: the writer stores them as given and the
# reader refuses a non-zero value without its flag (FF_CODEC_STRAY_FIELD).
cdef struct ff_record_view:
    const char* start                  # reader: first byte of the record (header)
    uint32_t record_len                # reader: total record size, padding included
    uint8_t flags
    uint8_t priority
    uint32_t receive_count
    uint64_t id
    int64_t timestamp_us
    int64_t deliver_at_us
    uint64_t receipt
    const char* name                   # topic or queue name, UTF-8 (length 0 = none)
    uint32_t name_len
    const char* group
    uint32_t group_len
    const char* dedup
    uint32_t dedup_len
    const char* attrs                  # encoded attributes, opaque to the codec
    uint32_t attrs_len
    const char* body
    uint32_t body_len


# Cursor over one batch frame (py-pgproto frb style): `pos`/`remaining` shrink together
# and no read ever goes past `pos + remaining`.
cdef struct ff_frame_reader:
    const char* frame                  # first byte of the frame, for fault offsets
    const char* pos
    size_t remaining
    uint32_t count                     # records the header declares
    uint32_t index                     # records read so far


# Growable output frame. Always holds a valid frame: the header count is patched on
# every append, so `data[:length]` can be sent at any point.
cdef struct ff_out_buffer:
    char* data
    size_t length
    size_t capacity
    uint32_t count


# ---- little-endian field access (byte-wise: no unaligned-access UB, no host-order
# assumption; GCC and Clang fuse each into a single load/store at -O2) ----

cdef inline uint16_t ff_load_le16(const char* p) noexcept nogil:
    cdef const uint8_t* b = <const uint8_t*>p
    return <uint16_t>(b[0] | (<uint16_t>b[1] << 8))


cdef inline uint32_t ff_load_le32(const char* p) noexcept nogil:
    cdef const uint8_t* b = <const uint8_t*>p
    return (<uint32_t>b[0] | (<uint32_t>b[1] << 8) | (<uint32_t>b[2] << 16)
            | (<uint32_t>b[3] << 24))


cdef inline uint64_t ff_load_le64(const char* p) noexcept nogil:
    return <uint64_t>ff_load_le32(p) | (<uint64_t>ff_load_le32(p + 4) << 32)


cdef inline void ff_store_le16(char* p, uint16_t value) noexcept nogil:
    cdef uint8_t* b = <uint8_t*>p
    b[0] = <uint8_t>value
    b[1] = <uint8_t>(value >> 8)


cdef inline void ff_store_le32(char* p, uint32_t value) noexcept nogil:
    cdef uint8_t* b = <uint8_t*>p
    b[0] = <uint8_t>value
    b[1] = <uint8_t>(value >> 8)
    b[2] = <uint8_t>(value >> 16)
    b[3] = <uint8_t>(value >> 24)


cdef inline void ff_store_le64(char* p, uint64_t value) noexcept nogil:
    ff_store_le32(p, <uint32_t>value)
    ff_store_le32(p + 4, <uint32_t>(value >> 32))


cdef inline uint64_t ff_align8(uint64_t size) noexcept nogil:
    return (size + 7) & ~(<uint64_t>7)


# ---- reader ----

cdef inline size_t ff_reader_offset(const ff_frame_reader* reader) noexcept nogil:
    """Byte offset of the reader (where the next record, or the fault, starts)."""
    return <size_t>(reader.pos - reader.frame)


cdef inline int ff_reader_open(ff_frame_reader* reader, const char* frame,
                               size_t length) noexcept nogil:
    """Check the batch header of `frame[:length]`; on 0 the reader is at record 0."""
    reader.frame = frame
    reader.pos = frame
    reader.remaining = length
    reader.count = 0
    reader.index = 0
    if length < FF_BATCH_HEADER_SIZE:
        return FF_CODEC_SHORT_HEADER
    if ff_load_le32(frame) != FF_BATCH_MAGIC:
        return FF_CODEC_BAD_MAGIC
    reader.count = ff_load_le32(frame + 4)
    reader.pos = frame + FF_BATCH_HEADER_SIZE
    reader.remaining = length - FF_BATCH_HEADER_SIZE
    # Every record takes at least a header, so a count the bytes cannot hold is refused
    # up front: callers may then size arrays by `count` without trusting the sender.
    if reader.count > reader.remaining // FF_RECORD_HEADER_SIZE:
        return FF_CODEC_COUNT_MISMATCH
    return FF_CODEC_OK


cdef inline int ff_reader_next(ff_frame_reader* reader, ff_record_view* view) noexcept nogil:
    """Read the next record into `view` (zero copy) and step past it.

    Returns FF_CODEC_OK, FF_CODEC_END once `count` records were read and the frame is
    exhausted, or a negative status; on a fault the reader stays at the faulty record
    so ff_reader_offset names it.
    """
    cdef const char* p = reader.pos
    cdef uint32_t record_len
    cdef uint64_t used
    cdef uint64_t i
    if reader.index == reader.count:
        return FF_CODEC_END if reader.remaining == 0 else FF_CODEC_COUNT_MISMATCH
    if reader.remaining < FF_RECORD_HEADER_SIZE:
        return FF_CODEC_SHORT_RECORD
    record_len = ff_load_le32(p)
    if record_len < FF_RECORD_HEADER_SIZE or record_len % FF_RECORD_ALIGN:
        return FF_CODEC_BAD_RECORD_LEN
    if record_len > reader.remaining:
        return FF_CODEC_RECORD_OVERRUN
    view.flags = <uint8_t>p[4]
    if view.flags & ~FF_FLAGS_KNOWN:
        return FF_CODEC_BAD_FLAGS
    view.group_len = ff_load_le16(p + 6)
    view.dedup_len = ff_load_le16(p + 8)
    view.name_len = ff_load_le16(p + 10)
    view.attrs_len = ff_load_le32(p + 12)
    view.body_len = ff_load_le32(p + 16)
    # Summed in 64 bits: two u32 parts can overflow a u32 sum and fake a fit.
    used = (<uint64_t>FF_RECORD_HEADER_SIZE + view.name_len + view.group_len
            + view.dedup_len + view.attrs_len + view.body_len)
    if used > record_len:
        return FF_CODEC_PARTS_OVERRUN
    # Canonical padding (exactly to the next multiple of 8, all zero) keeps one encoding
    # per record, so byte equality of frames means equality of their records.
    if ff_align8(used) != record_len:
        return FF_CODEC_BAD_PADDING
    for i in range(used, record_len):
        if p[i] != 0:
            return FF_CODEC_BAD_PADDING
    view.priority = <uint8_t>p[5]
    view.deliver_at_us = <int64_t>ff_load_le64(p + 40)
    view.receipt = ff_load_le64(p + 48)
    # An optional field must be zero when absent, for the same one-encoding reason.
    if ((not (view.flags & FF_FLAG_PRIORITY) and view.priority != 0)
            or (not (view.flags & FF_FLAG_DELIVER_AT) and view.deliver_at_us != 0)
            or (not (view.flags & (FF_FLAG_RECEIPT | FF_FLAG_EXPIRES)) and view.receipt != 0)):
        return FF_CODEC_STRAY_FIELD
    # The receipt slot carries a receipt or an expiry time, never both; the name part a
    # dead-letter record or a topic, never both.
    if view.flags & FF_FLAG_RECEIPT and view.flags & FF_FLAG_EXPIRES:
        return FF_CODEC_BAD_FLAGS
    if view.flags & FF_FLAG_DEAD_LETTER and view.flags & FF_FLAG_TOPIC:
        return FF_CODEC_BAD_FLAGS
    # A delay or ttl flag qualifies its field: never without it.
    if ((view.flags & FF_FLAG_DELAY and not view.flags & FF_FLAG_DELIVER_AT)
            or (view.flags & FF_FLAG_TTL and not view.flags & FF_FLAG_EXPIRES)):
        return FF_CODEC_BAD_FLAGS
    view.start = p
    view.record_len = record_len
    view.receive_count = ff_load_le32(p + 20)
    view.id = ff_load_le64(p + 24)
    view.timestamp_us = <int64_t>ff_load_le64(p + 32)
    view.name = p + FF_RECORD_HEADER_SIZE
    view.group = view.name + view.name_len
    view.dedup = view.group + view.group_len
    view.attrs = view.dedup + view.dedup_len
    view.body = view.attrs + view.attrs_len
    reader.pos = p + record_len
    reader.remaining -= record_len
    reader.index += 1
    return FF_CODEC_OK


# ---- writer ----

cdef inline int ff_record_size(const ff_record_view* view, uint64_t* size) noexcept nogil:
    """Total encoded size of `view` (padding included) into *size, or FIELD_TOO_LONG."""
    if (view.name_len > FF_MAX_SHORT_FIELD or view.group_len > FF_MAX_SHORT_FIELD
            or view.dedup_len > FF_MAX_SHORT_FIELD):
        return FF_CODEC_FIELD_TOO_LONG
    size[0] = ff_align8(<uint64_t>FF_RECORD_HEADER_SIZE + view.name_len + view.group_len
                        + view.dedup_len + view.attrs_len + view.body_len)
    if size[0] > FF_MAX_RECORD_LEN:
        return FF_CODEC_FIELD_TOO_LONG
    return FF_CODEC_OK


cdef inline char* ff_put_part(char* dst, const char* part, uint32_t length) noexcept nogil:
    # memcpy with a NULL source is undefined even for length 0, and empty parts may be NULL.
    if length:
        memcpy(dst, part, length)
    return dst + length


cdef inline void ff_write_record(char* dst, const ff_record_view* view,
                                 uint32_t record_len) noexcept nogil:
    """Write `view` at `dst` as a record of `record_len` bytes (from ff_record_size).

    The caller guarantees `record_len` writable bytes; nothing is checked here.
    """
    cdef char* end
    # The padding (0 to 7 bytes: record_len is the parts' end rounded up to 8) lies in
    # the record's last 8 bytes: zero them first, and the header and parts written next
    # overwrite what of them they cover — no memset call per record (~2 % of a broker's
    # time pushing 1 KiB rows). record_len is at least the 56-byte header.
    ff_store_le64(dst + record_len - 8, 0)
    ff_store_le32(dst, record_len)
    dst[4] = <char>view.flags
    dst[5] = <char>view.priority
    ff_store_le16(dst + 6, <uint16_t>view.group_len)
    ff_store_le16(dst + 8, <uint16_t>view.dedup_len)
    ff_store_le16(dst + 10, <uint16_t>view.name_len)
    ff_store_le32(dst + 12, view.attrs_len)
    ff_store_le32(dst + 16, view.body_len)
    ff_store_le32(dst + 20, view.receive_count)
    ff_store_le64(dst + 24, view.id)
    ff_store_le64(dst + 32, <uint64_t>view.timestamp_us)
    ff_store_le64(dst + 40, <uint64_t>view.deliver_at_us)
    ff_store_le64(dst + 48, view.receipt)
    end = ff_put_part(dst + FF_RECORD_HEADER_SIZE, view.name, view.name_len)
    end = ff_put_part(end, view.group, view.group_len)
    end = ff_put_part(end, view.dedup, view.dedup_len)
    end = ff_put_part(end, view.attrs, view.attrs_len)
    ff_put_part(end, view.body, view.body_len)


cdef inline void ff_write_batch_header(char* dst, uint32_t count) noexcept nogil:
    ff_store_le32(dst, FF_BATCH_MAGIC)
    ff_store_le32(dst + 4, count)


cdef inline int ff_out_init(ff_out_buffer* out, size_t initial_capacity) noexcept nogil:
    """Start an empty frame (header only). Free with ff_out_free even on failure."""
    if initial_capacity < 256:
        initial_capacity = 256
    out.data = <char*>PyMem_RawMalloc(initial_capacity)
    out.length = 0
    out.count = 0
    if out.data == NULL:
        out.capacity = 0
        return FF_CODEC_NO_MEMORY
    out.capacity = initial_capacity
    ff_write_batch_header(out.data, 0)
    out.length = FF_BATCH_HEADER_SIZE
    return FF_CODEC_OK


cdef inline void ff_out_reset(ff_out_buffer* out) noexcept nogil:
    """Empty the frame, keeping its memory for the next batch."""
    if out.data != NULL:
        ff_write_batch_header(out.data, 0)
        out.length = FF_BATCH_HEADER_SIZE
        out.count = 0


cdef inline void ff_out_free(ff_out_buffer* out) noexcept nogil:
    PyMem_RawFree(out.data)
    out.data = NULL
    out.length = 0
    out.capacity = 0
    out.count = 0


cdef inline int ff_out_reserve(ff_out_buffer* out, size_t extra) noexcept nogil:
    """Make room for `extra` more bytes; capacity doubles so appends are amortised O(1)."""
    cdef size_t wanted = out.length + extra
    cdef size_t capacity = out.capacity
    cdef char* grown
    if wanted < out.length:
        return FF_CODEC_NO_MEMORY
    if wanted <= capacity:
        return FF_CODEC_OK
    while capacity < wanted:
        if capacity > (<size_t>-1) // 2:
            capacity = wanted
            break
        capacity *= 2
    grown = <char*>PyMem_RawRealloc(out.data, capacity)
    if grown == NULL:
        return FF_CODEC_NO_MEMORY
    out.data = grown
    out.capacity = capacity
    return FF_CODEC_OK


cdef inline int ff_out_append_record(ff_out_buffer* out, const ff_record_view* view) noexcept nogil:
    """Append one record (header, parts, zero padding) and bump the frame's count."""
    cdef uint64_t size = 0   # ff_record_size sets it on success; gcc cannot see that
    cdef int status = ff_record_size(view, &size)
    if status != FF_CODEC_OK:
        return status
    if out.count == FF_MAX_U32:
        return FF_CODEC_TOO_MANY_RECORDS
    status = ff_out_reserve(out, <size_t>size)
    if status != FF_CODEC_OK:
        return status
    ff_write_record(out.data + out.length, view, <uint32_t>size)
    out.length += <size_t>size
    out.count += 1
    ff_store_le32(out.data + 4, out.count)
    return FF_CODEC_OK


# ---- ring batch form: [u32 little-endian length][length bytes], repeated, no header,
# no padding; an empty buffer is an empty batch ----

cdef inline int ff_ring_batch_scan(const char* frame, size_t length, uint64_t* records,
                                   uint64_t* largest, size_t* fault_offset) noexcept nogil:
    """Validate a ring-batch buffer: count its records and find the largest one.

    Returns FF_CODEC_OK, or FF_CODEC_SHORT_RECORD (a partial length prefix) /
    FF_CODEC_RECORD_OVERRUN (a length past the end) with *fault_offset at the prefix.
    """
    cdef size_t offset = 0
    cdef uint32_t record_len
    records[0] = 0
    largest[0] = 0
    while offset < length:
        if length - offset < FF_RING_BATCH_PREFIX:
            fault_offset[0] = offset
            return FF_CODEC_SHORT_RECORD
        record_len = ff_load_le32(frame + offset)
        if record_len > length - offset - FF_RING_BATCH_PREFIX:
            fault_offset[0] = offset
            return FF_CODEC_RECORD_OVERRUN
        if record_len > largest[0]:
            largest[0] = record_len
        records[0] += 1
        offset += FF_RING_BATCH_PREFIX + record_len
    return FF_CODEC_OK


cdef class Record:
    cdef readonly uint64_t id
    cdef readonly int64_t timestamp_us
    cdef readonly bytes body
    cdef readonly bytes attributes
    cdef readonly str name
    cdef readonly str group_id
    cdef readonly str dedup_id
    cdef readonly object priority          # int 0..255 or None
    cdef readonly object deliver_at_us     # int or None
    cdef readonly object receipt           # int or None
    cdef readonly uint32_t receive_count
    cdef readonly object expires_at_us     # int or None
    cdef readonly object delay_us          # int or None (deliver_at_us's slot)
    cdef readonly object ttl_us            # int or None (the receipt slot)
    cdef readonly bint dead_letter
    cdef readonly bint name_is_topic
    cdef uint64_t _encoded_size            # record_len once encoded (padding included)

    cdef int _fill_view(self, ff_record_view* view) except -1
    cdef tuple _key(self)
