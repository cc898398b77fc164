"""The fast kernel against the reference kernel: same result on every input, bounded memory.

Every test runs on each implementation of the fast kernel: ``native`` (the C extension),
``portable`` (the same without SSE2, as on other CPUs) and ``numpy`` (the fallback when the
extension was not built)."""

from __future__ import annotations

import contextlib
import importlib
import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SAMPLE
from tally.kernels import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_RECORD_LIMIT,
    DomainCounts,
    columnar,
    fast,
    reference,
)

MiB = 1 << 20
IMPLEMENTATIONS = ["native", "portable", "numpy"]


def built_extension() -> ModuleType | None:
    """The C extension as the installed package has it (whatever TALLY_NATIVE says)."""
    try:
        module = importlib.import_module("tally.kernels._native")
    except ImportError:
        return None
    return module if getattr(module, "ABI", None) == fast._ABI else None


NATIVE = built_extension()


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
    """Run the fast kernel as ``name`` (skipped where the extension was not built)."""
    if name != "numpy" and NATIVE is None:
        pytest.skip("the C extension is not built here")
    with (
        mock.patch.object(fast, "_native", None if name == "numpy" else NATIVE),
        mock.patch.object(fast, "_PORTABLE", name == "portable"),
    ):
        yield


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    with implementation(request.param):
        yield request.param


