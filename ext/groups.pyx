"""FIFO message groups: per group, its pending entries in order and who holds its lease.

Design
------
Prior art: SQS FIFO queues and Azure Service Bus sessions: order is kept per message
group, and a group is locked while one of its messages is in flight, so other consumers
move on to other groups. Here a group is locked while exactly one of its messages is
leased (stricter than SQS, which may hand several messages of one group to one receive
call): "while one message of a group is leased, no later one of that group is delivered".

The table maps the 128-bit hash of a group id to a group record. Group records live in an
array with a free list (a group disappears as soon as it holds nothing, so the table's
memory follows the live groups, not every id ever seen); the hash index is open-addressed
with linear probing and backward-shift deletion, grown at half load. Entry lists are
threaded through the store's entries (the store owns ``head``/``tail`` links).
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

from fastfanout._ext.dedup cimport ff_hash128

cdef uint32_t NO_ENTRY = 0xFFFFFFFF


@cython.final
cdef class GroupTable:
    """The FIFO groups of one queue (used by the store; Python methods are for tests)."""

    def __cinit__(self):
        self.group_capacity = 0
        self.groups = NULL
        self.free_group = NO_ENTRY
        self.index_size = 16
        self.index = <uint32_t*>PyMem_Malloc(self.index_size * sizeof(uint32_t))
        if self.index == NULL:
            raise MemoryError()
        memset(self.index, 0, self.index_size * sizeof(uint32_t))
        self.active = 0

    def __dealloc__(self):
        PyMem_Free(self.groups)
        PyMem_Free(self.index)

    cdef uint32_t _slot_of(self, ff_hash128_t key) noexcept:
        cdef uint32_t mask = self.index_size - 1
        cdef uint32_t slot = <uint32_t>(key.low & mask)
        cdef uint32_t group
        while self.index[slot]:
            group = self.index[slot] - 1
            if self.groups[group].low == key.low and self.groups[group].high == key.high:
                return slot
            slot = (slot + 1) & mask
        return slot

    cdef int _grow_index(self) except -1:
        cdef uint32_t old_size = self.index_size
        cdef uint32_t* old = self.index
        cdef uint32_t i
        cdef ff_hash128_t key
        self.index = <uint32_t*>PyMem_Malloc(2 * old_size * sizeof(uint32_t))
        if self.index == NULL:
            self.index = old
            raise MemoryError()
        memset(self.index, 0, 2 * old_size * sizeof(uint32_t))
        self.index_size = 2 * old_size
        for i in range(old_size):
            if old[i]:
                key.low = self.groups[old[i] - 1].low
                key.high = self.groups[old[i] - 1].high
                self.index[self._slot_of(key)] = old[i]
        PyMem_Free(old)
        return 0

    cdef uint32_t find_or_add(self, ff_hash128_t key) except 0xFFFFFFFF:
        """The index of the group with this key, made empty if it did not exist."""
        cdef uint32_t slot = self._slot_of(key)
        cdef uint32_t group
        cdef uint32_t capacity
        cdef fifo_group* grown
        if self.index[slot]:
            return self.index[slot] - 1
        if 2 * (self.active + 1) > self.index_size:
            self._grow_index()
            slot = self._slot_of(key)
        if self.free_group == NO_ENTRY:
            capacity = self.group_capacity * 2 if self.group_capacity else 16
            grown = <fifo_group*>PyMem_Realloc(self.groups, capacity * sizeof(fifo_group))
            if grown == NULL:
                raise MemoryError()
            self.groups = grown
            for group in range(self.group_capacity, capacity):
                grown[group].next_free = group + 1 if group + 1 < capacity else NO_ENTRY
            self.free_group = self.group_capacity
            self.group_capacity = capacity
        group = self.free_group
        self.free_group = self.groups[group].next_free
        self.groups[group].low = key.low
        self.groups[group].high = key.high
        self.groups[group].head = NO_ENTRY
        self.groups[group].tail = NO_ENTRY
        self.groups[group].count = 0
        self.groups[group].leased = NO_ENTRY
        self.index[slot] = group + 1
        self.active += 1
        return group

    cdef void release(self, uint32_t group) noexcept:
        """Forget an empty group (its index is recycled)."""
        cdef ff_hash128_t key
        cdef uint32_t mask = self.index_size - 1
        cdef uint32_t hole
        cdef uint32_t probe
        cdef uint32_t home
        key.low = self.groups[group].low
        key.high = self.groups[group].high
        hole = self._slot_of(key)
        probe = hole
        # Backward-shift deletion: pull later keys of the probe run into the hole.
        while True:
            probe = (probe + 1) & mask
            if self.index[probe] == 0:
                break
            home = <uint32_t>(self.groups[self.index[probe] - 1].low & mask)
            if (probe > hole and (home <= hole or home > probe)) or \
                    (probe < hole and (home <= hole and home > probe)):
                self.index[hole] = self.index[probe]
                hole = probe
        self.index[hole] = 0
        self.groups[group].low = 0
        self.groups[group].high = 0
        self.groups[group].next_free = self.free_group
        self.free_group = group
        self.active -= 1

    # -- Python face, for tests ---------------------------------------------------------

    def lookup(self, bytes group_id):
        """Index of the group (made if new)."""
        return self.find_or_add(ff_hash128(group_id, len(group_id)))

    def forget(self, uint32_t group):
        """Release a group by index."""
        self.release(group)

    def __len__(self):
        return self.active
