/* Typed columns from delimited text: the group-by kernel's parser (tally.kernels.fields).
 *
 * parse(buffer, delimiter, width, columns) reads whole lines of `width` fields and returns,
 * for each wanted field, the buffers of an Arrow array: a validity bitmap and the values
 * (int64, decimal128 with at most 18 digits, date32 or float64), or int32 offsets and bytes
 * (UTF-8 text). An empty field is NULL; an empty line is no row. Lines end with LF or CRLF.
 *
 * It takes only values whose reading is beyond doubt: the plain forms of numbers and dates
 * (`-12`, `-12.5` with at most `scale` decimals and `precision` digits, `1998-09-02`,
 * `-1.5e3`) and valid UTF-8. Anything else (another spelling, a value out of range, a CR
 * that is not part of a CRLF) makes it return None, and the caller reads those bytes the
 * general way (PyArrow, then DuckDB's TRY_CAST): this parser never decides a case the general
 * path could decide otherwise. A line with the wrong number of fields is skipped and counted, as PyArrow's
 * invalid-row handler does.
 *
 * One pass: each 64-byte block gives the masks of delimiters and newlines (SSE2 where there
 * is), and the loop walks their set bits, parsing only the wanted fields. The GIL is released
 * while it runs. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define HAVE_SSE2 1
#else
#define HAVE_SSE2 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define CTZ64(x) ((unsigned)__builtin_ctzll(x))
#else
#define UNLIKELY(x) (x)
static unsigned CTZ64(uint64_t x) { unsigned n = 0; while (!(x & 1)) { x >>= 1; n++; } return n; }
#endif

/* Set bits of x (no POPCNT instruction is assumed). */
static inline int popcount64(uint64_t x) {
    x -= (x >> 1) & UINT64_C(0x5555555555555555);
    x = (x & UINT64_C(0x3333333333333333)) + ((x >> 2) & UINT64_C(0x3333333333333333));
    x = (x + (x >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return (int)((x * UINT64_C(0x0101010101010101)) >> 56);
}

#define FIELDS_ABI 1 /* bumped whenever the Python side must change with this file */
#ifndef FIELDS_SOURCE
#define FIELDS_SOURCE "unknown" /* setup.py passes the start of the source's SHA-256 */
#endif

enum { K_TEXT = 0, K_INT = 1, K_DECIMAL = 2, K_DATE = 3, K_DOUBLE = 4 };
static const int VALUE_BYTES[] = {4, 8, 16, 4, 8}; /* text: an int32 offset per row */

#include "_fields_values.h"

/* -- columns ------------------------------------------------------------------------------ */

typedef struct {
    int field, kind, precision, scale;
    PyObject *valid, *values, *text; /* bytes; text only for K_TEXT */
    uint8_t *bits, *v, *t;
    size_t used; /* text bytes so far */
} Column;

/* Field bytes [p, p + n) as row `row` of column c: 0, or -1 when not beyond doubt. */
static inline int put(Column *c, size_t row, const uint8_t *p, size_t n) {
    if (c->kind == K_TEXT) {
        if (n) {
            if (!is_ascii(p, n) && !is_utf8(p, n)) return -1;
            memcpy(c->t + c->used, p, n);
            c->used += n;
            c->bits[row >> 3] |= (uint8_t)(1u << (row & 7));
        }
        int32_t end = (int32_t)c->used;
        memcpy(c->v + 4 * (row + 1), &end, 4);
        return 0;
    }
    if (n == 0) {
        memset(c->v + (size_t)VALUE_BYTES[c->kind] * row, 0, (size_t)VALUE_BYTES[c->kind]);
        return 0;
    }
    int64_t i64;
    int32_t i32;
    double f64;
    switch (c->kind) {
    case K_INT:
        if (read_int(p, n, &i64)) return -1;
        memcpy(c->v + 8 * row, &i64, 8);
        break;
    case K_DECIMAL: {
        if (read_decimal(p, n, c->precision, c->scale, &i64)) return -1;
        int64_t high = i64 < 0 ? -1 : 0; /* little-endian 128-bit two's complement */
        memcpy(c->v + 16 * row, &i64, 8);
        memcpy(c->v + 16 * row + 8, &high, 8);
        break;
    }
    case K_DATE:
        if (read_date(p, n, &i32)) return -1;
        memcpy(c->v + 4 * row, &i32, 4);
        break;
    default:
        if (read_double(p, n, &f64)) return -1;
        memcpy(c->v + 8 * row, &f64, 8);
    }
    c->bits[row >> 3] |= (uint8_t)(1u << (row & 7));
    return 0;
}

/* Forget row `row` of every column (its line had the wrong number of fields). */
static void unput(Column *cols, int ncols, size_t row) {
    for (int k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        c->bits[row >> 3] &= (uint8_t)~(1u << (row & 7));
        if (c->kind == K_TEXT) {
            int32_t start;
            memcpy(&start, c->v + 4 * row, 4);
            c->used = (size_t)start;
        }
    }
}

/* -- the scan ----------------------------------------------------------------------------- */

/* The delimiter, '\n' and '\r' masks of the 64 bytes at p. */
static inline void masks(const uint8_t *p, uint8_t delim, uint64_t *md, uint64_t *mn,
                         uint64_t *mr) {
    uint64_t d = 0, n = 0, r = 0;
#if HAVE_SSE2
    const __m128i vd = _mm_set1_epi8((char)delim), vn = _mm_set1_epi8('\n'),
                  vr = _mm_set1_epi8('\r');
    for (int k = 0; k < 4; k++) {
        __m128i x = _mm_loadu_si128((const __m128i *)(p + 16 * k));
        d |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, vd)) << (16 * k);
        n |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, vn)) << (16 * k);
        r |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, vr)) << (16 * k);
    }
