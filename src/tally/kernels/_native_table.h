/* The fast kernel's hash table: domain bytes -> number of lines (see _native.c, step 4).
 *
 * The distinct domains are kept as Arrow keeps a binary column and its counts: their bytes
 * one after the other (data), where each starts (offsets, int64, one more than the domains)
 * and each one's count (counts, int64), in the order they were first met. The partial is
 * therefore ready when the scan ends: Python wraps the three buffers without a copy.
 *
 * The index is an open-addressing table (linear probing) of 8-byte slots: the low half of
 * the domain's hash (which also gives the slot) and its entry number plus one; 0 is a free
 * slot. Eight slots share a cache line, so a table of a million domains is 8 to 16 MiB, and
 * growing it rehashes the slots alone (the hash is in them), never a domain's bytes. */

#ifndef TALLY_NATIVE_TABLE_H
#define TALLY_NATIVE_TABLE_H

#include "_native_common.h"

#ifndef STAGE
#define STAGE 16 /* domains between the steps of a lookup: slot, entry, bytes, compare */
#endif
#define RING (4 * STAGE) /* domains on their way through the steps */
#define KEY_INLINE 16
#define DATA_PAD 16          /* readable bytes after the last domain: 16-byte loads */
#define SPARSE_TABLE (1 << 15) /* slots (256 KiB): up to this size, at most half full */
#ifndef SMALL_TABLE
#define SMALL_TABLE (1 << 17) /* slots (1 MiB): a smaller table is looked up line by line */
#endif

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
    if (UNLIKELY(n > KEY_INLINE)) {
        size_t i = KEY_INLINE;
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

/* -- the table -------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n;
    uint64_t w0, w1, h; /* the first 16 bytes, zero padded past n; the hash */
    size_t hit;         /* entry + 1 of a slot with the same hash, 0 if none was seen */
    int64_t by;         /* lines to add: 1 for a line, a partial's count when merging */
} Pending;

typedef struct {
    uint64_t *slots; /* hash low half << 32 | entry + 1; 0: free */
    size_t mask;     /* slots - 1, a power of two less one */
    size_t used;     /* entries: distinct domains */
    uint8_t *data;   /* the domains' bytes, DATA_PAD readable bytes after the last */
    size_t data_len, data_cap;
    int64_t *offsets; /* used + 1 */
    int64_t *counts;  /* used */
    size_t entries_cap, offsets_cap, counts_cap; /* entries; bytes of the two arrays */
    uint64_t seed;
    int nomem; /* an allocation failed: the counts are incomplete */
    size_t pending, head; /* domains in the ring; the next one's place */
    Pending ring[RING];
} Table;

/* Zeroed memory for n slots (a large table in huge pages: see array_grow). */
static uint64_t *slots_alloc(size_t n) {
    return n * sizeof(uint64_t) >= MAPPED ? array_grow(NULL, 0, n * sizeof(uint64_t))
                                          : calloc(n, sizeof(uint64_t));
}

static void slots_free(uint64_t *p, size_t n) { array_free(p, n * sizeof(uint64_t)); }

static int table_init(Table *c, size_t slots) {
    c->slots = slots_alloc(slots);
    if (!c->slots) return -1;
    c->mask = slots - 1;
    c->used = 0;
    c->data = NULL;
    c->offsets = NULL;
    c->counts = NULL;
    c->data_len = c->data_cap = c->entries_cap = c->offsets_cap = c->counts_cap = 0;
    c->nomem = 0;
    c->pending = c->head = 0;
    return 0;
}

/* The slots of a table that holds n domains without growing (at most 2**26: 512 MiB). */
static size_t table_size(size_t n) {
    size_t slots = 1 << 10;
    while (slots < ((size_t)1 << 26) &&
           n > (slots <= SPARSE_TABLE ? slots / 2 : slots / 4 * 3)) {
        slots *= 2;
    }
    return slots;
}

static int table_grow(Table *c) {
    size_t old = c->mask + 1;
    uint64_t *from = c->slots;
    if (old >= (size_t)1 << 32) return -1; /* a slot's index comes from 32 bits of hash */
    uint64_t *to = slots_alloc(2 * old);
    if (!to) return -1;
    size_t mask = 2 * old - 1;
    for (size_t i = 0; i < old; i++) {
        uint64_t s = from[i];
        if (!s) continue;
        size_t j = (s >> 32) & mask;
        while (to[j]) j = (j + 1) & mask;
        to[j] = s;
    }
    c->slots = to;
    c->mask = mask;
    slots_free(from, old);
    return 0;
}

/* Room for one more entry of n bytes. */
static int reserve(Table *c, size_t n) {
    if (c->used + 1 >= c->entries_cap) {
        size_t cap = c->entries_cap ? 2 * c->entries_cap : 1 << 10;
        if (cap >= (size_t)UINT32_MAX) return -1; /* a slot holds a 32-bit entry number */
        int64_t *offsets = array_grow(c->offsets, c->offsets_cap, cap * sizeof(int64_t));
        if (!offsets) return -1;
        c->offsets = offsets;
        c->offsets_cap = cap * sizeof(int64_t);
        int64_t *counts = array_grow(c->counts, c->counts_cap, cap * sizeof(int64_t));
        if (!counts) return -1;
        c->counts = counts;
        c->counts_cap = cap * sizeof(int64_t);
        c->entries_cap = cap;
        if (!c->used) c->offsets[0] = 0;
    }
    if (c->data_len + n + DATA_PAD > c->data_cap) {
        size_t cap = c->data_cap ? 2 * c->data_cap : 1 << 14;
        while (cap < c->data_len + n + DATA_PAD) cap *= 2;
        uint8_t *data = array_grow(c->data, c->data_cap, cap);
        if (!data) return -1;
        c->data = data;
        c->data_cap = cap;
    }
    return 0;
}

