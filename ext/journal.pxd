# The journal: an append-only log of checksummed records in segment files.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


# A reader of the records ``scan`` finds, called in C (no bytes object, no Python call
# per record): recovery's replay (recovery.pyx) is one.
cdef class RecordSink:
    cdef int record(self, uint64_t seq, uint8_t kind, const char* payload, uint32_t length,
                    uint32_t segment) except -1


cdef class Journal:
    cdef readonly str directory
    cdef readonly uint64_t next_seq
    cdef readonly uint64_t segment_bytes
    cdef readonly uint64_t written_seq     # last sequence handed to the kernel
    cdef readonly uint64_t synced_seq      # last sequence on disk (fdatasync)
    cdef readonly uint64_t bytes_written
    cdef readonly uint64_t syncs
    cdef readonly uint64_t full_refusals   # flushes refused by a full disk
    cdef readonly object failure           # None, or why the journal failed closed
    cdef readonly str segment               # current segment's file name
    cdef readonly uint32_t segment_index    # current segment's index (counts up per roll)
    cdef readonly bint auto_roll            # flush begins a new segment when one is full
    cdef readonly uint64_t segment_size     # bytes in the current segment file
    cdef uint64_t synced_size               # of those, bytes covered by an fdatasync
    cdef int fd
    cdef char* buffer
    cdef size_t buffered
    cdef size_t capacity
    cdef size_t reserved                    # payload bytes of the record begun (reserve)
    cdef uint64_t buffered_last_seq
    cdef dict synced_sizes                  # segment name -> bytes known to be on disk
    cdef readonly uint64_t drops            # times buffered records were dropped (full disk)
    cdef void* writer                       # the background writer (writer_t*), or NULL
    cdef bint job_active                    # a batch is with the writer (commit_begin)
    cdef uint64_t job_last_seq              # the last sequence of that batch
    cdef size_t job_capacity                # bytes allocated for the writer's buffer
    cdef readonly uint64_t inline_writes    # commit_begin batches written by the caller itself
    cdef readonly uint64_t writer_batches   # commit_begin batches handed to the writer
    cdef readonly uint64_t slow_inline_writes  # inline writes over INLINE_WRITE_SLOW_NS
    cdef uint64_t inline_resume_ns          # no inline write before this (after a slow one)
    cdef set removing                       # segment names the remover thread unlinks
    cdef set kept                           # names compaction leaves: not segments
    cdef object remover                     # that thread (started with the first), or None
    cdef object removals                    # its queue of name lists (None: stop)
    cdef list removal_failures              # [count, the last text]: removals that failed
    cdef uint32_t keep_kinds                # kinds a full disk keeps (bit per kind < 32)
    cdef uint8_t keep_head_kind             # ... and this kind heading an empty segment
    cdef readonly uint64_t kept_records     # records a drop kept for the next write
    cdef uint64_t kept_carried              # of those, kept and not written yet

    cdef char* _reserve(self, size_t size) except NULL
    cdef char* reserve(self, uint8_t kind, uint32_t length) noexcept
    cdef uint64_t finish(self) noexcept
    cdef _check_open(self)
    cdef _fail(self, str why)
    cdef _begin_segment(self)
    cdef _begin_segment_at(self, uint64_t seq)
    cdef _join(self)
    cdef _complete_job(self)
    cdef uint64_t _write_inline(self) except? 0
    cdef _drop_buffered(self, const char* job, size_t job_length, bint keep)
    cdef _write_failed(self, int code, const char* job=*, size_t job_length=*)
    cdef _stop_writer(self)
    cdef _stop_remover(self)
