/*
 * crc32c.c - CRC32C (Castagnoli): hardware instruction where the CPU has it,
 * slicing-by-8 tables otherwise, chosen at run time.
 *
 * The hardware paths run three independent CRC streams over adjacent blocks, so
 * the CPU's crc32 unit is kept busy despite the instruction's latency, then merge
 * them with the precomputed "append N zero bytes" operators of crc32c_tables.h:
 * crc(A || B) = shift_|B|(crc(A)) ^ crc0(B) on the raw (uninverted) register.
 */
#include "phoenix_core.h"

#include <string.h>

#include "crc32c_tables.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define PX_HAVE_X86_CRC 1
#include <nmmintrin.h>
#elif defined(__GNUC__) && defined(__aarch64__) && defined(__linux__)
#define PX_HAVE_ARM_CRC 1
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

static uint32_t shift_register(const uint32_t table[4][256], uint32_t crc)
{
    return table[0][crc & 0xffu] ^ table[1][(crc >> 8) & 0xffu] ^
           table[2][(crc >> 16) & 0xffu] ^ table[3][crc >> 24];
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

uint32_t px_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    const uint32_t(*t)[256] = px_crc32c_slice;
    crc = ~crc;
    while (len >= 8) {
        uint32_t lo = crc ^ load_le32(p);
        uint32_t hi = load_le32(p + 4);
        crc = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^
              t[4][lo >> 24] ^ t[3][hi & 0xffu] ^ t[2][(hi >> 8) & 0xffu] ^
              t[1][(hi >> 16) & 0xffu] ^ t[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) {
        crc = t[0][(crc ^ *p++) & 0xffu] ^ (crc >> 8);
    }
    return ~crc;
}

#if defined(PX_HAVE_X86_CRC)

__attribute__((target("sse4.2"))) static uint64_t crc_words(uint64_t crc, const uint8_t *p,
                                                            size_t words)
{
    while (words--) {
        uint64_t w;
        memcpy(&w, p, 8);
        crc = _mm_crc32_u64(crc, w);
        p += 8;
    }
    return crc;
}

__attribute__((target("sse4.2"))) static uint64_t crc_three_way(uint64_t crc0,
                                                                const uint8_t **pp,
                                                                size_t *lenp, size_t block,
                                                                const uint32_t table[4][256])
{
    const uint8_t *p = *pp;
    size_t len = *lenp;
    while (len >= 3 * block) {
        uint64_t crc1 = 0, crc2 = 0;
        const uint8_t *end = p + block;
        do {
            uint64_t w0, w1, w2;
            memcpy(&w0, p, 8);
            memcpy(&w1, p + block, 8);
            memcpy(&w2, p + 2 * block, 8);
            crc0 = _mm_crc32_u64(crc0, w0);
            crc1 = _mm_crc32_u64(crc1, w1);
            crc2 = _mm_crc32_u64(crc2, w2);
            p += 8;
        } while (p < end);
        crc0 = shift_register(table, (uint32_t)crc0) ^ (uint32_t)crc1;
        crc0 = shift_register(table, (uint32_t)crc0) ^ (uint32_t)crc2;
        p += 2 * block;
        len -= 3 * block;
    }
    *pp = p;
    *lenp = len;
    return crc0;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_x86(uint32_t crc, const void *data,
                                                             size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c = (uint32_t)~crc;
    while (len && ((uintptr_t)p & 7u)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    c = crc_three_way(c, &p, &len, PX_CRC32C_LONG, px_crc32c_shift_long);
    c = crc_three_way(c, &p, &len, PX_CRC32C_SHORT, px_crc32c_shift_short);
    c = crc_words(c, p, len / 8);
    p += len & ~(size_t)7;
    len &= 7;
    while (len--) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
    }
    return ~(uint32_t)c;
}

int px_crc32c_hw_available(void)
{
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

uint32_t px_crc32c_hw(uint32_t crc, const void *data, size_t len)
{
    if (!px_crc32c_hw_available()) {
        return px_crc32c_sw(crc, data, len);
    }
    return crc_hw_x86(crc, data, len);
}

const char *px_crc32c_impl(void)
{
    return px_crc32c_hw_available() ? "sse4.2" : "software";
}

#elif defined(PX_HAVE_ARM_CRC)

__attribute__((target("+crc"))) static uint32_t crc_three_way_arm(uint32_t crc0,
                                                                  const uint8_t **pp,
                                                                  size_t *lenp, size_t block,
                                                                  const uint32_t table[4][256])
{
    const uint8_t *p = *pp;
    size_t len = *lenp;
    while (len >= 3 * block) {
        uint32_t crc1 = 0, crc2 = 0;
        const uint8_t *end = p + block;
        do {
            uint64_t w0, w1, w2;
            memcpy(&w0, p, 8);
            memcpy(&w1, p + block, 8);
            memcpy(&w2, p + 2 * block, 8);
            crc0 = __crc32cd(crc0, w0);
            crc1 = __crc32cd(crc1, w1);
            crc2 = __crc32cd(crc2, w2);
            p += 8;
        } while (p < end);
        crc0 = shift_register(table, crc0) ^ crc1;
        crc0 = shift_register(table, crc0) ^ crc2;
        p += 2 * block;
        len -= 3 * block;
    }
    *pp = p;
    *lenp = len;
    return crc0;
}

__attribute__((target("+crc"))) static uint32_t crc_hw_arm(uint32_t crc, const void *data,
                                                           size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7u)) {
        c = __crc32cb(c, *p++);
        len--;
    }
    c = crc_three_way_arm(c, &p, &len, PX_CRC32C_LONG, px_crc32c_shift_long);
    c = crc_three_way_arm(c, &p, &len, PX_CRC32C_SHORT, px_crc32c_shift_short);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __crc32cd(c, w);
        p += 8;
        len -= 8;
    }
    while (len--) {
        c = __crc32cb(c, *p++);
    }
    return ~c;
}

int px_crc32c_hw_available(void)
{
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) ? 1 : 0;
}

uint32_t px_crc32c_hw(uint32_t crc, const void *data, size_t len)
{
    if (!px_crc32c_hw_available()) {
        return px_crc32c_sw(crc, data, len);
    }
    return crc_hw_arm(crc, data, len);
}

const char *px_crc32c_impl(void)
{
    return px_crc32c_hw_available() ? "armv8-crc" : "software";
}

#else

int px_crc32c_hw_available(void)
{
    return 0;
}

uint32_t px_crc32c_hw(uint32_t crc, const void *data, size_t len)
{
    return px_crc32c_sw(crc, data, len);
}

const char *px_crc32c_impl(void)
{
    return "software";
}

#endif

uint32_t px_crc32c(uint32_t crc, const void *data, size_t len)
{
    /* Short inputs: the dispatch check costs more than it saves. */
    if (len < 16) {
        return px_crc32c_sw(crc, data, len);
    }
    return px_crc32c_hw(crc, data, len);
}
