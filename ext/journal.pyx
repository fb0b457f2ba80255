"""The journal: an append-only log of checksummed records in segment files.

Design
------
Prior art: Kafka's log segments (files named by their base offset, records framed with a
length and a CRC-32C), the NATS JetStream file store (per-message checksums, a torn tail
truncated on recovery) and Chronicle Queue (one writer, readers of the same bytes). The
journal is the storage engine under durable queues: the broker appends a record for
every state change it must not lose, and never rewrites one.

Invariants:

- One writer per directory (the broker's lock file guards the directory, not this
  module). Records get consecutive sequence numbers from 1; a segment file is named by
  the sequence of its first record (``%020d.seg``) and begins with a 32-byte header.
- ``append`` only copies into a memory buffer; ``flush`` hands the buffer to the kernel
  with ``write`` (a confirmed message then survives ``kill -9`` of the broker);
  ``sync`` adds ``fdatasync`` (it then survives power loss). A caller that appends a
  whole round of records and commits once gets group commit: one ``fdatasync`` for all.
- A write that fails part-way is undone (``ftruncate`` to the last whole record), so a
  full disk (``ENOSPC``, ``EFBIG``) refuses the records of that flush (``StoreFull``) and
  leaves a valid file: the caller confirms none of them and may try again later. Any
  other write error, and every ``fdatasync`` error, fails the journal closed
  (``StoreFailed`` from then on): after a failed ``fdatasync`` the kernel may have
  dropped the dirty pages, so retrying it could report success for lost data (the
  PostgreSQL "fsyncgate" lesson).
- Recovery (``scan``) checks every record. In the last segment, bytes after the last
  good record that hold no further good record are a torn tail: cut (``ftruncate``) and
  reported. A bad record followed by good ones (a bit flip, a bad sector) is skipped
  precisely: the scan resynchronises on the next 8-aligned offset holding a record
  whose checksum and sequence hold, reports the bytes and sequences it skipped, and
  keeps every good record after it. A segment whose header is damaged is read all the
  same (its name gives its first sequence) and reported; a file named like a segment
  that holds no good record, or is not a regular file, is reported and never read.

Record layout (little-endian, 8-aligned)::

    0   crc u32     CRC-32C of bytes 4 .. 24 + length (length, seq, kind, payload)
    4   length u32  payload bytes
    8   seq u64     the record's sequence number
    16  kind u8     what the record means (the caller's code, 1..255; 0 is never written)
    17  reserved    7 zero bytes
    24  payload     ``length`` bytes, then zero padding to a multiple of 8

Segment header (32 bytes): magic ``FFJRNL01``, ``base_seq`` u64, ``version`` u32 = 1,
``reserved`` u32 = 0, ``crc`` u32 (CRC-32C of the 24 bytes before it), ``reserved`` u32.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.errno cimport EFBIG, EINTR, ELOOP, ENOSPC, errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset, strerror
from posix.fcntl cimport O_APPEND, O_CREAT, O_EXCL, O_WRONLY, open as c_open
from posix.mman cimport MAP_FAILED, MAP_POPULATE, MAP_PRIVATE, PROT_READ, mmap, munmap
from posix.resource cimport getrusage, rusage
from posix.stat cimport fstat, struct_stat
from posix.unistd cimport (
    close as c_close,
    ftruncate,
    read as c_read,
    usleep,
    useconds_t,
    write as c_write,
)

from fastfanout._ext.clocks cimport monotonic_ns
from fastfanout._ext.codec cimport ff_align8, ff_load_le32, ff_load_le64, ff_store_le32, ff_store_le64

import os
import queue
import stat
import threading

from fastfanout.errors import InvalidArgument, StoreFailed, StoreFull


cdef extern from "crc32c.h":
    void ff_crc32c_init() noexcept nogil
    int ff_crc32c_hardware() noexcept nogil
    uint32_t ff_crc32c(uint32_t previous, const void* data, size_t length) noexcept nogil

cdef extern from "<unistd.h>" nogil:
    int fdatasync(int fd)
    int fsync(int fd)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t* thread, const void* attr,
                       void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** result)
    int pthread_mutex_init(pthread_mutex_t* mutex, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    int pthread_cond_init(pthread_cond_t* cond, const void* attr)
    int pthread_cond_destroy(pthread_cond_t* cond)
    int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex)
    int pthread_cond_broadcast(pthread_cond_t* cond)

cdef extern from "<sys/resource.h>" nogil:
    enum: RUSAGE_THREAD

ff_crc32c_init()

cdef const char* MAGIC_BYTES = b"FFJRNL01"

cdef enum:
    RECORD_HEADER = 24
    SEGMENT_HEADER = 32
    MAX_PAYLOAD = 1 << 30

MAGIC = b"FFJRNL01"

RECORD_HEADER_BYTES = RECORD_HEADER
SEGMENT_HEADER_BYTES = SEGMENT_HEADER
MAX_PAYLOAD_BYTES = MAX_PAYLOAD
"""Largest payload of one record (1 GiB): a length above it marks a record as bad."""
MAX_SEGMENT_SEQ = (1 << 64) - 1
"""The largest sequence a segment's name may give (a record's sequence is a u64)."""
FSYNC_POLICIES = ("always", "interval", "never")

cdef enum:
    INLINE_MAX = 64 << 10
    INLINE_SLOW_NS = 5000000
    INLINE_PAUSE_NS = 1000000000

INLINE_WRITE_MAX_BYTES = INLINE_MAX
"""Largest batch ``commit_begin`` writes in the caller's thread when it needs no
fdatasync (64 KiB): a ``write`` of that much into the page cache costs less than waking
the writer thread and being woken by it; a larger batch, or one to be synced, goes to
the writer (``writer_batches``)."""
INLINE_WRITE_SLOW_NS = INLINE_SLOW_NS
"""An inline write slower than this (5 ms) during which the thread slept (the kernel
throttling dirty pages, a busy disk; a preemption does not count) is counted
(``slow_inline_writes``) and sends the batches of the next ``INLINE_WRITE_PAUSE_NS`` to
the writer thread, so the caller's loop is not held up."""
INLINE_WRITE_PAUSE_NS = INLINE_PAUSE_NS
"""How long after a slow inline write every batch goes to the writer (1 s)."""


def crc32c(data, uint32_t previous=0):
    """CRC-32C (Castagnoli) of a buffer, continuing from ``previous``."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return ff_crc32c(previous, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)


def crc32c_hardware():
    """Whether CRC-32C runs on the CPU's own instruction (else a table, ~10x slower)."""
    return bool(ff_crc32c_hardware())


def segment_name(uint64_t base_seq):
    """The file name of the segment whose first record is ``base_seq``."""
    return f"{base_seq:020d}.seg"


