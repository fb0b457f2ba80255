/*
 * atomics.h - every memory-ordering decision of the native core, in one place.
 *
 * Why a header of our own: Cython cannot spell C11 `_Atomic` types or memory orders,
 * and scattering `__atomic_*` builtins through generated C would make the ordering
 * argument impossible to review. Each .pyx/.pxd declares these few functions with
 * `cdef extern from "atomics.h"` and never touches an atomic any other way.
 *
 * The model is the one of the LMAX Disruptor and Aeron: every shared position is a
 * uint64 sequence with exactly one writer. A single writer never needs read-modify-
 * write operations (no CAS, no fetch_add), only loads and stores with the right
 * ordering:
 *
 *   - the writer publishes with a store-release after it has written (or finished
 *     reading) the data the new position covers;
 *   - the reader observes with a load-acquire before it touches that data.
 *
 * Release/acquire pairs form the happens-before edge; nothing stronger (seq_cst) is
 * needed because no decision ever depends on the order of two *different* writers'
 * stores. On x86-64 both compile to plain MOVs (TSO), so they cost only the compiler
 * barrier; on ARM64 they become LDAR/STLR.
 */
#ifndef FASTFANOUT_ATOMICS_H
#define FASTFANOUT_ATOMICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* A sequence or counter shared between threads. 64 bits so that it never wraps in the
 * life of a process (2**64 records at 1e9/s is 584 years), which lets every comparison
 * be a plain unsigned subtraction. */
typedef _Atomic uint64_t ff_atomic_u64;

/* Destructive-interference distance of every x86-64 and most ARM64 parts (Apple M-series
 * use 128-byte lines for some levels; a miss there costs speed, never correctness). */
#define FF_CACHE_LINE 64

/* Padding between groups of fields written by different threads. A full line of padding
 * between two groups keeps them on different lines whatever the base alignment of the
 * enclosing allocation is, so no aligned allocator is required (false sharing is what
 * this prevents; correctness never depends on it). */
typedef char ff_cache_pad[FF_CACHE_LINE];

/* Round a size up to a whole number of cache lines (for arrays that must not share their
 * last line with an unrelated hot field). */
static inline size_t ff_cache_line_round(size_t size) {
    return (size + (FF_CACHE_LINE - 1)) & ~(size_t)(FF_CACHE_LINE - 1);
}

/* Reader side of a publication: everything the writer wrote before its matching
 * ff_store_release_u64 is visible after this returns the published value. */
static inline uint64_t ff_load_acquire_u64(const ff_atomic_u64 *position) {
    return atomic_load_explicit((ff_atomic_u64 *)position, memory_order_acquire);
}

/* Writer side of a publication: all earlier reads and writes of this thread (copying a
 * record in, or copying it out before giving its space back) complete before another
 * thread can observe the new value. */
static inline void ff_store_release_u64(ff_atomic_u64 *position, uint64_t value) {
    atomic_store_explicit(position, value, memory_order_release);
}

/* Relaxed load: enough (a) for the single writer re-reading its own position and
 * (b) for statistics, where a slightly stale but untorn value is acceptable. */
static inline uint64_t ff_load_relaxed_u64(const ff_atomic_u64 *position) {
    return atomic_load_explicit((ff_atomic_u64 *)position, memory_order_relaxed);
}

/* Relaxed store: for single-writer counters that guard no data (statistics). The atomic
 * type still guarantees an untorn 64-bit value for concurrent readers. */
static inline void ff_store_relaxed_u64(ff_atomic_u64 *position, uint64_t value) {
    atomic_store_explicit(position, value, memory_order_relaxed);
}

/* Spin-wait hint for busy loops (test pumps, wait strategies): tells the core that this
 * is a spin loop so it yields pipeline resources to the sibling hyperthread. No ordering
 * effect at all. */
static inline void ff_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Sequentially consistent load, store and exchange: only for the sleep/wake handshakes of
 * the shared-memory rings (shmring.pyx) and of the blocking client's background thread
 * (offers.pyx, Ticker: a caller stores a deadline then loads the sleeper's wake time). There, unlike everywhere else, a decision rests
 * on the order of two different writers' stores (Dekker's pattern): the reader stores
 * "I am going to sleep" and then loads the writer's position, while the writer stores its
 * position and then loads (and clears) the flag. With release/acquire each side could
 * miss the other's store and the reader would sleep on a message; in the single total
 * order of seq_cst operations at least one side sees the other, so either the reader
 * does not sleep or the writer rings its bell. Lock-free 64-bit atomics are address-free,
 * so these work on memory two processes map. */
static inline uint64_t ff_load_seq_cst_u64(const ff_atomic_u64 *position) {
    return atomic_load_explicit((ff_atomic_u64 *)position, memory_order_seq_cst);
}

static inline void ff_store_seq_cst_u64(ff_atomic_u64 *position, uint64_t value) {
    atomic_store_explicit(position, value, memory_order_seq_cst);
}

static inline uint64_t ff_exchange_u64(ff_atomic_u64 *position, uint64_t value) {
    return atomic_exchange_explicit(position, value, memory_order_seq_cst);
}

#endif /* FASTFANOUT_ATOMICS_H */
