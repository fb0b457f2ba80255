"""Timer heap for lease deadlines and delivery delays.

Design
------
Every message copy held by a queue (an *entry*, named by its slot number) has at most
one pending deadline: the end of its lease while it is leased, or its due time while it
is delayed. The broker needs four operations on those deadlines: arm (O(log n)), disarm,
read the next due time and pop every timer due by "now" in order (O(log n) each).

An indexed binary min-heap does all four. It orders nodes by ``(due_us, seq)`` where
``seq`` is a counter of arm calls, so timers with equal deadlines fire in the order they
were armed: the reference model relies on that to be deterministic. A side array maps
each key to its heap index (+1, so 0 means "not armed"), updated on every swap.

Disarm is O(1): acks cancel almost every lease, and the acked lease is usually near the
top, where an eager removal sifts a replacement through the whole depth. A cancelled node
is marked dead (it names no key any more), skipped when it reaches the top, and all dead
nodes are compacted away (an O(n) rebuild) once they outnumber the live ones — so memory
stays within twice the live timers and the cost per cancel stays O(1) amortised.

Prior art: the indexed priority queues of Sedgewick; Netty's and Kafka's hierarchical
timing wheels trade exact ordering for O(1) — we keep exact order because due times
decide delivery order, which the model checks to the microsecond.

Memory: 24 bytes per armed timer plus 4 bytes per possible key; no Python object per
timer.

``DueHeap`` is the same heap without the key index, for the store's pending copies (a
scheduling workload holds millions): 20 bytes a timer (packed nodes), no position array,
no cancel. Its owner cancels lazily: it marks what a node names as gone, skips such a node
when it reaches the top, and has ``remove_where`` take all of them out (O(n)) once they
outnumber the live ones.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport INT64_MAX, int64_t, uint32_t, uint64_t
from libc.string cimport memset

from fastfanout.errors import InvalidArgument

# The key of a cancelled node still in the heap (no entry slot reaches 2**32 - 1).
cdef uint32_t DEAD = 0xFFFFFFFF


cdef class TimerHeap:
    """A min-heap of deadlines keyed by unsigned 32-bit keys (entry slots).

    The Python methods exist for tests and benchmarks; the broker core uses the C-level
    methods declared in ``timers.pxd``.
    """

    def __cinit__(self):
        self.nodes = NULL
        self.position = NULL
        self.size = 0
        self.dead = 0
        self.node_capacity = 0
        self.key_capacity = 0
        self.next_seq = 0

    def __dealloc__(self):
        PyMem_Free(self.nodes)
        PyMem_Free(self.position)

    cdef int _reserve_keys(self, Py_ssize_t keys) except -1:
        cdef Py_ssize_t capacity = self.key_capacity if self.key_capacity else 64
        cdef uint32_t* grown
        if keys <= self.key_capacity:
            return 0
        while capacity < keys:
            capacity *= 2
        grown = <uint32_t*>PyMem_Realloc(self.position, capacity * sizeof(uint32_t))
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.key_capacity, 0, (capacity - self.key_capacity) * sizeof(uint32_t))
        self.position = grown
        self.key_capacity = capacity
        return 0

    cdef int arm(self, uint32_t key, int64_t due_us) except -1:
        """Arm (or re-arm) the timer of ``key`` to fire at ``due_us``."""
        self.arm_seq(key, due_us, self.next_seq)
        self.next_seq += 1
        return 0

    cdef int arm_seq(self, uint32_t key, int64_t due_us, uint64_t seq) except -1:
        """Arm (or re-arm) ``key`` at ``due_us`` with the caller's tie-break ``seq``.

        A caller that orders timers of several heaps together (the store merges this
        heap with its per-queue lease lists) hands out the sequence numbers itself.
        """
        cdef timer_node* grown
        cdef Py_ssize_t capacity
        self._reserve_keys(<Py_ssize_t>key + 1)
        if self.position[key]:
            self._remove_at(self.position[key] - 1)
        if self.size == self.node_capacity:
            capacity = self.node_capacity * 2 if self.node_capacity else 64
            grown = <timer_node*>PyMem_Realloc(self.nodes, capacity * sizeof(timer_node))
            if grown == NULL:
                raise MemoryError()
            self.nodes = grown
            self.node_capacity = capacity
        self.nodes[self.size].due_us = due_us
        self.nodes[self.size].seq = seq
        self.nodes[self.size].key = key
        self.position[key] = <uint32_t>(self.size + 1)
        self.size += 1
        self._sift_up(self.size - 1)
        return 0

    cdef bint disarm(self, uint32_t key) noexcept:
        """Cancel the timer of ``key``; False if it was not armed.

        O(1): the node is only marked dead (it no longer names a key) and is skipped when
        it reaches the top. Acks cancel almost every lease, usually near the top of the
        heap, where an eager removal would sift a replacement down the whole depth.
        Dead nodes are compacted away once they outnumber the live ones.
        """
        cdef Py_ssize_t index
        if key >= self.key_capacity or self.position[key] == 0:
            return False
        index = self.position[key] - 1
        self.position[key] = 0
        self.nodes[index].key = DEAD
        self.dead += 1
        if self.dead > 1024 and 2 * self.dead > self.size:
            self._compact()
        return True

    cdef bint armed(self, uint32_t key) noexcept:
        return key < self.key_capacity and self.position[key] != 0

    cdef void _drop_dead_top(self) noexcept:
        while self.size and self.nodes[0].key == DEAD:
            self._remove_at(0)
            self.dead -= 1

    cdef int64_t next_due(self) noexcept:
        """The earliest deadline, or INT64_MAX when no timer is armed."""
        self._drop_dead_top()
        return self.nodes[0].due_us if self.size else INT64_MAX

    cdef bint pop_due(self, int64_t now_us, uint32_t* key, int64_t* due_us) noexcept:
        """Pop the earliest timer if it is due at ``now_us``; False when none is."""
        self._drop_dead_top()
        if self.size == 0 or self.nodes[0].due_us > now_us:
            return False
        key[0] = self.nodes[0].key
        due_us[0] = self.nodes[0].due_us
        self._remove_at(0)
        return True

    cdef bint peek_top(self, int64_t* due_us, uint64_t* seq, uint32_t* key) noexcept:
        """The earliest live timer's (due, seq, key); False when none is armed."""
        self._drop_dead_top()
        if self.size == 0:
            return False
        due_us[0] = self.nodes[0].due_us
        seq[0] = self.nodes[0].seq
        key[0] = self.nodes[0].key
        return True

    cdef void pop_top(self) noexcept:
        """Remove the earliest live timer (call after ``peek_top`` returned True)."""
        self._drop_dead_top()
        if self.size:
            self._remove_at(0)

    cdef void _compact(self) noexcept:
        """Drop every dead node and rebuild the heap (O(n), amortised over the cancels)."""
        cdef Py_ssize_t read
        cdef Py_ssize_t write = 0
        cdef Py_ssize_t index
        for read in range(self.size):
            if self.nodes[read].key != DEAD:
                self.nodes[write] = self.nodes[read]
                write += 1
        self.size = write
        self.dead = 0
        index = self.size // 2
        while index > 0:
            index -= 1
            self._sift_down(index)
        for index in range(self.size):
            self.position[self.nodes[index].key] = <uint32_t>(index + 1)

    cdef void _remove_at(self, Py_ssize_t index) noexcept:
        cdef Py_ssize_t last = self.size - 1
        cdef uint32_t key = self.nodes[index].key
        if key != DEAD:
            self.position[key] = 0
        self.size = last
        if index == last:
            return
        self.nodes[index] = self.nodes[last]
        key = self.nodes[index].key
        if key == DEAD:
            # A dead node has no position to follow: sift it in place.
            self._sift_up(index)
            self._sift_down(index)
            return
        self.position[key] = <uint32_t>(index + 1)
        # The moved node may belong above or below its new place; after sifting up, its
        # position array entry says where it landed, and sifting down from there is a no-op
        # if it went up.
        self._sift_up(index)
        self._sift_down(self.position[key] - 1)

    cdef void _sift_up(self, Py_ssize_t index) noexcept:
        cdef timer_node moving = self.nodes[index]
        cdef Py_ssize_t parent
        while index > 0:
            parent = (index - 1) >> 1
            if (self.nodes[parent].due_us < moving.due_us or
                    (self.nodes[parent].due_us == moving.due_us and
                     self.nodes[parent].seq < moving.seq)):
                break
            self.nodes[index] = self.nodes[parent]
            self._place(index)
            index = parent
        self.nodes[index] = moving
        self._place(index)

    cdef void _sift_down(self, Py_ssize_t index) noexcept:
        cdef timer_node moving = self.nodes[index]
        cdef Py_ssize_t child
        while True:
            child = 2 * index + 1
            if child >= self.size:
                break
            if child + 1 < self.size and (
                    self.nodes[child + 1].due_us < self.nodes[child].due_us or
                    (self.nodes[child + 1].due_us == self.nodes[child].due_us and
                     self.nodes[child + 1].seq < self.nodes[child].seq)):
                child += 1
            if (moving.due_us < self.nodes[child].due_us or
                    (moving.due_us == self.nodes[child].due_us and
                     moving.seq < self.nodes[child].seq)):
                break
            self.nodes[index] = self.nodes[child]
            self._place(index)
            index = child
        self.nodes[index] = moving
        self._place(index)

    cdef inline void _place(self, Py_ssize_t index) noexcept:
        if self.nodes[index].key != DEAD:
            self.position[self.nodes[index].key] = <uint32_t>(index + 1)

    # -- Python face, for tests and benchmarks ---------------------------------------

    def __len__(self):
        return self.size - self.dead

    def push(self, key, due_us):
        """Arm ``key`` (0 <= key < 2**32) to fire at ``due_us`` (int microseconds)."""
        if not isinstance(key, int) or not 0 <= key < 2**32 - 1:
            raise InvalidArgument(f"timer key must be an int in [0, 2**32 - 1), got {key!r}")
        if not isinstance(due_us, int) or not -2**63 <= due_us < 2**63:
            raise InvalidArgument(f"due_us must be a 64-bit int, got {due_us!r}")
        self.arm(key, due_us)

    def cancel(self, key):
        """Disarm ``key``; returns False if it was not armed."""
        if not isinstance(key, int) or not 0 <= key < 2**32 - 1:
            raise InvalidArgument(f"timer key must be an int in [0, 2**32 - 1), got {key!r}")
        return self.disarm(key)

    def __contains__(self, key):
        return isinstance(key, int) and 0 <= key < 2**32 - 1 and self.armed(key)

    def peek(self):
        """The earliest due time in microseconds, or None when empty."""
        cdef int64_t due = self.next_due()
        return None if due == INT64_MAX else due

    def pop_until(self, now_us, max_count=None):
        """Pop every timer due at ``now_us`` (at most ``max_count``) as (key, due_us) pairs."""
        cdef uint32_t key
        cdef int64_t due
        cdef list fired = []
        cdef Py_ssize_t limit = -1 if max_count is None else max_count
        while limit != 0 and self.pop_due(now_us, &key, &due):
            fired.append((key, due))
            limit -= 1
        return fired


