"""Packing partials and merging them columnar: exact, in any order, in any compaction."""

from __future__ import annotations

import csv
import io
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.errors import ProtocolError
from tally.kernels import DomainCounts
from tally.protocol import Partial, QuerySpec
from tally.queries import Merger, check_partial, format_result, pack

KEYS = st.binary(min_size=1, max_size=6) | st.sampled_from([b"go.mail", "яндекс".encode(), b"\xff"])
PARTIALS = st.lists(st.dictionaries(KEYS, st.integers(1, 1000), max_size=20), max_size=12)


def merged(query: QuerySpec, partials: list[dict[bytes, int]], compact_rows: int) -> Merger:
    merger = Merger(query, compact_rows=compact_rows)
    for i, counts in enumerate(partials):
        merger.add(pack(DomainCounts(dict(counts), lines=i + len(counts), malformed=i)))
    return merger


@settings(max_examples=200, deadline=None)
@given(PARTIALS, st.integers(0, 40), st.integers(1, 30))
def test_merge_equals_the_sum_in_the_documented_order(
    partials: list[dict[bytes, int]], compact_rows: int, k: int
) -> None:
    total: Counter[bytes] = Counter()
    for counts in partials:
        total.update(counts)
    expected = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    result = merged(QuerySpec("all"), partials, compact_rows).finalize()
    assert result.rows == expected
    assert result.malformed == sum(range(len(partials)))
    top = merged(QuerySpec("top", k=k), list(reversed(partials)), compact_rows).finalize()
    assert top.rows == expected[:k]


def test_domain_query_and_formats() -> None:
    partials = [{b"go.mail": 2}, {}, {b"go.mail": 3}]
    result = merged(QuerySpec("domain", domain=b"go.mail"), partials, 1).finalize()
    assert format_result(result, "text") == "5\n"
    missing = merged(QuerySpec("domain", domain=b"x"), [{}, {}], 1).finalize()
    assert format_result(missing, "text") == "0\n"
    rows = merged(QuerySpec("all"), [{b"\xff.ru": 1, "яндекс".encode(): 2}], 1).finalize()
    assert format_result(rows, "text") == "яндекс 2\n\\xff.ru 1\n"


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
    ("keys", "ends", "counts", "lines", "malformed"),
    [
        (b"abcd", [3, 1, 4], [1, 1, 1], 3, 0),  # offsets go backwards
        (b"abc", [1, 5], [1, 1], 2, 0),  # past the end of the keys
        (b"abcd", [1, 3], [1, 1], 2, 0),  # keys left over
        (b"ab", [1, 2], [1], 2, 0),  # too few counts
        (b"ab", [1, 2], [1, 1], 1, 2),  # more malformed lines than lines
    ],
)
def test_malformed_partials_are_protocol_errors(
    keys: bytes, ends: list[int], counts: list[int], lines: int, malformed: int
) -> None:
    partial = Partial(
        memoryview(keys), memoryview(np.array(ends, "<u4").tobytes()),
        memoryview(np.array(counts, "<i8").tobytes()), lines, malformed,
    )  # fmt: skip
    with pytest.raises(ProtocolError, match="malformed partial"):
        check_partial(partial)
    odd = Partial(memoryview(b"ab"), memoryview(b"\x02\x00\x00"), memoryview(b""), 1, 0)
    with pytest.raises(ProtocolError):
        check_partial(odd)
    check_partial(pack(DomainCounts({b"ab": 1, b"c": 2}, lines=3)))
