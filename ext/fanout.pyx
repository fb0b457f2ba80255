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

Only the edge creates Python objects: a ``PublishBatch`` holds the ids in a C array and
makes ``PublishResult`` tuples only when indexed. Attributes are the one per-message
Python step (``msgspec`` encodes a dict in C), and only for messages that carry them.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport isfinite
from libc.string cimport memset
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastfanout._ext.codec cimport (
    FF_CODEC_OK,
    FF_FLAG_RECEIPT,
    ff_out_append_record,
    ff_out_buffer,
    ff_out_free,
    ff_out_init,
    ff_store_le32,
    ff_store_le64,
    FF_FLAG_DELIVER_AT,
    FF_FLAG_EXPIRES,
    FF_FLAG_PRIORITY,
    ff_frame_reader,
    ff_reader_next,
    ff_reader_offset,
    ff_reader_open,
    ff_record_view,
)
from fastfanout._ext.dedup cimport DedupWindow, ff_hash128, ff_hash128_t
from fastfanout._ext.filters cimport FilterSet
from fastfanout._ext.store cimport Store, blob_new, blob_release, blob_t

from datetime import datetime

from msgspec.msgpack import decode as _decode_attributes
from msgspec.msgpack import encode as _encode_attributes

from fastfanout._ext.codec import status_text as codec_status_text
from fastfanout.errors import InvalidArgument, MessageTooLarge, QueueFull
from fastfanout.records import PublishEntry, PublishResult

# The limits as C constants: the per-message checks below must not look up Python globals.
cdef enum:
    C_MAX_ATTRIBUTES = 10
    C_MAX_ATTRIBUTE_NAME = 256
    C_MAX_ID_LENGTH = 128
    C_MAX_BODY = 256 * 1024 * 1024
cdef int64_t C_MAX_DELAY_US = 365LL * 86400LL * 1000000LL

MAX_ATTRIBUTES = C_MAX_ATTRIBUTES
"""Attributes one message may carry (the SNS limit)."""
MAX_ATTRIBUTE_NAME = C_MAX_ATTRIBUTE_NAME
"""Characters in one attribute name."""
MAX_ID_LENGTH = C_MAX_ID_LENGTH
"""UTF-8 bytes in a group id or a dedup id (the SQS limit)."""
MAX_DELAY_US = C_MAX_DELAY_US
"""Longest delay: one year, in microseconds."""
MAX_BODY = C_MAX_BODY
"""Hard ceiling on one body, whatever a queue allows: 256 MiB."""

# Marks a duplicate of an earlier entry of the same batch (low bits: that entry's index),
# as opposed to a duplicate of a message id remembered in a window.
cdef uint64_t IN_BATCH = (<uint64_t>1) << 63

# Values of the per-(target, message) skip matrix.
cdef enum:
    SKIP_DUPLICATE = 1
    SKIP_FILTERED = 2


cdef bytes _encode(object attributes, Py_ssize_t index):
    """Validate attributes (SNS types) and encode them, or None when there are none."""
    if attributes is None:
        return None
    if type(attributes) is not dict:
        raise InvalidArgument(
            f"entry {index}: attributes must be a dict, got {type(attributes).__name__}")
    if not attributes:
        return None
    if len(attributes) > C_MAX_ATTRIBUTES:
        raise InvalidArgument(
            f"entry {index}: {len(attributes)} attributes, at most {C_MAX_ATTRIBUTES} allowed")
    for name, value in (<dict>attributes).items():
        if type(name) is not str or not 0 < len(<str>name) <= C_MAX_ATTRIBUTE_NAME:
            raise InvalidArgument(
                f"entry {index}: attribute name {name!r} must be a str of 1 to "
                f"{C_MAX_ATTRIBUTE_NAME} characters")
        kind = type(value)
        if kind is str or kind is int or kind is bytes:
            continue
        if kind is float:
            if not isfinite(value):
                raise InvalidArgument(
                    f"entry {index}: attribute {name!r} is {value!r}; numbers must be finite")
            continue
        if kind is list and all(type(item) is str for item in value):
            continue
        raise InvalidArgument(
            f"entry {index}: attribute {name!r} has type {kind.__name__}; expected str, int, "
            f"float, bytes or list[str]")
    return _encode_attributes(attributes)


