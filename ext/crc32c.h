/*
 * crc32c.h - CRC-32C (Castagnoli, the iSCSI / ext4 / Kafka record-batch checksum) with
 * the CPU's own instruction.
 *
 * Why CRC-32C: it is what Kafka record batches, the NATS JetStream file store and ext4
 * metadata use, it detects every burst error up to 32 bits, and x86-64 (SSE 4.2 `crc32`)
 * and ARMv8 (`crc32c*`) compute it in hardware at several bytes per cycle, so framing
 * every stored record with it costs next to nothing beside the write itself.
 *
 * The instruction is chosen at run time (`__builtin_cpu_supports`), so the module still
 * builds and runs for a CPU without it: that path is a bytewise table, correct but ~10x
 * slower, and `ff_crc32c_hardware()` says which one runs (the journal reports it).
 * Values follow RFC 3720: initial value and final xor 0xFFFFFFFF, reflected polynomial
 * 0x82F63B78; ff_crc32c(0, "123456789", 9) == 0xE3069283.
 */
#ifndef FASTFANOUT_CRC32C_H
#define FASTFANOUT_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint32_t ff_crc32c_table[256];
static int ff_crc32c_mode = -1;   /* -1: not chosen yet, 0: table, 1: instruction */

static void ff_crc32c_make_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        ff_crc32c_table[n] = c;
    }
}

static uint32_t ff_crc32c_software(uint32_t crc, const unsigned char* data, size_t length) {
    for (size_t i = 0; i < length; i++)
        crc = ff_crc32c_table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t ff_crc32c_instruction(uint32_t crc, const unsigned char* data, size_t length) {
    uint64_t wide = crc;
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, data, 8);
        wide = __builtin_ia32_crc32di(wide, word);
        data += 8;
        length -= 8;
    }
    crc = (uint32_t)wide;
    while (length--)
        crc = __builtin_ia32_crc32qi(crc, *data++);
    return crc;
}
static int ff_crc32c_cpu_has_instruction(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
static uint32_t ff_crc32c_instruction(uint32_t crc, const unsigned char* data, size_t length) {
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, data, 8);
        crc = __crc32cd(crc, word);
        data += 8;
        length -= 8;
    }
    while (length--)
        crc = __crc32cb(crc, *data++);
    return crc;
}
static int ff_crc32c_cpu_has_instruction(void) { return 1; }
#else
static uint32_t ff_crc32c_instruction(uint32_t crc, const unsigned char* data, size_t length) {
    return ff_crc32c_software(crc, data, length);
}
static int ff_crc32c_cpu_has_instruction(void) { return 0; }
#endif

/* Choose the implementation once; call before the first ff_crc32c (module init). */
static void ff_crc32c_init(void) {
    if (ff_crc32c_mode >= 0)
        return;
    ff_crc32c_make_table();
    ff_crc32c_mode = ff_crc32c_cpu_has_instruction() ? 1 : 0;
}

static int ff_crc32c_hardware(void) { return ff_crc32c_mode == 1; }

/* CRC-32C of data, continuing from a previous value (0 to start). */
static inline uint32_t ff_crc32c(uint32_t previous, const void* data, size_t length) {
    uint32_t crc = previous ^ 0xFFFFFFFFu;
    crc = ff_crc32c_mode == 1
        ? ff_crc32c_instruction(crc, (const unsigned char*)data, length)
        : ff_crc32c_software(crc, (const unsigned char*)data, length);
    return crc ^ 0xFFFFFFFFu;
}

#endif
