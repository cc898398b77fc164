/* The fast kernel's hash table: domain bytes -> number of lines (see _native.c, step 4).
 *
 * Each distinct domain is a record in an arena, in the order first met: its count, its
 * length and its bytes, side by side, so that a domain seen again costs one read of its
 * slot and one of its record. When the counting is done, one pass over the arena writes the
 * partial as Arrow keeps a binary column and its counts (table_columns): the domains' bytes
 * one after the other, where each starts (int64 offsets, one more than the domains) and
 * each one's count (int64), which Python wraps without a copy.
 *
 * The index is an open-addressing table (linear probing) of 8-byte slots: the low half of
 * the domain's hash (which also gives the slot) and the record's place in the arena (in
 * 8-byte words, plus one); 0 is a free slot. Eight slots share a cache line, so a table of
 * a million domains is 8 to 16 MiB, and growing it rehashes the slots alone (the hash is in
 * them), never a domain's bytes. In a large table (SMALL_TABLE slots or more) a search
 * starts at the first slot of its slot's line (a GROUP), so that it almost always ends in
 * the one line fetched, and a whole group is searched at once (probe); the groups then fill
 * from their first slot on. */

#ifndef TALLY_NATIVE_TABLE_H
#define TALLY_NATIVE_TABLE_H

#include "_native_common.h"
#include "_native_spare.h"

#ifndef STAGE
#define STAGE 16 /* domains between the steps of a lookup: slot, entry, bytes, compare */
#endif
#define RING (4 * STAGE) /* domains on their way through the steps */
#define KEY_INLINE 16
#define GROUP 8 /* slots in a cache line (probe() is written for 8) */
#define DATA_PAD 16          /* readable bytes after the last domain: 16-byte loads */
#define SHORT_KEY 32 /* bytes: a key up to this long is copied as that many (no call) */
#define ARENA_PAD SHORT_KEY /* bytes after the last record: a short key's copy, 16-byte loads */
#define SPARSE_TABLE (1 << 15) /* slots (256 KiB): up to this size, at most half full */
#ifndef SMALL_TABLE
#define SMALL_TABLE (1 << 17) /* slots (1 MiB): a smaller table is looked up line by line */
#endif

/* -- the table -------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n;
    uint64_t w0, w1, h; /* the first 16 bytes, zero padded past n; the hash */
    int64_t by;         /* lines to add: 1 for a line, a partial's count when merging */
    size_t at, mask;    /* where the search of its slot goes on, in a table of that mask */
} Pending;

/* A domain in the arena: this header, its bytes, zeros up to a multiple of 8. */
typedef struct {
    int64_t count;
    uint64_t len;
} Record;

typedef struct {
    uint64_t *slots; /* hash low half << 32 | record's place in 8-byte words + 1; 0: free */
    size_t mask;     /* slots - 1, a power of two less one */
    size_t slots_cap; /* bytes allocated for the slots (a kept array may be larger) */
    size_t used;     /* records: distinct domains */
    uint8_t *arena;  /* the records, ARENA_PAD bytes after the last */
    size_t arena_len, arena_cap;
    size_t key_bytes; /* the domains' bytes, all told */
    uint64_t seed;
    int nomem; /* an allocation failed: the counts are incomplete */
    size_t pending, head; /* domains in the ring; the next one's place */
    const uint8_t *limit; /* bytes up to here may be loaded, for the domains being added */
    Pending ring[RING];
} Table;

/* Zeroed memory for n slots, its size in *cap (a large table in huge pages: see array_grow);
 * with kept, an array kept from an earlier table may be taken (the GIL held: see spare_put)
 * and the n slots are zeroed, no more: the rest is never read. */
static uint64_t *slots_alloc(size_t n, size_t *cap, int kept) {
    size_t bytes = n * sizeof(uint64_t);
    *cap = bytes;
    if (bytes < MAPPED) return calloc(n, sizeof(uint64_t));
    uint64_t *p = kept ? spare_take(bytes, cap) : NULL;
    if (p) {
        memset(p, 0, bytes);
        return p;
    }
    *cap = bytes;
    return array_grow(NULL, 0, bytes);
}

