/* The fast kernel's hash table: domain bytes -> number of lines (see _native.c, step 4). */

#ifndef TALLY_NATIVE_TABLE_H
#define TALLY_NATIVE_TABLE_H

#include "_native_common.h"

#ifndef BATCH
#define BATCH 32 /* domains hashed and prefetched before they are looked up */
#endif
#define KEY_INLINE 16
#define HUGE_TABLE (4 << 20) /* bytes: a table this large is mapped in huge pages */
#define SPARSE_TABLE (1 << 15) /* slots (1 MiB): up to this size, probes are kept short */
#ifndef SMALL_TABLE
#define SMALL_TABLE (1 << 16) /* slots (2 MiB): a smaller table is looked up line by line */
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

/* Whether the n > 16 bytes at a and b are equal, given that their first 8 are. */
static inline int same_tail(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t i = 8;
    for (; i + 8 < n; i += 8) {
        if (load64(a + i) != load64(b + i)) return 0;
    }
    return load64(a + n - 8) == load64(b + n - 8);
}

/* -- the table -------------------------------------------------------------------------- */

typedef struct {
    uint64_t w0, w1; /* up to 16 bytes: the key, zero padded; longer: 8 bytes, arena offset */
    uint32_t len;
    uint32_t hash;  /* the hash's low half: the slot's index, also when the table grows */
    uint64_t count; /* 0: a free slot; 1 for a key over 16 bytes (counted in its record) */
} Slot;

/* A key over 16 bytes in the arena: this header, its bytes, zeros up to a multiple of 8.
 * Its count is kept here, beside the bytes it is compared with, so that the counts can be
 * read in the order the keys were met, one arena page after the other. */
typedef struct {
    uint64_t count;
    uint64_t len;
} Record;

typedef struct {
    const uint8_t *p;
    size_t n;
    uint64_t w0, w1, h;
} Pending;

typedef struct {
    Slot *slots;
    size_t mask; /* slots - 1, a power of two less one */
    size_t used;
    uint8_t *arena; /* the records of the keys over 16 bytes */
    size_t arena_len, arena_cap;
    uint64_t seed;
    int nomem; /* an allocation failed: the counts are incomplete */
    size_t pending;
    Pending batch[BATCH];
} Table;

/* Zeroed memory for n slots. A large table is mapped with transparent huge pages where the
 * system has them: its first writes then fault once per 2 MiB, not once per 4 KiB. */
static Slot *slots_alloc(size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    size_t bytes = n * sizeof(Slot);
    if (bytes >= HUGE_TABLE) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        madvise(p, bytes, MADV_HUGEPAGE);
        return p;
    }
#endif
    return calloc(n, sizeof(Slot));
}

static void slots_free(Slot *p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (n * sizeof(Slot) >= HUGE_TABLE) {
        munmap(p, n * sizeof(Slot));
        return;
    }
#endif
    (void)n;
    free(p);
}

static int table_init(Table *c, size_t slots) {
    c->slots = slots_alloc(slots);
    if (!c->slots) return -1;
    c->mask = slots - 1;
    c->used = 0;
    return 0;
}

static int table_grow(Table *c) {
    size_t old = c->mask + 1, used = c->used;
    Slot *from = c->slots;
    if (old >= (size_t)1 << 32) return -1; /* a slot's index comes from 32 bits of hash */
    if (table_init(c, 2 * old) < 0) {
        c->slots = from;
        return -1;
    }
    for (size_t i = 0; i < old; i++) {
        if (!from[i].count) continue;
        size_t j = from[i].hash & c->mask;
        while (c->slots[j].count) j = (j + 1) & c->mask;
        c->slots[j] = from[i];
    }
    c->used = used;
    slots_free(from, old);
    return 0;
}

static inline size_t record_size(size_t n) { return sizeof(Record) + ((n + 7) & ~(size_t)7); }

static int arena_put(Table *c, const uint8_t *p, size_t n, uint64_t *offset) {
    size_t size = record_size(n);
    if (c->arena_len + size > c->arena_cap) {
        size_t cap = c->arena_cap ? 2 * c->arena_cap : 1 << 16;
        while (cap < c->arena_len + size) cap *= 2;
        uint8_t *grown = realloc(c->arena, cap);
        if (!grown) return -1;
        c->arena = grown;
        c->arena_cap = cap;
    }
    Record *r = (Record *)(c->arena + c->arena_len);
    r->count = 1;
    r->len = n;
    memset((uint8_t *)(r + 1) + size - sizeof(Record) - 8, 0, 8);
    memcpy(r + 1, p, n);
    *offset = c->arena_len;
    c->arena_len += size;
    return 0;
}

static inline int insert(Table *c, const Pending *k) {
    uint32_t hash = (uint32_t)k->h;
    size_t i = hash & c->mask;
    for (;;) {
        Slot *s = &c->slots[i];
        if (!s->count) break;
        if (s->hash == hash && s->len == k->n && s->w0 == k->w0) {
            if (k->n <= KEY_INLINE) {
                if (s->w1 == k->w1) {
                    s->count++;
                    return 0;
                }
            } else {
                Record *r = (Record *)(c->arena + s->w1);
                if (same_tail((const uint8_t *)(r + 1), k->p, k->n)) {
                    r->count++;
                    return 0;
                }
            }
        }
        i = (i + 1) & c->mask;
    }
    size_t slots = c->mask + 1; /* at most a quarter full up to 1 MiB, half beyond */
    if (c->used + 1 > (2 * slots <= SPARSE_TABLE ? slots / 4 : slots / 2)) {
        if (table_grow(c) < 0) return -1;
        return insert(c, k);
    }
    Slot *s = &c->slots[i];
    s->w0 = k->w0;
    s->w1 = k->w1;
    if (k->n > KEY_INLINE && arena_put(c, k->p, k->n, &s->w1) < 0) return -1;
    s->len = (uint32_t)k->n;
    s->hash = hash;
    s->count = 1;
    c->used++;
    return 0;
}

static void flush(Table *c) {
    /* the slots were prefetched when the domains were hashed; a long key found in its home
     * slot is compared with the arena next, so prefetch that too before any compare */
    for (size_t i = 0; i < c->pending; i++) {
        const Pending *k = &c->batch[i];
        const Slot *s = &c->slots[(uint32_t)k->h & c->mask];
        if (k->n > KEY_INLINE && s->count && s->hash == (uint32_t)k->h) {
            PREFETCH(c->arena + s->w1 + sizeof(Record));
        }
    }
    for (size_t i = 0; i < c->pending && !c->nomem; i++) {
        if (insert(c, &c->batch[i]) < 0) c->nomem = 1;
    }
    c->pending = 0;
}

/* Count the n > 0 bytes at p (bytes up to limit may be loaded). */
static inline void table_add(Table *c, const uint8_t *p, size_t n, const uint8_t *limit) {
    Pending k;
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
    if (n > KEY_INLINE) k.w1 = 0; /* the slot keeps the arena offset there */
    if (c->mask < SMALL_TABLE) { /* in the caches: no need to wait for a batch */
        if (insert(c, &k) < 0) c->nomem = 1;
        return;
    }
    PREFETCH(&c->slots[(uint32_t)k.h & c->mask]);
    c->batch[c->pending++] = k;
    if (c->pending == BATCH) flush(c);
}

static void table_free(Table *c) {
    if (c->slots) slots_free(c->slots, c->mask + 1);
    free(c->arena);
    c->slots = NULL;
    c->arena = NULL;
}

#endif
