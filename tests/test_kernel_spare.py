"""The fast kernel's large arrays kept between partitions in one process (_native_spare.h):
one partition after another, of many or few distinct domains, each counted exactly as the
reference kernel counts it, whatever the partitions before it left in the kept memory; and
no more memory kept than the bound."""

from __future__ import annotations

import io
from unittest import mock

import numpy as np
import pytest

from tally.kernels import arrow_table, fast, reference
from test_kernel_fast import NATIVE, table_counts

needs_native = pytest.mark.skipif(NATIVE is None, reason="the C extension is not built here")

MiB = 1 << 20
KEPT_BYTES = 256 * MiB  # SPARE_BYTES
KEPT_ARRAYS = 8  # SPARE_BLOCKS
# distinct domains of the partitions, one after another: tables of 1 to 4 MiB of slots and
# arenas of up to 16 MiB that grow and shrink from one partition to the next
DISTINCT = [200_000, 3, 150_000, 300_000, 0, 1_000, 250_000, 120_000, 40_000, 310_000, 160_000]


def partition(distinct: int, salt: int) -> bytes:
    """Lines of ``distinct`` domains (1 to 40 bytes, many alike in their first bytes and
    in length), some of them on two lines; ``salt`` makes each partition's own domains."""
    rnd = np.random.default_rng(salt)
    lengths = rnd.integers(1, 41, distinct)
    names = [(b"%d.%d-" % (i % 5, i) + b"q" * 40)[: int(n)] for i, n in enumerate(lengths)]
    names = [b"%d" % salt + name for name in dict.fromkeys(names)]
    rows = names + names[::3]
    rnd.shuffle(rows)  # type: ignore[arg-type]
    return b"".join(b"%d\thttps://%s/p\n" % (i, row) for i, row in enumerate(rows))


@needs_native
@pytest.mark.parametrize("portable", [False, True])
def test_partitions_one_after_another_count_exactly(portable: bool) -> None:
    """As a worker counts its partitions: each table starts as large as the last partition
    needed, takes the arrays the last one left, and its partial matches the reference."""
    assert NATIVE is not None
    NATIVE.release_spare()
    with (
        mock.patch.object(fast, "_native", NATIVE),
        mock.patch.object(fast, "_PORTABLE", portable),
        mock.patch.object(fast, "_last_distinct", 0),
    ):
        for salt, distinct in enumerate(DISTINCT):
            data = partition(distinct, salt)
            expected = reference.count_domains(io.BytesIO(data))
            actual = fast.count_domains(io.BytesIO(data))
            assert table_counts(actual.table) == expected.counts, f"partition {salt}"
            assert actual == expected
            del actual  # its arrays are kept for the next one
            arrays, kept = NATIVE.spare()
            assert arrays <= KEPT_ARRAYS and kept <= KEPT_BYTES
            if distinct >= 150_000:
                assert kept >= 4 * MiB, "the large arrays are kept"


@needs_native
def test_the_same_seed_again_finds_nothing_left_behind() -> None:
    """A table with the seed of the last one hashes its domains to the slots the last one
    used: those are zeroed, so none of the last partition's domains is found again (the
    next partition has a few of them, and many domains of its own)."""
    assert NATIVE is not None
    NATIVE.release_spare()
    expect = 0
    for salt, distinct in enumerate(DISTINCT):
        data = partition(distinct, salt) + partition(distinct // 7, max(salt - 1, 0))
        counter = NATIVE.Counter(None, 1234, False, expect)
        counted, malformed = counter.add(data, 0, len(data), 1 << 16)
        got = table_counts(arrow_table(*counter.take()))
        expected = reference.count_domains(io.BytesIO(data))
        assert (got, counted, malformed) == (expected.counts, expected.lines, expected.malformed)
        expect = len(got)
        del counter


@needs_native
def test_kept_memory_stays_within_its_bound() -> None:
    """Many partials alive at once, then released: at most the bound is kept, and all of
    it can be released."""
    assert NATIVE is not None
    NATIVE.release_spare()
    partials = []
    for salt in range(6):
        data = partition(300_000, salt)
        counter = NATIVE.Counter(None, salt, False, 300_000)
        counter.add(data, 0, len(data), 1 << 16)
        partials.append(counter.take())
        del counter
        arrays, kept = NATIVE.spare()
        assert arrays <= KEPT_ARRAYS and kept <= KEPT_BYTES
    partials.clear()
    arrays, kept = NATIVE.spare()
    assert 0 < arrays <= KEPT_ARRAYS and 0 < kept <= KEPT_BYTES
    NATIVE.release_spare()
    assert NATIVE.spare() == (0, 0)


@needs_native
def test_the_read_buffer_of_the_last_partition_leaves_nothing_behind() -> None:
    """The next partition is read into the last one's buffer: a short partition after a
    long one (with no newline at its end, with a line over the limit, empty) sees none of
    the bytes the long one left there."""
    long = partition(50_000, 7)
    shorts = [b"1\thttps://a.b/c", b"", b"2\thttp://x/" + b"y" * 300 + b"\n3\thttps://z/\n", b"\n"]
    with mock.patch.object(fast, "_native", NATIVE):
        for data in [long, *shorts, long[:-1], *shorts]:
            expected = reference.count_domains(io.BytesIO(data), record_limit=200)
            assert fast.count_domains(io.BytesIO(data), record_limit=200) == expected
