"""The fan-out dispatcher: a published batch becomes blobs, then copies in every target.

Design
------
Prior art: SNS topics fanning out to SQS queues; Kafka's and Aeron's "one log, many
cursors" idea, here as one immutable blob per message shared by reference from each
queue that receives a copy.

``publish`` takes a whole batch (a list of bodies or ``PublishEntry`` tuples) and works
in three passes so that a batch is atomic — every copy is made or nothing changes:

1. **encode**: each entry is validated and copied into a blob (body, msgpack-encoded
   attributes, group and dedup ids); a bad entry frees the blobs made so far and raises;
2. **check**: each target queue is asked whether the whole batch fits (message size and
   room, per its overflow policy);
3. **commit**: room is made where the policy drops, and every target gets a copy of every
   blob — a pointer and a refcount, never a Python object per message.

Only the edge creates Python objects: a ``PublishBatch`` (``batches.pyx``, beside the
entry-to-blob conversion) holds the ids in a C array and makes ``PublishResult`` tuples
only when indexed. Attributes are the one per-message Python step (``msgspec`` encodes a
dict in C), and only for messages that carry them.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy, memmove, memset

from fastfanout._ext.bodies cimport ff_entry
from fastfanout._ext.batches cimport (
    C_MAX_BODY,
    EncodedBatch,
    PublishBatch,
    RingBatch,
    blob_from_record,
    make_blob,
)
from fastfanout._ext.codec cimport (
    FF_CODEC_COUNT_MISMATCH,
    FF_CODEC_OK,
    FF_RECORD_HEADER_SIZE,
    FF_RING_BATCH_PREFIX,
    ff_load_le32,
    ff_ring_batch_scan,
    ff_frame_reader,
    ff_reader_next,
    ff_reader_offset,
    ff_reader_open,
    ff_record_view,
)
from fastfanout._ext.dedup cimport DedupWindow, ff_hash128, ff_hash128_t
from fastfanout._ext.filters cimport FilterSet
from fastfanout._ext.blobs cimport (
    BodySource,
    blob_anchor_new,
    blob_anchor_seal,
    blob_anchor_t,
    blob_body,
    blob_new,
    blob_parts,
    blob_release,
    blob_t,
    blob_with_topic,
)
from fastfanout._ext.store cimport (
    OVERFLOW_DEAD_LETTER,
    OVERFLOW_DROP_OLDEST,
    OVERFLOW_HOLD,
    Store,
)
from fastfanout._ext.rows cimport ff_rows, ff_rows_close, ff_rows_get, ff_rows_open

cdef extern from "prefetch.h":
    void ff_prefetch_object(const void* address, size_t size) noexcept nogil

from msgspec.msgpack import decode as _decode_attributes

from fastfanout._ext.codec import status_text as codec_status_text
from fastfanout.errors import InvalidArgument, MalformedBatch, MessageTooLarge, QueueFull
from fastfanout.records import PublishEntry
from fastfanout.settings import OVERFLOW_POLICIES   # in the store's order of OVERFLOW_*

# Marks a duplicate of an earlier entry of the same batch (low bits: that entry's index),
# as opposed to a duplicate of a message id remembered in a window.
cdef uint64_t IN_BATCH = (<uint64_t>1) << 63

# FilterSet ids of a topic's subscriptions: target position * stride + alternative.
cdef enum:
    FILTER_ID_STRIDE = 1024
# XORed into the high half of a body's hash so body keys and dedup-id keys never meet.
cdef uint64_t BODY_KEY_MARK = 0x9e3779b97f4a7c15ULL

# A subscription's counters: one row of SUBSCRIPTION_FIELDS in slot_counters, at its
# slot. The hot path adds to its target's row instead (topic_t.target_counts: one add per
# target and batch, never per message, never a Python object); a target's rows are owed to
# the subscriptions feeding it, added to their slots when the topic's targets change
# (``_fold``) and summed in when the counters are read.
cdef enum:
    SUB_DELIVERED = 0
    SUB_FILTERED_OUT = 1
    SUB_REJECTED = 2
    SUB_OVERSIZED = 3
    SUB_DUPLICATES = 4
    SUBSCRIPTION_FIELDS = 5

# Records of a publish frame ahead of the one read whose header is asked for.
cdef enum:
    RECORD_PREFETCH_AHEAD = 6

# Values of the per-(target, message) skip matrix.
cdef enum:
    SKIP_DUPLICATE = 1
    SKIP_FILTERED = 2


@cython.final
cdef int _grow(void** array, size_t size) except -1:
    """Reallocate ``*array`` to ``size`` bytes. The grown array is kept as soon as realloc
    succeeds: a later failure (of the next array) leaves a larger array with the same
    contents, never a lost one."""
    cdef void* grown = PyMem_Realloc(array[0], size)
    if grown == NULL:
        raise MemoryError()
    array[0] = grown
    return 0


cdef class Dispatcher:
    """Topics and their target queues over one ``Store``; runs every publish and send."""

    def __cinit__(self, Store store):
        self.store = store
        self.topics = NULL
        self.topic_count = 0
        self.topic_capacity = 0
        self.scratch = NULL
        self.dues = NULL
        self.keys = NULL
        self.original = NULL
        self.skip = NULL
        self.scratch_capacity = 0
        self.skip_capacity = 0
        self.topic_dedup = []
        self.topic_filters = []
        self.topic_names = []
        self.free_topic_ids = []
        self.matches = NULL
        self.match_capacity = 0
        self.slot_counters = NULL
        self.slot_capacity = 0
        self.slot_count = 0
        self.free_slots = []
        self.subscription_slots = {}
        self.refused_topic = -1

    def __dealloc__(self):
        cdef uint32_t topic
        if self.topics != NULL:
            for topic in range(self.topic_count):
                PyMem_Free(self.topics[topic].targets)
                PyMem_Free(self.topics[topic].filtered)
                PyMem_Free(self.topics[topic].filter_keys)
                PyMem_Free(self.topics[topic].target_slots)
                PyMem_Free(self.topics[topic].slot_start)
                PyMem_Free(self.topics[topic].target_counts)
            PyMem_Free(self.topics)
        PyMem_Free(self.slot_counters)
        PyMem_Free(self.scratch)
        PyMem_Free(self.dues)
        PyMem_Free(self.keys)
        PyMem_Free(self.original)
        PyMem_Free(self.skip)
        PyMem_Free(self.matches)

    def add_topic(self, bint fifo=False, bint content_dedup=False,
                  int64_t dedup_window_us=300_000_000, bytes name=b""):
        """Create a topic with no subscriptions; returns its id.

        ``name`` (ASCII, at most 65535 bytes) is what a publish to it puts into the blob
        of its message when a target queue keeps topics (``queues.set_keeps_topics``).

        The id of a deleted topic is taken again (topic ids live only in the broker's
        name table and in this dispatcher), else a new one.
        """
        cdef topic_t* grown
        cdef uint32_t capacity
        cdef uint32_t topic
        cdef DedupWindow window = DedupWindow(dedup_window_us)
        if self.free_topic_ids:
            topic = self.free_topic_ids.pop()
            self.topic_dedup[topic] = window
            self.topic_filters[topic] = None
            self.topic_names[topic] = name
        else:
            if self.topic_count == self.topic_capacity:
                capacity = self.topic_capacity * 2 if self.topic_capacity else 16
                grown = <topic_t*>PyMem_Realloc(self.topics, capacity * sizeof(topic_t))
                if grown == NULL:
                    raise MemoryError()
                self.topics = grown
                self.topic_capacity = capacity
            topic = self.topic_count
            self.topic_dedup.append(window)
            self.topic_filters.append(None)
            self.topic_names.append(name)
            self.topic_count += 1
        self.topics[topic].alive = True
        self.topics[topic].targets = NULL
        self.topics[topic].filtered = NULL
        self.topics[topic].filter_keys = NULL
        self.topics[topic].next_filter_key = 0
        self.topics[topic].target_slots = NULL
        self.topics[topic].slot_start = NULL
        self.topics[topic].target_counts = NULL
        self.topics[topic].target_count = 0
        self.topics[topic].target_capacity = 0
        self.topics[topic].slot_capacity = 0
        self.topics[topic].published = 0
        self.topics[topic].deliveries = 0
        self.topics[topic].unrouted = 0
        self.topics[topic].duplicates = 0
        self.topics[topic].filtered_out = 0
        self.topics[topic].fifo = fifo
        self.topics[topic].content_dedup = content_dedup
        return topic

    def dedup_window(self, uint32_t topic):
        """The dedup window of topic ``topic`` (recovery and snapshots)."""
        return self.topic_dedup[topic]

    def remove_topic(self, uint32_t topic):
        """Delete a topic (its subscriptions go with it); its id is free for reuse."""
        self._fold(&self.topics[topic])
        PyMem_Free(self.topics[topic].target_counts)
        self.topics[topic].target_counts = NULL
        PyMem_Free(self.topics[topic].targets)
        PyMem_Free(self.topics[topic].filtered)
        PyMem_Free(self.topics[topic].filter_keys)
        PyMem_Free(self.topics[topic].target_slots)
        PyMem_Free(self.topics[topic].slot_start)
        self.topics[topic].targets = NULL
        self.topics[topic].filtered = NULL
        self.topics[topic].filter_keys = NULL
        self.topics[topic].target_slots = NULL
        self.topics[topic].slot_start = NULL
        self.topics[topic].target_count = 0
        self.topics[topic].target_capacity = 0
        self.topics[topic].slot_capacity = 0
        self.topics[topic].alive = False
        if self.refused_topic == topic:
            self.refused_topic = -1
        self.topic_filters[topic] = None
        self.topic_dedup[topic] = None
        self.topic_names[topic] = b""
        self.free_topic_ids.append(topic)

    def set_targets(self, uint32_t topic, list queue_ids, list policies=None,
                    list subscriptions=None):
        """Replace the target queues of ``topic`` (in subscription order).

        Args:
            topic: the topic id.
            queue_ids: target queue ids.
            policies: per target, None (no filter), a plain compiled filter policy
                (``CompiledPolicy.plain``), or a list of them (a queue subscribed more
                than once: a copy goes if any matches).
            subscriptions: per target, the ids of the subscriptions feeding it; each is
                credited with the target's copies (``subscription_counters``). None:
                no subscription is counted.
        """
        cdef Py_ssize_t count = len(queue_ids)
        cdef uint32_t* targets = NULL
        cdef uint8_t* filtered = NULL
        cdef int64_t* filter_keys = NULL
        cdef uint32_t* target_slots = NULL
        cdef uint32_t* slot_start = NULL
        cdef uint64_t* target_counts = NULL
        cdef Py_ssize_t slot_total = 0
        cdef Py_ssize_t position
        cdef FilterSet filter_set = None
        cdef Py_ssize_t i
        cdef Py_ssize_t k
        cdef Py_ssize_t policy_count = 0
        if policies is not None and any(policy is not None for policy in policies):
            filter_set = FilterSet()
            for i in range(count):
                if policies[i] is None:
                    continue
                alternatives = policies[i] if type(policies[i]) is list else [policies[i]]
                if len(alternatives) >= FILTER_ID_STRIDE:
                    raise InvalidArgument(
                        f"a queue may be subscribed to one topic at most "
                        f"{FILTER_ID_STRIDE - 1} times")
                for k in range(len(alternatives)):
                    # Key = position here; ids ascend with the position.
                    filter_set.set(i * FILTER_ID_STRIDE + k, alternatives[k])
                    policy_count += 1
        if count:
            targets = <uint32_t*>PyMem_Malloc(count * sizeof(uint32_t))
            filtered = <uint8_t*>PyMem_Malloc(count)
            filter_keys = <int64_t*>PyMem_Malloc(count * sizeof(int64_t))
            if targets == NULL or filtered == NULL or filter_keys == NULL:
                PyMem_Free(targets)
                PyMem_Free(filtered)
                PyMem_Free(filter_keys)
                raise MemoryError()
            for i in range(count):
                targets[i] = queue_ids[i]
                filtered[i] = filter_set is not None and policies[i] is not None
                filter_keys[i] = i
            if policy_count > self.match_capacity:
                PyMem_Free(self.matches)
                self.matches = <int64_t*>PyMem_Malloc(policy_count * sizeof(int64_t))
                if self.matches == NULL:
                    self.match_capacity = 0
                    PyMem_Free(targets)
                    PyMem_Free(filtered)
                    PyMem_Free(filter_keys)
                    raise MemoryError()
                self.match_capacity = policy_count
        if subscriptions is not None and count:
            if len(subscriptions) != count:
                PyMem_Free(targets)
                PyMem_Free(filtered)
                PyMem_Free(filter_keys)
                raise ValueError("subscriptions must list one entry per target")
            for i in range(count):
                slot_total += len(subscriptions[i])
            slot_start = <uint32_t*>PyMem_Malloc((count + 1) * sizeof(uint32_t))
            target_slots = <uint32_t*>PyMem_Malloc(max(slot_total, 1) * sizeof(uint32_t))
            target_counts = <uint64_t*>PyMem_Malloc(
                count * SUBSCRIPTION_FIELDS * sizeof(uint64_t))
            if slot_start == NULL or target_slots == NULL or target_counts == NULL:
                PyMem_Free(targets)
                PyMem_Free(filtered)
                PyMem_Free(filter_keys)
                PyMem_Free(slot_start)
                PyMem_Free(target_slots)
                PyMem_Free(target_counts)
                raise MemoryError()
            memset(target_counts, 0, count * SUBSCRIPTION_FIELDS * sizeof(uint64_t))
            position = 0
            try:
                for i in range(count):
                    slot_start[i] = <uint32_t>position
                    for subscription_id in subscriptions[i]:
                        target_slots[position] = <uint32_t>self._slot(subscription_id)
                        position += 1
                slot_start[count] = <uint32_t>position
            except BaseException:
                PyMem_Free(targets)
                PyMem_Free(filtered)
                PyMem_Free(filter_keys)
                PyMem_Free(slot_start)
                PyMem_Free(target_slots)
                PyMem_Free(target_counts)
                raise
        self._fold(&self.topics[topic])   # what the old targets owe their subscriptions
        PyMem_Free(self.topics[topic].targets)
        PyMem_Free(self.topics[topic].filtered)
        PyMem_Free(self.topics[topic].filter_keys)
        PyMem_Free(self.topics[topic].target_slots)
        PyMem_Free(self.topics[topic].slot_start)
        PyMem_Free(self.topics[topic].target_counts)
        self.topics[topic].targets = targets
        self.topics[topic].filtered = filtered
        self.topics[topic].filter_keys = filter_keys
        self.topics[topic].next_filter_key = count
        self.topics[topic].target_slots = target_slots
        self.topics[topic].slot_start = slot_start
        self.topics[topic].target_counts = target_counts
        if self.refused_topic == topic:
            self.refused_topic = -1
        self.topics[topic].target_count = <uint32_t>count
        self.topics[topic].target_capacity = <uint32_t>count
        self.topics[topic].slot_capacity = <uint32_t>slot_total
        self.topic_filters[topic] = filter_set

    def add_target(self, uint32_t topic, uint32_t queue_id, object policy,
                   object subscription_id):
        """Append one target to ``topic``, fed by one subscription: what ``set_targets``
        with this target last would do, in amortised O(1) (the arrays grow by doubling)
        instead of O(targets), so subscribing many queues one by one stays linear.

        Positions of the other targets do not change, so their owed counters, filter keys
        and a pending refusal stay valid. A filter costs O(size of its policy): the
        topic's filter index is updated in place, not rebuilt. The topic's targets must have been given with
        their subscriptions (``set_targets(..., subscriptions=...)``) or be none.

        Args:
            topic: the topic id.
            queue_id: the target queue, not a target of ``topic`` already.
            policy: None (no filter) or a plain compiled filter policy.
            subscription_id: the subscription feeding it (credited with its copies).

        Raises:
            InvalidArgument: ``policy`` is malformed (nothing changed).
            ValueError: the topic has targets given without subscriptions.
        """
        cdef topic_t* record = &self.topics[topic]
        cdef uint32_t position = record.target_count
        cdef uint32_t slots_used
        cdef uint32_t capacity
        cdef FilterSet filter_set
        if record.target_count and record.target_counts == NULL:
            raise ValueError("the topic's targets were set without their subscriptions")
        slots_used = record.slot_start[position] if record.target_count else 0
        if position == record.target_capacity:
            capacity = record.target_capacity * 2 if record.target_capacity else 4
            _grow(<void**>&record.targets, capacity * sizeof(uint32_t))
            _grow(<void**>&record.filtered, capacity)
            _grow(<void**>&record.filter_keys, capacity * sizeof(int64_t))
            _grow(<void**>&record.slot_start, (capacity + 1) * sizeof(uint32_t))
            if record.target_count == 0:
                record.slot_start[0] = 0
            _grow(<void**>&record.target_counts,
                  capacity * SUBSCRIPTION_FIELDS * sizeof(uint64_t))
            record.target_capacity = capacity
        if slots_used == record.slot_capacity:
            capacity = record.slot_capacity * 2 if record.slot_capacity else 4
            _grow(<void**>&record.target_slots, capacity * sizeof(uint32_t))
            record.slot_capacity = capacity
        if policy is not None:
            filter_set = <FilterSet>self.topic_filters[topic]
            if filter_set is None:
                filter_set = FilterSet()
            filter_set.set(record.next_filter_key * FILTER_ID_STRIDE, policy)   # checks it
            try:
                self._fit_matches(len(filter_set))
            except MemoryError:
                filter_set.remove(record.next_filter_key * FILTER_ID_STRIDE)
                raise
            self.topic_filters[topic] = filter_set
        record.target_slots[slots_used] = <uint32_t>self._slot(subscription_id)
        record.targets[position] = queue_id
        record.filtered[position] = policy is not None
        record.filter_keys[position] = record.next_filter_key
        record.next_filter_key += 1
        memset(record.target_counts + <Py_ssize_t>position * SUBSCRIPTION_FIELDS, 0,
               SUBSCRIPTION_FIELDS * sizeof(uint64_t))
        record.slot_start[position + 1] = slots_used + 1
        record.target_count = position + 1

    def remove_target(self, uint32_t topic, uint32_t position):
        """Remove target ``position`` of ``topic``; the later ones move up one place, in
        their order (what ``set_targets`` without it would do).

        What the target owes its subscriptions is added to their slots first. The cost is
        a ``memmove`` of the later targets' entries, plus, when the target filters, the
        removal of its policies from the topic's filter index (O(their size); the other
        targets keep their filter keys): never a rebuild of the topic's subscriptions.

        Raises:
            IndexError: the topic has no such target.
        """
        cdef topic_t* record = &self.topics[topic]
        cdef uint32_t count = record.target_count
        cdef uint32_t first
        cdef uint32_t last
        cdef uint32_t removed_slots
        cdef uint32_t i
        cdef uint32_t k
        cdef uint64_t* owed
        cdef FilterSet filter_set = <FilterSet>self.topic_filters[topic]
        cdef int64_t filter_id
        if position >= count:
            raise IndexError(f"topic {topic} has no target {position}")
        if filter_set is not None and record.filtered[position]:
            # Its alternatives have the ids key * stride + 0, 1, ... (set_targets).
            filter_id = record.filter_keys[position] * FILTER_ID_STRIDE
            while filter_set.remove(filter_id):
                filter_id += 1
            if len(filter_set) == 0:
                self.topic_filters[topic] = None
        if record.target_counts != NULL:
            first = record.slot_start[position]
            last = record.slot_start[position + 1]
            self._fold_target(record, position)
            owed = record.target_counts + <Py_ssize_t>position * SUBSCRIPTION_FIELDS
            removed_slots = last - first
            memmove(record.target_slots + first, record.target_slots + last,
                    (record.slot_start[count] - last) * sizeof(uint32_t))
            for i in range(position, count):
                record.slot_start[i] = record.slot_start[i + 1] - removed_slots
            memmove(owed, owed + SUBSCRIPTION_FIELDS,
                    <Py_ssize_t>(count - position - 1) * SUBSCRIPTION_FIELDS * sizeof(uint64_t))
        memmove(record.targets + position, record.targets + position + 1,
                (count - position - 1) * sizeof(uint32_t))
        memmove(record.filtered + position, record.filtered + position + 1,
                count - position - 1)
        memmove(record.filter_keys + position, record.filter_keys + position + 1,
                (count - position - 1) * sizeof(int64_t))
        record.target_count = count - 1
        if self.refused_topic == topic:
            self.refused_topic = -1

    def set_target_policy(self, uint32_t topic, uint32_t position, object policy):
        """Replace the filter of target ``position`` of ``topic``, a target fed by one
        subscription: None for no filter, else a plain compiled policy. O(size of the old
        and new policies): the topic's filter index is updated in place.

        Raises:
            IndexError: the topic has no such target.
            InvalidArgument: ``policy`` is malformed (nothing changed).
        """
        cdef topic_t* record = &self.topics[topic]
        cdef FilterSet filter_set = <FilterSet>self.topic_filters[topic]
        cdef int64_t filter_id
        if position >= record.target_count:
            raise IndexError(f"topic {topic} has no target {position}")
        filter_id = record.filter_keys[position] * FILTER_ID_STRIDE
        if policy is None:
            if filter_set is not None:
                filter_set.remove(filter_id)
                if len(filter_set) == 0:
                    self.topic_filters[topic] = None
            record.filtered[position] = False
            return
        if filter_set is None:
            filter_set = FilterSet()
        filter_set.set(filter_id, policy)   # checks it
        try:
            self._fit_matches(len(filter_set))
        except MemoryError:
            filter_set.remove(filter_id)
            raise
        self.topic_filters[topic] = filter_set
        record.filtered[position] = True

    def replace_target(self, uint32_t topic, uint32_t position, object policies,
                       list subscriptions):
        """Give target ``position`` of ``topic`` new feeders and filters, in place: what
        ``set_targets`` would make of that target alone (a queue fed twice by the
        topic, whose policies become alternatives), without a rebuild of the topic's
        other targets. O(the target's policies and feeders, plus a ``memmove`` of the
        later targets' feeder slots when their number changes).

        The target keeps its position and its filter key (the keys ascend with the
        positions, as the publish path's walk of the matches wants); what it owes its
        old feeders is added to their slots first, as ``remove_target`` does.

        Args:
            topic: the topic id.
            position: the target, fed by subscriptions (``set_targets(...,
                subscriptions=...)`` or ``add_target``).
            policies: None (no filter), a plain compiled policy, or a list of them (a
                copy goes if any matches).
            subscriptions: the ids of the subscriptions feeding it from now on (one at
                least).

        Raises:
            IndexError: the topic has no such target.
            InvalidArgument: too many alternatives, or a malformed policy: the target's
                filters are then half replaced; the caller gives the topic's targets
                anew (``set_targets``), as after a MemoryError.
            ValueError: no subscriptions, or the topic's targets were given without.
        """
        cdef topic_t* record = &self.topics[topic]
        cdef FilterSet filter_set = <FilterSet>self.topic_filters[topic]
        cdef uint32_t count = record.target_count
        cdef uint32_t first
        cdef uint32_t last
        cdef uint32_t used
        cdef uint32_t k
        cdef uint32_t i
        cdef uint32_t new_count = <uint32_t>len(subscriptions)
        cdef int64_t delta
        cdef int64_t key
        cdef uint32_t* slots = NULL
        if position >= count:
            raise IndexError(f"topic {topic} has no target {position}")
        if record.target_counts == NULL:
            raise ValueError("the topic's targets were set without their subscriptions")
        if new_count == 0:
            raise ValueError("a target is fed by one subscription at least")
        alternatives = (None if policies is None
                        else policies if type(policies) is list else [policies])
        if alternatives is not None and len(alternatives) >= FILTER_ID_STRIDE:
            raise InvalidArgument(
                f"a queue may be subscribed to one topic at most {FILTER_ID_STRIDE - 1} times")
        # What may fail comes first: the feeders' slots (a new id takes one) ...
        slots = <uint32_t*>PyMem_Malloc(new_count * sizeof(uint32_t))
        if slots == NULL:
            raise MemoryError()
        try:
            for k in range(new_count):
                slots[k] = <uint32_t>self._slot(subscriptions[k])
            # ... then the filters, under the target's own key: its old alternatives out,
            # the new ones in (ids key * stride + 0, 1, ...: remove_target's walk)
            key = record.filter_keys[position] * FILTER_ID_STRIDE
            if filter_set is not None and record.filtered[position]:
                while filter_set.remove(key):
                    key += 1
                key = record.filter_keys[position] * FILTER_ID_STRIDE
            record.filtered[position] = False
            if alternatives is not None:
                if filter_set is None:
                    filter_set = FilterSet()
                    self.topic_filters[topic] = filter_set
                for k in range(len(alternatives)):
                    filter_set.set(key + k, alternatives[k])   # checks it
                record.filtered[position] = True
                self._fit_matches(len(filter_set))
            elif filter_set is not None and len(filter_set) == 0:
                self.topic_filters[topic] = None
            # The feeders: the old ones get what the target owes them, the new ones
            # take their place in the slot array (the later targets' move by delta).
            first = record.slot_start[position]
            last = record.slot_start[position + 1]
            used = record.slot_start[count]
            delta = <int64_t>new_count - <int64_t>(last - first)
            if used + delta > record.slot_capacity:
                _grow(<void**>&record.target_slots, (used + delta) * sizeof(uint32_t))
                record.slot_capacity = <uint32_t>(used + delta)
            self._fold_target(record, position)
            memmove(record.target_slots + first + new_count, record.target_slots + last,
                    (used - last) * sizeof(uint32_t))
            memcpy(record.target_slots + first, slots, new_count * sizeof(uint32_t))
            for i in range(position + 1, count + 1):
                record.slot_start[i] = <uint32_t>(<int64_t>record.slot_start[i] + delta)
        finally:
            PyMem_Free(slots)
        if self.refused_topic == topic:
            self.refused_topic = -1

    cdef int _slot(self, object subscription_id) except -1:
        """The counter slot of a subscription, a zeroed one taken for a new id."""
        cdef uint32_t slot
        cdef uint32_t capacity
        cdef uint64_t* grown
        found = self.subscription_slots.get(subscription_id)
        if found is not None:
            return <int>found
        if self.free_slots:
            slot = self.free_slots.pop()
        else:
            if self.slot_count == self.slot_capacity:
                capacity = self.slot_capacity * 2 if self.slot_capacity else 16
                grown = <uint64_t*>PyMem_Realloc(
                    self.slot_counters,
                    capacity * SUBSCRIPTION_FIELDS * sizeof(uint64_t))
                if grown == NULL:
                    raise MemoryError()
                self.slot_counters = grown
                self.slot_capacity = capacity
            slot = self.slot_count
            self.slot_count += 1
        memset(self.slot_counters + <Py_ssize_t>slot * SUBSCRIPTION_FIELDS, 0,
               SUBSCRIPTION_FIELDS * sizeof(uint64_t))
        self.subscription_slots[subscription_id] = slot
        return <int>slot

    cdef inline void _credit(self, topic_t* record, uint32_t position, int counter,
                      uint64_t amount) noexcept:
        """Add ``amount`` to ``counter`` of target ``position`` of ``record``: owed to
        every subscription feeding it (one add, however many feed it)."""
        if record.target_counts != NULL:
            record.target_counts[<Py_ssize_t>position * SUBSCRIPTION_FIELDS + counter] += amount

    cdef void _fold(self, topic_t* record) noexcept:
        """Add what each target of ``record`` owes to its subscriptions' slots; zero it."""
        cdef uint32_t position
        if record.target_counts == NULL:
            return
        for position in range(record.target_count):
            self._fold_target(record, position)

    cdef void _fold_target(self, topic_t* record, uint32_t position) noexcept:
        """Add what target ``position`` owes to its subscriptions' slots; zero it (the
        topic's targets were given with their subscriptions)."""
        cdef uint32_t k
        cdef int counter
        cdef uint64_t* owed = record.target_counts + <Py_ssize_t>position * SUBSCRIPTION_FIELDS
        for k in range(record.slot_start[position], record.slot_start[position + 1]):
            for counter in range(SUBSCRIPTION_FIELDS):
                self.slot_counters[<Py_ssize_t>record.target_slots[k]
                                   * SUBSCRIPTION_FIELDS + counter] += owed[counter]
        memset(owed, 0, SUBSCRIPTION_FIELDS * sizeof(uint64_t))

    cdef int _fit_matches(self, Py_ssize_t needed) except -1:
        """Room in ``matches`` for ``needed`` filter ids (the most a topic's filter index
        may report for one message): grown to twice its size at least, so that adding
        policies one by one stays amortised O(1)."""
        cdef Py_ssize_t capacity
        cdef void* grown
        if needed <= self.match_capacity:
            return 0
        capacity = max(needed, self.match_capacity * 2)
        grown = PyMem_Realloc(self.matches, capacity * sizeof(int64_t))
        if grown == NULL:
            raise MemoryError()
        self.matches = <int64_t*>grown
        self.match_capacity = capacity
        return 0

    def forget_subscription(self, subscription_id):
        """Drop a deleted subscription's counters; its slot is free for reuse.

        Call it after ``set_targets`` or ``remove_topic`` of every topic it fed (no target
        names it then).
        """
        slot = self.subscription_slots.pop(subscription_id, None)
        if slot is not None:
            self.free_slots.append(slot)

    def subscription_counters(self):
        """Subscription id -> (delivered, filtered_out, rejected, oversized, duplicates):
        copies it put into its queue, messages of its topics it filtered out, and copies
        for it refused as QueueFull, as MessageTooLarge, or held back as duplicates by its
        queue's window. A subscription that has fed no topic yet is absent (all 0).

        One pass over every topic's targets (their rows are summed in, not folded).
        """
        cdef uint64_t* totals
        cdef uint64_t* owed
        cdef uint64_t* row
        cdef uint32_t topic
        cdef uint32_t position
        cdef uint32_t k
        cdef int counter
        cdef topic_t* record
        cdef Py_ssize_t size = <Py_ssize_t>self.slot_count * SUBSCRIPTION_FIELDS
        totals = <uint64_t*>PyMem_Malloc(max(size, 1) * sizeof(uint64_t))
        if totals == NULL:
            raise MemoryError()
        try:
            for k in range(size):
                totals[k] = self.slot_counters[k]
            for topic in range(self.topic_count):
                record = &self.topics[topic]
                if not record.alive or record.target_counts == NULL:
                    continue
                for position in range(record.target_count):
                    owed = record.target_counts + <Py_ssize_t>position * SUBSCRIPTION_FIELDS
                    for k in range(record.slot_start[position],
                                   record.slot_start[position + 1]):
                        for counter in range(SUBSCRIPTION_FIELDS):
                            totals[<Py_ssize_t>record.target_slots[k] * SUBSCRIPTION_FIELDS
                                   + counter] += owed[counter]
            result = {}
            for subscription_id, slot in self.subscription_slots.items():
                row = totals + <Py_ssize_t><uint32_t>slot * SUBSCRIPTION_FIELDS
                result[subscription_id] = (
                    row[SUB_DELIVERED], row[SUB_FILTERED_OUT], row[SUB_REJECTED],
                    row[SUB_OVERSIZED], row[SUB_DUPLICATES])
            return result
        finally:
            PyMem_Free(totals)

    def has_room(self, uint32_t queue, uint64_t messages, uint64_t size):
        """Whether ``messages`` messages of ``size`` bytes in all would enter ``queue`` now
        (room, or room its overflow policy makes): ``QueueFull.room``'s check."""
        if queue >= self.store.queue_count:
            return True
        return self.store.room_for(queue, messages, size) >= 0

    def withdraw_refusal(self, uint32_t queue, uint64_t messages):
        """Take back the ``rejected`` count of a ``hold`` queue's refusal that a server
        turned into a hold (held, the publish is not refused: it is counted once, if it
        times out)."""
        cdef topic_t* record
        cdef uint64_t* counter
        if queue < self.store.queue_count and self.store.queue(queue).rejected >= messages:
            self.store.queue(queue).rejected -= messages
        if self.refused_topic < 0 or self.refused_queue != queue:
            return
        # Its target, credited with that refusal, takes it back too (targets unchanged
        # since, so not folded: set_targets and remove_topic forget the refusal).
        record = &self.topics[self.refused_topic]
        self.refused_topic = -1
        if record.target_counts == NULL or self.refused_position >= record.target_count:
            return
        counter = &record.target_counts[
            <Py_ssize_t>self.refused_position * SUBSCRIPTION_FIELDS + SUB_REJECTED]
        counter[0] -= min(counter[0], messages)

    def topic_counters(self, uint32_t topic, int64_t now_us):
        """(published, deliveries, unrouted, duplicates, filtered_out, dedup entries,
        dedup evicted); dedup entries counts keys still inside their window."""
        (<DedupWindow>self.topic_dedup[topic]).expire(now_us)
        return (self.topics[topic].published, self.topics[topic].deliveries,
                self.topics[topic].unrouted, self.topics[topic].duplicates,
                self.topics[topic].filtered_out, len(<DedupWindow>self.topic_dedup[topic]),
                (<DedupWindow>self.topic_dedup[topic]).evicted)

    def publish(self, uint32_t topic, object entries, int64_t now_us):
        """Publish a batch to a topic; returns a PublishBatch. A refusal names the entry
        ("entry i: ") in a batch of two or more, none in a batch of one (a single call's,
        or a client's: the dispatcher cannot tell them apart)."""
        cdef PublishBatch batch = self._publish(
            self.topics[topic].targets, self.topics[topic].target_count, entries, now_us, topic)
        return batch

    def send(self, uint32_t queue, object entries, int64_t now_us):
        """Send a batch straight to one queue; returns a PublishBatch (refusals as
        ``publish``'s)."""
        cdef uint32_t target = queue
        return self._publish(&target, 1, entries, now_us, -1)

    cdef int _reserve_scratch(self, Py_ssize_t count, Py_ssize_t targets) except -1:
        cdef Py_ssize_t capacity
        cdef void* grown
        if count > self.scratch_capacity:
            capacity = max(count, 2 * self.scratch_capacity, 64)
            grown = PyMem_Realloc(self.scratch, capacity * sizeof(blob_t*))
            if grown == NULL:
                raise MemoryError()
            self.scratch = <blob_t**>grown
            grown = PyMem_Realloc(self.dues, capacity * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.dues = <int64_t*>grown
            grown = PyMem_Realloc(self.keys, capacity * sizeof(ff_hash128_t))
            if grown == NULL:
                raise MemoryError()
            self.keys = <ff_hash128_t*>grown
            grown = PyMem_Realloc(self.original, capacity * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self.original = <uint64_t*>grown
            self.scratch_capacity = capacity
        if count * targets > self.skip_capacity:
            capacity = max(count * targets, 2 * self.skip_capacity, 256)
            grown = PyMem_Realloc(self.skip, capacity)
            if grown == NULL:
                raise MemoryError()
            self.skip = <unsigned char*>grown
            self.skip_capacity = capacity
        return 0

    cdef PublishBatch _publish(self, const uint32_t* targets, uint32_t target_count,
                               object entries, int64_t now_us, int64_t topic):
        cdef Store store = self.store
        cdef list items = None
        cdef Py_buffer frame_view
        cdef bint have_frame = False
        cdef bint ring_batch = False
        cdef size_t ring_offset = 0
        cdef uint64_t ring_records
        cdef uint64_t ring_largest
        cdef size_t ring_fault
        cdef uint32_t body_len
        cdef ff_frame_reader reader
        cdef uint64_t ahead
        cdef ff_record_view record
        cdef int status
        cdef Py_ssize_t count
        cdef bint single
        cdef Py_ssize_t made = 0
        cdef Py_ssize_t i
        cdef uint32_t t
        cdef bint any_content_dedup
        cdef bytes topic_name
        cdef bint with_keys = False
        cdef bint filtering
        cdef blob_t* blob
        cdef PublishBatch batch
        cdef ff_rows rows
        cdef bint array_batch = False
        cdef const char* row_body
        cdef Py_ssize_t row_len
        cdef bint journaled = store.journal is not None   # blobs with a journal part
        cdef object in_ring = None   # the BodySource a codec frame lies in (read in place)
        cdef blob_anchor_t* anchor = NULL
        # only a codec frame opens the reader; gcc cannot see that it is read only then
        memset(&reader, 0, sizeof(reader))
        if isinstance(entries, RingBatch):
            # Bodies from a Producer's ring: u32 length + bytes each, nothing else.
            PyObject_GetBuffer((<RingBatch>entries).frame, &frame_view, PyBUF_SIMPLE)
            have_frame = True
            ring_batch = True
            if ff_ring_batch_scan(<const char*>frame_view.buf, frame_view.len, &ring_records,
                                  &ring_largest, &ring_fault) != FF_CODEC_OK:
                PyBuffer_Release(&frame_view)
                raise MalformedBatch(f"malformed ring batch at byte {ring_fault}")
            count = <Py_ssize_t>ring_records
        elif isinstance(entries, EncodedBatch):
            # A codec frame (the wire's publish batch): blobs straight from the records.
            PyObject_GetBuffer((<EncodedBatch>entries).frame, &frame_view, PyBUF_SIMPLE)
            have_frame = True
            status = ff_reader_open(&reader, <const char*>frame_view.buf, frame_view.len)
            if status == FF_CODEC_OK and reader.count == 0 and reader.remaining != 0:
                status = FF_CODEC_COUNT_MISMATCH   # bytes after its last record
            if status != FF_CODEC_OK:
                PyBuffer_Release(&frame_view)
                raise MalformedBatch(
                    f"malformed batch frame: {codec_status_text(status)} at byte 0")
            count = reader.count
            in_ring = (<EncodedBatch>entries).frame
            if (not isinstance(in_ring, BodySource) or not (<BodySource>in_ring).lies_in_place()
                    or (<BodySource>in_ring).anchor != NULL):
                in_ring = None
        elif ff_rows_open(entries, &rows):
            # An array batch (ext/rows.pxd): bodies straight from the caller's buffer.
            array_batch = True
            count = rows.count
        else:
            items = entries if type(entries) is list else list(entries)
            count = len(items)
        if count == 0:
            if have_frame:
                PyBuffer_Release(&frame_view)
            if array_batch:
                ff_rows_close(&rows)
            return PublishBatch(0)
        # a batch of one names no place in its refusals, as a single call: the server
        # cannot tell a client's single publish from a batch of one (until 2026-12-07
        # the clients' single calls said "entry 0: ...", the embedded broker's not)
        single = count == 1
        try:
            self._reserve_scratch(count, target_count)
        except BaseException:
            if have_frame:
                PyBuffer_Release(&frame_view)
            if array_batch:
                ff_rows_close(&rows)
            raise
        any_content_dedup = topic >= 0 and self.topics[topic].content_dedup
        for t in range(target_count):
            any_content_dedup = any_content_dedup or store.queue(targets[t]).content_dedup
        try:
            # Pass 1: validate and encode every entry into a blob.
            topic_name = self._kept_topic(targets, target_count, topic)
            filtering = topic >= 0 and self.topic_filters[topic] is not None
            if in_ring is not None and topic_name is None:
                # Bodies left where they lie, in the client's ring (blobs.pyx, "Bodies
                # left in place"): one copy less a message; the ring evacuates them
                # when it needs the room.
                anchor = blob_anchor_new(<BodySource>in_ring, <uint32_t>count)
            if filtering and items is not None:
                # The filter matcher reads attribute dicts: keep the caller's instead of
                # decoding each blob's copy again.
                self.batch_attributes = [
                    (<tuple>item)[1] if isinstance(item, PublishEntry) and (<tuple>item)[1]
                    else None for item in items]
            for i in range(count):
                if ring_batch:
                    body_len = ff_load_le32(<const char*>frame_view.buf + ring_offset)
                    self.dues[i] = INT64_MIN
                    self.scratch[i] = blob_new(
                        0, now_us, INT64_MIN, INT64_MAX,
                        <const char*>frame_view.buf + ring_offset + FF_RING_BATCH_PREFIX,
                        body_len, NULL, 0, NULL, 0, NULL, 0, 0, journaled)
                    if self.scratch[i] == NULL:
                        raise MemoryError()
                    ring_offset += FF_RING_BATCH_PREFIX + body_len
                elif array_batch:
                    ff_rows_get(&rows, i, &row_body, &row_len)
                    if row_len > C_MAX_BODY:
                        raise MessageTooLarge(
                            f"{ff_entry(-1 if single else i)}body of {row_len} bytes exceeds the hard limit of "
                            f"{C_MAX_BODY} bytes")
                    self.dues[i] = INT64_MIN
                    self.scratch[i] = blob_new(
                        0, now_us, INT64_MIN, INT64_MAX, row_body, <uint32_t>row_len,
                        NULL, 0, NULL, 0, NULL, 0, 0, journaled)
                    if self.scratch[i] == NULL:
                        raise MemoryError()
                elif have_frame:
                    status = ff_reader_next(&reader, &record)
                    if status != FF_CODEC_OK:
                        raise MalformedBatch(
                            f"malformed batch frame: record {i}: {codec_status_text(status)} "
                            f"at byte {ff_reader_offset(&reader)}")
                    # The header of the record RECORD_PREFETCH_AHEAD on (records of a
                    # batch are mostly of one size): the frame was written on the
                    # producer's core, and each header read here was a miss the loop
                    # waited for (a third of this function's time with 1 KiB rows).
                    ahead = <uint64_t>record.record_len * RECORD_PREFETCH_AHEAD
                    if ahead < reader.remaining:
                        ff_prefetch_object(reader.pos + ahead, FF_RECORD_HEADER_SIZE)
                    self.scratch[i] = blob_from_record(&record, -1 if single else i, now_us, journaled,
                                                      &self.dues[i], anchor)
                else:
                    self.scratch[i] = make_blob(items[i], -1 if single else i, now_us, journaled, &self.dues[i])
                if topic_name is not None:
                    self.scratch[i] = blob_with_topic(
                        self.scratch[i], topic_name, <uint16_t>len(topic_name))
                    if self.scratch[i] == NULL:
                        raise MemoryError()
                made += 1
                blob = self.scratch[i]
                self.original[i] = 0
                self.keys[i].low = self.keys[i].high = 0
                if blob.dedup_len:
                    self.keys[i] = ff_hash128(_dedup_id(blob), blob.dedup_len)
                    with_keys = True
                elif any_content_dedup:
                    # A body key must never equal a dedup-id key: flip a constant into it.
                    self.keys[i] = ff_hash128(blob_body(blob), blob.body_len)
                    self.keys[i].high ^= BODY_KEY_MARK
                    with_keys = True
            if have_frame and not ring_batch and reader.remaining != 0:
                # more bytes than its count of records: refused whole, as the codec
                # reads it (until 2026-12-05 they were ignored, and a record after the
                # count was dropped unseen)
                raise MalformedBatch(
                    f"malformed batch frame: {codec_status_text(FF_CODEC_COUNT_MISMATCH)} "
                    f"at byte {ff_reader_offset(&reader)}")
        except BaseException:
            for i in range(made):
                blob_release(self.scratch[i])
            self.batch_attributes = None
            raise
        finally:
            if have_frame:
                PyBuffer_Release(&frame_view)
            if array_batch:
                ff_rows_close(&rows)
            if anchor != NULL:
                blob_anchor_seal(anchor)
        try:
            batch = PublishBatch(count)
        except BaseException:
            for i in range(made):
                blob_release(self.scratch[i])
            self.batch_attributes = None
            raise
        self._settle(targets, target_count, count, now_us, topic, with_keys, filtering,
                     batch.ids, batch.deliveries, batch.duplicates, single)
        return batch

    cdef int publish_one(self, int64_t topic, uint32_t queue, object body, int64_t now_us,
                         uint64_t* message_id, uint32_t* deliveries,
                         unsigned char* duplicate) except -1:
        """One bare body to topic ``topic`` (>= 0) or, with ``topic`` -1, to queue
        ``queue``: the batch path's checks and commit for a batch of one, with no Python
        object made (no list, no ``PublishBatch``). Writes the message's id, its copies
        and its duplicate flag; raises as ``publish``/``send`` would.
        """
        cdef Store store = self.store
        cdef const uint32_t* targets
        cdef uint32_t target_count
        cdef uint32_t t
        cdef bint any_content_dedup
        cdef bint filtering
        cdef bint with_keys
        cdef blob_t* blob
        cdef bytes topic_name
        if topic >= 0:
            targets = self.topics[topic].targets
            target_count = self.topics[topic].target_count
            any_content_dedup = self.topics[topic].content_dedup
            filtering = self.topic_filters[topic] is not None
        else:
            targets = &queue
            target_count = 1
            any_content_dedup = False
            filtering = False
        self._reserve_scratch(1, target_count)
        for t in range(target_count):
            any_content_dedup = any_content_dedup or store.queue(targets[t]).content_dedup
        topic_name = self._kept_topic(targets, target_count, topic)
        blob = make_blob(body, -1, now_us, store.journal is not None, &self.dues[0])
        if topic_name is not None:
            blob = blob_with_topic(blob, topic_name, <uint16_t>len(topic_name))
            if blob == NULL:
                raise MemoryError()
        self.scratch[0] = blob
        self.original[0] = 0
        self.keys[0].low = self.keys[0].high = 0
        with_keys = False
        if blob.dedup_len:   # a PublishEntry given as the body
            self.keys[0] = ff_hash128(_dedup_id(blob), blob.dedup_len)
            with_keys = True
        elif any_content_dedup:
            # A body key must never equal a dedup-id key: flip a constant into it.
            self.keys[0] = ff_hash128(blob_body(blob), blob.body_len)
            self.keys[0].high ^= BODY_KEY_MARK
            with_keys = True
        self._settle(targets, target_count, 1, now_us, topic, with_keys, filtering,
                     message_id, deliveries, duplicate, True)
        return 0

    cdef int _settle(self, const uint32_t* targets, uint32_t target_count, Py_ssize_t count,
                     int64_t now_us, int64_t topic, bint with_keys, bint filtering,
                     uint64_t* ids, uint32_t* deliveries, unsigned char* duplicates,
                     bint single) except -1:
        """Passes 2 and 3 of a batch whose ``count`` blobs are in ``scratch``: check every
        target, then commit (or raise, changing nothing). Releases the scratch blobs
        either way; writes each entry's id, copies and duplicate flag."""
        cdef Store store = self.store
        cdef Py_ssize_t i
        cdef uint32_t t
        cdef uint64_t next_id
        cdef uint64_t accepted = 0
        cdef uint64_t copies = 0
        cdef uint64_t filtered_out = 0
        cdef uint64_t target_filtered
        cdef uint64_t target_duplicates
        cdef uint64_t target_messages
        cdef uint64_t target_bytes
        cdef blob_t* blob
        cdef unsigned char* skip
        cdef DedupWindow window
        try:
            memset(self.skip, 0, count * target_count)
            if topic >= 0:
                self._check_topic(topic, count, now_us, with_keys, single)
                if filtering:
                    self._apply_filters(<uint32_t>topic, count)
            # Pass 2: per target, which copies it takes, and whether they all fit.
            for t in range(target_count):
                self._check_target(targets[t], t, count, now_us, with_keys, topic,
                                   topic >= 0 and self.topics[topic].content_dedup, single)
        except BaseException:
            for i in range(count):
                blob_release(self.scratch[i])
            self.batch_attributes = None
            raise
        # Pass 3: commit. Ids go to accepted messages only, in entry order.
        next_id = store.next_message_id
        try:
            for i in range(count):
                if self.original[i]:
                    # An earlier entry of this batch (marked) or an id from the window.
                    ids[i] = (ids[self.original[i] & ~IN_BATCH]
                              if self.original[i] & IN_BATCH else self.original[i])
                    deliveries[i] = 0
                    duplicates[i] = 1
                    continue
                self.scratch[i].id = next_id
                ids[i] = next_id
                deliveries[i] = 0
                duplicates[i] = 0
                next_id += 1
                accepted += 1
                if topic >= 0 and self.keys[i].low | self.keys[i].high and (
                        self.scratch[i].dedup_len or self.topics[topic].content_dedup):
                    (<DedupWindow>self.topic_dedup[topic]).remember(
                        self.keys[i], ids[i], now_us)
                    if store.journal is not None:
                        store.journal_topic_key(<uint32_t>topic, self.keys[i].low,
                                                self.keys[i].high, ids[i], now_us)
            store.next_message_id = next_id
            store.deferring = True
            store.publishing_topic = <uint32_t>(topic + 1) if topic >= 0 else 0
            for t in range(target_count):
                skip = self.skip + <Py_ssize_t>t * count
                target_messages = target_bytes = 0
                for i in range(count):
                    if not skip[i] and not self.original[i]:
                        target_messages += 1
                        target_bytes += store.message_size(self.scratch[i])
                if filtering:   # only a topic's publish filters
                    target_filtered = 0
                    for i in range(count):
                        target_filtered += skip[i] == SKIP_FILTERED and not self.original[i]
                    filtered_out += target_filtered
                    self._credit(&self.topics[topic], t, SUB_FILTERED_OUT, target_filtered)
                if with_keys:   # only a keyed batch has duplicate copies (pass 2)
                    target_duplicates = 0
                    for i in range(count):
                        target_duplicates += skip[i] == SKIP_DUPLICATE
                    if target_duplicates:
                        store.queue(targets[t]).duplicates += target_duplicates
                        if topic >= 0:
                            self._credit(&self.topics[topic], t, SUB_DUPLICATES,
                                         target_duplicates)
                if target_messages == 0:
                    continue
                if store.room_for(targets[t], target_messages, target_bytes) == 0:
                    store.make_room(targets[t], target_messages, target_bytes, now_us)
                window = <DedupWindow>store.dedup_windows[targets[t]]
                for i in range(count):
                    if skip[i] or self.original[i]:
                        continue
                    blob = self.scratch[i]
                    if self.keys[i].low | self.keys[i].high and (
                            blob.dedup_len or store.queue(targets[t]).content_dedup
                            or topic >= 0 and self.topics[topic].content_dedup):
                        window.remember(self.keys[i], blob.id, now_us)
                        store.enqueue_keyed = True   # journaled: recovery re-remembers it
                    store.enqueue(
                        targets[t], blob, now_us,
                        self.dues[i] if self.dues[i] != INT64_MIN
                        else now_us + store.queue(targets[t]).delay_us, NULL)
                    store.enqueue_keyed = False
                    deliveries[i] += 1
                    copies += 1
                if topic >= 0:
                    self._credit(&self.topics[topic], t, SUB_DELIVERED, target_messages)
        finally:
            store.deferring = False
            store.publishing_topic = 0
            store.enqueue_keyed = False
            for i in range(count):
                blob_release(self.scratch[i])
            self.batch_attributes = None
        if store.deferred:
            store.flush_deferred(now_us)
        if topic >= 0:
            self.topics[topic].published += accepted
            self.topics[topic].deliveries += copies
            self.topics[topic].duplicates += <uint64_t>count - accepted
            self.topics[topic].filtered_out += filtered_out
            for i in range(count):
                if deliveries[i] == 0 and not duplicates[i]:
                    self.topics[topic].unrouted += 1
        return 0

    cdef bytes _kept_topic(self, const uint32_t* targets, uint32_t target_count,
                           int64_t topic):
        """The name of ``topic`` when one of its targets keeps topics (a queue holding a
        pattern subscription): each blob of the publish then carries it
        (``blob_with_topic``). None otherwise, and for a send (``topic`` -1)."""
        cdef uint32_t t
        if topic < 0:
            return None
        for t in range(target_count):
            if self.store.queue(targets[t]).keeps_topics:
                return <bytes>self.topic_names[topic] or None
        return None

    cdef int _apply_filters(self, uint32_t topic, Py_ssize_t count) except -1:
        """Mark (SKIP_FILTERED) the copies whose subscription's policy does not match."""
        cdef FilterSet filter_set = <FilterSet>self.topic_filters[topic]
        cdef topic_t* record = &self.topics[topic]
        cdef Py_ssize_t i
        cdef Py_ssize_t found
        cdef Py_ssize_t next_match
        cdef int64_t key
        cdef uint32_t t
        cdef blob_t* blob
        cdef dict attributes
        # Locals: the compiler would otherwise reload each through its struct after every
        # byte written to ``skip`` (a char write may alias anything).
        cdef const uint8_t* filtered
        cdef const int64_t* keys
        cdef const int64_t* matches = self.matches
        cdef unsigned char* skip = self.skip
        cdef uint32_t target_count
        for i in range(count):
            if self.original[i]:
                continue
            blob = self.scratch[i]
            attributes = self.batch_attributes[i] if self.batch_attributes is not None else None
            if attributes is None:
                attributes = (_decode_attributes(
                    blob_parts(blob)[:blob.attrs_len])
                    if blob.attrs_len else {})
            found = filter_set.match_into(attributes, blob_body(blob), blob.body_len,
                                          self.matches, self.match_capacity)
            next_match = 0
            filtered = record.filtered
            keys = record.filter_keys
            target_count = record.target_count
            # Ids ascend, and so do the targets' keys: one merge walk. Keys are distinct
            # and ascend from 0 or more, so when the last is its position every key is
            # (no target was removed before another): then the walk compares positions,
            # without a load per target (~5 % of a filtered publish to 100 queues).
            if target_count == 0 or keys[target_count - 1] == target_count - 1:
                for t in range(target_count):
                    if not filtered[t]:
                        continue
                    while next_match < found and matches[next_match] // FILTER_ID_STRIDE < t:
                        next_match += 1
                    if next_match >= found or matches[next_match] // FILTER_ID_STRIDE != t:
                        skip[<Py_ssize_t>t * count + i] = SKIP_FILTERED
                continue
            for t in range(target_count):
                if not filtered[t]:
                    continue
                key = keys[t]
                while next_match < found and matches[next_match] // FILTER_ID_STRIDE < key:
                    next_match += 1
                if next_match >= found or matches[next_match] // FILTER_ID_STRIDE != key:
                    skip[<Py_ssize_t>t * count + i] = SKIP_FILTERED
        return 0

    cdef int _check_topic(self, int64_t topic, Py_ssize_t count, int64_t now_us,
                          bint with_keys, bint single) except -1:
        """FIFO rules and topic-level deduplication of a batch."""
        cdef topic_t* record = &self.topics[topic]
        cdef DedupWindow window = <DedupWindow>self.topic_dedup[topic]
        cdef DedupWindow in_batch
        cdef Py_ssize_t i
        cdef uint64_t found
        cdef blob_t* blob
        if record.fifo:
            for i in range(count):
                blob = self.scratch[i]
                if blob.group_len == 0:
                    raise InvalidArgument(
                        f"{ff_entry(-1 if single else i)}topic is FIFO: every message needs a group_id")
                if blob.dedup_len == 0 and not record.content_dedup:
                    raise InvalidArgument(
                        f"{ff_entry(-1 if single else i)}FIFO topic without content_dedup: every message needs "
                        f"a dedup_id")
        if not with_keys:
            return 0
        window.expire(now_us)
        in_batch = DedupWindow(1)
        for i in range(count):
            blob = self.scratch[i]
            if not (self.keys[i].low | self.keys[i].high):
                continue
            if not (blob.dedup_len or record.content_dedup):
                continue
            found = window.lookup(self.keys[i], now_us)
            if not found:
                found = in_batch.lookup(self.keys[i], now_us)
                if found:
                    found = IN_BATCH | (found - 1)
            if found:
                self.original[i] = found
            else:
                in_batch.remember(self.keys[i], <uint64_t>i + 1, now_us)
        return 0

    cdef int _check_target(self, uint32_t queue, uint32_t position, Py_ssize_t count,
                           int64_t now_us, bint with_keys, int64_t topic,
                           bint topic_content, bint single) except -1:
        """Which copies queue ``queue`` takes (skip row), FIFO rules, size and room.

        ``topic`` -1: the batch is a send to this queue alone (direct), so a duplicate copy
        makes the entry a duplicate of the send (its original id recorded now); else the
        subscriptions of target ``position`` are credited with its refusals. ``topic_content``:
        the batch is published to a topic with ``content_dedup``, whose copies carry the
        body hash as their dedup key, as SNS FIFO passes its content-based deduplication
        id to each SQS FIFO queue: the queue applies it as it applies a dedup id.
        """
        cdef Store store = self.store
        cdef unsigned char* skip = self.skip + <Py_ssize_t>position * count
        cdef DedupWindow window = <DedupWindow>store.dedup_windows[queue]
        cdef DedupWindow in_batch = None
        cdef bint direct = topic < 0
        cdef topic_t* record = NULL if direct else &self.topics[topic]
        cdef bint fifo = store.queue(queue).fifo
        cdef bint content = store.queue(queue).content_dedup or topic_content
        cdef uint64_t found
        cdef uint64_t messages = 0
        cdef uint64_t size_total = 0
        cdef uint64_t size
        cdef Py_ssize_t i
        cdef blob_t* blob
        if with_keys:
            window.expire(now_us)
            in_batch = DedupWindow(1)
        for i in range(count):
            if self.original[i] or skip[i]:
                continue
            blob = self.scratch[i]
            if fifo:
                if blob.group_len == 0:
                    raise InvalidArgument(
                        f"{ff_entry(-1 if single else i)}queue {store.names[queue]!r} is FIFO: every message needs "
                        f"a group_id")
                if blob.dedup_len == 0 and not content:
                    raise InvalidArgument(
                        f"{ff_entry(-1 if single else i)}FIFO queue {store.names[queue]!r} without content_dedup: "
                        f"every message needs a dedup_id")
            if in_batch is not None and (self.keys[i].low | self.keys[i].high) and (
                    blob.dedup_len or content):
                found = window.lookup(self.keys[i], now_us)
                if not found:
                    found = in_batch.lookup(self.keys[i], now_us)
                    if found:
                        found = IN_BATCH | (found - 1)   # the earlier entry's index
                if found:
                    # counted at the commit (pass 3): a batch refused after this check
                    # counts no duplicate (until 2026-12-05 each refusal counted them again)
                    skip[i] = SKIP_DUPLICATE
                    if direct:
                        # A duplicate for the only queue of a send is a duplicate of the
                        # send: it returns the original id.
                        self.original[i] = found
                    continue
                in_batch.remember(self.keys[i], <uint64_t>i + 1, now_us)
            size = store.message_size(blob)
            if size > <uint64_t>store.queue(queue).max_message_size:
                store.queue(queue).oversized += 1
                if not direct:
                    self._credit(record, position, SUB_OVERSIZED, 1)
                raise MessageTooLarge(
                    f"{ff_entry(-1 if single else i)}a message of {size} bytes (body + attributes) exceeds the "
                    f"max_message_size of {store.queue(queue).max_message_size} bytes of queue "
                    f"{store.names[queue]!r}")
            if (self.dues[i] != INT64_MIN
                    and self.dues[i] - now_us >= store.queue(queue).retention_us):
                # Accepted, it would be dropped by retention before it is ever visible.
                raise InvalidArgument(
                    f"{ff_entry(-1 if single else i)}due in {(self.dues[i] - now_us) / 1e6:g} s (its delay or "
                    f"deliver_at) but queue {store.names[queue]!r} keeps messages for "
                    f"retention={store.queue(queue).retention_us / 1e6:g} s: it would be "
                    f"dropped before delivery")
            messages += 1
            size_total += size
        if messages and store.room_for(queue, messages, size_total) < 0:
            store.queue(queue).rejected += messages
            if not direct:
                self._credit(record, position, SUB_REJECTED, messages)
                self.refused_topic = topic
                self.refused_position = position
                self.refused_queue = queue
            hold = store.queue(queue).overflow == OVERFLOW_HOLD
            error = QueueFull(
                f"queue {store.names[queue]!r} is full: it holds "
                f"{store.queue(queue).visible + store.queue(queue).leased + store.queue(queue).delayed}"
                f" messages ({store.queue(queue).bytes} bytes) against max_messages="
                f"{_limit(store.queue(queue).max_messages)}, max_bytes="
                f"{_limit(store.queue(queue).max_bytes)}; "
                f"{messages} more ({size_total} bytes) do not fit and overflow is "
                f"{OVERFLOW_POLICIES[store.queue(queue).overflow]}"
                + _never_fits(store.queue(queue).max_messages, store.queue(queue).max_bytes,
                              messages, size_total)
                + _room_advice(store.queue(queue).overflow, store.queue(queue).fifo))
            error.hold = hold
            error.room = (store.names[queue], messages, size_total)
            raise error
        return 0


cdef str _room_advice(int overflow, bint fifo):
    """Which messages drop_oldest and dead_letter make room from (none for the others)."""
    if overflow != OVERFLOW_DROP_OLDEST and overflow != OVERFLOW_DEAD_LETTER:
        return ""
    if fifo:
        # Only a group's head is listed visible: a message waiting behind its group's
        # leased or delayed head is not taken (the stats count it visible).
        return (" (it makes room from visible messages only, in a FIFO queue from the heads "
                "of groups with no message leased or delayed: the rest are leased, delayed "
                "or wait behind their group's head)")
    return " (it makes room from visible messages only: the rest are leased or delayed)"


cdef str _never_fits(int64_t max_messages, int64_t max_bytes, uint64_t messages,
                     uint64_t size):
    """The advice when a batch is larger than the queue could ever hold (all or none)."""
    if (0 <= max_messages < <int64_t>messages) or (0 <= max_bytes < <int64_t>size):
        return ("; a batch this large never fits this queue, even empty (a batch goes "
                "whole or not at all): publish fewer messages at a time (a producer's "
                "batch_messages, batch_bytes)")
    return ""


cdef str _limit(int64_t value):
    """A limit as an error message says it (-1: none)."""
    return "none" if value < 0 else f"{value:,}"


cdef inline const char* _dedup_id(blob_t* blob) noexcept:
    return blob_parts(blob) + blob.attrs_len + blob.group_len


