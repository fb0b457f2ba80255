# The fan-out dispatcher: topics, their target queues, and the publish path.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from fastfanout._ext.dedup cimport DedupWindow, ff_hash128_t
from fastfanout._ext.batches cimport PublishBatch
from fastfanout._ext.blobs cimport blob_t
from fastfanout._ext.store cimport Store


cdef struct topic_t:
    bint alive
    uint32_t* targets          # queue ids, in subscription order
    uint32_t target_count
    uint32_t target_capacity   # entries allocated in targets, filtered, slot_start (+ 1)
                               # and target_counts (rows); add_target grows them
    uint32_t slot_capacity     # entries allocated in target_slots
    uint8_t* filtered          # per target: 1 if its subscription has a filter policy
    int64_t* filter_keys       # per target: its FilterSet ids are key * FILTER_ID_STRIDE
                               # + alternative; keys ascend with the position and never
                               # change, so removing a target re-keys no other
    int64_t next_filter_key    # the key of the next appended target
    uint32_t* target_slots     # subscription counter slots, target by target
    uint32_t* slot_start       # per target: its first entry in target_slots (count + 1)
    uint64_t* target_counts    # per target: SUBSCRIPTION_FIELDS counters its subscriptions
                               # are owed (added to their slots when the targets change)
    uint64_t published
    uint64_t deliveries
    uint64_t unrouted
    uint64_t duplicates
    uint64_t filtered_out
    bint fifo
    bint content_dedup


cdef class Dispatcher:
    cdef Store store
    cdef topic_t* topics
    cdef uint32_t topic_count      # ids handed out: live topics and deleted ones
    cdef uint32_t topic_capacity
    cdef list free_topic_ids       # deleted topics' ids, taken again by add_topic
    cdef list topic_dedup          # topic id -> DedupWindow
    cdef list topic_filters        # topic id -> FilterSet over target keys, or None
    cdef list topic_names          # topic id -> name (bytes), put into blobs that keep it
    cdef list batch_attributes     # per entry of the batch being filtered: dict or None
    cdef int64_t* matches          # FilterSet.match_into output
    cdef Py_ssize_t match_capacity
    cdef blob_t** scratch          # blobs of the batch being published
    cdef int64_t* dues             # their own due times (INT64_MIN: the queue's delay)
    cdef ff_hash128_t* keys        # their dedup keys ((0, 0): none)
    cdef uint64_t* original        # per message: id of the original if a duplicate, else 0
    cdef unsigned char* skip       # per (target, message): 1 = no copy for this target
    cdef Py_ssize_t scratch_capacity
    cdef Py_ssize_t skip_capacity
    cdef uint64_t* slot_counters   # slot * SUBSCRIPTION_FIELDS + field
    cdef uint32_t slot_capacity
    cdef uint32_t slot_count       # slots handed out: live subscriptions and freed ones
    cdef list free_slots           # forgotten subscriptions' slots, taken again
    cdef dict subscription_slots   # subscription id -> its counter slot
    cdef int64_t refused_topic     # the last QueueFull refusal: topic (-1: none) ...
    cdef uint32_t refused_position # ... target position
    cdef uint32_t refused_queue    # ... and queue, for withdraw_refusal

    cdef inline void _credit(self, topic_t* record, uint32_t position, int counter,
                      uint64_t amount) noexcept
    cdef void _fold(self, topic_t* record) noexcept
    cdef void _fold_target(self, topic_t* record, uint32_t position) noexcept
    cdef int _fit_matches(self, Py_ssize_t needed) except -1
    cdef int _slot(self, object subscription_id) except -1

    cdef int _reserve_scratch(self, Py_ssize_t count, Py_ssize_t targets) except -1
    cdef PublishBatch _publish(self, const uint32_t* targets, uint32_t target_count,
                               object entries, int64_t now_us, int64_t topic)
    cdef int publish_one(self, int64_t topic, uint32_t queue, object body, int64_t now_us,
                         uint64_t* message_id, uint32_t* deliveries,
                         unsigned char* duplicate) except -1
    cdef int _settle(self, const uint32_t* targets, uint32_t target_count, Py_ssize_t count,
                     int64_t now_us, int64_t topic, bint with_keys, bint filtering,
                     uint64_t* ids, uint32_t* deliveries, unsigned char* duplicates,
                     bint single) except -1
    cdef bytes _kept_topic(self, const uint32_t* targets, uint32_t target_count,
                           int64_t topic)
    cdef int _apply_filters(self, uint32_t topic, Py_ssize_t count) except -1
    cdef int _check_topic(self, int64_t topic, Py_ssize_t count, int64_t now_us,
                          bint with_keys, bint single) except -1
    cdef int _check_target(self, uint32_t queue, uint32_t position, Py_ssize_t count,
                           int64_t now_us, bint with_keys, int64_t topic,
                           bint topic_content, bint single) except -1
