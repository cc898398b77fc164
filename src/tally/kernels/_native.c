/* The domain rule (docs/domain-rule.md) in one pass over each run of whole lines.
 *
 * Built at install time as tally.kernels._native when a C compiler is there; without it the
 * fast kernel falls back to NumPy and Arrow (tally.kernels.columnar). Python frames the
 * stream into runs of whole lines (tally.kernels.fast); this file does the rest:
 *
 * 1. Lines and columns: each 64-byte block gives two bit masks, its '\n' and its '\t'
 *    (SSE2 where the compiler targets it, else 8 bytes at a time with the SWAR zero-byte
 *    test). Their set bits, in order, give each line's end and its first two tabs, so the
 *    URL (from the first tab to the second, or to the line's end) is known without another
 *    look at the line's bytes.
 * 2. Scheme: the URL is searched for ':' followed by "//", 16 bytes at a time (one load for
 *    almost every URL, with any scheme; no branch on which scheme it is).
 * 3. Domain end: the first '/' after the domain's start, 16 bytes at a time, or the URL end.
 * 4. Counting: an open-addressing hash table (linear probing, 32-byte slots, at most a
 *    quarter full up to 1 MiB, half beyond) keyed by the domain's bytes: a domain of up to
 *    16 bytes is kept in its slot with its count, a longer one in an arena record with its
 *    count, and its first 8 bytes in the slot. Once the table outgrows the caches, domains
 *    are hashed in batches and their slots prefetched before any is looked up, so lookups
 *    cost overlapping memory reads rather than one miss after another; a table of several
 *    MiB is mapped in huge pages.
 *
 * Bytes are compared exactly; the bytes after a run are never read past the buffer's end.
 * The GIL is released while a run is scanned (the buffer stays exported, so it cannot move).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

#define NATIVE_ABI 1 /* bumped whenever the Python side must change with this file */
#ifndef NATIVE_SOURCE
#define NATIVE_SOURCE "unknown" /* setup.py passes the first hex digits of this file's SHA-256 */
#endif
#ifndef BATCH
#define BATCH 32 /* domains hashed and prefetched before they are looked up */
#endif
#define KEY_INLINE 16
#define HUGE_TABLE (4 << 20) /* bytes: a table this large is mapped in huge pages */
#define SPARSE_TABLE (1 << 15) /* slots (1 MiB): up to this size, probes are kept short */
#ifndef SMALL_TABLE
#define SMALL_TABLE (1 << 16) /* slots (2 MiB): a smaller table is looked up line by line */
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

/* -- finding bytes ---------------------------------------------------------------------- */

/* The first byte equal to c in [p, q), or q; bytes up to limit may be loaded. */
static inline const uint8_t *find_byte(
    const uint8_t *p, const uint8_t *q, uint8_t c, const uint8_t *limit, int portable) {
#if HAVE_SSE2
    if (!portable) {
        const __m128i needle = _mm_set1_epi8((char)c);
        while (p < q && (size_t)(limit - p) >= 16) {
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)p), needle));
            if (m) {
                const uint8_t *hit = p + CTZ32(m);
                return hit < q ? hit : q;
            }
            p += 16;
        }
    }
#else
    (void)limit;
    (void)portable;
#endif
    if (p >= q) return q;
    const uint8_t *hit = memchr(p, c, (size_t)(q - p));
    return hit ? hit : q;
}

/* Bit i of the result is set when byte i of x equals the byte repeated in pattern. */
static inline uint64_t swar_bits(uint64_t x, uint64_t pattern) {
    const uint64_t low7 = UINT64_C(0x7f7f7f7f7f7f7f7f);
    uint64_t y = x ^ pattern;
    uint64_t zero = ~(((y & low7) + low7) | y | low7); /* 0x80 in each zero byte, exact */
    return ((zero >> 7) * UINT64_C(0x0102040810204080)) >> 56;
}

/* The '\n' and '\t' masks of the 64 bytes at p (all readable). */
static inline void block_masks(const uint8_t *p, int portable, uint64_t *nl, uint64_t *tab) {
#if HAVE_SSE2
    if (!portable) {
        const __m128i n = _mm_set1_epi8('\n'), t = _mm_set1_epi8('\t');
        uint64_t mn = 0, mt = 0;
        for (int k = 0; k < 4; k++) {
            __m128i v = _mm_loadu_si128((const __m128i *)(p + 16 * k));
            mn |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, n)) << (16 * k);
            mt |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, t)) << (16 * k);
        }
        *nl = mn;
        *tab = mt;
        return;
    }
#else
    (void)portable;