/* Whether entry e holds the key k (whose hash matched). */
static inline int same_key(const Table *c, size_t e, const Pending *k) {
    int64_t at = c->offsets[e];
    if ((size_t)(c->offsets[e + 1] - at) != k->n) return 0;
    const uint8_t *q = c->data + at; /* 16 bytes readable: DATA_PAD */
    uint64_t a0 = load64(q), a1 = load64(q + 8);
    if (k->n < 8) {
        return low_bytes(a0, k->n) == k->w0;
    }
    if (k->n <= KEY_INLINE) return a0 == k->w0 && low_bytes(a1, k->n - 8) == k->w1;
    return a0 == k->w0 && a1 == k->w1 && same_tail(q, k->p, k->n);
}

static inline size_t max_used(const Table *c) {
    size_t slots = c->mask + 1; /* at most half full up to 256 KiB, three quarters beyond */
    return slots <= SPARSE_TABLE ? slots / 2 : slots / 4 * 3;
}

static int insert(Table *c, const Pending *k) {
    uint32_t hash = (uint32_t)k->h;
    size_t i = hash & c->mask;
    for (;;) {
        uint64_t s = c->slots[i];
        if (!s) break;
        if ((uint32_t)(s >> 32) == hash) {
            size_t e = (uint32_t)s - 1;
            if (same_key(c, e, k)) {
                c->counts[e] += k->by;
                return 0;
            }
        }
        i = (i + 1) & c->mask;
    }
    if (c->used + 1 > max_used(c)) {
        if (table_grow(c) < 0) return -1;
        return insert(c, k);
    }
    if (reserve(c, k->n) < 0) return -1;
    size_t e = c->used++;
    memcpy(c->data + c->data_len, k->p, k->n);
    c->data_len += k->n;
    c->offsets[e + 1] = (int64_t)c->data_len;
    c->counts[e] = k->by;
    c->slots[i] = ((uint64_t)hash << 32) | (uint64_t)(e + 1);
    return 0;
}

/* A lookup in four steps, each STAGE domains after the one before, so that its memory reads
 * overlap with the scan of the lines in between rather than wait one after another: the
 * slot is prefetched when the domain is hashed; then the slots from there on are searched
 * for one of the same hash, and its entry (offset and count) prefetched; then its bytes;
 * then the domain is compared and counted (insert() looks it up again, from caches). */
static inline void find_entry(Table *c, Pending *k) {
    uint32_t hash = (uint32_t)k->h;
    size_t j = hash & c->mask;
    uint64_t s;
    k->hit = 0;
    while ((s = c->slots[j])) {
        if ((uint32_t)(s >> 32) == hash) {
            k->hit = (uint32_t)s;
            PREFETCH(&c->offsets[k->hit - 1]);
            PREFETCH(&c->counts[k->hit - 1]);
            return;
        }
        j = (j + 1) & c->mask;
    }
}

static inline void step(Table *c) {
    size_t h = c->head;
    if (c->pending > STAGE) find_entry(c, &c->ring[(h - STAGE - 1) % RING]);
    if (c->pending > 2 * STAGE) {
        const Pending *k = &c->ring[(h - 2 * STAGE - 1) % RING];
        if (k->hit && k->hit <= c->used) PREFETCH(c->data + c->offsets[k->hit - 1]);
    }
    if (c->pending > 3 * STAGE) {
        if (!c->nomem && insert(c, &c->ring[(h - 3 * STAGE - 1) % RING]) < 0) c->nomem = 1;
        c->pending--;
    }
}

/* Count the domains still in the ring. */
static void flush(Table *c) {
    for (size_t i = c->pending; i > 0; i--) {
        if (!c->nomem && insert(c, &c->ring[(c->head - i) % RING]) < 0) c->nomem = 1;
    }
    c->pending = 0;
}

/* Add by to the count of the n > 0 bytes at p (bytes up to limit may be loaded). */
static inline void table_add(
    Table *c, const uint8_t *p, size_t n, const uint8_t *limit, int64_t by) {
    Pending k;
    k.by = by;
    k.p = p;
    k.n = n;
    load128_safe(p, limit, &k.w0, &k.w1);
    if (n < 8) {
        k.w0 = low_bytes(k.w0, n);
        k.w1 = 0;
    } else if (n <= KEY_INLINE) {
        k.w1 = low_bytes(k.w1, n - 8);
    }
    k.h = hash_key(p, n, k.w0, k.w1, c->seed);
    k.hit = 0;
    if (c->mask < SMALL_TABLE && !c->pending) { /* in the caches: no need for the steps */
        if (insert(c, &k) < 0) c->nomem = 1;
        return;
    }
    PREFETCH(&c->slots[(uint32_t)k.h & c->mask]);
    c->ring[c->head % RING] = k;
    c->head++;
    c->pending++;
    step(c);
}

static void table_free(Table *c) {
    if (c->slots) slots_free(c->slots, c->mask + 1);
    array_free(c->data, c->data_cap);
    array_free(c->offsets, c->offsets_cap);
    array_free(c->counts, c->counts_cap);
    c->slots = NULL;
    c->data = NULL;
    c->offsets = NULL;
    c->counts = NULL;
}

#endif
