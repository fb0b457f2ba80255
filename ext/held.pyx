"""Receipts a server session holds for leases that ``extend`` made longer.

Design
------
A session must give back every lease it holds the moment its client vanishes
(``fastfanout.server.sessions``). Leases of pushed batches are remembered a batch at a
time; a lease made longer by ``extend`` or ``EXTEND_BATCH`` is remembered a receipt at a
time, once, with the latest end any extend gave it. An ``EXTEND_BATCH`` frame may name
millions of receipts, so they are read straight from the wire frame (little-endian u64s)
into an open-addressing hash table here: no Python object per receipt.

The table maps a receipt to the monotonic time (seconds, a double) after which its lease
has surely ended: 16-byte slots (receipt, end), linear probing, a power-of-two capacity
at most half full. An empty slot's end is NaN (a receipt may be any u64, 0 included, and
an end is never NaN), so a probe reads one cache line.
``expire`` is called about once a second by the server's housekeeping: it does nothing
until the earliest end has passed (kept as ``soonest``), then rebuilds the table from the
receipts still held (O(capacity), rare), shrinking it when it got sparse.

Prior art: the flat hash maps of Abseil and of CPython's own ``set`` (open addressing,
linear probing variants); RabbitMQ's per-channel unacked map, which a closed channel
requeues whole.

Memory: 16 bytes a slot, at least 2 slots a receipt held; a receipt named many times
costs its slot once.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, NAN, isnan
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset

from fastfanout._ext.codec cimport ff_load_le64, ff_store_le64

from fastfanout.errors import InvalidArgument, MalformedFrame

cdef Py_ssize_t MIN_CAPACITY = 16
cdef Py_ssize_t PREFETCH_AHEAD = 8   # receipts ahead of a put whose slot is asked for

cdef extern from *:
    """
    #define ff_held_prefetch(address) __builtin_prefetch((address), 1)
    """
    void ff_held_prefetch(const void* address) noexcept nogil


cdef struct held_slot:
    uint64_t key
    double until     # NaN: the slot is free


cdef inline uint64_t _mix(uint64_t key) noexcept nogil:
    """A 64-bit finaliser (splitmix64's): receipts differ mostly in their low bits."""
    key ^= key >> 30
    key *= <uint64_t>0xBF58476D1CE4E5B9ULL
    key ^= key >> 27
    key *= <uint64_t>0x94D049BB133111EBULL
    key ^= key >> 31
    return key


def select_packed(packed, mask):
    """The receipts of ``packed`` (little-endian u64s) whose byte in ``mask`` is not 0, in
    their order: one native pass where a prune keeps the live part of a pushed batch.

    Raises ``InvalidArgument`` for a mask that is not one byte a receipt.
    """
    cdef Py_buffer source, flags_view
    cdef const unsigned char* flags
    cdef const char* receipts
    cdef char* out
    cdef Py_ssize_t index, count, kept = 0
    cdef object selected
    PyObject_GetBuffer(packed, &source, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(mask, &flags_view, PyBUF_SIMPLE)
        try:
            count = source.len >> 3
            if source.len & 7 or flags_view.len != count:
                raise InvalidArgument(
                    f"a mask of {flags_view.len} bytes for {source.len} bytes of receipts")
            flags = <const unsigned char*>flags_view.buf
            for index in range(count):
                kept += flags[index] != 0
            selected = PyBytes_FromStringAndSize(NULL, 8 * kept)
            out = PyBytes_AS_STRING(selected)
            receipts = <const char*>source.buf
            for index in range(count):
                if flags[index]:
                    memcpy(out, receipts + 8 * index, 8)
                    out += 8
        finally:
            PyBuffer_Release(&flags_view)
    finally:
        PyBuffer_Release(&source)
    return selected


cdef class ExtendedReceipts:
    """Receipts held until a time each (monotonic seconds): each once, at its latest end.

    ``hold_packed`` takes a frame of little-endian u64 receipts; ``expire`` forgets the
    ones whose end has passed; ``take`` gives back all of them packed, forgetting them.
    """

    cdef held_slot* slots
    cdef Py_ssize_t capacity     # a power of two, or 0 before the first receipt
    cdef Py_ssize_t count
    cdef double soonest          # the earliest end held (INFINITY when empty)

    def __cinit__(self):
        self.slots = NULL
        self.capacity = 0
        self.count = 0
        self.soonest = INFINITY

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        PyMem_Free(self.slots)
        self.slots = NULL
        self.capacity = 0

    cdef int _allocate(self, Py_ssize_t capacity) except -1:
        """Empty arrays of ``capacity`` slots in place of the current ones (freed)."""
        cdef held_slot* slots = <held_slot*>PyMem_Malloc(capacity * sizeof(held_slot))
        if slots == NULL:
            raise MemoryError()
        memset(slots, 0xFF, capacity * sizeof(held_slot))   # all-ones doubles are NaNs
        self._free()
        self.slots = slots
        self.capacity = capacity
        return 0

    cdef Py_ssize_t _slot(self, uint64_t key) noexcept:
        """The slot holding ``key``, else the free slot where it would go (capacity > 0)."""
        cdef Py_ssize_t mask = self.capacity - 1
        cdef Py_ssize_t index = <Py_ssize_t>(_mix(key) & <uint64_t>mask)
        while not isnan(self.slots[index].until) and self.slots[index].key != key:
            index = (index + 1) & mask
        return index

    cdef int _put(self, uint64_t key, double until, Py_ssize_t limit=-1) except -1:
        """Hold ``key`` until ``until``, or keep its later end; returns 1 when ``key`` is
        new and ``limit`` (>= 0) receipts are held already (then it is not held)."""
        cdef Py_ssize_t index
        if 2 * (self.count + 1) > self.capacity:
            self._grow()
        index = self._slot(key)
        if not isnan(self.slots[index].until):
            if until > self.slots[index].until:
                self.slots[index].until = until
            return 0
        if 0 <= limit <= self.count:
            return 1
        self.slots[index].key = key
        self.slots[index].until = until
        self.count += 1
        if until < self.soonest:
            self.soonest = until
        return 0

    cdef int _rebuild(self, Py_ssize_t capacity, double now) except -1:
        """Move the receipts whose end is not before ``now`` into ``capacity`` slots."""
        cdef held_slot* old = self.slots
        cdef Py_ssize_t old_capacity = self.capacity
        cdef Py_ssize_t index
        self.slots = NULL   # detached: _allocate frees only what it replaces
        self.capacity = 0
        try:
            self._allocate(capacity)
        except MemoryError:
            self.slots, self.capacity = old, old_capacity
            raise
        self.count = 0
        self.soonest = INFINITY
        for index in range(old_capacity):
            if old[index].until >= now:   # False for a free slot's NaN
                self._put(old[index].key, old[index].until)
        PyMem_Free(old)
        return 0

    cdef int _grow(self) except -1:
        """Twice the slots (the first ``MIN_CAPACITY``), every receipt kept."""
        if self.capacity == 0:
            self._allocate(MIN_CAPACITY)
        else:
            self._rebuild(2 * self.capacity, -INFINITY)
        return 0

    def hold_packed(self, frame, double until, Py_ssize_t limit=-1):
        """Hold each receipt of ``frame`` (little-endian u64s) until ``until``.

        A receipt held already keeps the later of its two ends. With ``limit`` >= 0, a
        new receipt is held only while fewer than ``limit`` are (the others get a later
        end all the same). Returns how many new receipts were not held for ``limit``.
        Raises ``MalformedFrame`` for a frame that is not whole u64s and
        ``InvalidArgument`` for a NaN ``until``; either changes nothing.
        """
        cdef Py_buffer view
        cdef const char* data
        cdef Py_ssize_t n, i
        cdef Py_ssize_t refused = 0
        if isnan(until):
            raise InvalidArgument("until must be a number, got NaN")
        PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
        try:
            if view.len % 8:
                raise MalformedFrame(
                    f"receipts frame of {view.len} bytes is not a multiple of 8")
            n = view.len // 8
            data = <const char*>view.buf
            for i in range(n):
                # a big table misses the cache on every put: ask for a later slot now
                if i + PREFETCH_AHEAD < n and self.capacity:
                    ff_held_prefetch(&self.slots[
                        _mix(ff_load_le64(data + 8 * (i + PREFETCH_AHEAD)))
                        & <uint64_t>(self.capacity - 1)])
                refused += self._put(ff_load_le64(data + 8 * i), until, limit)
        finally:
            PyBuffer_Release(&view)
        return refused

    def expire(self, double now):
        """Forget every receipt whose end is before ``now``; returns how many went."""
        cdef Py_ssize_t before = self.count
        cdef Py_ssize_t capacity
        if self.count == 0 or not (now > self.soonest):
            return 0
        capacity = MIN_CAPACITY
        while capacity < self.capacity and 8 * self.count > capacity:
            capacity *= 2   # shrink toward a quarter full, never grow
        self._rebuild(capacity if capacity < self.capacity else self.capacity, now)
        if self.count == 0:
            self._free()
        return before - self.count

    def take(self):
        """Every receipt held, packed as little-endian u64s (table order); forgets them."""
        cdef object packed = self.packed()
        self._free()
        self.count = 0
        self.soonest = INFINITY
        return packed

    def packed(self):
        """Every receipt held, packed as little-endian u64s in table order (``keep``'s
        order while nothing is held or expired in between); forgets nothing."""
        cdef object packed = PyBytes_FromStringAndSize(NULL, 8 * self.count)
        cdef char* out = PyBytes_AS_STRING(packed)
        cdef Py_ssize_t index, written = 0
        for index in range(self.capacity):
            if not isnan(self.slots[index].until):
                ff_store_le64(out + 8 * written, self.slots[index].key)
                written += 1
        return packed

    def keep(self, mask):
        """Forget the receipts whose byte in ``mask`` is 0: one byte a receipt, in the
        order ``packed`` gave them (nothing held or expired since). Returns how many went.

        Raises ``InvalidArgument`` (changing nothing) for a mask of another length.
        """
        cdef Py_buffer view
        cdef const unsigned char* flags
        cdef Py_ssize_t index, position = 0, before = self.count
        cdef Py_ssize_t capacity
        PyObject_GetBuffer(mask, &view, PyBUF_SIMPLE)
        try:
            if view.len != self.count:
                raise InvalidArgument(
                    f"a mask of {view.len} bytes for {self.count} receipts held")
            flags = <const unsigned char*>view.buf
            for index in range(self.capacity):
                if not isnan(self.slots[index].until):
                    if not flags[position]:
                        self.slots[index].until = NAN   # gone: the rebuild skips it
                    position += 1
        finally:
            PyBuffer_Release(&view)
        if position == 0:
            return 0
        self.count = 0
        for index in range(self.capacity):
            if not isnan(self.slots[index].until):
                self.count += 1
        if self.count == 0:
            self._free()
            self.soonest = INFINITY
            return before
        capacity = MIN_CAPACITY
        while capacity < self.capacity and 8 * self.count > capacity:
            capacity *= 2   # shrink toward a quarter full, never grow
        self._rebuild(capacity if capacity < self.capacity else self.capacity, -INFINITY)
        return before - self.count

    def __len__(self):
        return self.count

    def __contains__(self, receipt):
        return self.end_of(receipt) is not None

    def end_of(self, receipt):
        """The end ``receipt`` is held until, or None when it is not held."""
        cdef Py_ssize_t index
        if not isinstance(receipt, int) or not 0 <= receipt < 2**64 or self.count == 0:
            return None
        index = self._slot(<uint64_t>receipt)
        return None if isnan(self.slots[index].until) else self.slots[index].until