#endif
    uint64_t mn = 0, mt = 0;
    for (int k = 0; k < 8; k++) {
        uint64_t x = load64(p + 8 * k);
        mn |= swar_bits(x, UINT64_C(0x0a0a0a0a0a0a0a0a)) << (8 * k);
        mt |= swar_bits(x, UINT64_C(0x0909090909090909)) << (8 * k);
    }
    *nl = mn;
    *tab = mt;
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
    PyObject_HEAD
    Slot *slots;
    size_t mask; /* slots - 1, a power of two less one */
    size_t used;
    uint8_t *arena; /* the bytes of the keys over 16 bytes */
    size_t arena_len, arena_cap;
    uint64_t seed;
    PyObject *only; /* bytes, or NULL: count every domain */
    uint64_t only_hits;
    int portable; /* SWAR and memchr instead of SSE2 */
    int busy;     /* inside add(): the GIL is released, nothing else may touch the table */
    int nomem;
    Pending batch[BATCH];
    size_t pending;
} Counter;

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

static int table_init(Counter *c, size_t slots) {
    c->slots = slots_alloc(slots);
    if (!c->slots) return -1;
    c->mask = slots - 1;
    c->used = 0;
    return 0;
}

static int table_grow(Counter *c) {
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

static int arena_put(Counter *c, const uint8_t *p, size_t n, uint64_t *offset) {
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

static inline int insert(Counter *c, const Pending *k) {
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

static void flush(Counter *c) {
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

/* One well-formed line's domain, the n > 0 bytes at p (bytes up to limit may be loaded). */
static inline void emit(Counter *c, const uint8_t *p, size_t n, const uint8_t *limit) {
    if (c->only) {
        if ((Py_ssize_t)n == PyBytes_GET_SIZE(c->only) &&
            memcmp(p, PyBytes_AS_STRING(c->only), n) == 0)
            c->only_hits++;
        return;
    }
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

/* -- lines ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t lines, malformed;
} Lines;


/* The line [s, nl) of buf, whose first tabs are at t1 and t2 (NULL if none). */
static inline void line(
    Counter *c, Lines *out, const uint8_t *s, const uint8_t *t1, const uint8_t *t2,
    const uint8_t *nl, size_t record_limit, const uint8_t *limit) {
    const uint8_t *stop = nl - (nl > s && nl[-1] == '\r');
    if ((size_t)(stop - s) > record_limit) { /* the \r\n ending is not counted */
        out->lines++;
        out->malformed++;
        return;
    }
    if (stop == s) return; /* blank */
    out->lines++;
    if (!t1) { /* one column */
        out->malformed++;
        return;
    }
    /* a tab is never at stop (a '\r' or the '\n'), so the URL ends before stop or at it */
    const uint8_t *url = t1 + 1, *end = t2 ? t2 : stop;
    if (url >= end) {
        out->malformed++;
        return;
    }
    const uint8_t *start, *stop_at;
    /* the first "://": a ':' followed by "//" (the byte at end is never a '/', so a match
     * lies inside the URL, and the second '/' is read only after the first); most URLs have
     * it at their start, found in the first 16 bytes whatever the scheme */
    const uint8_t *colon = find_byte(url, end, ':', limit, c->portable);
    while (colon != end && !(colon[1] == '/' && colon[2] == '/')) {
        colon = find_byte(colon + 1, end, ':', limit, c->portable);
    }
    if (colon == end) { /* no "://": the whole URL is the domain */
        emit(c, url, (size_t)(end - url), limit);
        return;
    }
    start = colon + 3;
    stop_at = find_byte(start, end, '/', limit, c->portable);
    if (stop_at == start) {
        out->malformed++;
        return;
    }
    emit(c, start, (size_t)(stop_at - start), limit);
}

/* Count the lines of [begin, end), whole lines the last of which ends in '\n'. */
static Lines scan(
    Counter *c, const uint8_t *buf, size_t begin, size_t end, size_t buflen,
    size_t record_limit) {
    Lines out = {0, 0};
    const uint8_t *base = buf + begin, *limit = buf + buflen;
    size_t n = end - begin;
    const uint8_t *s = base, *t1 = NULL, *t2 = NULL;
    uint8_t tail[64];
    for (size_t b = 0; b < n; b += 64) {
        uint64_t nl, tab;
        if (LIKELY((size_t)(limit - (base + b)) >= 64)) {
            block_masks(base + b, c->portable, &nl, &tab);
        } else {
            memset(tail, 0, sizeof tail);
            memcpy(tail, base + b, (size_t)(limit - (base + b)));
            block_masks(tail, c->portable, &nl, &tab);
        }
        if (n - b < 64) {
            uint64_t keep = (UINT64_C(1) << (n - b)) - 1;
            nl &= keep;
            tab &= keep;
        }
        uint64_t events = nl | tab;
        while (events) {
            unsigned i = CTZ64(events);
            events &= events - 1;
            const uint8_t *at = base + b + i;
            if ((nl >> i) & 1) {
                line(c, &out, s, t1, t2, at, record_limit, limit);
                s = at + 1;
                t1 = t2 = NULL;
            } else if (!t1) {
                t1 = at;
            } else if (!t2) {
                t2 = at;
            }
        }
    }
    if (c->pending) flush(c);
    return out;
}

/* -- the Python type -------------------------------------------------------------------- */

static int Counter_init(Counter *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"only", "seed", "portable", NULL};
    PyObject *only = Py_None;
    unsigned long long seed = 0;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OKp", names, &only, &seed, &portable))
        return -1;
    if (only != Py_None && !PyBytes_Check(only)) {
        PyErr_SetString(PyExc_TypeError, "only must be bytes or None");
        return -1;
    }
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Counter is already initialised");
        return -1;
    }
    if (table_init(self, 1 << 10) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->seed = (uint64_t)seed;
    self->portable = portable || !HAVE_SSE2;
    if (only != Py_None) {
        Py_INCREF(only);
        self->only = only;
    }
    return 0;
}

static void Counter_dealloc(Counter *self) {
    if (self->slots) slots_free(self->slots, self->mask + 1);
    free(self->arena);
    Py_XDECREF(self->only);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(Counter *self) {
    if (!self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Counter is not initialised");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Counter is in use by another thread");
        return -1;
    }
    return 0;
}

static PyObject *Counter_add(Counter *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t begin, end, record_limit;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &begin, &end, &record_limit)) return NULL;
    if (check_ready(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (begin < 0 || end < begin || end > view.len || record_limit < 0 ||
        (uint64_t)record_limit > UINT32_MAX) {
        PyBuffer_Release(&view);
        PyErr_SetString(
            PyExc_ValueError, "need 0 <= begin <= end <= len(buffer) and 0 <= limit < 2**32");
        return NULL;
    }
    const uint8_t *buf = view.buf;
    if (end > begin && buf[end - 1] != '\n') {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the lines must end with a newline");
        return NULL;
    }
    Lines out;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    out = scan(self, buf, (size_t)begin, (size_t)end, (size_t)view.len, (size_t)record_limit);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyBuffer_Release(&view);
    if (self->nomem) return PyErr_NoMemory();
    return Py_BuildValue("KK", (unsigned long long)out.lines, (unsigned long long)out.malformed);
}

/* result[key] = count; on failure, result is released and -1 returned. */
static int put_count(PyObject *result, const uint8_t *key, size_t n, uint64_t count) {
    PyObject *k = PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)n);
    PyObject *v = k ? PyLong_FromUnsignedLongLong(count) : NULL;
    int failed = !v || PyDict_SetItem(result, k, v) < 0;
    Py_XDECREF(k);
    Py_XDECREF(v);
    if (failed) Py_DECREF(result);
    return failed ? -1 : 0;
}

static PyObject *Counter_counts(Counter *self, PyObject *Py_UNUSED(ignored)) {
    if (check_ready(self) < 0) return NULL;
    PyObject *result = self->only ? PyDict_New() : _PyDict_NewPresized((Py_ssize_t)self->used);
    if (!result) return NULL;
    if (self->only) {
        if (self->only_hits) {
            PyObject *n = PyLong_FromUnsignedLongLong(self->only_hits);
            if (!n || PyDict_SetItem(result, self->only, n) < 0) {
                Py_XDECREF(n);
                Py_DECREF(result);
                return NULL;
            }
            Py_DECREF(n);
        }
        return result;
    }
    for (size_t i = 0; i <= self->mask; i++) { /* keys of up to 16 bytes, from the slots */
        const Slot *s = &self->slots[i];
        if (!s->count || s->len > KEY_INLINE) continue;
        uint8_t bytes[16];
        uint64_t w[2] = {s->w0, s->w1};
        for (int k = 0; k < 16; k++) bytes[k] = (uint8_t)(w[k / 8] >> (8 * (k % 8)));
        if (put_count(result, bytes, s->len, s->count) < 0) return NULL;
    }
    for (size_t at = 0; at < self->arena_len;) { /* longer keys, from the arena in order */
        const Record *r = (const Record *)(self->arena + at);
        if (put_count(result, (const uint8_t *)(r + 1), (size_t)r->len, r->count) < 0) {
            return NULL;
        }
        at += record_size((size_t)r->len);
    }
    return result;
}

static PyMethodDef Counter_methods[] = {
    {"add", (PyCFunction)Counter_add, METH_VARARGS,
     "add(buffer, begin, end, record_limit) -> (lines, malformed): count the whole lines of "
     "buffer[begin:end]"},
    {"counts", (PyCFunction)Counter_counts, METH_NOARGS,
     "counts() -> dict: every domain counted so far and its number of lines"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tally.kernels._native.Counter",
    .tp_doc = "Counter(only=None, seed=0, portable=False): lines per domain, run by run",
    .tp_basicsize = sizeof(Counter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Counter_init,
    .tp_dealloc = (destructor)Counter_dealloc,
    .tp_methods = Counter_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The domain rule in C (see tally.kernels.fast).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&CounterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&CounterType);
    if (PyModule_AddObject(m, "Counter", (PyObject *)&CounterType) < 0 ||
        PyModule_AddIntConstant(m, "ABI", NATIVE_ABI) < 0 ||
        PyModule_AddIntConstant(m, "SSE2", HAVE_SSE2) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE", NATIVE_SOURCE) < 0) {
        Py_DECREF(&CounterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