class Trickle:
    """A stream with only ``read`` (no ``readinto``), returning at most ``step`` bytes a call."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1) -> bytes:
        return self._data.read(self._step if size < 0 else min(size, self._step))


def run_both(data: bytes, **kwargs: object) -> tuple[DomainCounts, DomainCounts]:
    expected = reference.count_domains(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]
    actual = fast.count_domains(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]
    return actual, expected


# -- strategies: lines built from the edge cases of the domain rule ---------------------------

DOMAIN_BYTES = st.sampled_from(
    [b"a", b"Z", b".", b"-", b"7", b":", b"%2F", b"\xff", b"\x00", b"\r", b" ", b'"', "я".encode()]
)
domains = st.one_of(
    st.sampled_from(
        [
            b"go.mail",
            b"smeshariki.ru",
            b"Go.Mail",
            b"state=19945206",
            b"video.yandex.ru",  # 15 bytes: the longest key
            b"video.yandex.ruu",  # 16 bytes
            "новострашная".encode(),
            b"\xd0\xbd\xd0",  # invalid UTF-8
            b"a.b:8080",
            b"x" * 40,
        ]
    ),
    st.lists(DOMAIN_BYTES, min_size=1, max_size=30).map(b"".join),
)
paths = st.sampled_from([b"", b"/", b"/x/y", b"//", b"/a://b", b"?q=1", b"/\xff"])
schemes = st.sampled_from([b"http://", b"https://", b"HTTP://", b"ftp://", b"://", b"a://b:/"])
urls = st.one_of(
    st.builds(lambda s, d, p: s + d + p, schemes, domains, paths),
    st.builds(lambda d, p: d + p, domains, paths),  # no "://": the whole URL is the domain
    st.sampled_from(
        [
            b"",
            b"http://",
            b"http:///x",
            b"https:///",
            b"http:%2F%2Fwwww.ukr",
            b"a://b://c/d",
            b"://",
        ]
    ),
)
columns = st.lists(st.sampled_from([b"", b"x", b"http://other.ru/", b"\r"]), max_size=2)
structured_lines = st.builds(
    lambda ident, url, extra: b"\t".join([ident, url, *extra]),
    st.sampled_from([b"", b"1", b"8316296479790176104", b"\xff"]),
    urls,
    columns,
)
TOKENS = [b"\t", b"\r", b":", b"/", b"://", b"http://", b"https://", b"a", b".", b"\xff", b"\x00"]
noise_lines = st.lists(st.sampled_from(TOKENS), max_size=12).map(b"".join)
lines = st.one_of(
    structured_lines, structured_lines, noise_lines, st.sampled_from([b"", b"\r", b"no-tab"])
)
endings = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r\r\n"])


@st.composite
def partitions(draw: st.DrawFn) -> bytes:
    body = b"".join(line + draw(endings) for line in draw(st.lists(lines, max_size=30)))
    if body and draw(st.booleans()):
        body = body.rstrip(b"\n")  # a last line without a newline
    return body


@st.composite
def queries(draw: st.DrawFn, data: bytes) -> bytes | None:
    """No filter, a domain of the partition, a prefix or extension of one, or any domain."""
    seen = list(reference.count_domains(io.BytesIO(data)).counts)
    choices = [st.none(), domains]
    if seen:
        one = st.sampled_from(seen)
        prefix = st.builds(lambda d, n: d[: max(1, len(d) - n)], one, st.integers(1, 9))
        longer = st.builds(bytes.__add__, one, st.sampled_from([b".", b"\x00"]))
        choices += [one, one, prefix, longer]
    return draw(st.one_of(choices))


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- properties ---------------------------------------------------------------------------


@FUZZ
@given(
    data=st.data(),
    partition=partitions(),
    chunk_size=st.integers(1, 64),
    record_limit=st.one_of(st.integers(0, 60), st.just(DEFAULT_RECORD_LIMIT)),
    scan_share=st.sampled_from([0, columnar._SCAN_SHARE, 1 << 40]),
    dense_share=st.sampled_from([0, columnar._DENSE_SHARE, 1 << 40]),
    merge_at=st.sampled_from([1, columnar._MERGE_AT]),
    first_read=st.sampled_from([1, 3, fast._FIRST_READ]),
    name=st.sampled_from(IMPLEMENTATIONS),
)
def test_matches_reference(
    data: st.DataObject,
    name: str,
    partition: bytes,
    chunk_size: int,
    record_limit: int,
    scan_share: int,
    dense_share: int,
    merge_at: int,
    first_read: int,
) -> None:
    """Every query form, on every implementation, with every way of working of the NumPy
    one: ``scan_share`` picks how "://" is searched for (in the words of the URLs or by
    scanning the chunk), ``dense_share`` how the tabs and newlines are found, ``merge_at``
    how often the distinct domains of the chunks are merged; ``first_read`` makes the reads
    grow."""
    only = data.draw(queries(partition))
    if name != "numpy" and NATIVE is None:
        return
    with (
        implementation(name),
        mock.patch.object(columnar, "_SCAN_SHARE", scan_share),
        mock.patch.object(columnar, "_DENSE_SHARE", dense_share),
        mock.patch.object(columnar, "_MERGE_AT", merge_at),
        mock.patch.object(fast, "_FIRST_READ", first_read),
    ):
        actual, expected = run_both(
            partition, only=only, record_limit=record_limit, chunk_size=chunk_size
        )
    assert actual == expected


@FUZZ
@given(
    marks=st.one_of(
        st.lists(st.booleans(), max_size=300),
        st.lists(st.integers(0, 999), max_size=40).map(
            lambda ends: [i in ends for i in range(1000)]
        ),
    )
)
def test_positions_of_marks(marks: list[bool]) -> None:
    """Set bits are read from packed words, several in a word or none, in any mask length."""
    mask = np.array(marks, dtype=bool)
    for dense_share in (0, columnar._DENSE_SHARE):
        with mock.patch.object(columnar, "_DENSE_SHARE", dense_share):
            assert columnar._nonzero(mask).tolist() == np.flatnonzero(mask).tolist()


@FUZZ
@given(
    partition=partitions(),
    chunk_size=st.integers(1, 64),
    step=st.integers(1, 17),
    name=st.sampled_from(IMPLEMENTATIONS),
)
def test_chunk_boundaries_and_short_reads_do_not_matter(
    partition: bytes, chunk_size: int, step: int, name: str
) -> None:
    if name != "numpy" and NATIVE is None:
        return
    with implementation(name):
        check_chunk_boundaries(partition, chunk_size, step)


def check_chunk_boundaries(partition: bytes, chunk_size: int, step: int) -> None:
    whole = fast.count_domains(io.BytesIO(partition))
    assert fast.count_domains(Trickle(partition, step), chunk_size=chunk_size) == whole  # type: ignore[arg-type]
    assert whole == reference.count_domains(io.BytesIO(partition))


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.tuples(domains, paths, endings), min_size=1, max_size=400),
    chunk_size=st.sampled_from([1 << 10, 1 << 16]),
    name=st.sampled_from(IMPLEMENTATIONS),
)
def test_many_well_formed_lines(
    rows: list[tuple[bytes, bytes, bytes]], chunk_size: int, name: str
) -> None:
    """Larger pieces, where most lines take the vectorised common path."""
    if name != "numpy" and NATIVE is None:
        return
    with implementation(name):
        check_many_well_formed_lines(rows, chunk_size)


def check_many_well_formed_lines(rows: list[tuple[bytes, bytes, bytes]], chunk_size: int) -> None:
    partition = b"".join(b"%d\thttp://%s%s%s" % (i, d, p, e) for i, (d, p, e) in enumerate(rows))
    actual, expected = run_both(partition, chunk_size=chunk_size)
    assert actual == expected
    assert sum(actual.counts.values()) + actual.malformed == actual.lines == len(rows)


# -- examples -----------------------------------------------------------------------------


def test_sample_partition(impl: str) -> None:
    data = SAMPLE.read_bytes()
    for chunk_size in (7, 4096, DEFAULT_CHUNK_SIZE):
        actual, expected = run_both(data, chunk_size=chunk_size)
        assert actual == expected
    assert actual.lines == 200
    assert actual.counts[b"go.mail"] == 28
    assert actual.bytes_read == len(data)
    only, expected = run_both(data, only=b"http:%2F%2Fwwww.ukr")
    assert only == expected
    assert only.counts == {b"http:%2F%2Fwwww.ukr": 4}
    assert only.lines == 200


def test_large_partition(impl: str) -> None:
    """Megabytes of sample lines with edge cases sprinkled in: reads of growing size, several
    chunks, the vectorised paths."""
    rows = SAMPLE.read_bytes().splitlines(keepends=True) * 150
    odd = [b"\r\n", b"x\n", b"1\thttp:///\n", b"2\thttp://\xff\xfe.ru/\r\n", b"3\t\n"]
    for i in range(0, len(rows), 997):
        rows[i] = odd[i % len(odd)]
    data = b"".join(rows)
    for chunk_size in (1 << 20, DEFAULT_CHUNK_SIZE):
        for only in (None, b"go.mail", b"http:%2F%2Fwwww.ukr"):
            actual, expected = run_both(data, only=only, chunk_size=chunk_size)
            assert actual == expected


def test_domain_rule_examples(impl: str) -> None:
    data = (
        b"1\thttp://go.mail/a\r\n"  # \r\n
        b"\n"  # blank
        b"\r\n"  # blank after dropping the \r
        b"2\thttps://Go.Mail\n"  # no path, case kept
        b"3\thttp:%2F%2Fwwww.ukr\n"  # no "://": the whole URL
        b"4\thttp:///x\n"  # empty domain: malformed
        b"5\t\n"  # empty URL: malformed
        b"just-one-column\n"  # malformed
        b"6\thttp://\xd0\xbd\xff.ru/x\tignored\textra\n"  # raw bytes, extra columns
        b"7\ta://b://c/d\r\r\n"  # first "://" only; one \r dropped, one kept
        b"8\thttp://go.mail"  # last line without a newline
    )
    result = fast.count_domains(io.BytesIO(data))
    assert result.counts == {
        b"go.mail": 2,
        b"Go.Mail": 1,
        b"http:%2F%2Fwwww.ukr": 1,
        b"\xd0\xbd\xff.ru": 1,
        b"b:": 1,
    }
    assert (result.lines, result.malformed, result.bytes_read) == (9, 3, len(data))
    assert result == reference.count_domains(io.BytesIO(data))
    assert fast.count_domains(io.BytesIO(data), only=b"go.mail").counts == {b"go.mail": 2}
    assert fast.count_domains(io.BytesIO(data), only=b"nothing").counts == {}


def test_only_long_domains(impl: str) -> None:
    """Domains over 15 bytes take another path: exact match, not prefix or same length."""
    long = b"a-rather-long-domain.example.org"
    data = b"".join(
        b"%d\thttp://%s/\n" % (i, d)
        for i, d in enumerate([long, long + b"x", long[:-1], long[:-1] + b"h", long, b"go.mail"])
    )
    for only in (long, long[:-1], long + b"x", long[:20]):
        actual, expected = run_both(data, only=only)
        assert actual == expected
        assert (actual.lines, actual.malformed) == (6, 0)
    assert fast.count_domains(io.BytesIO(data), only=long).counts == {long: 2}
    assert fast.count_domains(io.BytesIO(data), only=long[:20]).counts == {}


def test_long_urls(impl: str) -> None:
    """Domains and URLs of every length up to hundreds of bytes: the "://" and '/' searches
    go on word after word, up to the end of the buffer (the last line has no newline)."""
    rows = []
    for n in range(0, 300, 7):
        name = bytes(97 + i % 26 for i in range(n))
        rows += [
            b"http://" + name,
            b"https://" + name + b"/x",
            b"ftp:" + name + b"://" + name[:5] + b"/",
            name + b":/" + name + b"a://b",
            b"http:%2F%2F" + name,
        ]
    lines = [b"%d\t%s" % (i, url) for i, url in enumerate(rows)]
    for tail in (b"", b"\n"):
        data = b"\n".join(lines) + tail
        for scan_share in (0, 1 << 40):
            with mock.patch.object(columnar, "_SCAN_SHARE", scan_share):
                for chunk_size in (64, 1000, DEFAULT_CHUNK_SIZE):
                    actual, expected = run_both(data, chunk_size=chunk_size)
                    assert actual == expected


def test_record_limit(impl: str) -> None:
    data = b"1\thttp://a.ru/\n" + b"2\thttp://b.ru/" + b"x" * 100 + b"\n3\thttp://c.ru\r\n"
    for chunk_size in (1, 16, 1 << 20):
        result = fast.count_domains(io.BytesIO(data), record_limit=14, chunk_size=chunk_size)
        assert result.counts == {b"a.ru": 1, b"c.ru": 1}  # "3\thttp://c.ru\r" is 14 bytes
        assert (result.lines, result.malformed) == (3, 1)


def test_empty_stream(impl: str) -> None:
    assert fast.count_domains(io.BytesIO(b"")) == DomainCounts()


def test_invalid_sizes(impl: str) -> None:
    with pytest.raises(ValueError):
        fast.count_domains(io.BytesIO(b""), chunk_size=0)


# -- memory -------------------------------------------------------------------------------


@pytest.mark.parametrize("final_newline", [True, False])
def test_huge_line_is_skipped_in_bounded_memory(
    tmp_path: Path, final_newline: bool, impl: str
) -> None:
    path = tmp_path / "part.tsv"
    with path.open("wb") as out:
        out.write(b"1\thttp://a.ru/\n2\thttp://huge.ru/")
        block = b"x" * MiB
        for _ in range(50):
            out.write(block)
        out.write(b"\n3\thttp://b.ru\n" if final_newline else b"")
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            result = fast.count_domains(stream, record_limit=MiB, chunk_size=MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.malformed == 1
    assert result.lines == (3 if final_newline else 2)
    assert result.counts == ({b"a.ru": 1, b"b.ru": 1} if final_newline else {b"a.ru": 1})
    assert result.bytes_read == path.stat().st_size
    assert peak < 2 * MiB + 3 * MiB, f"peak {peak / MiB:.1f} MiB"


# -- many distinct domains: the partial as Arrow buffers ---------------------------------------


def table_counts(table: pa.Table | None) -> dict[bytes, int]:
    """A partial's table as a dict (checking that no domain has two rows)."""
    if table is None:
        return {}
    keys, counts = table["key"].to_pylist(), table["n"].to_pylist()
    assert len(set(keys)) == len(keys)
    return dict(zip(keys, counts, strict=True))