#else
    for (int k = 0; k < 64; k++) {
        d |= (uint64_t)(p[k] == delim) << k;
        n |= (uint64_t)(p[k] == '\n') << k;
        r |= (uint64_t)(p[k] == '\r') << k;
    }
#endif
    *md = d;
    *mn = n;
    *mr = r;
}

typedef struct {
    const uint8_t *buf;
    const int *slot; /* slot[f]: the column of field f, or -1 */
    Column *cols;
    int ncols, width, last; /* last: the last wanted field */
    size_t row, invalid, line, start; /* rows kept, lines skipped; where the line and field start */
    int field, bad;
} Scan;

/* The field ending at `end` (a delimiter): -1 when its value is not beyond doubt. */
static inline int end_field(Scan *s, size_t end) {
    if (!s->bad && s->field < s->width - 1) {
        int k = s->slot[s->field];
        if (k >= 0 && put(&s->cols[k], s->row, s->buf + s->start, end - s->start)) return -1;
    } else {
        s->bad = 1; /* too many fields */
    }
    s->field++;
    s->start = end + 1;
    return 0;
}

/* The line ending at `end` (a newline, or the end of the buffer). */
static inline int end_line(Scan *s, size_t end) {
    size_t next = end + 1;
    if (end > s->line && s->buf[end - 1] == '\r') end--; /* CRLF: the CR ends no field */
    if (end == s->line) { /* an empty line */
        s->line = s->start = next;
        return 0;
    }
    int k = s->field < s->width ? s->slot[s->field] : -1;
    if (s->bad || s->field != s->width - 1) {
        unput(s->cols, s->ncols, s->row);
        s->invalid++;
    } else if (k >= 0 && put(&s->cols[k], s->row, s->buf + s->start, end - s->start)) {
        return -1;
    } else {
        s->row++;
    }
    s->field = s->bad = 0;
    s->line = s->start = next;
    return 0;
}

/* Every line of s->buf[0, n) into the columns; -1 when a value is not beyond doubt. */
static int scan(Scan *s, size_t n, uint8_t delim) {
    uint8_t tail[64];
    uint64_t cr = 0; /* the last block ended with a CR */
    for (size_t base = 0; base < n; base += 64) {
        uint64_t md, mn, mr;
        if (n - base >= 64) {
            masks(s->buf + base, delim, &md, &mn, &mr);
        } else {
            size_t len = n - base;
            memset(tail, delim == 'x' ? 'y' : 'x', sizeof tail);
            memcpy(tail, s->buf + base, len);
            masks(tail, delim, &md, &mn, &mr);
            uint64_t inside = (UINT64_C(1) << len) - 1;
            md &= inside;
            mn &= inside;
            mr &= inside;
        }
        if (UNLIKELY(mr | cr)) { /* a CR must end a line with the LF right after it */
            if ((cr && !(mn & 1)) || (mr & ~(mn >> 1) & ~(UINT64_C(1) << 63))) return -1;
            cr = mr >> 63;
        }
        for (uint64_t m = md | mn; m; m &= m - 1) {
            if (s->field > s->last) { /* no wanted field left in the line: count to its end */
                uint64_t nl = m & mn;
                uint64_t before = nl ? (nl & (0 - nl)) - 1 : ~UINT64_C(0);
                s->field += popcount64(m & before);
                m &= ~before;
                if (!m) break;
            }
            unsigned i = CTZ64(m);
            if ((mn >> i) & 1 ? end_line(s, base + i) : end_field(s, base + i)) return -1;
        }
    }
    if (cr || (n && s->buf[n - 1] == '\r')) return -1; /* a CR without its LF */
    return s->line < n ? end_line(s, n) : 0;            /* the last line has no newline */
}

/* -- the Python function ------------------------------------------------------------------ */

static void drop_columns(Column *cols, int ncols) {
    for (int k = 0; k < ncols; k++) {
        Py_CLEAR(cols[k].valid);
        Py_CLEAR(cols[k].values);
        Py_CLEAR(cols[k].text);
    }
}