def segment_header(uint64_t base_seq):
    """The 32 header bytes of a segment starting at ``base_seq``."""
    cdef char header[SEGMENT_HEADER]
    memset(header, 0, SEGMENT_HEADER)
    memcpy(header, <const char*>MAGIC_BYTES, 8)
    ff_store_le64(header + 8, base_seq)
    ff_store_le32(header + 16, 1)
    ff_store_le32(header + 24, ff_crc32c(0, header, 24))
    return PyBytes_FromStringAndSize(header, SEGMENT_HEADER)


cdef inline uint32_t record_crc(const char* record, uint32_t length) noexcept nogil:
    return ff_crc32c(0, record + 4, RECORD_HEADER - 4 + <size_t>length)


cdef inline bint record_ok(const char* data, uint64_t offset, uint64_t size,
                           uint64_t expected_seq, uint32_t* length) noexcept nogil:
    """Whether a good record with sequence ``expected_seq`` (0: any) starts at offset."""
    if offset + RECORD_HEADER > size:
        return False
    cdef const char* record = data + offset
    length[0] = ff_load_le32(record + 4)
    if length[0] > MAX_PAYLOAD or offset + ff_align8(RECORD_HEADER + length[0]) > size:
        return False
    if record[16] == 0:
        return False
    if expected_seq and ff_load_le64(record + 8) != expected_seq:
        return False
    return ff_load_le32(record) == record_crc(record, length[0])


cdef int write_all(int fd, const char* data, size_t length) noexcept nogil:
    """Write everything or return the errno of the failure (0: written)."""
    cdef ssize_t done
    while length:
        done = c_write(fd, data, length)
        if done < 0:
            if errno == EINTR:
                continue
            return errno
        data += done
        length -= <size_t>done
    return 0


cdef void frame_records(char* data, size_t length) noexcept nogil:
    """Checksum every record of a buffer of whole records (``append`` and ``finish``
    leave the crc to this pass: it runs where the buffer is written, off the caller's
    thread when a writer is started)."""
    cdef size_t offset = 0
    cdef uint32_t size
    while offset + RECORD_HEADER <= length:
        size = ff_load_le32(data + offset + 4)
        ff_store_le32(data + offset, record_crc(data + offset, size))
        offset += ff_align8(RECORD_HEADER + <uint64_t>size)


cdef struct writer_t:
    # Shared by the journal (its owner, holding the GIL) and the writer thread (never
    # holding it); every field below the lock is handed over under it.
    pthread_mutex_t lock
    pthread_cond_t cond
    pthread_t thread
    int event_fd          # written (eventfd +1) when a batch is done
    int state             # WRITER_IDLE, WRITER_QUEUED (the thread's), WRITER_DONE
    bint stop
    int fd                # the segment the batch goes to
    char* buffer          # the batch: whole records, crc left to the thread
    size_t length
    bint sync             # fdatasync after the write
    int write_fault       # errno injected instead of the write (tests), 0: none
    int sync_fault        # errno injected instead of the fdatasync (tests), 0: none
    int write_error       # results: errno of a failed write, 0: written
    int sync_error        # errno of a failed fdatasync, 0: synced (or not asked)

cdef enum:
    WRITER_IDLE = 0
    WRITER_QUEUED = 1
    WRITER_DONE = 2


cdef void* writer_main(void* argument) noexcept nogil:
    """The writer thread: checksum, write and fdatasync each batch handed over, then
    signal (condition and eventfd). It never touches a Python object."""
    cdef writer_t* w = <writer_t*>argument
    cdef uint64_t one = 1
    pthread_mutex_lock(&w.lock)
    while True:
        while w.state != WRITER_QUEUED and not w.stop:
            pthread_cond_wait(&w.cond, &w.lock)
        if w.state != WRITER_QUEUED:
            break   # stopping, nothing queued
        pthread_mutex_unlock(&w.lock)
        frame_records(w.buffer, w.length)
        w.write_error = w.write_fault if w.write_fault else write_all(w.fd, w.buffer, w.length)
        w.sync_error = 0
        if w.write_error == 0 and w.sync:
            if w.sync_fault:
                w.sync_error = w.sync_fault
            elif fdatasync(w.fd) != 0:
                w.sync_error = errno
        pthread_mutex_lock(&w.lock)
        w.state = WRITER_DONE
        pthread_cond_broadcast(&w.cond)
        c_write(w.event_fd, &one, 8)
    pthread_mutex_unlock(&w.lock)
    return NULL


class ScanReport:
    """What a scan of the journal found besides its good records.

    Attributes:
        records: good records read.
        bytes: bytes of the segment files read.
        first_seq: sequence of the first good record (0: none).
        last_seq: sequence of the last good record (0: none).
        torn_tail: ``None``, or what was cut from the last segment's end: a dict with
            ``segment`` (file name), ``offset``, ``bytes`` and ``records`` (record headers
            found in the cut bytes, a best effort: a torn record may have none).
        skipped: bad stretches skipped in the middle of segments, each a dict with
            ``segment``, ``offset``, ``bytes``, ``after_seq`` (last good sequence before
            it) and ``next_seq`` (first good sequence after it, in this segment or a
            later one; the sequences between the two were lost; 0 when no good record
            follows).
        bad_headers: segments whose header is damaged, by name: their records were
            read all the same (each record checks itself; the name says where their
            sequences start), and damage inside them is in ``skipped`` as anywhere.
        bad_segments: files named like segments that are not segments, left in place
            and never read, by name: a file with a bad header and no good record at or
            after its name's sequence, or anything not a regular file (a directory, a
            FIFO, a device, a dangling symbolic link).
        missing: records missing between two segments, each a dict with ``segment``
            (the segment whose first good record follows the gap), ``after_seq`` (the
            last good sequence before it) and ``next_seq`` (that first good record's):
            the sequences between the two were lost with no damaged byte left to show
            it (a segment deleted, or one cut short at a record's end). A jump a
            restart made past a file holding no record (named ``next_seq - 1``) is
            none.
        duplicates: good records whose sequence was read already, in an earlier
            segment, each a dict with ``segment``, ``records``, ``first_seq`` and
            ``last_seq``: read once, skipped here. A journal never writes a sequence
            twice; a segment copied under another name (a restore from a backup into a
            live directory, say) does.
    """

    def __init__(self):
        self.records = 0
        self.bytes = 0
        self.first_seq = 0
        self.last_seq = 0
        self.torn_tail = None
        self.skipped = []
        self.bad_headers = []
        self.bad_segments = []
        self.missing = []
        self.duplicates = []

    def __repr__(self):
        return (f"ScanReport(records={self.records}, bytes={self.bytes}, "
                f"seq={self.first_seq}..{self.last_seq}, torn_tail={self.torn_tail}, "
                f"skipped={self.skipped}, bad_headers={self.bad_headers}, "
                f"bad_segments={self.bad_segments}, missing={self.missing}, "
                f"duplicates={self.duplicates})")


