/*
 * crc32c.c — CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of the layer cache file (and of iSCSI, ext4, Btrfs).
 *
 * Two implementations with identical results: a portable slice-by-8 table
 * version, and on x86-64 the SSE4.2 `crc32` instruction, chosen once at run
 * time with __builtin_cpu_supports so the package still runs on CPUs without
 * SSE4.2 and is never built with -march=native. The tables are computed on
 * first use (guarded by a once-flag), so there is no large literal table.
 */
#include "eg_cache.h"
#include "eg_isa.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EG_CRC_HAVE_SSE42 1
#include <nmmintrin.h>
#endif

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static atomic_int table_state; /* 0 = not built, 1 = building, 2 = ready */

static void build_tables(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1u) ? (c >> 1) ^ POLY : c >> 1;
        }
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = table[0][i];
        for (int t = 1; t < 8; t++) {
            c = table[0][c & 0xffu] ^ (c >> 8);
            table[t][i] = c;
        }
    }
}

static void ensure_tables(void)
{
    if (atomic_load_explicit(&table_state, memory_order_acquire) == 2) {
        return;
    }
    int expected = 0;
    if (atomic_compare_exchange_strong(&table_state, &expected, 1)) {
        build_tables();
        atomic_store_explicit(&table_state, 2, memory_order_release);
        return;
    }
    while (atomic_load_explicit(&table_state, memory_order_acquire) != 2) {
        /* another thread is filling the 8 KiB table: a few microseconds */
    }
}

uint32_t eg_crc32c_sw(uint32_t crc, const void *buf, size_t n)
{
    ensure_tables();
    const uint8_t *p = (const uint8_t *)buf;
    uint32_t c = ~crc;
    while (n > 0 && ((uintptr_t)p & 7u) != 0) {
        c = table[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        /* little-endian load: the file format and every supported target are LE */
        w ^= c;
        c = table[7][w & 0xffu] ^ table[6][(w >> 8) & 0xffu] ^
            table[5][(w >> 16) & 0xffu] ^ table[4][(w >> 24) & 0xffu] ^
            table[3][(w >> 32) & 0xffu] ^ table[2][(w >> 40) & 0xffu] ^
            table[1][(w >> 48) & 0xffu] ^ table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        c = table[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
        n--;
    }
    return ~c;
}

#ifdef EG_CRC_HAVE_SSE42
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t n)
{
    const uint8_t *p = (const uint8_t *)buf;
    uint64_t c = (uint32_t)~crc;
    while (n > 0 && ((uintptr_t)p & 7u) != 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    return ~(uint32_t)c;
}
#endif

static atomic_int hw_state; /* 0 = unknown, 1 = software, 2 = SSE4.2 */

static int use_hw(void)
{
    int s = atomic_load_explicit(&hw_state, memory_order_relaxed);
    if (s == 0) {
#ifdef EG_CRC_HAVE_SSE42
        /* ENGINE_PY_ISA=generic (eg_isa_level 0) selects the software loop
         * too, so that path is exercised on every machine */
        __builtin_cpu_init();
        s = __builtin_cpu_supports("sse4.2") && eg_isa_level() > 0 ? 2 : 1;
#else
        s = 1;
#endif
        atomic_store_explicit(&hw_state, s, memory_order_relaxed);
    }
    return s == 2;
}

uint32_t eg_crc32c(uint32_t crc, const void *buf, size_t n)
{
#ifdef EG_CRC_HAVE_SSE42
    if (use_hw()) {
        return crc32c_hw(crc, buf, n);
    }
#endif
    (void)use_hw;
    return eg_crc32c_sw(crc, buf, n);
}

const char *eg_crc32c_impl(void)
{
    return use_hw() ? "sse4.2" : "slice-by-8";
}
