"""Domain-count partials: exact merges in any order and compaction, checks of what a worker
sends, and the output formats."""

from __future__ import annotations

import csv
import io
from collections import Counter
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.errors import ProtocolError
from tally.kernels import DomainCounts
from tally.protocol import QuerySpec
from tally.queries import format_result, from_ipc, kind_of, to_ipc
from tally.queries.domains import SCHEMA, DomainMerger, to_table

KEYS = st.binary(min_size=1, max_size=6) | st.sampled_from([b"go.mail", "яндекс".encode(), b"\xff"])
PARTIALS = st.lists(st.dictionaries(KEYS, st.integers(1, 1000), max_size=20), max_size=12)


def merged(
    query: QuerySpec, partials: list[dict[bytes, int]], compact_rows: int, native: bool = True
) -> DomainMerger:
    """Merged through the C table (``native``, where it is built) or by Arrow group-bys."""
    if native:
        merger = DomainMerger(query, compact_rows=compact_rows)
    else:
        with mock.patch("tally.kernels.fast.load_native", lambda: None):
            merger = DomainMerger(query, compact_rows=compact_rows)
    for i, counts in enumerate(partials):
        table = from_ipc(to_ipc(to_table(DomainCounts(dict(counts)))))  # through the wire form
        merger.add(table, i + sum(counts.values()), i)
    return merger


@settings(max_examples=200, deadline=None)
@given(PARTIALS, st.integers(0, 40), st.integers(1, 30), st.booleans())
def test_merge_equals_the_sum_in_the_documented_order(
    partials: list[dict[bytes, int]], compact_rows: int, k: int, native: bool
) -> None:
    total: Counter[bytes] = Counter()
    for counts in partials:
        total.update(counts)
    expected = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    result = merged(QuerySpec("all"), partials, compact_rows, native).finalize()
    assert result.rows == expected
    assert result.malformed == sum(range(len(partials)))
    top = merged(QuerySpec("top", k=k), list(reversed(partials)), compact_rows, native)
    top = top.finalize()
    assert top.rows == expected[:k]


def test_domain_query_and_formats() -> None:
    partials = [{b"go.mail": 2}, {}, {b"go.mail": 3}]
    result = merged(QuerySpec("domain", domain=b"go.mail"), partials, 1).finalize()
    assert format_result(result, "text") == "5\n"
    assert format_result(result, "csv") == "domain,count\r\ngo.mail,5\r\n"
    missing = merged(QuerySpec("domain", domain=b"x"), [{}, {}], 1).finalize()
    assert format_result(missing, "text") == "0\n"
    rows = merged(QuerySpec("all"), [{b"\xff.ru": 1, "яндекс".encode(): 2}], 1).finalize()
    assert format_result(rows, "text") == "яндекс 2\n\\xff.ru 1\n"
    spaced = merged(QuerySpec("all"), [{b"a b": 2, b'q"': 1}], 1).finalize()
    assert format_result(spaced, "tsv") == 'domain\tcount\r\na b\t2\r\n"q"""\t1\r\n'


def table(keys: list[bytes], counts: list[int]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(keys, pa.binary()), pa.array(counts, pa.int64())],
                                schema=SCHEMA)  # fmt: skip


ALL = QuerySpec("all")


def test_csv_and_tsv_quote_as_rfc_4180_says() -> None:
    counts = {b'say "hi".ru': 3, b"a,b": 2, "яндекс".encode(): 2, b"c\rd": 1, b"\xff.ru": 1}
    result = merged(QuerySpec("all"), [counts], 1).finalize()
    assert format_result(result, "csv") == (
        'domain,count\r\n"say ""hi"".ru",3\r\n"a,b",2\r\nяндекс,2\r\n"c\rd",1\r\n\\xff.ru,1\r\n'
    )
    expected = [["domain", "count"], ['say "hi".ru', "3"], ["a,b", "2"], ["яндекс", "2"],
                ["c\rd", "1"], ["\\xff.ru", "1"]]  # fmt: skip
    assert list(csv.reader(io.StringIO(format_result(result, "csv"), newline=""))) == expected
    tsv = format_result(result, "tsv")
    assert tsv.startswith('domain\tcount\r\n"say ""hi"".ru"\t3\r\na,b\t2\r\n')
    assert list(csv.reader(io.StringIO(tsv, newline=""), dialect="excel-tab")) == expected
    one = merged(QuerySpec("domain", domain=b"a,b"), [{b"a,b": 4}], 1).finalize()
    assert format_result(one, "csv") == 'domain,count\r\n"a,b",4\r\n'
    assert format_result(one, "tsv") == "domain\tcount\r\na,b\t4\r\n"
    with pytest.raises(ValueError, match="unknown format"):
        format_result(one, "xml")