def segments(directory):
    """(base_seq, file name) of every segment file in ``directory``, in order.

    A segment's name is its first sequence in 20 ASCII digits, from 1 to
    ``MAX_SEGMENT_SEQ``; other names (``unnamable_segments``) are none.
    """
    found = []
    for name in os.listdir(directory):
        if _segment_like(name):
            base = int(name[:20])
            if 1 <= base <= MAX_SEGMENT_SEQ:
                found.append((base, name))
    found.sort()
    return found


def unnamable_segments(directory):
    """Names in ``directory`` of the segments' form whose number no sequence can have
    (0, or past ``MAX_SEGMENT_SEQ``): never read, reported by ``scan``."""
    return sorted(name for name in os.listdir(directory) if _segment_like(name)
                  and not 1 <= int(name[:20]) <= MAX_SEGMENT_SEQ)


cdef bint _segment_like(str name):
    return (len(name) == 24 and name.endswith(".seg") and name[:20].isascii()
            and name[:20].isdigit())


cdef class RecordSink:
    """A reader of the good records ``scan`` finds, called from C.

    ``scan(directory, sink)`` calls ``sink.record(seq, kind, payload, length, segment)``
    (a ``cdef`` method: Cython subclasses override it) for each good record, in order,
    with a pointer into the segment's bytes (valid during the call) and the index of
    its segment in ``segments(directory)``: no bytes object and no Python call per
    record. This base class ignores every record.
    """

    cdef int record(self, uint64_t seq, uint8_t kind, const char* payload, uint32_t length,
                    uint32_t segment) except -1:
        return 0


def scan(directory, callback=None, bint repair=True):
    """Read every good record of the journal in ``directory``, in sequence order.

    Args:
        directory: the journal's directory.
        callback: called as ``callback(seq, kind, payload)`` for each good record
            (``payload``: bytes); a ``RecordSink`` gets them in C instead; None to only
            check.
        repair: cut a torn tail from the last segment (``ftruncate``); False leaves the
            files as they are (a read-only check).

    Returns:
        A ``ScanReport``.
    """
    cdef uint64_t totals[4]     # records, first_seq, last_seq, the segment's first seq
    cdef const char* data = NULL
    cdef size_t size = 0
    cdef uint64_t floor
    cdef int fd
    report = ScanReport()
    found = segments(directory)
    report.bad_segments.extend(unnamable_segments(directory))
    totals[0] = totals[1] = totals[2] = totals[3] = 0
    # A stretch skipped at a segment's end: its next_seq is the next good record's, in
    # a later segment.
    open_stretch = None
    # The name of the entry before this one when it held no good record (0: it held
    # one). A restart whose last segment held none begins the next one past its name,
    # so that gap in the sequences lost nothing.
    recordless = 0
    for index, (base_seq, name) in enumerate(found):
        path = os.path.join(directory, name)
        fd = _open_segment(path)
        if fd < 0:   # a directory, a FIFO, a device, a dangling link: never read
            if fd == -1:
                report.bad_segments.append(name)
                recordless = base_seq
            continue
        try:
            # Mapped, its pages mapped at once (MAP_POPULATE): the page cache's own
            # pages, no copy and no fault per page.
            size = os.fstat(fd).st_size
            data = <const char*>MAP_FAILED
            if size:
                data = <const char*>mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE,
                                         fd, 0)
                if data == <const char*>MAP_FAILED:
                    code = errno
                    raise OSError(code, strerror(code).decode(), path)
        finally:
            os.close(fd)
        try:
            report.bytes += size
            if not _header_ok(data, size, base_seq):
                # The header is damaged, but each record checks itself and the name says
                # where the sequences start: a file holding a good record at or after
                # its name is a segment, read; one holding none is not a segment.
                if _first_record(data, size, base_seq) == size:
                    report.bad_segments.append(name)
                    recordless = base_seq
                    continue
                report.bad_headers.append(name)
                floor = base_seq
            else:
                floor = 0
            totals[3] = 0
            previous_seq = totals[2]
            stretches = len(report.skipped)
            _scan_segment(data, size, name, path, index == len(found) - 1, repair,
                          callback, report, index, totals, floor)
            if open_stretch is not None and totals[3]:
                open_stretch["next_seq"] = totals[3]
                open_stretch = None
            elif previous_seq and totals[3] > previous_seq + 1 \
                    and recordless != totals[3] - 1 and not (
                        len(report.skipped) > stretches
                        and report.skipped[stretches]["next_seq"] == totals[3]):
                # Good records on both sides and no damaged byte between them: the
                # records between were in a segment that is gone, or cut at a record's
                # end (a stretch before this segment's first good record says it).
                report.missing.append({"segment": name, "after_seq": previous_seq,
                                       "next_seq": totals[3]})
            recordless = 0 if totals[3] else base_seq
            stretches = len(report.skipped)
            if stretches and report.skipped[stretches - 1]["next_seq"] == 0:
                open_stretch = report.skipped[stretches - 1]
        finally:
            if data != <const char*>MAP_FAILED:
                munmap(<void*>data, size)
    report.records = totals[0]
    report.first_seq = totals[1]
    report.last_seq = totals[2]
    return report