cdef inline bint _due_before(due_node* a, due_node* b) noexcept:
    """Whether ``a`` fires before ``b``: by (due_us, seq)."""
    return a.due_us < b.due_us or (a.due_us == b.due_us and a.seq < b.seq)


cdef class DueHeap:
    """A min-heap of (due, seq, key) nodes with no key index: 20 bytes a timer.

    Nothing is cancelled here: the owner skips a node it no longer wants when it reaches
    the top (``peek_top``, ``pop_top``) and takes many out at once with ``remove_where``.
    The Python methods exist for tests; the store uses the C-level ones.
    """

    def __cinit__(self):
        self.nodes = NULL
        self.size = 0
        self.capacity = 0

    def __dealloc__(self):
        PyMem_Free(self.nodes)

    cdef int push(self, uint32_t key, int64_t due_us, uint64_t seq) except -1:
        """Add a timer firing ``key`` at ``due_us``, after earlier ``seq``s on ties."""
        cdef due_node* grown
        cdef Py_ssize_t capacity
        if self.size == self.capacity:
            capacity = self.capacity * 2 if self.capacity else 64
            grown = <due_node*>PyMem_Realloc(self.nodes, capacity * sizeof(due_node))
            if grown == NULL:
                raise MemoryError()
            self.nodes = grown
            self.capacity = capacity
        self.nodes[self.size].due_us = due_us
        self.nodes[self.size].seq = seq
        self.nodes[self.size].key = key
        self.size += 1
        self._sift_up(self.size - 1)
        return 0

    cdef bint peek_top(self, int64_t* due_us, uint64_t* seq, uint32_t* key) noexcept:
        """The earliest timer's (due, seq, key); False when the heap is empty."""
        if self.size == 0:
            return False
        due_us[0] = self.nodes[0].due_us
        seq[0] = self.nodes[0].seq
        key[0] = self.nodes[0].key
        return True

    cdef void pop_top(self) noexcept:
        """Remove the earliest timer (none: nothing)."""
        if self.size == 0:
            return
        self.size -= 1
        if self.size:
            self.nodes[0] = self.nodes[self.size]
            self._sift_down(0)

    cdef Py_ssize_t remove_where(self, due_key_test test, void* context) noexcept:
        """Remove every node whose key ``test`` says goes (it is called once per node, in
        no particular order) and rebuild the heap: O(n). Returns how many went."""
        cdef Py_ssize_t read
        cdef Py_ssize_t write = 0
        cdef Py_ssize_t index
        for read in range(self.size):
            if not test(context, self.nodes[read].key):
                if write != read:
                    self.nodes[write] = self.nodes[read]
                write += 1
        read = self.size - write
        self.size = write
        index = self.size // 2
        while index > 0:
            index -= 1
            self._sift_down(index)
        return read

    cdef void _sift_up(self, Py_ssize_t index) noexcept:
        cdef due_node moving = self.nodes[index]
        cdef Py_ssize_t parent
        while index > 0:
            parent = (index - 1) >> 1
            if not _due_before(&moving, &self.nodes[parent]):
                break
            self.nodes[index] = self.nodes[parent]
            index = parent
        self.nodes[index] = moving

    cdef void _sift_down(self, Py_ssize_t index) noexcept:
        cdef due_node moving = self.nodes[index]
        cdef Py_ssize_t child
        while True:
            child = 2 * index + 1
            if child >= self.size:
                break
            if child + 1 < self.size and _due_before(&self.nodes[child + 1],
                                                     &self.nodes[child]):
                child += 1
            if not _due_before(&self.nodes[child], &moving):
                break
            self.nodes[index] = self.nodes[child]
            index = child
        self.nodes[index] = moving

    # -- Python face, for tests ------------------------------------------------------

    def __len__(self):
        return self.size

    def add(self, key, due_us, seq):
        """Add a timer: ``key`` (0 <= key < 2**32) fires at ``due_us`` (int microseconds),
        after timers of the same due time with a lower ``seq`` (0 <= seq < 2**64)."""
        if not isinstance(key, int) or not 0 <= key < 2**32:
            raise InvalidArgument(f"timer key must be an int in [0, 2**32), got {key!r}")
        if not isinstance(due_us, int) or not -2**63 <= due_us < 2**63:
            raise InvalidArgument(f"due_us must be a 64-bit int, got {due_us!r}")
        if not isinstance(seq, int) or not 0 <= seq < 2**64:
            raise InvalidArgument(f"seq must be an int in [0, 2**64), got {seq!r}")
        self.push(key, due_us, seq)

    def pop_until(self, now_us):
        """Pop every timer due at ``now_us`` (int microseconds) as (key, due_us) pairs, in
        (due, seq) order."""
        cdef int64_t due
        cdef uint64_t seq
        cdef uint32_t key
        cdef list fired = []
        while self.peek_top(&due, &seq, &key) and due <= now_us:
            fired.append((key, due))
            self.pop_top()
        return fired

    def remove_keys(self, keys):
        """Remove every timer whose key is in ``keys`` (a set of ints); returns how many."""
        if not isinstance(keys, set):
            raise InvalidArgument(f"keys must be a set, got {type(keys).__name__}")
        return self.remove_where(_key_in, <void*>keys)


cdef bint _key_in(void* context, uint32_t key) noexcept:
    return key in <set>context