DOMAIN_ALPHABET = b"abcxyz.-:/%\xff\x00\r \xd0\xbd"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1 << 32),
    distinct=st.sampled_from([1, 300, 20_000, 90_000]),
    repeats=st.integers(1, 3),
    name=st.sampled_from(IMPLEMENTATIONS),
)
def test_many_distinct_random_domains(seed: int, distinct: int, repeats: int, name: str) -> None:
    """Up to 90,000 distinct domains of random bytes (1 to 40 of them, many sharing their
    first bytes), each on up to three lines in random order with random schemes and paths:
    the table grows past the caches and its lookups go through the prefetching steps. The
    partial's table and its counts agree with the reference kernel, on every kernel."""
    if name != "numpy" and NATIVE is None:
        return
    rnd = np.random.default_rng(seed)
    alphabet = np.frombuffer(DOMAIN_ALPHABET, np.uint8)
    names = {
        b"%d" % (i % 7) + alphabet[rnd.integers(0, len(alphabet), rnd.integers(0, 40))].tobytes()
        for i in range(distinct)
    }
    rows = [name for name in names for _ in range(int(rnd.integers(1, repeats + 1)))]
    rnd.shuffle(rows)  # type: ignore[arg-type]
    schemes = [b"http://", b"HTTPS://", b"", b"a://"]
    data = b"".join(b"%d\t%s%s/p%d\n" % (i, schemes[i % 4], row, i) for i, row in enumerate(rows))
    expected = reference.count_domains(io.BytesIO(data))
    with implementation(name):
        actual = fast.count_domains(io.BytesIO(data))
    table = actual.table
    got = table_counts(table)
    assert got == expected.counts
    assert table is None or table.num_rows == len(expected.counts)  # each domain once
    assert actual == expected