/* bytes in the arena of the last table released with domains in it: the next one takes
 * a kept array of that size, if there is one, rather than grow step by step */
static size_t last_arena_len;

/* A table of the given slots; with kept, it may take arrays kept from an earlier table (the
 * GIL held), for its slots and, when it expects domains, its arena. */
static int table_init(Table *c, size_t slots, int kept) {
    c->slots = slots_alloc(slots, &c->slots_cap, kept);
    if (!c->slots) return -1;
    c->mask = slots - 1;
    c->used = 0;
    c->arena = NULL;
    c->arena_len = c->arena_cap = c->key_bytes = 0;
    if (kept && last_arena_len) c->arena = spare_take(last_arena_len + ARENA_PAD, &c->arena_cap);
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

/* Where the search for a hash starts: its slot in a small table, the first of its group in
 * a large one (see the top of this file). */
static inline size_t home(uint64_t hash, size_t mask) {
    size_t i = hash & mask;
    return mask < SMALL_TABLE ? i : i & ~(size_t)(GROUP - 1);
}

/* home() in a large table: the only kind whose lookups go through the steps (the ring is
 * empty whenever a table is small: see table_add; a table only grows). */
static inline size_t group_home(uint64_t hash, size_t mask) {
    return hash & mask & ~(size_t)(GROUP - 1);
}

static int table_grow(Table *c) {
    size_t old = c->mask + 1;
    uint64_t *from = c->slots;
    if (old >= (size_t)1 << 32) return -1; /* a slot's index comes from 32 bits of hash */
    size_t cap;
    uint64_t *to = slots_alloc(2 * old, &cap, 0); /* the GIL may be released: nothing kept */
    if (!to) return -1;
    size_t mask = 2 * old - 1;
    for (size_t i = 0; i < old; i++) {
        uint64_t s = from[i];
        if (!s) continue;
        size_t j = home(s >> 32, mask);
        while (to[j]) j = (j + 1) & mask;
        to[j] = s;
    }
    array_free(from, c->slots_cap);
    c->slots = to;
    c->slots_cap = cap;
    c->mask = mask;
    return 0;
}

/* The first slot from i on (in the order of the search: see the top of this file) that is
 * free or holds the given hash; with SSE2, a group of slots at a time, without a branch per
 * slot (which of them stops the search is a guess that fails half the time). */
static inline size_t probe(const Table *c, uint32_t hash, size_t i) {
#if HAVE_SSE2
    /* each slot's halves compared as 32-bit lanes: its place with 0 (free), its hash with
     * hash; the 16 lanes of a group narrowed to bytes, 2 bits a slot */
    const __m128i needle = _mm_set1_epi64x((int64_t)((uint64_t)hash << 32));
    for (;;) {
        size_t at = i & ~(size_t)(GROUP - 1);
        const __m128i *g = (const __m128i *)(c->slots + at);
        __m128i e0 = _mm_cmpeq_epi32(_mm_loadu_si128(g), needle);
        __m128i e1 = _mm_cmpeq_epi32(_mm_loadu_si128(g + 1), needle);
        __m128i e2 = _mm_cmpeq_epi32(_mm_loadu_si128(g + 2), needle);
        __m128i e3 = _mm_cmpeq_epi32(_mm_loadu_si128(g + 3), needle);
        __m128i eq = _mm_packs_epi16(_mm_packs_epi32(e0, e1), _mm_packs_epi32(e2, e3));
        unsigned bits = (unsigned)_mm_movemask_epi8(eq);
        bits = (bits | bits >> 1) & 0x5555 & (0xffffu << (2 * (i - at)));
        if (bits) return at + CTZ32(bits) / 2;
        i = (at + GROUP) & c->mask;
    }
#else
    uint64_t s;
    while ((s = c->slots[i]) && (uint32_t)(s >> 32) != hash) i = (i + 1) & c->mask;
    return i;
#endif
}

/* probe() where it is seldom needed: out of line. */
NOINLINE static size_t probe_rarely(const Table *c, uint32_t hash, size_t i) {
    return probe(c, hash, i);
}

static inline size_t record_size(size_t n) { return sizeof(Record) + ((n + 7) & ~(size_t)7); }

static inline Record *record_at(const Table *c, uint64_t slot) {
    return (Record *)(c->arena + 8 * (size_t)((uint32_t)slot - 1));
}

/* Whether record r holds the key k (whose hash matched). */
static inline int same_key(const Record *r, const Pending *k) {
    if (r->len != k->n) return 0;
    const uint8_t *q = (const uint8_t *)(r + 1);
    uint64_t a0 = load64(q), a1 = load64(q + 8); /* 16 bytes readable: ARENA_PAD */
    if (k->n <= 8) return a0 == k->w0; /* zero padded alike (a1: the next record) */
    if (k->n <= KEY_INLINE) return a0 == k->w0 && a1 == k->w1;
    return a0 == k->w0 && a1 == k->w1 && same_tail(q, k->p, k->n);
}

static inline size_t max_used(const Table *c) {
    size_t slots = c->mask + 1; /* at most half full up to 256 KiB, three quarters beyond */
    return slots <= SPARSE_TABLE ? slots / 2 : slots / 4 * 3;
}

static int insert(Table *c, const Pending *k) {
    uint32_t hash = (uint32_t)k->h;
    size_t i = k->mask == c->mask ? k->at : home(hash, c->mask);
    for (;;) {
        uint64_t s = c->slots[i];
        if (!s) break;
        if ((uint32_t)(s >> 32) == hash) {
            Record *r = record_at(c, s);
            if (same_key(r, k)) {
                r->count += k->by;
                return 0;
            }
        }
        i = (i + 1) & c->mask;
        if (c->mask >= SMALL_TABLE) i = probe_rarely(c, hash, i); /* a group at a time */
    }
    if (c->used + 1 > max_used(c)) {
        if (table_grow(c) < 0) return -1;
        Pending again = *k;
        again.mask = 0;
        return insert(c, &again);
    }
    size_t size = record_size(k->n);
    if (c->arena_len + size + ARENA_PAD > c->arena_cap) {
        size_t cap = c->arena_cap ? 2 * c->arena_cap : 1 << 14;
        while (cap < c->arena_len + size + ARENA_PAD) cap *= 2;
        uint8_t *arena = array_grow(c->arena, c->arena_cap, cap);
        if (!arena) return -1;
        c->arena = arena;
        c->arena_cap = cap;
    }
    size_t words = c->arena_len / 8;
    if (words >= UINT32_MAX) return -1; /* a slot holds a 32-bit place */
    Record *r = (Record *)(c->arena + c->arena_len);
    uint8_t *key = (uint8_t *)(r + 1);
    r->count = k->by;
    r->len = k->n;
    if (k->n <= KEY_INLINE) { /* the words already loaded, zero padded */
        memset(key + size - sizeof(Record) - 8, 0, 8 + DATA_PAD); /* padding, what follows */
        memcpy(key, &k->w0, 8);
        memcpy(key + 8, &k->w1, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        uint64_t w0 = __builtin_bswap64(k->w0), w1 = __builtin_bswap64(k->w1);
        memcpy(key, &w0, 8);
        memcpy(key + 8, &w1, 8);
#endif
    } else if (k->n <= SHORT_KEY && (size_t)(c->limit - k->p) >= SHORT_KEY) {
        memcpy(key, k->p, SHORT_KEY); /* past the key: the padding (compared only up to 16) */
    } else {
        memcpy(key, k->p, k->n);
    }
    c->arena_len += size;
    c->key_bytes += k->n;
    c->used++;
    c->slots[i] = ((uint64_t)hash << 32) | (uint64_t)(words + 1);
    return 0;
}

/* A lookup in three steps, each STAGE domains after the one before, so that its memory reads
 * overlap with the scan of the lines in between rather than wait one after another: the
 * slot is prefetched when the domain is hashed; then the slots from there on are searched
 * for one of the same hash, and its record prefetched (the lines of its first and its last
 * byte); then the domain is compared and counted, insert() going on from the slot where the
 * search stopped (slots are only ever filled, so the ones before it still do not match)
 * unless the table grew in between. */
static inline void find_record(Table *c, Pending *k) {
    uint32_t hash = (uint32_t)k->h;
    size_t j = probe(c, hash, group_home(hash, c->mask));
    uint64_t s = c->slots[j];
    k->mask = c->mask;
    k->at = j;
    if (s) {
        const uint8_t *r = (const uint8_t *)record_at(c, s);
        PREFETCH(r);
        PREFETCH(r + sizeof(Record) + k->n - 1); /* the line of the key's last byte */
    }
}

static inline void step(Table *c) {
    size_t h = c->head;
    if (c->pending > STAGE) find_record(c, &c->ring[(h - STAGE - 1) % RING]);
    if (c->pending > 2 * STAGE) {
        if (!c->nomem && insert(c, &c->ring[(h - 2 * STAGE - 1) % RING]) < 0) c->nomem = 1;
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

/* Start the lookup of k, and take each of the domains before it a step further. Out of line:
 * the line loop stays small for a small table, which needs no steps. */
NOINLINE static void ring_add(Table *c, const Pending *k) {
    PREFETCH(&c->slots[group_home((uint32_t)k->h, c->mask)]);
    c->ring[c->head % RING] = *k;
    c->head++;
    c->pending++;
    step(c);
}

/* Add by to the count of the n > 0 bytes at p (bytes up to limit may be loaded). */
static inline void table_add(
    Table *c, const uint8_t *p, size_t n, const uint8_t *limit, int64_t by) {
    Pending k;
    c->limit = limit; /* the same for every domain of one add() or merge() */
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
    k.at = k.mask = 0; /* no search yet (a table has 1024 slots or more) */
    if (c->mask < SMALL_TABLE && !c->pending) { /* in the caches: no need for the steps */
        if (insert(c, &k) < 0) c->nomem = 1;
        return;
    }
    ring_add(c, &k);
}

/* The counts as the buffers of Arrow columns, in the order first met: the domains' bytes
 * (DATA_PAD more readable), int64 offsets (one more than the domains) and int64 counts, each
 * from array_grow with its capacity in bytes (*_cap); -1 when out of memory (nothing made). */
typedef struct {
    uint8_t *data;
    int64_t *offsets, *counts;
    size_t data_cap, offsets_cap, counts_cap;
} Columns;

static int table_columns(const Table *c, Columns *out) {
    size_t n = c->used;
    out->data_cap = c->key_bytes + SHORT_KEY;
    out->offsets_cap = (n + 1) * sizeof(int64_t);
    out->counts_cap = (n ? n : 1) * sizeof(int64_t);
    out->data = spare_or_new(out->data_cap, &out->data_cap); /* every byte read is written */
    out->offsets = spare_or_new(out->offsets_cap, &out->offsets_cap);
    out->counts = spare_or_new(out->counts_cap, &out->counts_cap);
    if (!out->data || !out->offsets || !out->counts) {
        spare_put(out->data, out->data_cap);
        spare_put(out->offsets, out->offsets_cap);
        spare_put(out->counts, out->counts_cap);
        return -1;
    }
    size_t at = 0, e = 0;
    out->offsets[0] = 0;
    for (size_t place = 0; place < c->arena_len; e++) {
        const Record *r = (const Record *)(c->arena + place);
        if (r->len <= SHORT_KEY) { /* the next key, or the padding, is written after it */
            memcpy(out->data + at, r + 1, SHORT_KEY);
        } else {
            memcpy(out->data + at, r + 1, r->len);
        }
        at += r->len;
        out->offsets[e + 1] = (int64_t)at;
        out->counts[e] = r->count;
        place += record_size(r->len);
    }
    memset(out->data + at, 0, DATA_PAD);
    return 0;
}

/* Release the table's arrays: large ones are kept for the next table (the GIL held). */
static void table_free(Table *c) {
    if (c->used) last_arena_len = c->arena_len;
    if (c->slots) spare_put(c->slots, c->slots_cap);
    spare_put(c->arena, c->arena_cap);
    c->slots = NULL;
    c->arena = NULL;
}

#endif
