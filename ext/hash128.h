/* A 128-bit non-cryptographic hash of a byte string, for deduplication keys and
 * FIFO group tables.
 *
 * Why 128 bits: content-based deduplication drops a message whose body hashes like
 * one seen in the window. With 64 bits, a window of a million bodies collides with
 * probability ~3e-8 per window — a silent loss. With two independent 64-bit lanes the
 * odds are beyond any real workload.
 *
 * Construction: each lane absorbs 8-byte little-endian words with a multiply/xorshift
 * mixer (the SplitMix64 finaliser constants), with a different seed per lane, and ends
 * with the full SplitMix64 finaliser. Reads use memcpy, so unaligned input is fine.
 */
#ifndef FASTFANOUT_HASH128_H
#define FASTFANOUT_HASH128_H

#include <stdint.h>
#include <string.h>

typedef struct { uint64_t low; uint64_t high; } ff_hash128_t;

static inline uint64_t ff_mix64(uint64_t value) {
    value ^= value >> 30;
    value *= 0xbf58476d1ce4e5b9ULL;
    value ^= value >> 27;
    value *= 0x94d049bb133111ebULL;
    value ^= value >> 31;
    return value;
}

static inline uint64_t ff_lane(const unsigned char *data, size_t length, uint64_t seed) {
    uint64_t state = seed ^ ((uint64_t)length * 0x9e3779b97f4a7c15ULL);
    uint64_t word;
    size_t offset = 0;
    for (; offset + 8 <= length; offset += 8) {
        memcpy(&word, data + offset, 8);
        state = ff_mix64(state ^ word) + 0x9e3779b97f4a7c15ULL;
    }
    if (offset < length) {
        word = 0;
        memcpy(&word, data + offset, length - offset);
        state = ff_mix64(state ^ word ^ 0xff51afd7ed558ccdULL);
    }
    return ff_mix64(state);
}

static inline ff_hash128_t ff_hash128(const char *data, size_t length) {
    ff_hash128_t result;
    result.low = ff_lane((const unsigned char *)data, length, 0x243f6a8885a308d3ULL);
    result.high = ff_lane((const unsigned char *)data, length, 0x13198a2e03707344ULL);
    /* 0 marks an empty table slot: never hand it out as a key. */
    if (result.low == 0 && result.high == 0) result.low = 1;
    return result;
}

#endif
