"""Bounded single-producer/single-consumer ring of variable-size byte records.

Design
------
Prior art: the LMAX Disruptor (sequences, claim -> commit, a gating sequence the
producer may not lap) and Aeron's one-to-one ring buffer (cached positions, padded
counters, byte records). The ring is the hand-off between two threads of the native
core; records are raw bytes in one malloc'd area, never Python objects.

Layout: a *slot array* of ``capacity`` u32 record lengths (``capacity`` a power of two,
indexed by ``sequence & mask``) beside a *byte ring* of exactly ``max_bytes`` bytes
holding the payloads back to back. A record that reaches the end of the byte ring
continues at its start (it is split in two, not padded), so the byte bound counts payload
only: a ring with ``max_bytes=N`` holds any records whose lengths sum to at most N, and
``bytes_used`` is exactly that sum. The price is that a record may be two segments in
place (``ff_ring_peek``); the copying consumers hide that.

Positions are uint64 counters that only grow: ``producer_seq`` (records committed),
``consumer_seq`` (records released) and their byte counterparts. Each has a single
writer, so plain release stores and acquire loads suffice (atomics.h argues why).
Invariants, at every instant a thread can observe:

- ``0 <= producer_seq - consumer_seq <= capacity``;
- ``0 <= producer_bytes - consumer_bytes <= max_bytes``;
- the slots ``[consumer_seq, producer_seq)`` and the bytes
  ``[consumer_bytes, producer_bytes)`` (mod the sizes) belong to the consumer; all the
  rest belongs to the producer.

The producer claims space against its *cached* copy of the consumer positions and
rereads the real ones (two acquire loads, the only cross-core traffic on its side)
only when the cache says the ring is full; the consumer likewise rereads
``producer_seq`` only when its cache says the ring is empty. A batch is claimed record
by record and committed with a single release store, so a consumer sees all of a
batch's records at once or none of them, and the coherence traffic is paid once per
batch rather than once per record.

The C functions (declared in ring.pxd) are ``noexcept nogil`` and return status codes.
The Python class is the edge: it validates, raises typed errors, and releases the GIL
around copies of at least ``NOGIL_THRESHOLD_BYTES`` so that a producer thread and a
consumer thread really run in parallel. Because the C side trusts that only one thread
produces and one consumes, the Python edge refuses (rather than corrupts) a second
concurrent producer or consumer.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from fastfanout._ext.codec cimport (
    FF_CODEC_OK,
    FF_RING_BATCH_PREFIX,
    ff_load_le32,
    ff_ring_batch_scan,
    ff_store_le32,
)
from fastfanout._ext.bodies cimport ff_body_buffer

from fastfanout.errors import FastFanoutError, InvalidArgument, MessageTooLarge

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clock_id, timespec* now)
    enum: CLOCK_MONOTONIC

cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef inline void _pump_wait() noexcept nogil:
    # The test pumps spin on a full or empty ring; on a machine busier than its cores
    # the other side may not be running at all, so give it the core instead of
    # spinning out the deadline.
    ff_cpu_relax()
    sched_yield()


NOGIL_THRESHOLD_BYTES = 16384
cdef size_t _NOGIL_THRESHOLD = 16384
cdef uint64_t _MAX_RECORD_U32 = 0xFFFFFFFF


# ---------------------------------------------------------------- lifecycle

cdef ff_ring* ff_ring_create(uint64_t capacity, uint64_t max_bytes) noexcept nogil:
    cdef ff_ring* ring
    if capacity == 0 or capacity & (capacity - 1) or capacity > FF_RING_MAX_CAPACITY:
        return NULL
    if max_bytes == 0:
        return NULL
    ring = <ff_ring*>PyMem_RawMalloc(sizeof(ff_ring))
    if ring == NULL:
        return NULL
    # Zeroing covers the atomics too: a lock-free _Atomic uint64_t has the plain
    # representation, and no other thread can see the ring before it is returned.
    memset(ring, 0, sizeof(ff_ring))
    ring.capacity = capacity
    ring.mask = capacity - 1
    ring.max_bytes = max_bytes
    ring.max_record = max_bytes if max_bytes < _MAX_RECORD_U32 else _MAX_RECORD_U32
    ring.lengths = <uint32_t*>PyMem_RawMalloc(ff_cache_line_round(capacity * sizeof(uint32_t)))
    ring.data = <char*>PyMem_RawMalloc(<size_t>max_bytes)
    if ring.lengths == NULL or ring.data == NULL:
        ff_ring_destroy(ring)
        return NULL
    return ring


cdef void ff_ring_destroy(ff_ring* ring) noexcept nogil:
    if ring != NULL:
        PyMem_RawFree(ring.lengths)
        PyMem_RawFree(ring.data)
        PyMem_RawFree(ring)


# ---------------------------------------------------------------- producer side

cdef inline bint _producer_has_room(ff_ring* ring, uint64_t length) noexcept nogil:
    if (ring.producer_next - ring.cached_consumer_seq < ring.capacity
            and ring.producer_tail + length - ring.cached_consumer_bytes <= ring.max_bytes):
        return True
    # Looks full: only now pay for the consumer's cache lines. The acquire loads order
    # the consumer's reads of the slots/bytes it released before our overwrite of them.
    ring.cached_consumer_seq = ff_load_acquire_u64(&ring.consumer_seq)
    ring.cached_consumer_bytes = ff_load_acquire_u64(&ring.consumer_bytes)
    return (ring.producer_next - ring.cached_consumer_seq < ring.capacity
            and ring.producer_tail + length - ring.cached_consumer_bytes <= ring.max_bytes)


cdef inline int _producer_claim(ff_ring* ring, const char* record, uint64_t length) noexcept nogil:
    """Copy one record into claimed space; invisible to the consumer until commit."""
    cdef uint64_t index = ring.producer_tail_index
    cdef uint64_t until_end
    if length > ring.max_record:
        return FF_RING_TOO_LARGE
    if not _producer_has_room(ring, length):
        return FF_RING_FULL
    ring.lengths[ring.producer_next & ring.mask] = <uint32_t>length
    until_end = ring.max_bytes - index
    if length <= until_end:
        memcpy(ring.data + index, record, length)
        index += length
        if index == ring.max_bytes:
            index = 0
    else:
        memcpy(ring.data + index, record, until_end)
        memcpy(ring.data, record + until_end, length - until_end)
        index = length - until_end
    ring.producer_tail_index = index
    ring.producer_tail += length
    ring.producer_next += 1
    return FF_RING_OK


cdef inline void _producer_commit(ff_ring* ring) noexcept nogil:
    # Statistics first (relaxed), then the release that publishes the records: the
    # release also orders the byte copies and slot writes before it.
    ff_store_relaxed_u64(&ring.producer_bytes, ring.producer_tail)
    ff_store_release_u64(&ring.producer_seq, ring.producer_next)


cdef inline void _count_full(ff_ring* ring) noexcept nogil:
    ff_store_relaxed_u64(&ring.full_count, ff_load_relaxed_u64(&ring.full_count) + 1)


cdef int ff_ring_offer(ff_ring* ring, const char* record, size_t length) noexcept nogil:
    """Offer one record: FF_RING_OK (committed), FF_RING_FULL or FF_RING_TOO_LARGE."""
    cdef int status = _producer_claim(ring, record, length)
    if status == FF_RING_OK:
        _producer_commit(ring)
    elif status == FF_RING_FULL:
        _count_full(ring)
    return status


cdef uint64_t ff_ring_offer_batch(ff_ring* ring, const char* frame, size_t length,
                                  size_t* consumed, int* status) noexcept nogil:
    """Offer the records of a ring-batch buffer, in order, until one does not fit.

    Returns the number of records accepted (all committed with one release store);
    *consumed is the byte length of the accepted prefix of `frame` and *status why the
    batch stopped: FF_RING_OK (all accepted), FF_RING_FULL, FF_RING_TOO_LARGE or
    FF_RING_MALFORMED (at the record starting at *consumed).
    """
    cdef size_t offset = 0
    cdef uint64_t accepted = 0
    cdef uint64_t record_len
    status[0] = FF_RING_OK
    while offset < length:
        if length - offset < FF_RING_BATCH_PREFIX:
            status[0] = FF_RING_MALFORMED
            break
        record_len = ff_load_le32(frame + offset)
        if record_len > length - offset - FF_RING_BATCH_PREFIX:
            status[0] = FF_RING_MALFORMED
            break
        status[0] = _producer_claim(ring, frame + offset + FF_RING_BATCH_PREFIX, record_len)
        if status[0] != FF_RING_OK:
            break
        offset += FF_RING_BATCH_PREFIX + record_len
        accepted += 1
    if accepted:
        _producer_commit(ring)
    if status[0] == FF_RING_FULL:
        _count_full(ring)
    consumed[0] = offset
    return accepted


# ---------------------------------------------------------------- consumer side

cdef inline bint _consumer_has_record(ff_ring* ring) noexcept nogil:
    if ring.consumer_next != ring.cached_producer_seq:
        return True
    # Looks empty: reread the producer's sequence. Acquire makes the slot lengths and
    # payload bytes of every record below it visible to the reads that follow.
    ring.cached_producer_seq = ff_load_acquire_u64(&ring.producer_seq)
    return ring.consumer_next != ring.cached_producer_seq


cdef inline void _consumer_segments(ff_ring* ring, uint64_t length,
                                    ff_ring_segments* record) noexcept nogil:
    cdef uint64_t until_end = ring.max_bytes - ring.consumer_head_index
    record.first = ring.data + ring.consumer_head_index
    if length <= until_end:
        record.first_length = length
        record.second = ring.data
        record.second_length = 0
    else:
        record.first_length = until_end
        record.second = ring.data
        record.second_length = length - until_end


cdef inline void _consumer_step(ff_ring* ring, uint64_t length) noexcept nogil:
    """Move past one record privately; the producer learns of it at _consumer_commit."""
    cdef uint64_t index = ring.consumer_head_index + length
    if index >= ring.max_bytes:
        index -= ring.max_bytes
    ring.consumer_head_index = index
    ring.consumer_head += length
    ring.consumer_next += 1


cdef inline void _consumer_commit(ff_ring* ring) noexcept nogil:
    # Release: every read of the records given back happens before the producer can
    # observe that their slots and bytes are free to overwrite.
    ff_store_release_u64(&ring.consumer_bytes, ring.consumer_head)
    ff_store_release_u64(&ring.consumer_seq, ring.consumer_next)


cdef inline void _copy_out(const ff_ring_segments* record, char* destination) noexcept nogil:
    memcpy(destination, record.first, record.first_length)
    if record.second_length:
        memcpy(destination + record.first_length, record.second, record.second_length)


cdef int ff_ring_peek(ff_ring* ring, ff_ring_segments* record) noexcept nogil:
    """Point `record` at the oldest record in place (zero copy), or FF_RING_EMPTY.

    The segments stay valid and unchanged until ff_ring_release.
    """
    if not _consumer_has_record(ring):
        return FF_RING_EMPTY
    _consumer_segments(ring, ring.lengths[ring.consumer_next & ring.mask], record)
    return FF_RING_OK


cdef void ff_ring_release(ff_ring* ring) noexcept nogil:
    """Give back the record last returned by ff_ring_peek (which must have succeeded)."""
    _consumer_step(ring, ring.lengths[ring.consumer_next & ring.mask])
    _consumer_commit(ring)


cdef int ff_ring_poll(ff_ring* ring, char* destination, size_t capacity,
                      size_t* length) noexcept nogil:
    """Copy the oldest record out and release it.

    Returns FF_RING_OK with *length set, FF_RING_EMPTY, or FF_RING_NO_ROOM (the record,
    left in the ring, needs *length bytes).
    """
    cdef ff_ring_segments record
    if not _consumer_has_record(ring):
        return FF_RING_EMPTY
    length[0] = ring.lengths[ring.consumer_next & ring.mask]
    if length[0] > capacity:
        return FF_RING_NO_ROOM
    _consumer_segments(ring, length[0], &record)
    _copy_out(&record, destination)
    _consumer_step(ring, length[0])
    _consumer_commit(ring)
    return FF_RING_OK


cdef uint64_t ff_ring_available(ff_ring* ring, uint64_t max_records,
                                size_t* batch_bytes) noexcept nogil:
    """How many records (at most max_records) a poll_batch would get now, and the size
    of their ring-batch form in *batch_bytes. Consumer side only."""
    cdef uint64_t first = ring.consumer_next
    cdef uint64_t sequence
    cdef uint64_t records
    cdef size_t total = 0
    if ring.cached_producer_seq - first < max_records:
        ring.cached_producer_seq = ff_load_acquire_u64(&ring.producer_seq)
    records = ring.cached_producer_seq - first
    if records > max_records:
        records = max_records
    for sequence in range(first, first + records):
        total += FF_RING_BATCH_PREFIX + ring.lengths[sequence & ring.mask]
    batch_bytes[0] = total
    return records


cdef uint64_t ff_ring_poll_batch(ff_ring* ring, char* destination, size_t capacity,
                                 uint64_t max_records, size_t* written) noexcept nogil:
    """Copy up to max_records records out in ring-batch form and release them at once.

    Stops early when the ring is empty or the next record does not fit the remaining
    `capacity`. Returns the records copied; *written is the bytes used.
    """
    cdef uint64_t taken = 0
    cdef size_t offset = 0
    cdef uint64_t length
    cdef ff_ring_segments record
    while taken < max_records and _consumer_has_record(ring):
        length = ring.lengths[ring.consumer_next & ring.mask]
        if FF_RING_BATCH_PREFIX + length > capacity - offset:
            break
        ff_store_le32(destination + offset, <uint32_t>length)
        _consumer_segments(ring, length, &record)
        _copy_out(&record, destination + offset + FF_RING_BATCH_PREFIX)
        _consumer_step(ring, length)
        offset += FF_RING_BATCH_PREFIX + length
        taken += 1
    if taken:
        _consumer_commit(ring)
    written[0] = offset
    return taken


# ---------------------------------------------------------------- snapshots

cdef uint64_t ff_ring_size(ff_ring* ring) noexcept nogil:
    # Consumer first: producer_seq can only have grown since, so the difference is
    # never negative, though it may exceed capacity transiently (clamped).
    cdef uint64_t released = ff_load_acquire_u64(&ring.consumer_seq)
    cdef uint64_t held = ff_load_acquire_u64(&ring.producer_seq) - released
    return held if held < ring.capacity else ring.capacity


cdef uint64_t ff_ring_bytes_used(ff_ring* ring) noexcept nogil:
    cdef uint64_t released = ff_load_acquire_u64(&ring.consumer_bytes)
    cdef uint64_t held = ff_load_acquire_u64(&ring.producer_bytes) - released
    return held if held < ring.max_bytes else ring.max_bytes


# ---------------------------------------------------------------- Python edge

cdef inline object _checked_int(object value, object low, object high, str field):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field} must be an int, not {type(value).__name__}")
    if not (low <= value <= high):
        raise InvalidArgument(f"{field} must be in [{low}, {high}], got {value}")
    return value


cdef inline uint64_t _max_records(object max_records) except? 0:
    _checked_int(max_records, 0, 1 << 62, "max_records")
    return <uint64_t>max_records


cdef inline int _get_buffer(object source, Py_buffer* view, str what) except -1:
    try:
        PyObject_GetBuffer(source, view, PyBUF_SIMPLE)
    except TypeError:
        raise InvalidArgument(f"{what} must be bytes-like, not {type(source).__name__}") \
            from None
    return 0


@cython.final
cdef class Ring:
    """A bounded SPSC ring of byte records (one producer thread, one consumer thread).

    Args:
        capacity: most records held at once; rounded up to a power of two, 1..2**30.
        max_bytes: most payload bytes held at once (bytes), 1..2**40. The byte ring is
            allocated up front at exactly this size. The largest single record is
            ``min(max_bytes, 2**32 - 1)`` bytes.

    Raises:
        InvalidArgument: capacity or max_bytes is out of range.
        MemoryError: the slot array or byte ring could not be allocated.

    One thread may call the producer methods (``offer*``) while another calls the
    consumer methods (``poll*``); a second concurrent producer or consumer is refused
    with :class:`fastfanout.errors.FastFanoutError`.
    """

    def __cinit__(self, capacity, max_bytes):
        cdef uint64_t slots = 1
        self.ring = NULL
        _checked_int(capacity, 1, FF_RING_MAX_CAPACITY, "capacity")
        _checked_int(max_bytes, 1, 1 << 40, "max_bytes")
        while slots < <uint64_t>capacity:
            slots <<= 1
        self.ring = ff_ring_create(slots, <uint64_t>max_bytes)
        if self.ring == NULL:
            raise MemoryError(
                f"cannot allocate a ring of {slots} slots and {max_bytes} bytes")

    def __dealloc__(self):
        ff_ring_destroy(self.ring)

    cdef int _enter_producer(self) except -1:
        # The GIL makes this test-and-set atomic against other Python threads.
        if self.producing:
            raise FastFanoutError(
                "Ring has one producer: an offer call is already running in another thread")
        self.producing = True
        return 0

    cdef int _enter_consumer(self) except -1:
        if self.consuming:
            raise FastFanoutError(
                "Ring has one consumer: a poll call is already running in another thread")
        self.consuming = True
        return 0

    def offer(self, record):
        """Append one record if there is room.

        Args:
            record: the record: bytes, or any C-contiguous buffer (read as its bytes), at
                most ``min(max_bytes, 2**32 - 1)`` bytes.

        Returns:
            True if the record was committed; False if the ring is full by record count
            or by bytes (``full_count`` grows by one).

        Raises:
            MessageTooLarge: the record is longer than the largest record the ring holds.
            InvalidArgument: record is not a C-contiguous buffer (worded as a body's
                refusal in a publish).
        """
        cdef Py_buffer view
        cdef const char* data
        cdef size_t length
        cdef int status
        self._enter_producer()
        try:
            if type(record) is bytes:
                data = PyBytes_AS_STRING(record)
                length = <size_t>PyBytes_GET_SIZE(record)
                status = ff_ring_offer(self.ring, data, length)
            else:
                ff_body_buffer(record, &view, -1)   # one body: no entry named
                status = ff_ring_offer(self.ring, <const char*>view.buf, <size_t>view.len)
                length = <size_t>view.len
                PyBuffer_Release(&view)
        finally:
            self.producing = False
        if status == FF_RING_TOO_LARGE:
            raise MessageTooLarge(
                f"record of {length} bytes exceeds the ring's largest record of "
                f"{self.ring.max_record} bytes")
        return status == FF_RING_OK

    def offer_batch(self, frame):
        """Append the records of a ring-batch buffer, in order, while they fit.

        The ring batch form is ``[u32 little-endian length][length bytes]`` repeated,
        with no header and no padding (see ``codec.pack_ring_batch``). The whole buffer
        is validated before anything is accepted.

        Args:
            frame: a bytes-like buffer in ring batch form.

        Returns:
            How many records were accepted: all of them, or the prefix that fitted
            (``full_count`` grows by one when the ring filled up first).

        Raises:
            InvalidArgument: the buffer is not in ring batch form.
            MessageTooLarge: a record is longer than the largest record the ring holds
                (nothing is accepted).
        """
        cdef Py_buffer view
        cdef uint64_t records
        cdef uint64_t largest
        cdef size_t fault = 0
        cdef size_t consumed
        cdef int status
        cdef uint64_t accepted
        _get_buffer(frame, &view, "frame")
        try:
            status = ff_ring_batch_scan(<const char*>view.buf, <size_t>view.len,
                                        &records, &largest, &fault)
            if status != FF_CODEC_OK:
                raise InvalidArgument(
                    f"malformed ring batch: truncated or overrunning length prefix at "
                    f"byte offset {fault}")
            if largest > self.ring.max_record:
                raise MessageTooLarge(
                    f"a record of {largest} bytes exceeds the ring's largest record of "
                    f"{self.ring.max_record} bytes")
            self._enter_producer()
            try:
                if <size_t>view.len >= _NOGIL_THRESHOLD:
                    with nogil:
                        accepted = ff_ring_offer_batch(self.ring, <const char*>view.buf,
                                                       <size_t>view.len, &consumed, &status)
                else:
                    accepted = ff_ring_offer_batch(self.ring, <const char*>view.buf,
                                                   <size_t>view.len, &consumed, &status)
            finally:
                self.producing = False
        finally:
            PyBuffer_Release(&view)
        return accepted

    def offer_many(self, records):
        """Append byte strings, in order, while they fit (committed together).

        Args:
            records: a sequence of bytes objects.

        Returns:
            How many records were accepted (a prefix of ``records``).

        Raises:
            InvalidArgument: an item is not bytes.
            MessageTooLarge: an item is longer than the largest record the ring holds
                (nothing is accepted).
        """
        cdef object items = PySequence_Fast(records, "records must be a sequence of bytes")
        cdef Py_ssize_t count = PySequence_Fast_GET_SIZE(items)
        cdef Py_ssize_t i
        cdef object item
        cdef Py_ssize_t accepted = 0
        cdef int status = FF_RING_OK
        for i in range(count):
            item = <object>PySequence_Fast_GET_ITEM(items, i)
            if type(item) is not bytes:
                raise InvalidArgument(f"records[{i}] must be bytes, not {type(item).__name__}")
            if <uint64_t>PyBytes_GET_SIZE(item) > self.ring.max_record:
                raise MessageTooLarge(
                    f"records[{i}] of {PyBytes_GET_SIZE(item)} bytes exceeds the ring's "
                    f"largest record of {self.ring.max_record} bytes")
        self._enter_producer()
        try:
            for i in range(count):
                item = <object>PySequence_Fast_GET_ITEM(items, i)
                status = _producer_claim(self.ring, PyBytes_AS_STRING(item),
                                         <uint64_t>PyBytes_GET_SIZE(item))
                if status != FF_RING_OK:
                    break
                accepted += 1
            if accepted:
                _producer_commit(self.ring)
            if status == FF_RING_FULL:
                _count_full(self.ring)
        finally:
            self.producing = False
        return accepted

    def poll(self):
        """Remove and return the oldest record.

        Returns:
            The record as bytes, or None if the ring is empty.
        """
        cdef ff_ring_segments record
        cdef bytes result
        self._enter_consumer()
        try:
            if ff_ring_peek(self.ring, &record) != FF_RING_OK:
                return None
            result = PyBytes_FromStringAndSize(
                NULL, <Py_ssize_t>(record.first_length + record.second_length))
            _copy_out(&record, PyBytes_AS_STRING(result))
            ff_ring_release(self.ring)
            return result
        finally:
            self.consuming = False

    def poll_batch(self, max_records):
        """Remove up to ``max_records`` records as one buffer in ring batch form.

        Args:
            max_records: most records to take (>= 0).

        Returns:
            ``[u32 LE length][bytes]`` per record, oldest first; ``b""`` if empty.

        Raises:
            InvalidArgument: max_records is negative or not an int.
        """
        cdef uint64_t wanted = _max_records(max_records)
        cdef uint64_t available
        cdef uint64_t taken
        cdef size_t batch_bytes
        cdef size_t written
        cdef bytes result
        cdef char* out
        self._enter_consumer()
        try:
            available = ff_ring_available(self.ring, wanted, &batch_bytes)
            if available == 0:
                return b""
            result = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>batch_bytes)
            out = PyBytes_AS_STRING(result)
            # Only this thread removes records, so the `available` records counted
            # above are still there and fit `batch_bytes` exactly.
            if batch_bytes >= _NOGIL_THRESHOLD:
                with nogil:
                    taken = ff_ring_poll_batch(self.ring, out, batch_bytes, available,
                                               &written)
            else:
                taken = ff_ring_poll_batch(self.ring, out, batch_bytes, available, &written)
            return result
        finally:
            self.consuming = False

    def poll_many(self, max_records):
        """Remove up to ``max_records`` records as a list (released together).

        Args:
            max_records: most records to take (>= 0).

        Returns:
            The records as bytes objects, oldest first (empty list if none).

        Raises:
            InvalidArgument: max_records is negative or not an int.
        """
        cdef uint64_t wanted = _max_records(max_records)
        cdef uint64_t taken = 0
        cdef uint64_t length
        cdef ff_ring_segments record
        cdef bytes item
        cdef list result = []
        self._enter_consumer()
        try:
            while taken < wanted and _consumer_has_record(self.ring):
                length = self.ring.lengths[self.ring.consumer_next & self.ring.mask]
                _consumer_segments(self.ring, length, &record)
                item = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                _copy_out(&record, PyBytes_AS_STRING(item))
                result.append(item)
                _consumer_step(self.ring, length)
                taken += 1
            if taken:
                _consumer_commit(self.ring)
            return result
        finally:
            self.consuming = False

    @property
    def capacity(self):
        """Record slots (a power of two): the most records held at once."""
        return self.ring.capacity

    @property
    def max_bytes(self):
        """Size of the byte ring (bytes): the most payload held at once."""
        return self.ring.max_bytes

    @property
    def size(self):
        """Records held now (a snapshot while the other side runs)."""
        return ff_ring_size(self.ring)

    @property
    def bytes_used(self):
        """Payload bytes held now (bytes; a snapshot while the other side runs)."""
        return ff_ring_bytes_used(self.ring)

    @property
    def full_count(self):
        """Offer calls refused, or cut short, because the ring was full."""
        return ff_load_relaxed_u64(&self.ring.full_count)

    @property
    def offered(self):
        """Records accepted since creation."""
        return ff_load_acquire_u64(&self.ring.producer_seq)

    @property
    def polled(self):
        """Records removed since creation."""
        return ff_load_acquire_u64(&self.ring.consumer_seq)

    def __len__(self):
        return ff_ring_size(self.ring)

    def __repr__(self):
        return (f"Ring(capacity={self.ring.capacity}, max_bytes={self.ring.max_bytes}, "
                f"size={ff_ring_size(self.ring)}, bytes_used={ff_ring_bytes_used(self.ring)})")


# ---------------------------------------------------------------- test pumps
#
# The SPSC protocol is only really exercised when both sides run at once, which two
# Python threads never do while either holds the GIL. These pumps run a whole producer
# or consumer loop in C with the GIL released, so a test can start one of each on two
# threads and check that every record arrives once, in order and intact. They are
# documented test hooks (docs/testing.md): public, stable, for tests and tools only.

cdef inline double _now() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef inline uint64_t _pump_length(uint64_t sequence, uint64_t max_extra) noexcept nogil:
    return 8 + sequence % (max_extra + 1)


cdef inline void _pump_fill(char* out, uint64_t sequence, uint64_t length) noexcept nogil:
    cdef uint64_t i
    ff_store_le32(out, <uint32_t>sequence)
    ff_store_le32(out + 4, <uint32_t>(sequence >> 32))
    for i in range(8, length):
        out[i] = <char>(sequence * 31 + i)


cdef inline bint _pump_check(const char* record, uint64_t length, uint64_t sequence,
                             uint64_t max_extra) noexcept nogil:
    cdef uint64_t i
    if length != _pump_length(sequence, max_extra):
        return False
    if (ff_load_le32(record) | (<uint64_t>ff_load_le32(record + 4) << 32)) != sequence:
        return False
    for i in range(8, length):
        if record[i] != <char>(sequence * 31 + i):
            return False
    return True


def pump_produce(Ring ring not None, uint64_t count, uint32_t max_extra, double timeout):
    """Test hook (docs/testing.md): offer records 0..count-1 from C, GIL released.

    Returns the number of records offered.

    Record ``n`` is ``8 + n % (max_extra + 1)`` bytes: ``n`` as u64 LE, then a pattern.
    Single offers and batches of 1..16 alternate. Stops early at the deadline.
    """
    cdef uint64_t sequence = 0
    cdef uint64_t batch
    cdef uint64_t i
    cdef uint64_t accepted
    cdef size_t consumed
    cdef size_t step
    cdef size_t length
    cdef int status
    cdef double deadline = _now() + timeout
    cdef char* scratch = <char*>PyMem_RawMalloc(16 * (FF_RING_BATCH_PREFIX + 8 + max_extra))
    if scratch == NULL:
        raise MemoryError()
    ring._enter_producer()
    try:
        with nogil:
            while sequence < count:
                if sequence % 3 == 0:
                    _pump_fill(scratch, sequence, _pump_length(sequence, max_extra))
                    while ff_ring_offer(ring.ring, scratch,
                                        _pump_length(sequence, max_extra)) != FF_RING_OK:
                        if _now() > deadline:
                            break
                        _pump_wait()
                    else:
                        sequence += 1
                        continue
                    break
                batch = 1 + sequence % 16
                if batch > count - sequence:
                    batch = count - sequence
                length = 0
                for i in range(sequence, sequence + batch):
                    ff_store_le32(scratch + length, <uint32_t>_pump_length(i, max_extra))
                    _pump_fill(scratch + length + FF_RING_BATCH_PREFIX, i,
                               _pump_length(i, max_extra))
                    length += FF_RING_BATCH_PREFIX + _pump_length(i, max_extra)
                consumed = 0
                while consumed < length:
                    accepted = ff_ring_offer_batch(ring.ring, scratch + consumed,
                                                   length - consumed, &step, &status)
                    consumed += step
                    sequence += accepted
                    if accepted == 0:
                        if _now() > deadline:
                            break
                        _pump_wait()
                if consumed < length:
                    break
    finally:
        ring.producing = False
        PyMem_RawFree(scratch)
    return sequence


def pump_consume(Ring ring not None, uint64_t count, uint32_t max_extra, double timeout):
    """Test hook (docs/testing.md): poll ``count`` records from C, GIL released, checking each.

    Alternates ff_ring_poll, ff_ring_peek/release and ff_ring_poll_batch. Returns
    ``(received, first_bad)``: records received in order and intact, and the sequence
    number expected where a record was missing, duplicated or corrupt (-1 if none).
    """
    cdef uint64_t received = 0
    cdef int64_t first_bad = -1
    cdef size_t length
    cdef size_t written
    cdef size_t offset
    cdef uint64_t taken
    cdef uint64_t record_len
    cdef ff_ring_segments segments
    cdef size_t scratch_size = 64 * (FF_RING_BATCH_PREFIX + 8 + max_extra)
    cdef double deadline = _now() + timeout
    cdef char* scratch = <char*>PyMem_RawMalloc(scratch_size)
    if scratch == NULL:
        raise MemoryError()
    ring._enter_consumer()
    try:
        with nogil:
            while received < count and first_bad < 0:
                if received % 5 == 0:
                    taken = ff_ring_poll_batch(ring.ring, scratch, scratch_size, 64, &written)
                    offset = 0
                    while taken:
                        record_len = ff_load_le32(scratch + offset)
                        if not _pump_check(scratch + offset + FF_RING_BATCH_PREFIX,
                                           record_len, received, max_extra):
                            first_bad = received
                            break
                        offset += FF_RING_BATCH_PREFIX + record_len
                        received += 1
                        taken -= 1
                    if offset:
                        continue
                elif received % 5 == 1:
                    if ff_ring_peek(ring.ring, &segments) == FF_RING_OK:
                        if segments.first_length + segments.second_length > scratch_size:
                            first_bad = received
                            break
                        _copy_out(&segments, scratch)
                        ff_ring_release(ring.ring)
                        if not _pump_check(scratch, segments.first_length
                                           + segments.second_length, received, max_extra):
                            first_bad = received
                            break
                        received += 1
                        continue
                elif ff_ring_poll(ring.ring, scratch, scratch_size, &length) == FF_RING_OK:
                    if not _pump_check(scratch, length, received, max_extra):
                        first_bad = received
                        break
                    received += 1
                    continue
                if _now() > deadline:
                    break
                _pump_wait()
    finally:
        ring.consuming = False
        PyMem_RawFree(scratch)
    return received, first_bad