cdef bytes _encode_id(object value, str what, Py_ssize_t index):
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidArgument(f"entry {index}: {what} must be a str, got {type(value).__name__}")
    encoded = (<str>value).encode("utf-8")
    if not 0 < len(encoded) <= C_MAX_ID_LENGTH:
        raise InvalidArgument(
            f"entry {index}: {what} {value!r} must be 1 to {C_MAX_ID_LENGTH} UTF-8 bytes")
    return encoded


cdef int64_t _duration_us(object seconds, str what, Py_ssize_t index, int64_t limit_us) except? -1:
    if type(seconds) is not float and type(seconds) is not int:
        raise InvalidArgument(
            f"entry {index}: {what} must be a number of seconds, got {type(seconds).__name__}")
    if not isfinite(seconds) or seconds < 0 or seconds * 1e6 > limit_us:
        raise InvalidArgument(
            f"entry {index}: {what}={seconds!r} must be finite, >= 0 and <= {limit_us / 1e6:g} s")
    return <int64_t>round(seconds * 1e6)


@cython.final
cdef class PublishBatch:
    """The results of a batch publish: a read-only sequence of ``PublishResult``.

    Results are made when indexed; ``message_ids`` gives all ids at once.
    """

    def __cinit__(self, Py_ssize_t count):
        self.count = count
        self.ids = <uint64_t*>PyMem_Malloc(max(count, 1) * sizeof(uint64_t))
        self.deliveries = <uint32_t*>PyMem_Malloc(max(count, 1) * sizeof(uint32_t))
        self.duplicates = <unsigned char*>PyMem_Malloc(max(count, 1))
        if self.ids == NULL or self.deliveries == NULL or self.duplicates == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.ids)
        PyMem_Free(self.deliveries)
        PyMem_Free(self.duplicates)

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        cdef Py_ssize_t i
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        i = index
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"result index {index} out of range for {self.count} results")
        return PublishResult(self.ids[i], self.deliveries[i], bool(self.duplicates[i]))

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self.count):
            yield PublishResult(self.ids[i], self.deliveries[i], bool(self.duplicates[i]))

    def __eq__(self, other):
        try:
            return list(self) == list(other)
        except TypeError:
            return NotImplemented

    def __repr__(self):
        return f"PublishBatch({list(self)!r})"

    @property
    def message_ids(self):
        """Every message id of the batch, in entry order."""
        return [self.ids[i] for i in range(self.count)]

    @property
    def accepted(self):
        """Entries that were not duplicates."""
        cdef Py_ssize_t i
        cdef Py_ssize_t total = 0
        for i in range(self.count):
            total += not self.duplicates[i]
        return total

    def to_wire(self):
        """The results frame of the wire protocol: u32 n, n u64 ids, n u32 deliveries,
        n u8 duplicate flags (little-endian)."""
        cdef bytes frame = PyBytes_FromStringAndSize(NULL, 4 + 13 * self.count)
        cdef char* out = PyBytes_AS_STRING(frame)
        cdef Py_ssize_t i
        ff_store_le32(out, <uint32_t>self.count)
        out += 4
        for i in range(self.count):
            ff_store_le64(out + 8 * i, self.ids[i])
        out += 8 * self.count
        for i in range(self.count):
            ff_store_le32(out + 4 * i, self.deliveries[i])
        out += 4 * self.count
        for i in range(self.count):
            out[i] = 1 if self.duplicates[i] else 0
        return frame

    def stream_frame(self, frame, str topic, uint64_t first_sequence, int64_t now_us):
        """The stream frame of a publish: the accepted records of ``frame`` (the publish
        batch these results belong to) with their id, timestamp, the topic as name and
        their topic sequence number (from ``first_sequence``) in the receipt slot.

        Returns:
            ``(stream_frame, count)``.
        """
        cdef Py_buffer buffer
        cdef ff_frame_reader reader
        cdef ff_record_view view
        cdef ff_out_buffer out
        cdef bytes name = topic.encode("utf-8")
        cdef Py_ssize_t i = 0
        cdef uint64_t sequence = first_sequence
        cdef object result
        PyObject_GetBuffer(frame, &buffer, PyBUF_SIMPLE)
        if ff_out_init(&out, <size_t>buffer.len + 64 * self.count + 64) != FF_CODEC_OK:
            ff_out_free(&out)
            PyBuffer_Release(&buffer)
            raise MemoryError()
        try:
            if ff_reader_open(&reader, <const char*>buffer.buf, buffer.len) != FF_CODEC_OK:
                raise InvalidArgument("malformed publish frame")
            while ff_reader_next(&reader, &view) == FF_CODEC_OK and i < self.count:
                if not self.duplicates[i]:
                    view.id = self.ids[i]
                    view.timestamp_us = now_us
                    view.flags = (view.flags & FF_FLAG_PRIORITY) | FF_FLAG_RECEIPT
                    view.deliver_at_us = 0
                    view.receipt = sequence
                    view.receive_count = 0
                    view.name = PyBytes_AS_STRING(name)
                    view.name_len = <uint32_t>PyBytes_GET_SIZE(name)
                    if ff_out_append_record(&out, &view) != FF_CODEC_OK:
                        raise MemoryError()
                    sequence += 1
                i += 1
            result = (PyBytes_FromStringAndSize(out.data, out.length), out.count)
        finally:
            ff_out_free(&out)
            PyBuffer_Release(&buffer)
        return result