def _open_segment(path):
    """Open a file named like a segment for reading: its descriptor, or -1 when it is
    not a regular file (reported as not a segment), or -2 when it is gone.

    Only a regular file is opened: opening a FIFO for reading blocks until a writer
    comes, and opening a device may act on it. ``O_NONBLOCK`` and the ``fstat`` after
    the open close the race with an entry replaced in between.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return -1
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1 if os.path.lexists(path) else -2   # a dangling link, or gone
    except OSError as exc:
        if exc.errno == ELOOP:
            return -1   # a link that leads nowhere (a loop), as a dangling one
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return -1
    return fd


def _removable(path, uint64_t base_seq):
    """Whether compaction may delete segment file ``path`` (see
    ``Journal.remove_segments_before``): 1 for a regular file whose header is good, or
    too short to have one, or damaged over records the scan read by the file's name; 0
    for what is no segment (never ours to delete: left in place); -1 when it cannot be
    read to tell (removal stops there)."""
    cdef bytes content
    try:
        fd = _open_segment(path)
        if fd == -2:
            return 1   # gone already
        if fd < 0:
            return 0   # not a regular file: never ours to delete
        with open(fd, "rb", buffering=0) as file:
            content = file.read(SEGMENT_HEADER)
            if len(content) < SEGMENT_HEADER or _header_ok(content, len(content), base_seq):
                return 1
            content += file.read()
    except OSError:
        return -1
    return 1 if _first_record(content, len(content), base_seq) < <uint64_t>len(content) else 0


cdef uint64_t _first_record(const char* raw, uint64_t size, uint64_t floor) noexcept:
    """The offset of the first good record with a sequence at or after ``floor`` past
    a segment header (``size``: none)."""
    cdef uint64_t offset = SEGMENT_HEADER
    cdef uint32_t length = 0
    while offset < size:
        if record_ok(raw, offset, size, 0, &length) and ff_load_le64(raw + offset + 8) >= floor:
            return offset
        offset += 8
    return size


cdef bint _header_ok(const char* raw, size_t size, uint64_t base_seq) noexcept:
    if size < SEGMENT_HEADER or memcmp(raw, MAGIC_BYTES, 8) != 0:
        return False
    return (ff_load_le64(raw + 8) == base_seq and ff_load_le32(raw + 16) == 1
            and ff_load_le32(raw + 24) == ff_crc32c(0, raw, 24))


cdef _scan_segment(const char* raw, uint64_t size, str name, str path, bint last,
                   bint repair, callback, report, uint32_t index, uint64_t* totals,
                   uint64_t floor):
    # totals: records, first_seq, last_seq of the whole scan so far, and the first good
    # sequence of this segment (kept in C: no Python object per record); floor: the
    # lowest sequence a record of this segment may have (its name's, when its header is
    # damaged; else 0: the header vouched for it)
    cdef uint64_t offset = SEGMENT_HEADER
    cdef uint64_t resync
    cdef uint64_t seq
    cdef uint64_t expected = 0      # 0: any sequence (the first record of the segment)
    cdef uint32_t length = 0
    cdef uint64_t headers
    cdef RecordSink sink = callback if isinstance(callback, RecordSink) else None
    cdef uint64_t repeated = 0      # good records of sequences read already
    cdef uint64_t repeated_first = 0
    cdef uint64_t repeated_last = 0
    while offset < size:
        if record_ok(raw, offset, size, expected, &length):
            seq = ff_load_le64(raw + offset + 8)
            if totals[0] and seq <= totals[2]:
                # read already (sequences only grow): a copy of an earlier segment's
                # records (below its name's sequence or not), replayed once
                repeated += 1
                if not repeated_first:
                    repeated_first = seq
                repeated_last = seq
                expected = seq + 1
                offset += ff_align8(RECORD_HEADER + length)
                continue
            if expected or seq >= floor:
                if sink is not None:
                    sink.record(seq, <uint8_t>raw[offset + 16], raw + offset + RECORD_HEADER,
                                length, index)
                elif callback is not None:
                    callback(seq, <uint8_t>raw[offset + 16],
                             PyBytes_FromStringAndSize(raw + offset + RECORD_HEADER, length))
                totals[0] += 1
                if not totals[1]:
                    totals[1] = seq
                if not totals[3]:
                    totals[3] = seq
                totals[2] = seq
                expected = seq + 1
                offset += ff_align8(RECORD_HEADER + length)
                continue
        # A bad record: find the next good one (any sequence past the last good one).
        resync = offset + 8
        while resync < size:
            if record_ok(raw, resync, size, 0, &length) and \
                    ff_load_le64(raw + resync + 8) >= (expected if expected else floor):
                break
            resync += 8
        if resync < size:
            report.skipped.append({
                "segment": name, "offset": offset, "bytes": resync - offset,
                "after_seq": expected - 1 if expected else totals[2],
                "next_seq": ff_load_le64(raw + resync + 8)})
            offset = resync
            expected = 0
            continue
        headers = 0
        resync = offset
        while resync + RECORD_HEADER <= size:     # count what looks like record headers
            length = ff_load_le32(raw + resync + 4)
            if raw[resync + 16] == 0 or length > MAX_PAYLOAD:
                break
            headers += 1
            resync += ff_align8(RECORD_HEADER + length)
        if last:
            report.torn_tail = {"segment": name, "offset": offset, "bytes": size - offset,
                                "records": headers}
            if repair:
                os.truncate(path, offset)
        else:
            report.skipped.append({"segment": name, "offset": offset, "bytes": size - offset,
                                   "after_seq": totals[2], "next_seq": 0})
        break
    if repeated:
        report.duplicates.append({"segment": name, "records": repeated,
                                  "first_seq": repeated_first, "last_seq": repeated_last})


cdef class Journal:
    """The writer of a journal: appends records, flushes, syncs, rolls segments.

    Open it after ``scan`` (which cut any torn tail): it continues after the last good
    record, in a new segment.

    Args:
        directory: the journal's directory (created if missing, mode 0700).
        next_seq: the sequence of the next record (``ScanReport.last_seq + 1``).
        segment_bytes: a segment is closed and a new one begun once it holds this many
            bytes (default 64 MiB).
        segment_index: the index given to the first segment this writer opens (the
            index counts up by one per segment; the broker's live counts use it).
        auto_roll: ``flush`` begins a new segment when the current one is full; False
            leaves that to the caller (``roll``), so it can begin each segment with
            records of its own.
    """

    def __cinit__(self):
        self.fd = -1
        self.buffer = NULL
        self.writer = NULL

    def __init__(self, directory, uint64_t next_seq=1, uint64_t segment_bytes=64 << 20,
                 uint32_t segment_index=0, bint auto_roll=True):
        if next_seq < 1:
            raise InvalidArgument(f"next_seq={next_seq} must be >= 1")
        if segment_bytes < 4096:
            raise InvalidArgument(f"segment_bytes={segment_bytes} must be >= 4096")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = str(directory)
        self.next_seq = next_seq
        self.segment_bytes = segment_bytes
        self.written_seq = self.synced_seq = next_seq - 1
        self.buffered_last_seq = next_seq - 1
        self.synced_sizes = {}
        self.removing = set()
        self.kept = set()
        self.remover = None
        self.removals = None
        self.removal_failures = [0, None]
        self.failure = None
        self.auto_roll = auto_roll
        self.segment_index = segment_index
        self._begin_segment()

    def __dealloc__(self):
        cdef writer_t* w = <writer_t*>self.writer
        if w != NULL:
            self.writer = NULL
            _writer_stop(w)
            PyMem_Free(w.buffer)
            free(w)
        if self.fd >= 0:
            c_close(self.fd)
        PyMem_Free(self.buffer)

    cdef _check_open(self):
        if self.failure is not None:
            raise StoreFailed(f"the journal in {self.directory} failed closed: {self.failure}")
        if self.fd < 0:
            raise StoreFailed(f"the journal in {self.directory} is closed")

    cdef _fail(self, str why):
        self.failure = why
        raise StoreFailed(f"the journal in {self.directory} failed closed: {why}")

    cdef _begin_segment(self):
        """Close the current segment (synced) and open the next, named by next_seq."""
        name = segment_name(self.next_seq)
        path = os.path.join(self.directory, name)
        if name == self.segment:
            # never the file this journal writes to (see ``roll``)
            self._fail(f"cannot begin segment {name}: it is the current one")
        if os.path.exists(path) and os.path.getsize(path) <= SEGMENT_HEADER:
            os.unlink(path)   # a segment with no record yet (the last run wrote none)
        fd = c_open(path.encode(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND, 0o600)
        if fd < 0:
            code = errno
            if code in (ENOSPC, EFBIG):
                raise StoreFull(f"no room for a new segment in {self.directory}: "
                                f"{strerror(code).decode()}")
            self._fail(f"cannot create segment {name}: {strerror(code).decode()}")
        header = segment_header(self.next_seq)
        code = write_all(fd, header, SEGMENT_HEADER)
        if code == 0 and fdatasync(fd) != 0:
            code = errno
        if code:
            c_close(fd)
            os.unlink(path)
            if code in (ENOSPC, EFBIG):
                raise StoreFull(f"no room for a new segment in {self.directory}: "
                                f"{strerror(code).decode()}")
            self._fail(f"cannot write segment {name}: {strerror(code).decode()}")
        _sync_directory(self.directory)
        if self.fd >= 0:
            c_close(self.fd)
        if self.fd >= 0 or self.segment is not None:
            self.segment_index += 1
        self.fd = fd
        self.segment = name
        self.segment_size = self.synced_size = SEGMENT_HEADER
        self.synced_sizes[name] = SEGMENT_HEADER

    cdef char* _reserve(self, size_t size) except NULL:
        cdef size_t capacity
        cdef char* grown
        if self.buffered + size > self.capacity:
            capacity = self.capacity * 2
            if capacity < self.buffered + size:
                capacity = self.buffered + size
            if capacity < 65536:
                capacity = 65536
            grown = <char*>PyMem_Realloc(self.buffer, capacity)
            if grown == NULL:
                raise MemoryError()
            self.buffer = grown
            self.capacity = capacity
        return self.buffer + self.buffered

    cdef char* reserve(self, uint8_t kind, uint32_t length) noexcept:
        """Begin a record of ``length`` payload bytes in the buffer (C callers): returns
        where its payload goes, to be filled before ``finish``; NULL when the journal
        has failed or memory ran out (nothing begun; ``failure`` says why)."""
        cdef size_t size
        cdef char* record
        if self.failure is not None or self.fd < 0 or kind == 0 or length > MAX_PAYLOAD:
            return NULL
        size = ff_align8(RECORD_HEADER + <uint64_t>length)
        try:
            record = self._reserve(size)
        except MemoryError:
            self.failure = "out of memory for the journal's buffer"
            return NULL
        memset(record, 0, size)
        ff_store_le32(record + 4, length)
        ff_store_le64(record + 8, self.next_seq)
        record[16] = <char>kind
        self.reserved = size
        return record + RECORD_HEADER

    cdef uint64_t finish(self) noexcept:
        """End the record begun by ``reserve``; returns its sequence. (Its checksum is
        computed where the buffer is written: ``frame_records``.)"""
        cdef uint64_t seq = self.next_seq
        self.buffered += self.reserved
        self.reserved = 0
        self.next_seq = seq + 1
        self.buffered_last_seq = seq
        return seq

    @property
    def buffered_bytes(self):
        """Bytes appended and not yet flushed."""
        return self.buffered

    @property
    def current_segment_bytes(self):
        """Bytes in the current segment file (written, not counting the buffer)."""
        return self.segment_size

    def check_file(self):
        """Fail the journal closed if its segment file was removed from its directory.

        A removed file (the data directory deleted under a running broker) still takes
        writes and syncs without an error, yet nothing of them survives a restart: a
        publish acknowledged as durable would be lost in silence. Raises
        ``StoreFailed`` (``failure`` says why) when that is so; does nothing when the
        journal is closed or has failed already.
        """
        cdef struct_stat status
        if self.failure is not None or self.fd < 0:
            return
        if fstat(self.fd, &status) == 0 and status.st_nlink == 0:
            self._fail(f"its segment file {self.segment} was removed (the data directory "
                       f"deleted under the running broker?): what is written now would not "
                       f"survive a restart")

    def roll(self):
        """Flush and sync, then begin a new segment at the next sequence (its index one
        more): the caller's next records are the new segment's first.

        Returns True; False when the current segment holds no record yet and is already
        named for the next sequence (a roll whose first records a full disk refused):
        it stays the current one, and the caller's next records are its first. (Until
        2026-12-07 the roll took that file for one a crash left behind and deleted it:
        the journal then wrote on into a deleted file, and every answered publish after
        was lost.)
        """
        self.flush()
        self.sync()
        if self.segment_size <= SEGMENT_HEADER and \
                self.segment == segment_name(self.written_seq + 1):
            return False
        self._begin_segment_at(self.written_seq + 1)
        return True

    def append(self, int kind, payload):
        """Append a record (buffered: nothing is written yet); returns its sequence.

        Args:
            kind: what the record means, 1 to 255.
            payload: any C-contiguous buffer, at most ``MAX_PAYLOAD_BYTES``.
        """
        cdef Py_buffer view
        cdef size_t size
        cdef char* record
        cdef uint64_t seq
        self._check_open()
        if not 1 <= kind <= 255:
            raise InvalidArgument(f"kind={kind} must be from 1 to 255")
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            if <uint64_t>view.len > MAX_PAYLOAD_BYTES:
                raise InvalidArgument(
                    f"a record of {view.len} bytes exceeds MAX_PAYLOAD_BYTES={MAX_PAYLOAD_BYTES}")
            size = ff_align8(RECORD_HEADER + <uint64_t>view.len)
            record = self._reserve(size)
            seq = self.next_seq
            memset(record, 0, size)
            ff_store_le32(record + 4, <uint32_t>view.len)
            ff_store_le64(record + 8, seq)
            record[16] = <char>kind
            memcpy(record + RECORD_HEADER, view.buf, <size_t>view.len)
            self.buffered += size   # checksummed when written (frame_records)
            self.next_seq = seq + 1
            self.buffered_last_seq = seq
            return seq
        finally:
            PyBuffer_Release(&view)

    def flush(self):
        """Write the buffered records to the segment (one ``write``); returns the last
        sequence written. A full disk raises ``StoreFull`` and drops the buffered records
        (none of them is in the file; their sequences are given out again); any other
        error fails the journal closed (``StoreFailed``)."""
        cdef int code
        cdef useconds_t delay
        self._join()
        self._check_open()
        if not self.buffered:
            return self.written_seq
        if self.auto_roll and self.segment_size > SEGMENT_HEADER and \
                self.segment_size + self.buffered > self.segment_bytes:
            self.sync()
            self._begin_segment_at(self.written_seq + 1)
        code = _fault("write")
        delay = <useconds_t>_fault("slow_write")
        if code == 0:
            with nogil:
                if delay:
                    usleep(delay)
                frame_records(self.buffer, self.buffered)
                code = write_all(self.fd, self.buffer, self.buffered)
        if code:
            self._write_failed(code)
        self.segment_size += self.buffered
        self.bytes_written += self.buffered
        self.buffered = 0
        self.written_seq = self.buffered_last_seq
        self.kept_carried = 0   # what a drop kept is in the file now
        return self.written_seq

    cdef _drop_buffered(self, const char* job, size_t job_length, bint keep):
        """Forget every record not in the file (their sequences are given out again),
        but those ``keep_on_full`` names: they stay buffered, renumbered from the first
        sequence given out again, in their order. ``job``: the failed batch of the
        writer thread (its records came before the buffer's)."""
        cdef uint64_t seq = self.written_seq + 1
        cdef char* kept = NULL
        cdef size_t length = 0
        cdef size_t total = job_length + self.buffered
        cdef size_t offset
        cdef size_t size
        cdef uint32_t payload
        cdef uint8_t kind
        cdef const char* data
        cdef size_t data_length
        cdef int part
        cdef uint64_t head_seq = 0   # the current segment's first sequence, if none written
        if keep and self.keep_head_kind and self.segment_size <= SEGMENT_HEADER \
                and self.segment is not None:
            head_seq = int(self.segment[:20])
        if keep and (self.keep_kinds or head_seq) and total:
            kept = <char*>PyMem_Malloc(total)
            if kept == NULL:
                raise MemoryError()
            for part in range(2):
                data = job if part == 0 else self.buffer
                data_length = job_length if part == 0 else self.buffered
                if data == NULL:
                    continue
                offset = 0
                while offset + RECORD_HEADER <= data_length:
                    payload = ff_load_le32(data + offset + 4)
                    size = ff_align8(RECORD_HEADER + <uint64_t>payload)
                    kind = <uint8_t>data[offset + 16]
                    if ((kind < 32 and (self.keep_kinds >> kind) & 1 and payload >= 8
                            and ff_load_le64(data + offset + RECORD_HEADER)
                            <= self.written_seq)
                            or (head_seq and kind == self.keep_head_kind
                                and ff_load_le64(data + offset + 8) == head_seq)):
                        memcpy(kept + length, data + offset, size)
                        ff_store_le64(kept + length + 8, seq)
                        seq += 1
                        length += size
                    offset += size
        self.buffered = 0
        if length:
            try:
                memcpy(self._reserve(length), kept, length)
            finally:
                PyMem_Free(kept)
            # a record kept by an earlier drop and not written since is kept again
            # (it comes first): counted once, when it was first kept
            self.kept_records += seq - self.written_seq - 1 - self.kept_carried
            self.kept_carried = seq - self.written_seq - 1
        else:
            PyMem_Free(kept)
            self.kept_carried = 0
        self.buffered = length
        self.next_seq = seq
        self.buffered_last_seq = seq - 1
        self.drops += 1

    def discard_buffered(self):
        """Forget every record appended and not yet written (their sequences are given
        out again): for a caller that knows none of them is needed any more — a broker
        on a full disk whose kept settles are all about segments it is about to
        remove. Waits for a batch in flight first."""
        self._join()
        self.buffered = 0
        self.kept_carried = 0
        self.next_seq = self.written_seq + 1
        self.buffered_last_seq = self.written_seq

    def keep_head_on_full(self, int kind):
        """A record of ``kind`` that heads the current segment, none of whose records
        is written yet, is kept when a full disk drops what was not written (it stays
        the segment's first; ``kept_records`` counts it). The broker's head snapshot:
        dropped, the records after it went into a segment that began without one, read
        at a restart by the ids of an older snapshot (a message in the wrong queue)."""
        if not 0 < kind < 256:
            raise ValueError(f"record kind {kind} must be from 1 to 255")
        self.keep_head_kind = kind

    def keep_on_full(self, kinds):
        """Records of ``kinds`` (each below 32) that a full disk does not drop.

        A record of such a kind names, in its payload's first 8 bytes, the sequence of
        an earlier record it is about (the broker's settles: a lease, a remove, a
        delay, naming their message's enqueue record). When a full disk drops what was
        not written, such a record whose earlier record is in the file stays buffered
        for the next write (``kept_records`` counts them); one naming a record dropped
        with it goes with it. Without this, an ack answered while the disk was full was
        forgotten with the batch, and the message came back at the next restart.
        """
        cdef uint32_t mask = 0
        for kind in kinds:
            if not 0 < kind < 32:
                raise ValueError(f"record kind {kind} must be from 1 to 31")
            mask |= 1u << kind
        self.keep_kinds = mask

    cdef _write_failed(self, int code, const char* job=NULL, size_t job_length=0):
        # Undo a partial write, so the file ends with a whole record; what was buffered
        # after the failed batch is dropped too (its sequences would leave a gap), but
        # the records ``keep_on_full`` keeps.
        if ftruncate(self.fd, self.segment_size) != 0:
            self._fail(f"cannot undo a failed write: {strerror(errno).decode()}")
        # (any other error fails the journal closed: nothing is kept)
        self._drop_buffered(job, job_length, code in (ENOSPC, EFBIG))
        if code in (ENOSPC, EFBIG):
            self.full_refusals += 1
            raise StoreFull(f"the disk of {self.directory} is full "
                            f"({strerror(code).decode()}): nothing of this batch was stored")
        self._fail(f"write to {self.segment} failed: {strerror(code).decode()}")

    cdef _begin_segment_at(self, uint64_t seq):
        saved = self.next_seq
        self.next_seq = seq
        try:
            self._begin_segment()
        finally:
            self.next_seq = saved

    def sync(self):
        """``fdatasync`` what was written; returns the last sequence on disk. An error
        fails the journal closed (``StoreFailed``): it is never retried."""
        cdef int code
        self._join()
        self._check_open()
        if self.synced_seq == self.written_seq and self.synced_size == self.segment_size:
            return self.synced_seq
        code = _fault("fsync")
        if code == 0:
            with nogil:
                if fdatasync(self.fd) != 0:
                    code = errno
        if code:
            self._fail(f"fdatasync of {self.segment} failed: {strerror(code).decode()}")
        self.syncs += 1
        self.synced_seq = self.written_seq
        self.synced_size = self.segment_size
        self.synced_sizes[self.segment] = self.segment_size
        return self.synced_seq

    def commit(self, bint sync=True):
        """Flush, then (``sync``) fdatasync: group commit of everything appended since the
        last commit. Returns the last sequence written (and synced, with ``sync``)."""
        self.flush()
        return self.sync() if sync else self.written_seq

    # -- the background writer (pipelined group commit) -------------------------------

    def start_writer(self):
        """Start the background writer thread (once); returns its eventfd.

        With it, ``commit_begin`` hands the buffered records to the thread, which
        checksums, writes and (when asked) fdatasyncs them without the GIL, while the
        caller goes on appending the next batch; the eventfd becomes readable when the
        batch is done (``poll`` then finishes it). Every other call (``flush``, ``sync``,
        ``commit``, ``roll``, ``close``) first waits for a batch in flight, so the file
        only ever grows in sequence order.
        """
        cdef writer_t* w
        self._check_open()
        if self.writer != NULL:
            return (<writer_t*>self.writer).event_fd
        w = <writer_t*>calloc(1, sizeof(writer_t))
        if w == NULL:
            raise MemoryError()
        w.event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if w.event_fd < 0:
            free(w)
            raise OSError(errno, f"eventfd: {strerror(errno).decode()}")
        pthread_mutex_init(&w.lock, NULL)
        pthread_cond_init(&w.cond, NULL)
        if pthread_create(&w.thread, NULL, writer_main, w) != 0:
            pthread_mutex_destroy(&w.lock)
            pthread_cond_destroy(&w.cond)
            c_close(w.event_fd)
            free(w)
            raise OSError("cannot start the journal's writer thread")
        self.writer = w
        return w.event_fd

    @property
    def writer_fd(self):
        """The eventfd readable when a batch handed to the writer is done (-1: none)."""
        return -1 if self.writer == NULL else (<writer_t*>self.writer).event_fd

    @property
    def busy(self):
        """Whether a batch is with the writer (``commit_begin`` until ``poll`` ends it)."""
        return bool(self.job_active)

    def commit_begin(self, bint sync=True):
        """Hand everything appended to the writer thread: write it and (``sync``)
        fdatasync it, while the caller appends the next batch. Returns the last
        sequence handed; ``poll`` says when it is written (``written_seq``) and synced
        (``synced_seq``). Waits first for a batch still in flight. Without a writer
        (``start_writer``) this is ``commit``. A batch of at most
        ``INLINE_WRITE_MAX_BYTES`` that needs no fdatasync is written here, in the
        caller's thread (``inline_writes``): it is done when this returns.
        """
        cdef writer_t* w = <writer_t*>self.writer
        cdef char* spare
        cdef size_t capacity
        cdef int write_fault = 0
        cdef int sync_fault = 0
        cdef int fd
        cdef size_t length
        if w == NULL:
            return self.commit(sync)
        self._join()
        self._check_open()
        if not self.buffered and (not sync or (self.synced_seq == self.written_seq
                                               and self.synced_size == self.segment_size)):
            return self.written_seq   # nothing to write or sync
        if not sync and self.buffered <= INLINE_MAX and monotonic_ns() >= self.inline_resume_ns:
            return self._write_inline()
        if self.auto_roll and self.buffered and self.segment_size > SEGMENT_HEADER and \
                self.segment_size + self.buffered > self.segment_bytes:
            self.sync()
            self._begin_segment_at(self.written_seq + 1)
        if self.buffered:
            write_fault = _fault("write")
        if sync:
            sync_fault = _fault("fsync")
        # Swap buffers: the thread gets the batch, the caller the spare one.
        spare, capacity = w.buffer, self.job_capacity
        w.buffer, self.job_capacity = self.buffer, self.capacity
        self.buffer, self.capacity = spare, capacity
        fd = self.fd
        length = self.buffered
        # Without the GIL: waking the writer may get this thread preempted by it (or
        # wait for its lock); the process's other threads (a bridge) run meanwhile.
        with nogil:
            pthread_mutex_lock(&w.lock)
            w.fd = fd
            w.length = length
            w.sync = sync
            w.write_fault = write_fault
            w.sync_fault = sync_fault
            w.state = WRITER_QUEUED
            pthread_cond_broadcast(&w.cond)
            pthread_mutex_unlock(&w.lock)
        self.buffered = 0
        self.job_active = True
        self.job_last_seq = self.buffered_last_seq
        self.writer_batches += 1
        return self.job_last_seq

    cdef uint64_t _write_inline(self) except? 0:
        """``commit_begin`` of a small batch that needs no fdatasync: ``flush`` it here.

        One ``write`` (without the GIL) instead of two thread wake-ups, so the caller's
        round ends with the batch written. A write slower than ``INLINE_WRITE_SLOW_NS``
        during which the thread slept (a voluntary switch: the kernel throttling dirty
        pages, a stalled disk; not a preemption by another thread on a busy machine)
        sends the next batches to the writer for ``INLINE_WRITE_PAUSE_NS``.
        """
        cdef rusage before
        cdef rusage after
        cdef uint64_t began
        cdef uint64_t ended
        getrusage(RUSAGE_THREAD, &before)
        began = monotonic_ns()
        self.flush()
        ended = monotonic_ns()
        self.inline_writes += 1
        if ended - began > INLINE_SLOW_NS:
            getrusage(RUSAGE_THREAD, &after)
            if after.ru_nvcsw != before.ru_nvcsw:
                self.slow_inline_writes += 1
                self.inline_resume_ns = ended + INLINE_PAUSE_NS
        return self.written_seq

    def poll(self, bint wait=False):
        """Finish the batch handed to the writer if it is done (``wait``: once it is).

        Returns True when no batch is in flight any more. A full disk raises
        ``StoreFull`` (the batch and everything appended since are dropped, as for
        ``flush``); a write or fdatasync error fails the journal closed
        (``StoreFailed``).
        """
        cdef writer_t* w = <writer_t*>self.writer
        cdef uint64_t count
        cdef bint done
        if not self.job_active:
            return True
        if wait:
            with nogil:
                pthread_mutex_lock(&w.lock)
                while w.state == WRITER_QUEUED:
                    pthread_cond_wait(&w.cond, &w.lock)
                pthread_mutex_unlock(&w.lock)
        pthread_mutex_lock(&w.lock)
        done = w.state == WRITER_DONE
        pthread_mutex_unlock(&w.lock)
        if not done:
            return False
        # The thread wrote the eventfd before it let go of the lock: drain it now, so a
        # poller is not woken again for this batch.
        c_read(w.event_fd, &count, 8)
        self._complete_job()
        return True

    cdef _join(self):
        """Wait for and finish a batch in flight (its errors raise here)."""
        if self.job_active:
            self.poll(True)

    cdef _complete_job(self):
        cdef writer_t* w = <writer_t*>self.writer
        cdef size_t length = w.length
        w.state = WRITER_IDLE
        self.job_active = False
        if w.write_error:
            self._write_failed(w.write_error, w.buffer, w.length)
        self.segment_size += length
        self.bytes_written += length
        self.written_seq = self.job_last_seq
        self.kept_carried = 0   # the job took the whole buffer, what a drop kept first
        if w.sync:
            if w.sync_error:
                self._fail(f"fdatasync of {self.segment} failed: "
                           f"{strerror(w.sync_error).decode()}")
            self.syncs += 1
            self.synced_seq = self.written_seq
            self.synced_size = self.segment_size
            self.synced_sizes[self.segment] = self.segment_size

    cdef _stop_writer(self):
        """Wait for a batch in flight, stop the thread, free what it used."""
        cdef writer_t* w = <writer_t*>self.writer
        if w == NULL:
            return
        try:
            self._join()
        except (StoreFull, StoreFailed):
            pass   # closing: the batch's records are dropped, or the journal failed
        finally:
            self.writer = NULL
            with nogil:
                _writer_stop(w)
            PyMem_Free(w.buffer)
            free(w)

    def synced_sizes_by_segment(self):
        """Segment name -> bytes known to be on disk (what power loss cannot take):
        what a test's simulated power loss keeps."""
        return dict(self.synced_sizes)

    def remove_segments_before(self, uint64_t seq):
        """Delete every closed segment whose records all precede ``seq``; returns how
        many files were removed (the current segment is never removed).

        A file named like a segment that is not one (``ScanReport.bad_segments``: no
        good record, or not a regular file) is left in place, as the scan promised: it
        is there to be looked at. One too short to hold a header is deleted (a roll that
        a crash cut short: no record can be in it), and so is a segment whose header is
        damaged (``ScanReport.bad_headers``) once passed, like any other: the scan read
        its records, and a restart would replay them again if it stayed.

        Segments go oldest first, and a segment that cannot be removed (or read) stops
        the removal there: the later ones stay until it is gone. Were they removed
        around it, a restart would replay its records without the remove records of
        its copies (they were in the later segments): acked messages would come back.
        A failed unlink is counted (``removal_errors``, ``removal_error``), not raised;
        the next compaction tries again.
        """
        found = segments(self.directory)
        names = []
        for index in range(len(found) - 1):
            base, name = found[index]
            next_base = found[index + 1][0]
            if next_base > seq or name == self.segment:
                break
            if name in self.removing or name in self.kept:
                continue
            removable = _removable(os.path.join(self.directory, name), base)
            if removable < 0:
                _removal_failed(self.removal_failures, name, "cannot read it to check it")
                break
            if removable == 0:
                self.kept.add(name)   # (read once, not at every compaction)
                continue
            names.append(name)
        if not names:
            return 0
        if self.writer == NULL:
            removed = _remove_in_order(self.directory, names, self.removal_failures)
            for name in names[:removed]:
                self.synced_sizes.pop(name, None)
            return removed
        else:
            # With a writer (a server): unlinking a 64 MiB segment takes tens of ms of
            # kernel time; a thread does it (the GIL released meanwhile), not the loop.
            self.removing.update(names)
            if self.remover is None:
                self.removals = queue.SimpleQueue()
                self.remover = threading.Thread(
                    target=_remove_files,
                    args=(self.directory, self.removals, self.removing,
                          self.removal_failures),
                    name="fastfanout-journal-remover", daemon=True)
                self.remover.start()
            for name in names:
                self.synced_sizes.pop(name, None)
            self.removals.put(names)
        return len(names)

    def remove_superseded(self, names):
        """Delete closed segments out of the middle of the journal, oldest first:
        segments the caller vouches hold nothing a later record needs (a restart's
        segment that holds only its head snapshot, restated by every later one).

        Unlike ``remove_segments_before`` this leaves a gap in the sequences that a scan
        reports in ``missing``; the caller notes the removed ranges where recovery finds
        them (the broker: in every later snapshot). Returns how many were removed; a
        failed unlink stops there and is counted (``removal_errors``), not raised. The
        current segment is never removed.
        """
        names = [name for name in names if name != self.segment]
        removed = _remove_in_order(self.directory, names, self.removal_failures)
        for name in names[:removed]:
            self.synced_sizes.pop(name, None)
        return removed

    @property
    def removal_errors(self):
        """Segments compaction could not unlink (each try counted; the later segments
        stay until it is gone)."""
        return self.removal_failures[0]

    @property
    def removal_error(self):
        """The last failed removal's text (None: none failed)."""
        return self.removal_failures[1]

    cdef _stop_remover(self):
        if self.remover is not None:
            self.removals.put(None)
            self.remover.join()
            self.remover = None

    def close(self):
        """Flush and sync what is buffered (if the journal has not failed), then close."""
        if self.fd < 0:
            return
        try:
            if self.failure is None:
                self.commit()
        finally:
            try:
                self._stop_writer()
                self._stop_remover()
            finally:
                c_close(self.fd)
                self.fd = -1


cdef void _writer_stop(writer_t* w) noexcept nogil:
    """Let the writer finish a queued batch, stop and join it (its buffer and the
    struct are the caller's to free)."""
    pthread_mutex_lock(&w.lock)
    w.stop = True
    pthread_cond_broadcast(&w.cond)
    pthread_mutex_unlock(&w.lock)
    pthread_join(w.thread, NULL)
    pthread_mutex_destroy(&w.lock)
    pthread_cond_destroy(&w.cond)
    c_close(w.event_fd)


def _remove_files(directory, removals, removing, errors):
    """The remover thread: unlink each batch of segment names in order, then sync the
    directory.

    A segment that could not be unlinked stops its batch, and every later batch while
    it is still there (a batch holds only segments newer than those of the batches
    before it): they are listed again by the next compaction, oldest first.
    """
    stuck = None   # the path of a segment that could not be unlinked
    while (names := removals.get()) is not None:
        if stuck is not None and os.path.lexists(stuck):
            removing.difference_update(names)
            continue
        stuck = None
        removed = _remove_in_order(directory, names, errors)
        if removed < len(names):
            stuck = os.path.join(directory, names[removed])
        removing.difference_update(names)


def _remove_in_order(directory, names, errors):
    """Unlink segments ``names`` (oldest first) until one fails, then sync the
    directory; returns how many are gone. A failure is counted in ``errors``."""
    removed = 0
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            _removal_failed(errors, name, exc.strerror or str(exc))
            break
        removed += 1
    if removed:
        try:
            _sync_directory(directory)
        except OSError as exc:
            _removal_failed(errors, directory, f"cannot sync the directory: {exc.strerror}")
    return removed


def _removal_failed(errors, name, why):
    errors[0] += 1
    errors[1] = f"{name}: {why}"


def _sync_directory(directory):
    """fsync a directory, so a created or removed file name is on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- fault injection (tests) -------------------------------------------------------------

_faults = {}


def inject_fault(str operation, int error, int after=0):
    """Test hook: make the ``after``-th next ``operation`` (``"write"`` or ``"fsync"``)
    of any journal fail with errno ``error`` (once). ``error=0`` clears it.
    ``"slow_write"`` makes the next write of ``flush`` (an inline commit's) take
    ``error`` microseconds longer instead."""
    if operation not in ("write", "fsync", "slow_write"):
        raise InvalidArgument(
            f"operation={operation!r} must be 'write', 'fsync' or 'slow_write'")
    if error:
        _faults[operation] = [after, error]
    else:
        _faults.pop(operation, None)


cdef int _fault(str operation):
    if not _faults:
        return 0
    fault = _faults.get(operation)
    if fault is None:
        return 0
    if fault[0] > 0:
        fault[0] -= 1
        return 0
    del _faults[operation]
    return fault[1]
