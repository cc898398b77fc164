/* The domain rule (docs/domain-rule.md) in one pass over each run of whole lines.
 *
 * Built at install time as tally.kernels._native when a C compiler is there; without it the
 * fast kernel falls back to NumPy and Arrow (tally.kernels.columnar). Python frames the
 * stream into runs of whole lines (tally.kernels.fast); this file does the rest, with the
 * hash table in _native_table.h and the byte loads in _native_common.h:
 *
 * 1. Lines and columns: each 64-byte block gives two bit masks, its '\n' and its '\t'
 *    (SSE2 where the compiler targets it, else 8 bytes at a time with the SWAR zero-byte
 *    test). Their set bits, in order, give each line's end and its first two tabs, so the
 *    URL (from the first tab to the second, or to the line's end) is known without another
 *    look at the line's bytes.
 * 2. Scheme: the URL is searched for ':' followed by "//", 16 bytes at a time (one load for
 *    almost every URL, with any scheme; no branch on which scheme it is).
 * 3. Domain end: the first '/' after the domain's start, 16 bytes at a time, or the URL end.
 * 4. Counting: each distinct domain is a record (count, length, bytes) in an arena, indexed
 *    by an open-addressing hash table of 8-byte slots (the hash's low half and the record's
 *    place; linear probing, at most half full up to 256 KiB, three quarters beyond). Once
 *    the table outgrows the caches, each domain's slot, then its record, is prefetched some
 *    lines ahead of its compare, so lookups cost overlapping memory reads rather than one
 *    miss after another, and a search looks at the 8 slots of a cache line at once; large
 *    arrays are mapped in huge pages. take() writes the partial as the buffers of Arrow
 *    columns in one pass over the arena and hands them to Python as they are: no object is
 *    made per domain.
 *
 * Bytes are compared exactly; the bytes after a run are never read past the buffer's end.
 * The GIL is released while a run is scanned (the buffer stays exported, so it cannot move).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_native_table.h"

#define NATIVE_ABI 2 /* bumped whenever the Python side must change with this file */
#ifndef NATIVE_SOURCE
#define NATIVE_SOURCE "unknown" /* setup.py passes the start of the sources' SHA-256 */
#endif

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

/* -- the Python type -------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *only; /* bytes, or NULL: count every domain */
    uint64_t only_hits;
    int portable; /* SWAR and memchr instead of SSE2 */
    int busy;     /* inside add(): the GIL is released, nothing else may touch the table */
    Table table;
} Counter;

/* One well-formed line's domain, the n > 0 bytes at p (bytes up to limit may be loaded).
 * Not inlined: the line loop stays small (6 to 10 % faster measured than inlined). */
static void emit(Counter *c, const uint8_t *p, size_t n, const uint8_t *limit) {
    if (c->only) {
        if ((Py_ssize_t)n == PyBytes_GET_SIZE(c->only) &&
            memcmp(p, PyBytes_AS_STRING(c->only), n) == 0)
            c->only_hits++;
        return;
    }
    table_add(&c->table, p, n, limit, 1);
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
    if (c->table.pending) flush(&c->table);
    return out;
}

static int Counter_init(Counter *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"only", "seed", "portable", "expect", NULL};
    PyObject *only = Py_None;
    unsigned long long seed = 0;
    int portable = 0;
    Py_ssize_t expect = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|OKpn", names, &only, &seed, &portable, &expect))
        return -1;
    if (only != Py_None && !PyBytes_Check(only)) {
        PyErr_SetString(PyExc_TypeError, "only must be bytes or None");
        return -1;
    }
    if (self->table.slots) {
        PyErr_SetString(PyExc_RuntimeError, "Counter is already initialised");
        return -1;
    }
    size_t slots = table_size(only == Py_None && expect > 0 ? (size_t)expect : 0);
    if (table_init(&self->table, slots, only == Py_None && expect > 0) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->table.seed = (uint64_t)seed;
    self->portable = portable || !HAVE_SSE2;
    if (only != Py_None) {
        Py_INCREF(only);
        self->only = only;
    }
    return 0;
}

