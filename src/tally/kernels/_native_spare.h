/* Large arrays kept between tables, within one process (see _native_table.h).
 *
 * A worker counts one partition after another, each in a table of about the same size: its
 * slots, its arena of records and the three arrays of its partial are tens of MiB. Fresh
 * memory of that size is faulted in and zeroed by the system page by page, which took as
 * long as the counting itself on partitions of a million distinct domains. So an array of
 * MAPPED bytes or more is not released when its table (or its partial's Block) is done with
 * it, but kept here, and the next table takes it: already faulted in, in huge pages where
 * the system gave them. At most SPARE_BLOCKS arrays and SPARE_BYTES bytes are kept; beyond
 * that the oldest are released.
 *
 * A kept array holds what was written to it: whoever takes one writes every byte it reads
 * (the arena and the partial's arrays) or zeroes what it uses (the slots: slots_alloc).
 *
 * Only called with the GIL held (a Counter made, taken or released, a Block released),
 * never from inside add(), which grows its table without the GIL; so no lock. */

#ifndef TALLY_NATIVE_SPARE_H
#define TALLY_NATIVE_SPARE_H

#include "_native_common.h"

#define SPARE_BLOCKS 8
#define SPARE_BYTES ((size_t)256 << 20)

typedef struct {
    void *p;
    size_t cap;
} Spare;

static Spare spare[SPARE_BLOCKS]; /* the oldest first */
static size_t spare_count, spare_bytes;

/* Release the oldest kept array. */
static void spare_drop_oldest(void) {
    array_free(spare[0].p, spare[0].cap);
    spare_bytes -= spare[0].cap;
    spare_count--;
    memmove(spare, spare + 1, spare_count * sizeof(Spare));
}

/* A kept array of at least want bytes and at most four times as many (the smallest such),
 * its size in *cap; NULL when none is kept (then allocate one). Its content is undefined. */
static void *spare_take(size_t want, size_t *cap) {
    size_t best = SPARE_BLOCKS;
    if (want < MAPPED) return NULL;
    for (size_t i = 0; i < spare_count; i++) {
        size_t c = spare[i].cap;
        if (c >= want && c / 4 <= want && (best == SPARE_BLOCKS || c < spare[best].cap))
            best = i;
    }
    if (best == SPARE_BLOCKS) return NULL;
    void *p = spare[best].p;
    *cap = spare[best].cap;
    spare_bytes -= spare[best].cap;
    spare_count--;
    memmove(spare + best, spare + best + 1, (spare_count - best) * sizeof(Spare));
    return p;
}

/* Done with the array p of cap bytes from array_grow: keep it if large, else release it. */
static void spare_put(void *p, size_t cap) {
    if (!p) return;
    if (cap < MAPPED || cap > SPARE_BYTES) {
        array_free(p, cap);
        return;
    }
    while (spare_count == SPARE_BLOCKS || spare_bytes + cap > SPARE_BYTES) spare_drop_oldest();
    spare[spare_count].p = p;
    spare[spare_count].cap = cap;
    spare_count++;
    spare_bytes += cap;
}

/* Release every kept array. */
static void spare_clear(void) {
    while (spare_count) spare_drop_oldest();
}

/* An array of at least n bytes with array_grow's contract, kept or new; its size in *cap. */
static void *spare_or_new(size_t n, size_t *cap) {
    void *p = spare_take(n, cap);
    if (p) return p;
    *cap = n;
    return array_grow(NULL, 0, n);
}

#endif
