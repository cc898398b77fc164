/* Headers, compiler helpers, byte loads and the hash of a domain's bytes, shared by _native.c
 * and _native_table.h. */

#ifndef TALLY_NATIVE_COMMON_H
#define TALLY_NATIVE_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mremap */
#endif
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
#define NOINLINE __attribute__((noinline))
#define CTZ64(x) ((unsigned)__builtin_ctzll(x))
#define CTZ32(x) ((unsigned)__builtin_ctz(x))
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define PREFETCH(p) ((void)(p))
#define NOINLINE
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

/* -- growing arrays ----------------------------------------------------------------------- */

#define MAPPED (1 << 20) /* bytes: an array this large is mapped, not taken from the heap */

/* Memory for the arrays of the hash table, grown from cap to more bytes (cap 0: a new one).
 * On Linux an array of MAPPED bytes or more is a mapping of its own, aligned to 2 MiB and
 * in huge pages where the system allows (a large array is then faulted in, and looked up,
 * with few TLB misses); it grows by moving the pages written so far into a larger mapping
 * (mremap: no copy, no second fault). Elsewhere, and below MAPPED, it is realloc. NULL when
 * out of memory (the old array is then kept). */
#if defined(__linux__) && defined(MREMAP_MAYMOVE) && defined(MREMAP_FIXED)
#define MAP_ARRAYS 1
#define HUGE_PAGE ((size_t)2 << 20)

/* n zeroed bytes at an address aligned to HUGE_PAGE, or NULL. */
static void *map_aligned(size_t n) {
    uint8_t *p = mmap(NULL, n + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *at = (uint8_t *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (at > p) munmap(p, (size_t)(at - p));
    if (p + n + HUGE_PAGE > at + n) munmap(at + n, (size_t)(p + n + HUGE_PAGE - (at + n)));
#if defined(MADV_HUGEPAGE)
    madvise(at, n, MADV_HUGEPAGE);
#endif
    return at;
}
#else
#define MAP_ARRAYS 0
#endif

static void *array_grow(void *p, size_t cap, size_t more) {
#if MAP_ARRAYS
    if (more >= MAPPED) {
        void *q = map_aligned(more);
        if (!q) return NULL;
        if (cap >= MAPPED) {
            if (mremap(p, cap, cap, MREMAP_MAYMOVE | MREMAP_FIXED, q) == MAP_FAILED) {
                munmap(q, more);
                return NULL;
            }
        } else if (cap) {
            memcpy(q, p, cap);
            free(p);
        }
        return q;
    }
#endif
    return realloc(p, more);
}

/* Release an array of cap bytes made by array_grow. */
static void array_free(void *p, size_t cap) {
#if MAP_ARRAYS
    if (cap >= MAPPED) {
        munmap(p, cap);
        return;
    }
#endif
    (void)cap;
    free(p);
}

/* The low n bytes of x (n <= 8). */
static inline uint64_t low_bytes(uint64_t x, size_t n) {
    return n >= 8 ? x : x & ((UINT64_C(1) << (8 * n)) - 1);
}

/* -- hashing ---------------------------------------------------------------------------- */

static inline uint64_t mix(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t r = a * (b | 1);
    return r ^ (r >> 32) ^ (b * UINT64_C(0x9e3779b97f4a7c15));
#endif
}

#define K1 UINT64_C(0xa0761d6478bd642f)
#define K2 UINT64_C(0xe7037ed1a0b428db)
#define K3 UINT64_C(0x8ebc6af09c88c6e3)

/* The hash of the n bytes at p, whose first 16 bytes (zero padded) are w0, w1. */
static inline uint64_t hash_key(
    const uint8_t *p, size_t n, uint64_t w0, uint64_t w1, uint64_t seed) {
    uint64_t h = mix(w0 ^ seed ^ K1, w1 ^ K2 ^ n);
    if (UNLIKELY(n > 16)) {
        size_t i = 16;
        for (; i + 16 < n; i += 16) h = mix(h ^ load64(p + i) ^ K1, load64(p + i + 8) ^ K2);
        /* the last 16 bytes, overlapping what was hashed */
        h = mix(h ^ load64(p + n - 16) ^ K3, load64(p + n - 8) ^ K2);
    }
    return h;
}

/* Whether the n > 16 bytes at a and b are equal, given that their first 16 are. */
static inline int same_tail(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t i = 16;
    for (; i + 8 < n; i += 8) {
        if (load64(a + i) != load64(b + i)) return 0;
    }
    return load64(a + n - 8) == load64(b + n - 8);
}

#endif
