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
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport isfinite
from libc.stdint cimport INT64_MIN, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastfanout._ext.store cimport Store, blob_new, blob_release, blob_t

from msgspec.msgpack import encode as _encode_attributes

from fastfanout.errors import InvalidArgument, MessageTooLarge, QueueFull
from fastfanout.records import PublishEntry, PublishResult

MAX_ATTRIBUTES = 10
"""Attributes one message may carry (the SNS limit)."""
MAX_ATTRIBUTE_NAME = 256
"""Characters in one attribute name."""
MAX_ID_LENGTH = 128
"""UTF-8 bytes in a group id or a dedup id (the SQS limit)."""
MAX_DELAY_US = 365 * 86400 * 1_000_000
"""Longest delay: one year, in microseconds."""
MAX_BODY = 256 * 1024 * 1024
"""Hard ceiling on one body, whatever a queue allows: 256 MiB."""


cdef bytes _encode(object attributes, Py_ssize_t index):
    """Validate attributes (SNS types) and encode them, or None when there are none."""
    if attributes is None:
        return None
    if type(attributes) is not dict:
        raise InvalidArgument(
            f"entry {index}: attributes must be a dict, got {type(attributes).__name__}")
    if not attributes:
        return None
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(
            f"entry {index}: {len(attributes)} attributes, at most {MAX_ATTRIBUTES} allowed")
    for name, value in (<dict>attributes).items():
        if type(name) is not str or not 0 < len(<str>name) <= MAX_ATTRIBUTE_NAME:
            raise InvalidArgument(
                f"entry {index}: attribute name {name!r} must be a str of 1 to "
                f"{MAX_ATTRIBUTE_NAME} characters")
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
    if not 0 < len(encoded) <= MAX_ID_LENGTH:
        raise InvalidArgument(
            f"entry {index}: {what} {value!r} must be 1 to {MAX_ID_LENGTH} UTF-8 bytes")
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


