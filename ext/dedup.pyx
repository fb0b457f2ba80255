"""The deduplication window: which dedup ids (or body hashes) were seen recently.

Design
------
Prior art: SQS FIFO queues and SNS FIFO topics remember a ``MessageDeduplicationId``
(or a SHA-256 of the body with content-based deduplication) for 5 minutes; a publish
that repeats one inside the window succeeds but is not delivered again.

Keys are 128-bit hashes (``hash128.h``) of the dedup id or the body, so the table never
holds Python objects and every slot is 32 bytes. The table is open-addressed with linear
probing and backward-shift deletion (no tombstones), grown by doubling at half load.
Because every key lives exactly ``window_us``, insertion order is expiry order: a ring of
(key, expiry) in insertion order lets ``expire`` drop expired keys from the front in O(1)
each. A key re-remembered after expiring gets a new ring entry; a ring entry whose
expiry no longer matches its slot's is stale and skipped.

Memory is bounded by ``max_entries``: when full, the oldest key is forgotten early and
counted in ``evicted`` — a named limit with a counter, never a silent drop of messages.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset

from fastfanout.errors import InvalidArgument

DEFAULT_MAX_ENTRIES = 1_000_000
"""Keys one window holds at most before it forgets the oldest early."""


@cython.final
cdef class DedupWindow:
    """Keys remembered for ``window_us`` microseconds, at most ``max_entries`` at once."""

    def __cinit__(self, int64_t window_us, Py_ssize_t max_entries=DEFAULT_MAX_ENTRIES):
        if window_us <= 0:
            raise InvalidArgument(f"window_us={window_us} must be > 0")
        if max_entries < 1:
            raise InvalidArgument(f"max_entries={max_entries} must be >= 1")
        self.window_us = window_us
        self.max_entries = max_entries
        self.slot_count = 64
        self.slots = <dedup_slot*>PyMem_Malloc(self.slot_count * sizeof(dedup_slot))
        self.order_capacity = 32
        self.order = <dedup_order*>PyMem_Malloc(self.order_capacity * sizeof(dedup_order))
        if self.slots == NULL or self.order == NULL:
            raise MemoryError()
        memset(self.slots, 0, self.slot_count * sizeof(dedup_slot))
        self.size = 0
        self.order_head = 0
        self.order_length = 0
        self.evicted = 0
        self.duplicates = 0

    def __dealloc__(self):
        PyMem_Free(self.slots)
        PyMem_Free(self.order)

    cdef Py_ssize_t _find(self, ff_hash128_t key) noexcept:
        """Index of the key's slot, or of the empty slot where it would go."""
        cdef Py_ssize_t mask = self.slot_count - 1
        cdef Py_ssize_t index = <Py_ssize_t>(key.low & <uint64_t>mask)
        while True:
            if self.slots[index].low == key.low and self.slots[index].high == key.high:
                return index
            if self.slots[index].low == 0 and self.slots[index].high == 0:
                return index
            index = (index + 1) & mask

    cdef void _delete_at(self, Py_ssize_t index) noexcept:
        # Backward-shift deletion keeps every remaining key reachable from its home slot.
        cdef Py_ssize_t mask = self.slot_count - 1
        cdef Py_ssize_t hole = index
        cdef Py_ssize_t probe = index
        cdef Py_ssize_t home
        while True:
            probe = (probe + 1) & mask
            if self.slots[probe].low == 0 and self.slots[probe].high == 0:
                break
            home = <Py_ssize_t>(self.slots[probe].low & <uint64_t>mask)
            # Move the probed key into the hole unless its home lies cyclically in (hole, probe].
            if (probe > hole and (home <= hole or home > probe)) or \
                    (probe < hole and (home <= hole and home > probe)):
                self.slots[hole] = self.slots[probe]
                hole = probe
        self.slots[hole].low = 0
        self.slots[hole].high = 0
        self.size -= 1

    cdef int _grow(self) except -1:
        cdef dedup_slot* old = self.slots
        cdef Py_ssize_t old_count = self.slot_count
        cdef Py_ssize_t i
        cdef Py_ssize_t index
        cdef ff_hash128_t key
        cdef dedup_slot* grown = <dedup_slot*>PyMem_Malloc(2 * old_count * sizeof(dedup_slot))
        if grown == NULL:
            raise MemoryError()
        memset(grown, 0, 2 * old_count * sizeof(dedup_slot))
        self.slots = grown
        self.slot_count = 2 * old_count
        for i in range(old_count):
            if old[i].low != 0 or old[i].high != 0:
                key.low = old[i].low
                key.high = old[i].high
                index = self._find(key)
                self.slots[index] = old[i]
        PyMem_Free(old)
        return 0

    cdef uint64_t lookup(self, ff_hash128_t key, int64_t now_us) noexcept:
        """The message id remembered for ``key``, or 0 when absent or expired."""
        cdef Py_ssize_t index = self._find(key)
        if self.slots[index].low == 0 and self.slots[index].high == 0:
            return 0
        if self.slots[index].expires_us <= now_us:
            return 0
        return self.slots[index].message_id

    cdef bint _forget_front(self) noexcept:
        """Pop the oldest ring entry and forget its key if the ring entry is current
        (True), or skip it when the key was re-remembered since or is gone (False)."""
        cdef dedup_order oldest = self.order[self.order_head]
        cdef ff_hash128_t key
        cdef Py_ssize_t index
        self.order_head = (self.order_head + 1) % self.order_capacity
        self.order_length -= 1
        key.low = oldest.low
        key.high = oldest.high
        index = self._find(key)
        if ((self.slots[index].low != 0 or self.slots[index].high != 0)
                and self.slots[index].expires_us == oldest.expires_us):
            self._delete_at(index)
            return True
        return False

    cdef void _evict_oldest(self) noexcept:
        while self.order_length:
            if self._forget_front():
                return

    cdef int remember(self, ff_hash128_t key, uint64_t message_id, int64_t now_us) except -1:
        """Remember ``key`` -> ``message_id`` until ``now_us + window_us``."""
        cdef Py_ssize_t index
        cdef dedup_order* grown
        cdef Py_ssize_t i
        if self.size >= self.max_entries:
            self.expire(now_us)
            if self.size >= self.max_entries:
                self._evict_oldest()
                self.evicted += 1
        if 2 * (self.size + 1) > self.slot_count:
            self._grow()
        if self.order_length == self.order_capacity:
            grown = <dedup_order*>PyMem_Malloc(2 * self.order_capacity * sizeof(dedup_order))
            if grown == NULL:
                raise MemoryError()
            for i in range(self.order_length):
                grown[i] = self.order[(self.order_head + i) % self.order_capacity]
            PyMem_Free(self.order)
            self.order = grown
            self.order_capacity *= 2
            self.order_head = 0
        index = self._find(key)
        if self.slots[index].low == 0 and self.slots[index].high == 0:
            self.size += 1
        self.slots[index].low = key.low
        self.slots[index].high = key.high
        self.slots[index].message_id = message_id
        self.slots[index].expires_us = now_us + self.window_us
        i = (self.order_head + self.order_length) % self.order_capacity
        self.order[i].low = key.low
        self.order[i].high = key.high
        self.order[i].expires_us = now_us + self.window_us
        self.order_length += 1
        return 0

    cdef void expire(self, int64_t now_us) noexcept:
        """Forget every key whose window ended at or before ``now_us``."""
        while self.order_length and self.order[self.order_head].expires_us <= now_us:
            self._forget_front()

    # -- Python face, for tests ---------------------------------------------------------

    def __len__(self):
        return self.size

    def seen(self, bytes key, int64_t now_us):
        """The message id remembered for ``key`` at ``now_us``, or None."""
        cdef uint64_t found = self.lookup(
            ff_hash128(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)), now_us)
        return found if found else None

    def add(self, bytes key, uint64_t message_id, int64_t now_us):
        """Remember ``key`` for ``message_id`` (> 0) from ``now_us``."""
        if message_id == 0:
            raise InvalidArgument("message_id must be > 0")
        self.remember(ff_hash128(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)), message_id, now_us)

    def remember_key(self, uint64_t low, uint64_t high, uint64_t message_id, int64_t now_us):
        """Remember the 128-bit key ``(low, high)`` for ``message_id`` from ``now_us``
        (recovery puts back what a journal or a snapshot held)."""
        cdef ff_hash128_t key
        if message_id == 0 or (low == 0 and high == 0):
            raise InvalidArgument("message_id and the key must not be 0")
        key.low = low
        key.high = high
        if self.lookup(key, now_us) == 0:
            self.remember(key, message_id, now_us)

    def live_entries(self, int64_t now_us):
        """``(low, high, message_id, remembered_us)`` of every key still inside its
        window at ``now_us``, oldest first (what a snapshot keeps)."""
        cdef list found = []
        cdef Py_ssize_t i
        cdef Py_ssize_t index
        cdef dedup_order entry
        cdef ff_hash128_t key
        for i in range(self.order_length):
            entry = self.order[(self.order_head + i) % self.order_capacity]
            if entry.expires_us <= now_us:
                continue
            key.low = entry.low
            key.high = entry.high
            index = self._find(key)
            if self.slots[index].expires_us == entry.expires_us and (
                    self.slots[index].low or self.slots[index].high):
                found.append((entry.low, entry.high, self.slots[index].message_id,
                              entry.expires_us - self.window_us))
        return found

    def forget_expired(self, int64_t now_us):
        """Drop every key expired at ``now_us``."""
        self.expire(now_us)

    def forget_messages(self, ids):
        """Forget every key remembered for one of the message ids ``ids`` (a set);
        returns how many. One pass over the table: for the rare moment a full disk
        refused the publishes of those ids, whose retries must not be duplicates."""
        cdef set wanted = ids if type(ids) is set else set(ids)
        cdef list keys = []
        cdef Py_ssize_t i
        cdef Py_ssize_t index
        cdef ff_hash128_t key
        if not wanted or not self.size:
            return 0
        for i in range(self.slot_count):
            if (self.slots[i].low or self.slots[i].high) and \
                    self.slots[i].message_id in wanted:
                keys.append((self.slots[i].low, self.slots[i].high))
        for key.low, key.high in keys:
            index = self._find(key)
            if self.slots[index].low or self.slots[index].high:
                self._delete_at(index)   # (its ring entry is skipped when it comes up)
        return len(keys)


def hash128(bytes data):
    """The 128-bit key of ``data`` as an int (for tests)."""
    cdef ff_hash128_t key = ff_hash128(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    return (<object>key.high << 64) | key.low
