/* Headers, compiler helpers and byte loads shared by _native.c and _native_table.h. */

#ifndef TALLY_NATIVE_COMMON_H
#define TALLY_NATIVE_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define HAVE_SSE2 1
#else
#define HAVE_SSE2 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define PREFETCH(p) __builtin_prefetch(p)
#define CTZ64(x) ((unsigned)__builtin_ctzll(x))
#define CTZ32(x) ((unsigned)__builtin_ctz(x))
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define PREFETCH(p) ((void)(p))
static unsigned CTZ64(uint64_t x) { unsigned n = 0; while (!(x & 1)) { x >>= 1; n++; } return n; }
#define CTZ32(x) CTZ64((uint64_t)(x))
#endif

/* -- loads ------------------------------------------------------------------------------ */

/* 8 bytes at p as a little-endian number, on any host. */
static inline uint64_t load64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

/* The 16 bytes at p <= limit as two words, zero filled where the buffer ends first. */
static inline void load128_safe(
    const uint8_t *p, const uint8_t *limit, uint64_t *w0, uint64_t *w1) {
    const uint8_t *from = p;
    uint8_t tmp[16] = {0};
    if (UNLIKELY((size_t)(limit - p) < 16)) {
        memcpy(tmp, p, (size_t)(limit - p));
        from = tmp;
    }
    *w0 = load64(from);
    *w1 = load64(from + 8);
}

/* The low n bytes of x (n <= 8). */
static inline uint64_t low_bytes(uint64_t x, size_t n) {
    return n >= 8 ? x : x & ((UINT64_C(1) << (8 * n)) - 1);
}

#endif