@pytest.mark.parametrize(
    ("plan", "partial", "lines", "malformed", "why"),
    [
        (ALL, table([b"a", b"b"], [-1, 1]), 0, 0, "count below 1"),
        (ALL, table([b"a"], [0]), 1, 1, "count below 1"),
        (ALL, table([b""], [1]), 1, 0, "empty domain"),
        (ALL, table([b"a\nb"], [1]), 1, 0, "newline"),
        (ALL, table([b"a\tb"], [1]), 1, 0, "newline or a tab"),
        (ALL, table([b"a"], [5]), 3, 0, "5 counted, 3 well-formed"),  # inflated counts
        (ALL, table([b"a"], [1]), 9, 0, "1 counted, 9 well-formed"),  # inflated lines
        (ALL, table([b"a"], [1]), 1, 2, "line counts out of range"),
        (ALL, None, 3, 0, "well-formed lines without a count"),
        (ALL, table([b"a"], [1 << 62]), 1 << 62, 0, "lines"),
        (QuerySpec("domain", domain=b"a"), table([b"b"], [1]), 1, 0, "other than"),
        (QuerySpec("domain", domain=b"a"), table([b"a"], [2]), 1, 0, "more matches"),
        (ALL, pa.table({"key": ["a"], "n": [1]}), 1, 0, "schema"),
    ],
)
def test_partials_no_honest_kernel_makes_are_refused(
    plan: QuerySpec, partial: pa.Table | None, lines: int, malformed: int, why: str
) -> None:
    with pytest.raises(ProtocolError, match=why):
        kind_of(plan).check(plan, partial, lines, malformed)


def test_honest_partials_pass_the_check_and_garbage_is_not_arrow() -> None:
    kind_of(ALL).check(ALL, table([b"a", "яндекс".encode()], [2, 1]), 4, 1)
    kind_of(ALL).check(ALL, None, 2, 2)
    with pytest.raises(ProtocolError, match="not an Arrow IPC stream"):
        from_ipc(b"\x00garbage")


def test_many_distinct_domains_merge_alike_in_c_and_in_arrow() -> None:
    """Partials of 20,000 domains each, half of them shared: the C table and the Arrow
    group-bys give the same rows, and so does the top 10 (ties broken by domain)."""
    partials = [
        {b"d%d.ru" % (j + 10_000 * i): 1 + (j % 5) for j in range(20_000)} for i in range(6)
    ]
    total: Counter[bytes] = Counter()
    for counts in partials:
        total.update(counts)
    expected = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    for native in (True, False):
        assert merged(QuerySpec("all"), partials, 1 << 12, native).finalize().rows == expected
        top = merged(QuerySpec("top", k=10), partials, 1 << 12, native).finalize()
        assert top.rows == expected[:10]


def test_the_c_merge_refuses_what_the_check_would() -> None:
    """Nulls and counts below 1 are refused by the merge itself too, as a ProtocolError."""
    merger = DomainMerger(ALL)
    if merger._counter is None:
        pytest.skip("the C extension is not built here")
    with pytest.raises(ProtocolError, match="null"):
        merger.add(pa.table({"key": pa.array([None], pa.binary()), "n": [1]}), 1, 0)
    with pytest.raises(ProtocolError, match="count below 1"):
        merger.add(table([b"a"], [0]), 1, 1)
    merger.add(table([b"a", b"b"], [1, 2]).slice(1), 2, 0)  # a slice: offsets not from 0
    assert merger.finalize().rows == [(b"b", 2)]


@pytest.mark.parametrize("native", [True, False])
def test_a_merger_goes_on_after_a_finalize(native: bool) -> None:
    """A running total (tally serve --watch) is finalized after each object, then more are
    added: nothing merged before may be lost."""
    merger = merged(QuerySpec("all"), [{b"a": 2, b"b": 1}], 1, native)
    assert merger.finalize().rows == [(b"a", 2), (b"b", 1)]
    merger.add(table([b"b", b"c"], [2, 1]), 3, 0)
    assert merger.finalize().rows == [(b"b", 3), (b"a", 2), (b"c", 1)]
    assert merger.finalize().rows == [(b"b", 3), (b"a", 2), (b"c", 1)]


def test_a_merge_that_would_overflow_is_refused() -> None:
    merger = DomainMerger(ALL)
    merger.add(table([b"a"], [(1 << 62) - 1]), (1 << 62) - 1, 0)
    with pytest.raises(ProtocolError, match="overflow"):
        merger.add(table([b"a"], [1]), 1, 0)
