"""Packing partials and merging them columnar: exact, in any order, in any compaction."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.kernels import DomainCounts
from tally.protocol import QuerySpec
from tally.queries import Merger, format_result, pack

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