@cython.final
cdef class Dispatcher:
    """Topics and their target queues over one ``Store``; runs every publish and send."""

    def __cinit__(self, Store store):
        self.store = store
        self.topics = NULL
        self.topic_count = 0
        self.topic_capacity = 0
        self.scratch = NULL
        self.scratch_capacity = 0

    def __dealloc__(self):
        cdef uint32_t topic
        if self.topics != NULL:
            for topic in range(self.topic_count):
                PyMem_Free(self.topics[topic].targets)
            PyMem_Free(self.topics)
        PyMem_Free(self.scratch)

    def add_topic(self):
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
        self.topics[self.topic_count].target_count = 0
        self.topics[self.topic_count].published = 0
        self.topics[self.topic_count].deliveries = 0
        self.topics[self.topic_count].unrouted = 0
        self.topic_count += 1
        return self.topic_count - 1

    def remove_topic(self, uint32_t topic):
        """Delete a topic (its subscriptions go with it)."""
        PyMem_Free(self.topics[topic].targets)
        self.topics[topic].targets = NULL
        self.topics[topic].target_count = 0
        self.topics[topic].alive = False

    def set_targets(self, uint32_t topic, list queue_ids):
        """Replace the target queues of ``topic`` (in subscription order)."""
        cdef Py_ssize_t count = len(queue_ids)
        cdef uint32_t* targets = NULL
        cdef Py_ssize_t i
        if count:
            targets = <uint32_t*>PyMem_Malloc(count * sizeof(uint32_t))
            if targets == NULL:
                raise MemoryError()
            for i in range(count):
                targets[i] = queue_ids[i]
        PyMem_Free(self.topics[topic].targets)
        self.topics[topic].targets = targets
        self.topics[topic].target_count = <uint32_t>count

    def topic_counters(self, uint32_t topic):
        """(published, deliveries, unrouted) of a topic."""
        return (self.topics[topic].published, self.topics[topic].deliveries,
                self.topics[topic].unrouted)

    def publish(self, uint32_t topic, object entries, int64_t now_us):
        """Publish a batch to a topic; returns a PublishBatch."""
        cdef PublishBatch batch = self._publish(
            self.topics[topic].targets, self.topics[topic].target_count, entries, now_us, topic)
        return batch

    def send(self, uint32_t queue, object entries, int64_t now_us):
        """Send a batch straight to one queue; returns a PublishBatch."""
        cdef uint32_t target = queue
        return self._publish(&target, 1, entries, now_us, -1)

    cdef int _reserve_scratch(self, Py_ssize_t count) except -1:
        cdef blob_t** grown
        cdef Py_ssize_t capacity
        if count <= self.scratch_capacity:
            return 0
        capacity = max(count, 2 * self.scratch_capacity, 64)
        grown = <blob_t**>PyMem_Realloc(self.scratch, capacity * sizeof(blob_t*))
        if grown == NULL:
            raise MemoryError()
        self.scratch = grown
        self.scratch_capacity = capacity
        return 0

    @cython.boundscheck(False)
    cdef PublishBatch _publish(self, const uint32_t* targets, uint32_t target_count,
                               object entries, int64_t now_us, int64_t topic):
        cdef Store store = self.store
        cdef list items = entries if type(entries) is list else list(entries)
        cdef Py_ssize_t count = len(items)
        cdef Py_ssize_t made = 0
        cdef Py_ssize_t i
        cdef uint32_t t
        cdef uint64_t first_id
        cdef uint64_t batch_bytes = 0
        cdef uint64_t largest = 0
        cdef uint64_t size
        cdef int room
        cdef object item
        cdef object attributes
        cdef bytes encoded
        cdef bytes group
        cdef bytes dedup
        cdef Py_buffer view
        cdef bint have_view
        cdef const char* body
        cdef Py_ssize_t body_len
        cdef int64_t due_us
        cdef int64_t delay_us
        cdef uint8_t priority
        cdef blob_t* blob
        cdef PublishBatch batch
        if count == 0:
            return PublishBatch(0)
        self._reserve_scratch(count)
        first_id = store.next_message_id
        # Pass 1: encode every entry into a blob; any fault undoes the blobs made so far.
        try:
            for i in range(count):
                item = items[i]
                attributes = None
                group = dedup = None
                due_us = INT64_MIN
                priority = 0
                have_view = False
                if type(item) is bytes:
                    body = PyBytes_AS_STRING(item)
                    body_len = PyBytes_GET_SIZE(item)
                else:
                    if isinstance(item, PublishEntry):
                        (payload, attributes, delay, deliver_at, group_id, dedup_id,
                         priority_value, ttl) = item
                        if delay is not None and deliver_at is not None:
                            raise InvalidArgument(
                                f"entry {i}: give delay or deliver_at, not both")
                        if delay is not None:
                            due_us = now_us + _duration_us(delay, "delay", i, MAX_DELAY_US)
                        elif deliver_at is not None:
                            if type(deliver_at) is not float and type(deliver_at) is not int:
                                raise InvalidArgument(
                                    f"entry {i}: deliver_at must be clock seconds, got "
                                    f"{type(deliver_at).__name__}")
                            if not isfinite(deliver_at) or deliver_at * 1e6 - now_us > MAX_DELAY_US:
                                raise InvalidArgument(
                                    f"entry {i}: deliver_at={deliver_at!r} must be finite and at "
                                    f"most one year from now")
                            due_us = max(<int64_t>round(deliver_at * 1e6), now_us)
                        group = _encode_id(group_id, "group_id", i)
                        dedup = _encode_id(dedup_id, "dedup_id", i)
                        if priority_value is not None:
                            if type(priority_value) is not int or not 0 <= priority_value <= 255:
                                raise InvalidArgument(
                                    f"entry {i}: priority must be an int from 0 to 255, got "
                                    f"{priority_value!r}")
                            priority = priority_value
                        if ttl is not None:
                            raise InvalidArgument(f"entry {i}: ttl is not supported yet")
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
                    if body_len > MAX_BODY:
                        raise MessageTooLarge(
                            f"entry {i}: body of {body_len} bytes exceeds the hard limit of "
                            f"{MAX_BODY} bytes")
                    encoded = _encode(attributes, i)
                    blob = blob_new(
                        first_id + i, now_us, due_us, body, <uint32_t>body_len,
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
                self.scratch[made] = blob
                made += 1
                size = store.message_size(blob)
                batch_bytes += size
                if size > largest:
                    largest = size
            # Pass 2: every target must take the whole batch.
            for t in range(target_count):
                if largest > <uint64_t>store.queue(targets[t]).max_message_size:
                    raise MessageTooLarge(
                        f"a message of {largest} bytes (body + attributes) exceeds the "
                        f"max_message_size of {store.queue(targets[t]).max_message_size} bytes "
                        f"of queue {store.names[targets[t]]!r}")
            for t in range(target_count):
                if store.room_for(targets[t], count, batch_bytes) < 0:
                    store.queue(targets[t]).rejected += count
                    raise QueueFull(
                        f"queue {store.names[targets[t]]!r} is full: it holds "
                        f"{store.queue(targets[t]).visible + store.queue(targets[t]).leased + store.queue(targets[t]).delayed} "
                        f"messages ({store.queue(targets[t]).bytes} bytes), limits "
                        f"max_messages={store.queue(targets[t]).max_messages}, "
                        f"max_bytes={store.queue(targets[t]).max_bytes}; {count} more "
                        f"({batch_bytes} bytes) do not fit and overflow is reject")
        except BaseException:
            for i in range(made):
                blob_release(self.scratch[i])
            raise
        # Pass 3: commit. Nothing below fails but for memory exhaustion.
        store.next_message_id = first_id + count
        try:
            for t in range(target_count):
                if store.room_for(targets[t], count, batch_bytes) == 0:
                    store.make_room(targets[t], count, batch_bytes, now_us)
                for i in range(count):
                    blob = self.scratch[i]
                    store.enqueue(
                        targets[t], blob, now_us,
                        blob.due_us if blob.due_us != INT64_MIN
                        else now_us + store.queue(targets[t]).delay_us, NULL)
        finally:
            for i in range(made):
                blob_release(self.scratch[i])
        if topic >= 0:
            self.topics[topic].published += count
            self.topics[topic].deliveries += <uint64_t>count * target_count
            if target_count == 0:
                self.topics[topic].unrouted += count
        batch = PublishBatch(count)
        for i in range(count):
            batch.ids[i] = first_id + i
            batch.deliveries[i] = target_count
            batch.duplicates[i] = 0
        return batch