@cython.final
cdef class Dispatcher:
    """Topics and their target queues over one ``Store``; runs every publish and send."""

    def __cinit__(self, Store store):
        self.store = store
        self.topics = NULL
        self.topic_count = 0
        self.topic_capacity = 0
        self.scratch = NULL
        self.keys = NULL
        self.original = NULL
        self.skip = NULL
        self.scratch_capacity = 0
        self.skip_capacity = 0
        self.topic_dedup = []
        self.topic_filters = []
        self.matches = NULL
        self.match_capacity = 0

    def __dealloc__(self):
        cdef uint32_t topic
        if self.topics != NULL:
            for topic in range(self.topic_count):
                PyMem_Free(self.topics[topic].targets)
                PyMem_Free(self.topics[topic].filtered)
            PyMem_Free(self.topics)
        PyMem_Free(self.scratch)
        PyMem_Free(self.keys)
        PyMem_Free(self.original)
        PyMem_Free(self.skip)
        PyMem_Free(self.matches)

    def add_topic(self, bint fifo=False, bint content_dedup=False,
                  int64_t dedup_window_us=300_000_000):
        """Create a topic with no subscriptions; returns its id (never reused)."""
        cdef topic_t* grown
        cdef uint32_t capacity
        if self.topic_count == self.topic_capacity:
            capacity = self.topic_capacity * 2 if self.topic_capacity else 16
            grown = <topic_t*>PyMem_Realloc(self.topics, capacity * sizeof(topic_t))
            if grown == NULL:
                raise MemoryError()
            self.topics = grown
            self.topic_capacity = capacity
        self.topics[self.topic_count].alive = True
        self.topics[self.topic_count].targets = NULL
        self.topics[self.topic_count].filtered = NULL
        self.topics[self.topic_count].target_count = 0
        self.topics[self.topic_count].published = 0
        self.topics[self.topic_count].deliveries = 0
        self.topics[self.topic_count].unrouted = 0
        self.topics[self.topic_count].duplicates = 0
        self.topics[self.topic_count].filtered_out = 0
        self.topics[self.topic_count].fifo = fifo
        self.topics[self.topic_count].content_dedup = content_dedup
        self.topic_dedup.append(DedupWindow(dedup_window_us))
        self.topic_filters.append(None)
        self.topic_count += 1
        return self.topic_count - 1

    def remove_topic(self, uint32_t topic):
        """Delete a topic (its subscriptions go with it)."""
        PyMem_Free(self.topics[topic].targets)
        PyMem_Free(self.topics[topic].filtered)
        self.topics[topic].targets = NULL
        self.topics[topic].filtered = NULL
        self.topics[topic].target_count = 0
        self.topics[topic].alive = False
        self.topic_filters[topic] = None

    def set_targets(self, uint32_t topic, list queue_ids, list policies=None):
        """Replace the target queues of ``topic`` (in subscription order).

        Args:
            topic: the topic id.
            queue_ids: target queue ids.
            policies: per target, a compiled filter policy or None (None: no filters).
        """
        cdef Py_ssize_t count = len(queue_ids)
        cdef uint32_t* targets = NULL
        cdef uint8_t* filtered = NULL
        cdef FilterSet filter_set = None
        cdef Py_ssize_t i
        if policies is not None and any(policy is not None for policy in policies):
            filter_set = FilterSet()
            for i in range(count):
                if policies[i] is not None:
                    filter_set.set(i, policies[i])
        if count:
            targets = <uint32_t*>PyMem_Malloc(count * sizeof(uint32_t))
            filtered = <uint8_t*>PyMem_Malloc(count)
            if targets == NULL or filtered == NULL:
                PyMem_Free(targets)
                PyMem_Free(filtered)
                raise MemoryError()
            for i in range(count):
                targets[i] = queue_ids[i]
                filtered[i] = filter_set is not None and policies[i] is not None
            if count > self.match_capacity:
                PyMem_Free(self.matches)
                self.matches = <int64_t*>PyMem_Malloc(count * sizeof(int64_t))
                if self.matches == NULL:
                    self.match_capacity = 0
                    PyMem_Free(targets)
                    PyMem_Free(filtered)
                    raise MemoryError()
                self.match_capacity = count
        PyMem_Free(self.topics[topic].targets)
        PyMem_Free(self.topics[topic].filtered)
        self.topics[topic].targets = targets
        self.topics[topic].filtered = filtered
        self.topics[topic].target_count = <uint32_t>count
        self.topic_filters[topic] = filter_set

    def topic_counters(self, uint32_t topic):
        """(published, deliveries, unrouted, duplicates, filtered_out, dedup entries,
        dedup evicted)."""
        return (self.topics[topic].published, self.topics[topic].deliveries,
                self.topics[topic].unrouted, self.topics[topic].duplicates,
                self.topics[topic].filtered_out, len(<DedupWindow>self.topic_dedup[topic]),
                (<DedupWindow>self.topic_dedup[topic]).evicted)

    def publish(self, uint32_t topic, object entries, int64_t now_us):
        """Publish a batch to a topic; returns a PublishBatch."""
        cdef PublishBatch batch = self._publish(
            self.topics[topic].targets, self.topics[topic].target_count, entries, now_us, topic)
        return batch

    def send(self, uint32_t queue, object entries, int64_t now_us):
        """Send a batch straight to one queue; returns a PublishBatch."""
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
        cdef ff_frame_reader reader
        cdef ff_record_view record
        cdef int status
        cdef Py_ssize_t count
        cdef Py_ssize_t made = 0
        cdef Py_ssize_t i
        cdef uint32_t t
        cdef uint64_t next_id
        cdef uint64_t accepted = 0
        cdef uint64_t copies = 0
        cdef uint64_t filtered_out = 0
        cdef uint64_t target_messages
        cdef uint64_t target_bytes
        cdef uint64_t found
        cdef int room
        cdef bint any_content_dedup
        cdef bint with_keys = False
        cdef bint filtering
        cdef bint keyed
        cdef blob_t* blob
        cdef unsigned char* skip
        cdef DedupWindow window
        cdef DedupWindow in_batch
        cdef PublishBatch batch
        if isinstance(entries, EncodedBatch):
            # A codec frame (the wire's publish batch): blobs straight from the records.
            PyObject_GetBuffer((<EncodedBatch>entries).frame, &frame_view, PyBUF_SIMPLE)
            have_frame = True
            status = ff_reader_open(&reader, <const char*>frame_view.buf, frame_view.len)
            if status != FF_CODEC_OK:
                PyBuffer_Release(&frame_view)
                raise InvalidArgument(
                    f"malformed batch frame: {codec_status_text(status)} at byte 0")
            count = reader.count
        else:
            items = entries if type(entries) is list else list(entries)
            count = len(items)
        if count == 0:
            if have_frame:
                PyBuffer_Release(&frame_view)
            return PublishBatch(0)
        try:
            self._reserve_scratch(count, target_count)
        except BaseException:
            if have_frame:
                PyBuffer_Release(&frame_view)
            raise
        any_content_dedup = topic >= 0 and self.topics[topic].content_dedup
        for t in range(target_count):
            any_content_dedup = any_content_dedup or store.queue(targets[t]).content_dedup
        try:
            # Pass 1: validate and encode every entry into a blob.
            filtering = topic >= 0 and self.topic_filters[topic] is not None
            if filtering and items is not None:
                # The filter matcher reads attribute dicts: keep the caller's instead of
                # decoding each blob's copy again.
                self.batch_attributes = [
                    (<tuple>item)[1] if isinstance(item, PublishEntry) and (<tuple>item)[1]
                    else None for item in items]
            for i in range(count):
                if have_frame:
                    status = ff_reader_next(&reader, &record)
                    if status != FF_CODEC_OK:
                        raise InvalidArgument(
                            f"malformed batch frame: record {i}: {codec_status_text(status)} "
                            f"at byte {ff_reader_offset(&reader)}")
                    self.scratch[i] = _blob_from_record(&record, i, now_us)
                else:
                    self.scratch[i] = _make_blob(items[i], i, now_us)
                made += 1
                blob = self.scratch[i]
                self.original[i] = 0
                self.keys[i].low = self.keys[i].high = 0
                if blob.dedup_len:
                    self.keys[i] = ff_hash128(_dedup_id(blob), blob.dedup_len)
                    with_keys = True
                elif any_content_dedup:
                    self.keys[i] = ff_hash128(blob.data, blob.body_len)
                    with_keys = True
            memset(self.skip, 0, count * target_count)
            if topic >= 0:
                self._check_topic(topic, count, now_us, with_keys)
                if filtering:
                    self._apply_filters(<uint32_t>topic, count)
            # Pass 2: per target, which copies it takes, and whether they all fit.
            for t in range(target_count):
                self._check_target(targets[t], t, count, now_us, with_keys,
                                   topic < 0 or self.topics[topic].content_dedup)
            if topic < 0 and target_count == 1:
                # A duplicate for the only queue of a send is a duplicate of the send.
                for i in range(count):
                    if self.skip[i] == SKIP_DUPLICATE and not self.original[i]:
                        found = (<DedupWindow>store.dedup_windows[targets[0]]).lookup(
                            self.keys[i], now_us)
                        self.original[i] = found if found else self._batch_original(i)
        except BaseException:
            for i in range(made):
                blob_release(self.scratch[i])
            self.batch_attributes = None
            raise
        finally:
            if have_frame:
                PyBuffer_Release(&frame_view)
        # Pass 3: commit. Ids go to accepted messages only, in entry order.
        next_id = store.next_message_id
        batch = PublishBatch(count)
        try:
            for i in range(count):
                if self.original[i]:
                    # An earlier entry of this batch (marked) or an id from the window.
                    batch.ids[i] = (batch.ids[self.original[i] & ~IN_BATCH]
                                    if self.original[i] & IN_BATCH else self.original[i])
                    batch.deliveries[i] = 0
                    batch.duplicates[i] = 1
                    continue
                self.scratch[i].id = next_id
                batch.ids[i] = next_id
                batch.deliveries[i] = 0
                batch.duplicates[i] = 0
                next_id += 1
                accepted += 1
                if topic >= 0 and self.keys[i].low | self.keys[i].high and (
                        self.scratch[i].dedup_len or self.topics[topic].content_dedup):
                    (<DedupWindow>self.topic_dedup[topic]).remember(
                        self.keys[i], batch.ids[i], now_us)
            store.next_message_id = next_id
            store.deferring = True
            for t in range(target_count):
                skip = self.skip + <Py_ssize_t>t * count
                target_messages = target_bytes = 0
                for i in range(count):
                    if not skip[i] and not self.original[i]:
                        target_messages += 1
                        target_bytes += store.message_size(self.scratch[i])
                if target_messages == 0:
                    for i in range(count):
                        filtered_out += skip[i] == SKIP_FILTERED and not self.original[i]
                    continue
                if store.room_for(targets[t], target_messages, target_bytes) == 0:
                    store.make_room(targets[t], target_messages, target_bytes, now_us)
                window = <DedupWindow>store.dedup_windows[targets[t]]
                for i in range(count):
                    if skip[i] or self.original[i]:
                        if skip[i] == SKIP_FILTERED and not self.original[i]:
                            filtered_out += 1
                        continue
                    blob = self.scratch[i]
                    if self.keys[i].low | self.keys[i].high and (
                            blob.dedup_len or store.queue(targets[t]).content_dedup):
                        window.remember(self.keys[i], blob.id, now_us)
                    store.enqueue(
                        targets[t], blob, now_us,
                        blob.due_us if blob.due_us != INT64_MIN
                        else now_us + store.queue(targets[t]).delay_us, NULL)
                    batch.deliveries[i] += 1
                    copies += 1
        finally:
            store.deferring = False
            for i in range(made):
                blob_release(self.scratch[i])
            self.batch_attributes = None
        store.flush_deferred(now_us)
        if topic >= 0:
            self.topics[topic].published += accepted
            self.topics[topic].deliveries += copies
            self.topics[topic].duplicates += <uint64_t>count - accepted
            self.topics[topic].filtered_out += filtered_out
            for i in range(count):
                if batch.deliveries[i] == 0 and not batch.duplicates[i]:
                    self.topics[topic].unrouted += 1
        return batch

    cdef int _apply_filters(self, uint32_t topic, Py_ssize_t count) except -1:
        """Mark (SKIP_FILTERED) the copies whose subscription's policy does not match."""
        cdef FilterSet filter_set = <FilterSet>self.topic_filters[topic]
        cdef topic_t* record = &self.topics[topic]
        cdef Py_ssize_t i
        cdef Py_ssize_t found
        cdef Py_ssize_t next_match
        cdef uint32_t t
        cdef blob_t* blob
        cdef dict attributes
        for i in range(count):
            if self.original[i]:
                continue
            blob = self.scratch[i]
            attributes = self.batch_attributes[i] if self.batch_attributes is not None else None
            if attributes is None:
                attributes = (_decode_attributes(
                    blob.data[blob.body_len:blob.body_len + blob.attrs_len])
                    if blob.attrs_len else {})
            found = filter_set.match_into(attributes, blob.data, blob.body_len,
                                          self.matches, self.match_capacity)
            next_match = 0
            for t in range(record.target_count):
                if not record.filtered[t]:
                    continue
                while next_match < found and self.matches[next_match] < t:
                    next_match += 1
                if next_match >= found or self.matches[next_match] != t:
                    self.skip[<Py_ssize_t>t * count + i] = SKIP_FILTERED
        return 0

    cdef uint64_t _batch_original(self, Py_ssize_t index) noexcept:
        """IN_BATCH | the entry a message repeats inside its own batch (0: none)."""
        cdef Py_ssize_t i
        for i in range(index):
            if (self.keys[i].low == self.keys[index].low and
                    self.keys[i].high == self.keys[index].high and not self.original[i]):
                return IN_BATCH | <uint64_t>i
        return 0

    cdef int _check_topic(self, int64_t topic, Py_ssize_t count, int64_t now_us,
                          bint with_keys) except -1:
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
                        f"entry {i}: topic is FIFO: every message needs a group_id")
                if blob.dedup_len == 0 and not record.content_dedup:
                    raise InvalidArgument(
                        f"entry {i}: FIFO topic without content_dedup: every message needs "
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
                           int64_t now_us, bint with_keys, bint direct) except -1:
        """Which copies queue ``queue`` takes (skip row), FIFO rules, size and room."""
        cdef Store store = self.store
        cdef unsigned char* skip = self.skip + <Py_ssize_t>position * count
        cdef DedupWindow window = <DedupWindow>store.dedup_windows[queue]
        cdef DedupWindow in_batch = None
        cdef bint fifo = store.queue(queue).fifo
        cdef bint content = store.queue(queue).content_dedup
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
                        f"entry {i}: queue {store.names[queue]!r} is FIFO: every message needs "
                        f"a group_id")
                if blob.dedup_len == 0 and not content:
                    raise InvalidArgument(
                        f"entry {i}: FIFO queue {store.names[queue]!r} without content_dedup: "
                        f"every message needs a dedup_id")
            if in_batch is not None and (self.keys[i].low | self.keys[i].high) and (
                    blob.dedup_len or content):
                if window.lookup(self.keys[i], now_us) or in_batch.lookup(self.keys[i], now_us):
                    skip[i] = SKIP_DUPLICATE
                    store.queue(queue).duplicates += 1
                    continue
                in_batch.remember(self.keys[i], <uint64_t>i + 1, now_us)
            size = store.message_size(blob)
            if size > <uint64_t>store.queue(queue).max_message_size:
                store.queue(queue).oversized += 1
                raise MessageTooLarge(
                    f"entry {i}: a message of {size} bytes (body + attributes) exceeds the "
                    f"max_message_size of {store.queue(queue).max_message_size} bytes of queue "
                    f"{store.names[queue]!r}")
            messages += 1
            size_total += size
        if messages and store.room_for(queue, messages, size_total) < 0:
            store.queue(queue).rejected += messages
            raise QueueFull(
                f"queue {store.names[queue]!r} is full: it holds "
                f"{store.queue(queue).visible + store.queue(queue).leased + store.queue(queue).delayed}"
                f" messages ({store.queue(queue).bytes} bytes) against max_messages="
                f"{store.queue(queue).max_messages}, max_bytes={store.queue(queue).max_bytes}; "
                f"{messages} more ({size_total} bytes) do not fit and overflow is reject")
        return 0