/* Room for `rows` rows (and `text` bytes of text) in every column; -1 with an exception. */
static int make_columns(Column *cols, int ncols, size_t rows, size_t text) {
    for (int k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        size_t nbits = (rows + 7) / 8;
        size_t nvalues = (size_t)VALUE_BYTES[c->kind] * (rows + (c->kind == K_TEXT));
        c->valid = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)nbits);
        c->values = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)nvalues);
        if (c->kind == K_TEXT) c->text = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)text);
        if (!c->valid || !c->values || (c->kind == K_TEXT && !c->text)) return -1;
        c->bits = (uint8_t *)PyBytes_AS_STRING(c->valid);
        c->v = (uint8_t *)PyBytes_AS_STRING(c->values);
        c->t = c->text ? (uint8_t *)PyBytes_AS_STRING(c->text) : NULL;
        c->used = 0;
        memset(c->bits, 0, nbits);
        if (c->kind == K_TEXT) memset(c->v, 0, 4);
    }
    return 0;
}

static Py_ssize_t count_valid(const uint8_t *bits, size_t rows) {
    Py_ssize_t n = 0;
    size_t i = 0;
    for (; i + 8 <= rows / 8; i += 8) {
        uint64_t w;
        memcpy(&w, bits + i, 8);
        n += popcount64(w);
    }
    for (; i < rows / 8; i++) n += popcount64(bits[i]);
    if (rows % 8) n += popcount64(bits[rows / 8] & ((1u << (rows % 8)) - 1));
    return n;
}

/* A column's result: (validity or None, null count, values or offsets, text or None). */
static PyObject *column_result(Column *c, size_t rows) {
    size_t nvalues = (size_t)VALUE_BYTES[c->kind] * (rows + (c->kind == K_TEXT));
    Py_ssize_t nulls = (Py_ssize_t)rows - count_valid(c->bits, rows);
    if (_PyBytes_Resize(&c->values, (Py_ssize_t)nvalues) < 0) return NULL;
    if (c->text && _PyBytes_Resize(&c->text, (Py_ssize_t)c->used) < 0) return NULL;
    if (nulls == 0) {
        Py_CLEAR(c->valid);
    } else if (_PyBytes_Resize(&c->valid, (Py_ssize_t)((rows + 7) / 8)) < 0) {
        return NULL;
    }
    PyObject *valid = c->valid ? c->valid : Py_None, *text = c->text ? c->text : Py_None;
    return Py_BuildValue("(OnOO)", valid, nulls, c->values, text);
}

#define MAX_WIDTH 4096

static PyObject *fields_parse(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer view;
    int delim, width;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "y*iiO!", &view, &delim, &width, &PyTuple_Type, &spec))
        return NULL;
    PyObject *result = NULL;
    Column cols[64] = {{0}};
    int slot[MAX_WIDTH];
    Py_ssize_t ncols = PyTuple_GET_SIZE(spec);
    if (width < 1 || width > MAX_WIDTH || ncols > 64 || delim < 0 || delim > 255 ||
        delim == '\n' || delim == '\r' || view.len >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "parse: bad width, delimiter, columns or size");
        goto done;
    }
    for (int f = 0; f < width; f++) slot[f] = -1;
    for (Py_ssize_t k = 0; k < ncols; k++) {
        Column *c = &cols[k];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(spec, k), "iiii", &c->field, &c->kind,
                              &c->precision, &c->scale))
            goto done;
        if (c->field < 0 || c->field >= width || slot[c->field] >= 0 || c->kind < K_TEXT ||
            c->kind > K_DOUBLE || c->precision < 0 || c->precision > 18 || c->scale < 0 ||
            c->scale > c->precision) {
            PyErr_SetString(PyExc_ValueError, "parse: bad column");
            goto done;
        }
        slot[c->field] = (int)k;
    }
    const uint8_t *buf = view.buf;
    /* a row is at least its width - 1 delimiters and a newline: room enough, no counting */
    size_t n = (size_t)view.len, rows = n / (size_t)width + 2;
    if (make_columns(cols, (int)ncols, rows, n) < 0) goto done;
    int last = -1;
    for (Py_ssize_t k = 0; k < ncols; k++) last = cols[k].field > last ? cols[k].field : last;
    Scan s = {buf, slot, cols, (int)ncols, width, last, 0, 0, 0, 0, 0, 0};
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = scan(&s, n, (uint8_t)delim);
    Py_END_ALLOW_THREADS
    if (failed) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *columns = PyList_New(ncols);
    if (!columns) goto done;
    for (Py_ssize_t k = 0; k < ncols; k++) {
        PyObject *one = column_result(&cols[k], s.row);
        if (!one) {
            Py_DECREF(columns);
            goto done;
        }
        PyList_SET_ITEM(columns, k, one);
    }
    result = Py_BuildValue("(nnN)", (Py_ssize_t)s.row, (Py_ssize_t)s.invalid, columns);
done:
    drop_columns(cols, (int)(ncols > 64 ? 0 : ncols));
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef module_methods[] = {
    {"parse", fields_parse, METH_VARARGS,
     "parse(buffer, delimiter, width, columns) -> (rows, invalid, [(valid, nulls, values, "
     "text)]) or None: see _fields.c"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fields", "Typed columns from delimited text (tally.kernels.fields).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fields(void) {
#if HAVE_STRTOD_L
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (!c_locale) return PyErr_NoMemory();
#endif
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "ABI", FIELDS_ABI) < 0 ||
        PyModule_AddIntConstant(m, "DECIMAL_DIGITS", 18) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE", FIELDS_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
