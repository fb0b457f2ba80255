/*
 * prefetch.h - asking for memory ahead of its use, where a loop knows the addresses.
 *
 * Why a header of our own: GCC 12 (-O1 and up) dropped the `__builtin_prefetch` calls of
 * the store's loops, those under a bound check (`if (slot < capacity) ...`) and one after
 * an early return alike: the modules were built with no prefetch instruction in them,
 * and the loops stalled on every miss as before (a plain loop of prefetches keeps them).
 * On x86 these are `prefetcht0` as volatile asm, which no pass may remove; elsewhere the
 * builtin. A prefetch never faults, whatever the address.
 */
#ifndef FASTFANOUT_PREFETCH_H
#define FASTFANOUT_PREFETCH_H

#include <stddef.h>

static inline void ff_prefetch_line(const void* address) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__ volatile("prefetcht0 %0" : : "m"(*(const char*)address));
#else
    __builtin_prefetch(address);
#endif
}

/* Every cache line of the `size` bytes at `address` (at most three lines: an entry). */
static inline void ff_prefetch_object(const void* address, size_t size) {
    const char* at = (const char*)address;
    ff_prefetch_line(at);
    if (size > 64) ff_prefetch_line(at + 64);
    ff_prefetch_line(at + size - 1);
}

/* A cache line about to be written: asked for with ownership (x86: `prefetchw`, which
 * CPUs without it take as a no-op), so the store does not wait for the line to be read
 * and taken from the core that last had it (a ring's reader). */
static inline void ff_prefetch_for_write(const void* address) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__ volatile("prefetchw %0" : : "m"(*(const char*)address));
#else
    __builtin_prefetch(address, 1);
#endif
}

/* Every cache line of the `size` bytes (at most `limit`) at `address`, about to be
 * written. */
static inline void ff_prefetch_range_for_write(char* address, size_t size, size_t limit) {
    size_t end = size < limit ? size : limit;
    for (size_t offset = 0; offset < end; offset += 64) ff_prefetch_for_write(address + offset);
}

#endif