@cython.final
cdef class EncodedBatch:
    """A publish batch already in the codec's frame layout (what clients send on the wire).

    Pass one to ``publish_batch`` / ``send_batch`` instead of a list: the dispatcher
    makes blobs straight from its records, with no Python object per message.
    """

    cdef readonly object frame

    def __cinit__(self, frame):
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"a frame must be bytes-like, got {type(frame).__name__}")
        self.frame = frame


cdef blob_t* _blob_from_record(ff_record_view* record, Py_ssize_t i, int64_t now_us) except NULL:
    """Validate one publish record of a frame and copy it into a new blob."""
    cdef bytes encoded = None
    cdef const char* attrs = NULL
    cdef uint32_t attrs_len = 0
    cdef int64_t due_us = INT64_MIN
    cdef int64_t expires_us = INT64_MAX
    cdef blob_t* blob
    if record.body_len > C_MAX_BODY:
        raise MessageTooLarge(
            f"entry {i}: body of {record.body_len} bytes exceeds the hard limit of "
            f"{C_MAX_BODY} bytes")
    if record.attrs_len:
        # Attributes arrive msgpack-encoded: check them like local ones (types, count,
        # names), and store the canonical encoding.
        try:
            attributes = _decode_attributes(record.attrs[:record.attrs_len])
        except Exception as error:
            raise InvalidArgument(f"entry {i}: attributes are not valid msgpack: {error}")
        encoded = _encode(attributes, i)
        if encoded is not None:
            attrs = PyBytes_AS_STRING(encoded)
            attrs_len = <uint32_t>PyBytes_GET_SIZE(encoded)
    if record.group_len > C_MAX_ID_LENGTH or record.dedup_len > C_MAX_ID_LENGTH:
        raise InvalidArgument(
            f"entry {i}: group and dedup ids must be at most {C_MAX_ID_LENGTH} bytes")
    if record.group_len:
        record.group[:record.group_len].decode("utf-8")   # raises on bad UTF-8
    if record.dedup_len:
        record.dedup[:record.dedup_len].decode("utf-8")
    if record.flags & FF_FLAG_DELIVER_AT:
        if record.deliver_at_us - now_us > C_MAX_DELAY_US:
            raise InvalidArgument(f"entry {i}: deliver_at is more than one year ahead")
        due_us = max(record.deliver_at_us, now_us)
    if record.flags & FF_FLAG_EXPIRES:
        expires_us = <int64_t>record.receipt
        if expires_us <= now_us:
            raise InvalidArgument(f"entry {i}: the message expired before it was published")
    blob = blob_new(0, now_us, due_us, expires_us, record.body, record.body_len,
                    attrs, attrs_len, record.group, <uint16_t>record.group_len,
                    record.dedup, <uint16_t>record.dedup_len,
                    record.priority if record.flags & FF_FLAG_PRIORITY else 0)
    if blob == NULL:
        raise MemoryError()
    return blob