static void Counter_dealloc(Counter *self) {
    table_free(&self->table);
    Py_XDECREF(self->only);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(Counter *self) {
    if (!self->table.slots) {
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
    if (self->table.nomem) return PyErr_NoMemory();
    return Py_BuildValue("KK", (unsigned long long)out.lines, (unsigned long long)out.malformed);
}

/* merge(data, offsets, counts): add a partial's counts, an Arrow binary column's buffers
 * (int32 offsets, one more than the rows, from 0 or any start) and int64 counts. Every key
 * must lie in the data and be non-empty, every count at least 1 and their total below 2**62
 * (ValueError, and the counter unchanged, otherwise); what a domain may hold is for the
 * partial's check (tally.queries.domains). */
static PyObject *Counter_merge(Counter *self, PyObject *args) {
    Py_buffer data, offsets, counts;
    if (!PyArg_ParseTuple(args, "y*y*y*", &data, &offsets, &counts)) return NULL;
    PyObject *result = NULL;
    const char *bad = NULL;
    if (check_ready(self) < 0) goto done;
    if (self->only) {
        PyErr_SetString(PyExc_RuntimeError, "merge() is for counting every domain");
        goto done;
    }
    size_t rows = (size_t)counts.len / sizeof(int64_t);
    if (counts.len % (Py_ssize_t)sizeof(int64_t) || offsets.len % (Py_ssize_t)sizeof(int32_t) ||
        (size_t)offsets.len / sizeof(int32_t) != rows + 1) {
        PyErr_SetString(PyExc_ValueError, "need int32 offsets, one more than the int64 counts");
        goto done;
    }
    const uint8_t *bytes = data.buf, *limit = bytes + data.len;
    const int32_t *at = offsets.buf;
    const int64_t *by = counts.buf;
    uint64_t total = 0;
    for (size_t i = 0; i < rows && !bad; i++) { /* the whole partial is checked first */
        if (at[i] < 0 || at[i + 1] <= at[i] || at[i + 1] > data.len) {
            bad = "a domain outside the data, or empty";
        } else if (by[i] < 1 || (total += (uint64_t)by[i]) >= ((uint64_t)1 << 62)) {
            bad = "a count below 1, or a total past 2**62";
        }
    }
    if (!bad) {
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        for (size_t i = 0; i < rows; i++) {
            /* each number read once and checked again: the buffers are not ours while the
             * GIL is released, and what another thread writes must not lead out of them */
            int32_t from = at[i], to = at[i + 1];
            int64_t n = by[i];
            if (from >= 0 && to > from && to <= data.len && n > 0) {
                table_add(&self->table, bytes + from, (size_t)(to - from), limit, n);
            }
        }
        if (self->table.pending) flush(&self->table);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
    if (bad) {
        PyErr_Format(PyExc_ValueError, "malformed partial: %s", bad);
    } else if (self->table.nomem) {
        PyErr_NoMemory();
    } else {
        result = PyLong_FromSize_t(rows);
    }
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&counts);
    return result;
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
    PyObject *result = PyDict_New();
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
    const Table *t = &self->table;
    for (size_t place = 0; place < t->arena_len;) { /* the records, in the order first met */
        const Record *r = (const Record *)(t->arena + place);
        if (put_count(result, (const uint8_t *)(r + 1), r->len, (uint64_t)r->count) < 0) {
            return NULL;
        }
        place += record_size(r->len);
    }
    return result;
}

/* -- the partial's buffers -------------------------------------------------------------- */

/* A block of memory handed over from the table, exported read-only through the buffer
 * protocol (pyarrow and NumPy wrap it without a copy) and freed with its last reference. */
typedef struct {
    PyObject_HEAD
    void *p;
    Py_ssize_t len;
    size_t cap; /* bytes allocated (array_grow) */
} Block;

static int Block_getbuffer(Block *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->p, self->len, 1, flags);
}

static void Block_dealloc(Block *self) {
    spare_put(self->p, self->cap); /* kept for the next table's partial */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs Block_as_buffer = {(getbufferproc)Block_getbuffer, NULL};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tally.kernels._native.Block",
    .tp_doc = "Memory handed over by Counter.take(), read through the buffer protocol",
    .tp_basicsize = sizeof(Block),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Block_dealloc,
    .tp_as_buffer = &Block_as_buffer,
};

/* A Block owning the array p of cap bytes, len of them in use (released here if the Block
 * cannot be made). */
static PyObject *block(void *p, size_t len, size_t cap) {
    Block *b = PyObject_New(Block, &BlockType);
    if (!b) {
        spare_put(p, cap);
        return NULL;
    }
    b->p = p;
    b->len = (Py_ssize_t)len;
    b->cap = cap;
    return (PyObject *)b;
}

/* (data, offsets, counts): the domains' bytes, where each starts (int64, one more than
 * the domains) and each one's count (int64), in the order first met; with reset, the
 * counter is empty afterwards (its memory released), else it goes on as it was. */
static PyObject *columns(Counter *self, int reset) {
    if (check_ready(self) < 0) return NULL;
    if (self->only) {
        PyErr_SetString(PyExc_RuntimeError, "take() is for counting every domain: counts()");
        return NULL;
    }
    Table *t = &self->table;
    Columns out;
    if (table_columns(t, &out) < 0) return PyErr_NoMemory();
    size_t used = t->used, data_len = t->key_bytes;
    if (reset) {
        uint64_t seed = t->seed;
        table_free(t);
        if (table_init(t, 1 << 10, 0) < 0) t->slots = NULL; /* then refused as not initialised */
        t->seed = seed;
    }
    PyObject *d = block(out.data, data_len, out.data_cap);
    PyObject *o = block(out.offsets, (used + 1) * sizeof(int64_t), out.offsets_cap);
    PyObject *n = block(out.counts, used * sizeof(int64_t), out.counts_cap);
    PyObject *result = d && o && n ? PyTuple_Pack(3, d, o, n) : NULL;
    Py_XDECREF(d);
    Py_XDECREF(o);
    Py_XDECREF(n);
    return result;
}

static PyObject *Counter_take(Counter *self, PyObject *Py_UNUSED(ignored)) {
    return columns(self, 1);
}

static PyObject *Counter_columns(Counter *self, PyObject *Py_UNUSED(ignored)) {
    return columns(self, 0);
}

static PyMethodDef Counter_methods[] = {
    {"add", (PyCFunction)Counter_add, METH_VARARGS,
     "add(buffer, begin, end, record_limit) -> (lines, malformed): count the whole lines of "
     "buffer[begin:end]"},
    {"counts", (PyCFunction)Counter_counts, METH_NOARGS,
     "counts() -> dict: every domain counted so far and its number of lines"},
    {"merge", (PyCFunction)Counter_merge, METH_VARARGS,
     "merge(data, offsets, counts) -> rows: add a partial's counts (the buffers of an Arrow "
     "binary column, int32 offsets, and of its int64 counts)"},
    {"take", (PyCFunction)Counter_take, METH_NOARGS,
     "take() -> (data, offsets, counts): the counts as Arrow buffers (int64 offsets and "
     "counts), handed over without a copy; the counter starts again from nothing"},
    {"columns", (PyCFunction)Counter_columns, METH_NOARGS,
     "columns() -> (data, offsets, counts): as take(), the counter going on as it was"},
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

static PyObject *spare_info(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(nn)", (Py_ssize_t)spare_count, (Py_ssize_t)spare_bytes);
}

static PyObject *spare_release(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored)) {
    spare_clear();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"spare", spare_info, METH_NOARGS,
     "spare() -> (arrays, bytes): the memory kept for the next tables (_native_spare.h)"},
    {"release_spare", spare_release, METH_NOARGS, "release_spare(): release it all"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The domain rule in C (see tally.kernels.fast).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&CounterType) < 0 || PyType_Ready(&BlockType) < 0) return NULL;
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
