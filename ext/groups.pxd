# FIFO message groups of one queue: group id -> its pending entries and lease lock.
from libc.stdint cimport uint32_t, uint64_t

from fastfanout._ext.dedup cimport ff_hash128_t


cdef struct fifo_group:
    uint64_t low          # 128-bit hash of the group id (0, 0: slot free)
    uint64_t high
    uint32_t head         # oldest pending entry of the group (NIL if none)
    uint32_t tail
    uint32_t count        # entries pending in the group
    uint32_t leased       # the entry holding the group's lease, or NIL
    uint32_t next_free    # free-list link while unused


cdef class GroupTable:
    cdef fifo_group* groups        # group records, addressed by group index
    cdef uint32_t group_capacity
    cdef uint32_t free_group
    cdef uint32_t* index           # hash slots: group index + 1 (0 = empty)
    cdef uint32_t index_size       # power of two
    cdef readonly uint32_t active

    cdef uint32_t find_or_add(self, ff_hash128_t key) except 0xFFFFFFFF
    cdef void release(self, uint32_t group) noexcept
    cdef uint32_t _slot_of(self, ff_hash128_t key) noexcept
    cdef int _grow_index(self) except -1