cdef inline const char* _dedup_id(blob_t* blob) noexcept:
    return blob.data + blob.body_len + blob.attrs_len + blob.group_len


cdef blob_t* _make_blob(object item, Py_ssize_t i, int64_t now_us) except NULL:
    """Validate one entry (bytes-like body or PublishEntry) and copy it into a new blob."""
    cdef object attributes = None
    cdef bytes encoded
    cdef bytes group = None
    cdef bytes dedup = None
    cdef int64_t due_us = INT64_MIN
    cdef int64_t expires_us = INT64_MAX
    cdef uint8_t priority = 0
    cdef Py_buffer view
    cdef bint have_view = False
    cdef const char* body
    cdef Py_ssize_t body_len
    cdef blob_t* blob
    if type(item) is bytes:
        body = PyBytes_AS_STRING(item)
        body_len = PyBytes_GET_SIZE(item)
    else:
        if isinstance(item, PublishEntry):
            (payload, attributes, delay, deliver_at, group_id, dedup_id, priority_value,
             ttl) = item
            if delay is not None and deliver_at is not None:
                raise InvalidArgument(f"entry {i}: give delay or deliver_at, not both")
            if delay is not None:
                due_us = now_us + _duration_us(delay, "delay", i, C_MAX_DELAY_US)
            elif deliver_at is not None:
                due_us = _deliver_at_us(deliver_at, i, now_us)
            if ttl is not None:
                expires_us = now_us + _duration_us(ttl, "ttl", i, C_MAX_DELAY_US)
                if expires_us == now_us:
                    raise InvalidArgument(f"entry {i}: ttl must be > 0 seconds")
            group = _encode_id(group_id, "group_id", i)
            dedup = _encode_id(dedup_id, "dedup_id", i)
            if priority_value is not None:
                if type(priority_value) is not int or not 0 <= priority_value <= 255:
                    raise InvalidArgument(
                        f"entry {i}: priority must be an int from 0 to 255, got "
                        f"{priority_value!r}")
                priority = priority_value
            item = payload
        if type(item) is bytes:
            body = PyBytes_AS_STRING(item)
            body_len = PyBytes_GET_SIZE(item)
        elif isinstance(item, (bytearray, memoryview)):
            PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
            have_view = True
            body = <const char*>view.buf
            body_len = view.len
        else:
            raise InvalidArgument(
                f"entry {i}: a body must be bytes, bytearray or memoryview, got "
                f"{type(item).__name__}")
    try:
        if body_len > C_MAX_BODY:
            raise MessageTooLarge(
                f"entry {i}: body of {body_len} bytes exceeds the hard limit of {C_MAX_BODY} bytes")
        encoded = _encode(attributes, i)
        blob = blob_new(
            0, now_us, due_us, expires_us, body, <uint32_t>body_len,
            PyBytes_AS_STRING(encoded) if encoded is not None else NULL,
            <uint32_t>(PyBytes_GET_SIZE(encoded) if encoded is not None else 0),
            PyBytes_AS_STRING(group) if group is not None else NULL,
            <uint16_t>(len(group) if group is not None else 0),
            PyBytes_AS_STRING(dedup) if dedup is not None else NULL,
            <uint16_t>(len(dedup) if dedup is not None else 0), priority)
    finally:
        if have_view:
            PyBuffer_Release(&view)
    if blob == NULL:
        raise MemoryError()
    return blob


cdef int64_t _deliver_at_us(object deliver_at, Py_ssize_t i, int64_t now_us) except? -1:
    """An absolute due time (clock seconds or an aware datetime) in microseconds."""
    if isinstance(deliver_at, datetime):
        if deliver_at.tzinfo is None or deliver_at.utcoffset() is None:
            raise InvalidArgument(
                f"entry {i}: deliver_at datetime {deliver_at!r} must be timezone-aware")
        deliver_at = deliver_at.timestamp()
    if type(deliver_at) is not float and type(deliver_at) is not int:
        raise InvalidArgument(
            f"entry {i}: deliver_at must be clock seconds or an aware datetime, got "
            f"{type(deliver_at).__name__}")
    if not isfinite(deliver_at) or deliver_at * 1e6 - now_us > C_MAX_DELAY_US:
        raise InvalidArgument(
            f"entry {i}: deliver_at={deliver_at!r} must be finite and at most one year from now")
    return max(<int64_t>round(deliver_at * 1e6), now_us)
