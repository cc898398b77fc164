"""Group-by aggregates over delimited text: equal to DuckDB's answer on the same files with the
same types, bad rows counted, and exact whatever the split into partials and merge order."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groupby_helpers import (
    CUSTOMER,
    LINEITEM,
    Q1,
    assert_same,
    duck_rows,
    duck_source,
    rows,
    run,
    split_lines,
    tpch,
)
from tally.errors import ConfigError, ProtocolError
from tally.kernels.delimited import GroupPartial, compute_partial
from tally.kernels.lines import LineChunks
from tally.queries import plan as plans
from tally.queries.expr import Binary, Col, Lit
from tally.queries.groupby import GroupMerger, decode_partial, encode_partial, exact_expansion
from tally.queries.groupby_output import format_group_result, show
from tally.queries.infer import bind, infer_type
from tally.queries.plan import Aggregate, Plan, plan_from_flags
from tally.queries.sql import parse_sql

__all__ = ["tpch"]  # the session fixture


def test_tpch_q1_via_sql_equals_duckdb(tpch: Path) -> None:
    path = tpch / "lineitem.tbl"
    data = path.read_bytes()
    source, plan = parse_sql(Q1, columns=LINEITEM)
    assert source == "lineitem.tbl" and plan.delimiter == "|"
    plan = bind(plan, data[: 1 << 20])
    assert plan.trailing_delimiter and plan.width == 16
    assert plan.schema["l_extendedprice"] == "DECIMAL(18,2)"
    result = run(plan, split_lines(data, 7))
    theirs = duck_rows(Q1.replace("'lineitem.tbl'", duck_source(path, plan)))
    assert_same(rows(result), theirs)
    assert result.lines == data.count(b"\n") and result.malformed == 0
    assert result.table.schema.names == [
        "l_returnflag", "l_linestatus", "sum_qty", "sum_base_price", "sum_disc_price",
        "sum_charge", "avg_qty", "avg_price", "avg_disc", "count_order",
    ]  # fmt: skip
    # decimal sums print exactly, as DuckDB prints them
    text = format_group_result(result, "csv").splitlines()
    assert text[1].split(",")[:6] == [str(v) for v in theirs[0][:6]]


def test_customer_by_segment_via_flags_equals_duckdb(tpch: Path) -> None:
    path = tpch / "customer.tbl"
    data = path.read_bytes()
    plan = plan_from_flags(
        delimiter="|",
        group_by=["c_mktsegment"],
        aggs=["count", "sum:6", "avg:c_acctbal", "min:6", "max:c_acctbal", "count_distinct:4"],
        order_by=["2:desc", "1"],
        columns=CUSTOMER,
        sample=data,
    )
    assert plan.output_names == (
        "c_mktsegment", "count", "sum(c_acctbal)", "avg(c_acctbal)", "min(c_acctbal)",
        "max(c_acctbal)", "count_distinct(c_nationkey)",
    )  # fmt: skip
    result = run(plan, split_lines(data, 5))
    theirs = duck_rows(
        "select c_mktsegment, count(*), sum(c_acctbal), avg(c_acctbal), min(c_acctbal),"
        " max(c_acctbal), count(distinct c_nationkey)"
        f" from {duck_source(path, plan)} group by 1 order by 2 desc, 1"
    )
    assert_same(rows(result), theirs)


def test_by_position_without_names(tpch: Path) -> None:
    path = tpch / "customer.tbl"
    data = path.read_bytes()
    plan = plan_from_flags(
        delimiter="|", group_by=["7,4"], aggs=["count", "sum:6"], limit=5, order_by=["4:desc"],
        sample=data,
    )  # fmt: skip
    assert plan.output_names == ("c7", "c4", "count", "sum(c6)")
    theirs = duck_rows(
        f"select c7, c4, count(*), sum(c6) from {duck_source(path, plan)}"
        " group by 1, 2 order by 4 desc, 1, 2 limit 5"
    )
    assert_same(rows(run(plan, split_lines(data, 3))), theirs)


def test_every_aggregate_with_where_equals_duckdb(tpch: Path) -> None:
    path = tpch / "lineitem.tbl"
    data = path.read_bytes()
    where = "l_shipmode in ('AIR', 'MAIL') and l_quantity > 10 and l_comment not like '%final%'"
    plan = plan_from_flags(
        delimiter="|",
        group_by=["l_shipmode,l_returnflag"],
        aggs=[
            "count",
            "count:l_receiptdate",
            "sum:l_quantity",
            "avg:l_quantity",
            "sum:l_extendedprice*(1-l_discount)",
            "avg:l_tax",
            "min:l_shipdate",
            "max:l_shipinstruct",
            "min:l_extendedprice",
            "max:l_orderkey",
            "count_distinct:l_suppkey",
            "count_distinct:l_shipdate",
        ],
        where=where,
        columns=LINEITEM,
        sample=data[: 1 << 20],
    )
    result = run(plan, split_lines(data, 4), chunk_size=1 << 16)
    theirs = duck_rows(
        "select l_shipmode, l_returnflag, count(*), count(l_receiptdate), sum(l_quantity),"
        " avg(l_quantity), sum(l_extendedprice*(1-l_discount)), avg(l_tax), min(l_shipdate),"
        " max(l_shipinstruct), min(l_extendedprice), max(l_orderkey), count(distinct l_suppkey),"
        f" count(distinct l_shipdate) from {duck_source(path, plan)} where {where}"
        " group by 1, 2 order by 1, 2"
    )
    assert_same(rows(result), theirs)
    assert len(theirs) == 6


def test_doubles_are_summed_exactly_in_any_merge_order() -> None:
    rows_ = [("a", "1e16"), ("a", "1"), ("a", "-1e16"), ("a", "0.1"), ("b", "")]
    plan = plan_from_flags(group_by=["1"], aggs=["sum:2", "avg:2", "count:2"], sample=b"a,1.5e3\n")
    assert plan.schema["c2"] == "DOUBLE"
    partials = [compute_partial(plan, io.BytesIO(f"{k},{v}\n".encode())) for k, v in rows_]
    outputs = set()
    for order in itertools.permutations(partials):
        merger = GroupMerger(plan, compact_rows=1)
        for partial in order:
            merger.add(partial)
        outputs.add(format_group_result(merger.result(), "csv"))
    assert outputs == {
        "c1,sum(c2),avg(c2),count(c2)\na,1.1,0.275,4\nb,NULL,NULL,0\n".replace("NULL", "")
    }
    assert sum(exact_expansion([1e16, 1.0, -1e16, 0.1])) == 1.1


def test_empty_and_null_fields_equal_duckdb(tmp_path: Path) -> None:
    path = tmp_path / "nulls.csv"
    path.write_bytes(b"a,1,x,2020-01-01\n,2,,2020-01-02\na,,y,\n,,,\nb,5,y,2020-01-03\nb,,,\n")
    data = path.read_bytes()
    plan = plan_from_flags(
        group_by=["1"],
        aggs=["count", "count:2", "sum:2", "avg:2", "min:3", "max:4", "count_distinct:3"],
        schema="c2:bigint,c4:date",
        sample=data,
    )
    result = run(plan, split_lines(data, 3))
    theirs = duck_rows(
        "select c1, count(*), count(c2), sum(c2), avg(c2), min(c3), max(c4), count(distinct c3)"
        f" from {duck_source(path, plan)} group by 1 order by 1"
    )
    assert_same(rows(result), theirs)
    assert rows(result)[-1][0] is None  # the NULL key sorts last, as in DuckDB
    assert result.lines == 6 and result.malformed == 0
    doc = json.loads(format_group_result(result, "json"))
    assert doc["rows"][-1] == {
        "c1": None, "count": 2, "count(c2)": 1, "sum(c2)": 2, "avg(c2)": 2.0,
        "min(c3)": None, "max(c4)": "2020-01-02", "count_distinct(c3)": 0,
    }  # fmt: skip


def test_global_aggregate_without_rows_has_one_row() -> None:
    plan = plan_from_flags(aggs=["count", "sum:1", "count_distinct:1"], sample=b"5\n")
    result = run(plan, [b"", b""])
    assert rows(result) == [(0, None, 0)]
    assert rows(GroupMerger(plan).result()) == [(0, None, 0)]


BAD = (
    b"k|x|n|\n"  # header
    b"a|1.50|7|\n"
    b"a|2.25|8|\n"
    b"b|abc|1|\n"  # not a number
    b"b|1.00|2|3|\n"  # one column too many
    b"b|3.00|\n"  # one column too few
    b"\n"  # blank: neither a line nor malformed
    b"c|" + b"9" * 300 + b"|1|\n"  # longer than the record limit
    b"\xff\xfe|1.00|1|\n"  # not UTF-8 in a column the query reads
    b"c|1.005|3|\n"  # rounds to 1.01, as DuckDB's cast does
    b"c|0.50|x|\n"  # not an integer
    b"d|1.00|9|"  # last line without newline
)


@pytest.mark.parametrize("chunk_size", [7, 64, 1 << 20])
def test_bad_rows_are_counted_never_fatal(tmp_path: Path, chunk_size: int) -> None:
    plan = plan_from_flags(
        delimiter="|", header=True, group_by=["k"], aggs=["count", "sum:x", "max:n"],
        schema="x:decimal(10,2),n:bigint", sample=BAD[:40],
    )  # fmt: skip
    partial = compute_partial(plan, io.BytesIO(BAD), record_limit=100, chunk_size=chunk_size)
    assert (partial.lines, partial.malformed, partial.bytes_read) == (10, 6, len(BAD))
    merger = GroupMerger(plan)
    merger.add(partial)
    good = tmp_path / "good.tbl"
    good.write_bytes(b"k|x|n|\na|1.50|7|\na|2.25|8|\nc|1.005|3|\nd|1.00|9|\n")
    theirs = duck_rows(
        f"select k, count(*), sum(x), max(n) from {duck_source(good, plan)} group by 1 order by 1"
    )
    assert_same(rows(merger.result()), theirs)
    assert rows(merger.result())[1] == ("c", 1, Decimal("1.01"), 3)


@pytest.mark.parametrize("chunk_size", [7, 1 << 20])
def test_a_date_outside_the_years_1_to_9999_is_a_bad_row(chunk_size: int) -> None:
    """PyArrow and DuckDB read the year 0 (and DuckDB the year 10000); SQL's DATE, the C
    parser and the printed results do not: such a row is skipped and counted, whichever path
    its chunk took."""
    data = b"a|0000-01-01|\nb|1998-01-02|\nb|10000-01-01|\na|9999-12-31|\nb||\n"
    plan = plan_from_flags(delimiter="|", group_by=["1"], aggs=["count", "max:2", "min:2"],
                           schema="c2:date", sample=data)  # fmt: skip
    partial = compute_partial(plan, io.BytesIO(data), chunk_size=chunk_size)
    assert (partial.lines, partial.malformed) == (5, 2)
    merger = GroupMerger(plan)
    merger.add(partial)
    assert rows(merger.result()) == [
        ("a", 1, date(9999, 12, 31), date(9999, 12, 31)),
        ("b", 2, date(1998, 1, 2), date(1998, 1, 2)),
    ]


TRICKY = [
    "1", "-1", "+1", " 1", "1 ", "01", "1.0", "1.", ".5", "-.5", "1e2", "1.5e1", "0x10", "1_000",
    "1,5", "inf", "-inf", "nan", "9223372036854775807", "9223372036854775808", "1.234", "1.235",
    "-1.235", "99999999999999999", "abc", "true", "1996-03-13", "1996-3-13", "1996-02-30",
    "1996-03-13 00:00:00", " 1996-03-13", "19960313",
]  # fmt: skip


@pytest.mark.parametrize("kind", ["BIGINT", "DECIMAL(15,2)", "DOUBLE", "DATE"])
def test_every_value_pyarrow_parses_duckdb_casts_the_same(kind: str) -> None:
    """The kernel's fast path (PyArrow) and its fallback (DuckDB TRY_CAST) agree on a value
    whenever the fast path takes it, so a row's fate never depends on its chunk."""
    from tally.kernels.delimited import arrow_type

    con = duckdb.connect()
    for value in TRICKY:
        try:
            parsed = pacsv.read_csv(
                pa.py_buffer(value.encode() + b"\n"),
                read_options=pacsv.ReadOptions(column_names=["a"]),
                parse_options=pacsv.ParseOptions(delimiter="|", quote_char=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={"a": arrow_type(kind)}, null_values=[""]
                ),
            )["a"][0].as_py()
        except pa.ArrowInvalid:
            continue
        cast = con.execute(f"select try_cast(? as {kind})", [value]).fetchone()
        assert cast is not None
        if parsed != parsed:  # nan
            assert cast[0] != cast[0], value
        else:
            assert cast[0] == parsed, (kind, value, parsed, cast[0])


ROW = st.tuples(
    st.sampled_from(["x", "y", "z", "", "щ"]),
    st.one_of(st.just(""), st.decimals("-999.99", "999.99", places=2).map(str)),
    st.one_of(st.just(""), st.integers(-(10**12), 10**12).map(str)),
    st.sampled_from(["p", "q", "", "r s"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ROW, max_size=60), st.data())
def test_any_split_and_merge_order_gives_the_same_result(
    rows_: list[tuple[str, str, str, str]], data: st.DataObject
) -> None:
    text = "".join(f"{k}\t{d}\t{i}\t{s}\n" for k, d, i, s in rows_).encode()
    plan = plan_from_flags(
        delimiter="\t", group_by=["1"],
        aggs=["count", "sum:2", "avg:2", "min:2", "max:3", "sum:3", "count_distinct:4", "count:4"],
        schema="c2:decimal(10,2),c3:bigint", sample=b"k\t1\t1\ts\n",
    )  # fmt: skip
    whole = format_group_result(run(plan, [text]), "json")
    lines = text.splitlines(keepends=True)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lines)), max_size=6)))
    pieces = [b"".join(lines[a:b]) for a, b in itertools.pairwise([0, *cuts, len(lines)])]
    partials = [
        compute_partial(plan, io.BytesIO(p), chunk_size=data.draw(st.integers(1, 64)))
        for p in pieces
    ]
    random.Random(data.draw(st.integers(0, 1000))).shuffle(partials)
    merger = GroupMerger(plan, compact_rows=data.draw(st.integers(1, 20)))
    for partial in partials:
        merger.add(partial)
    assert format_group_result(merger.result(), "json") == whole


def test_output_formats(tmp_path: Path) -> None:
    data = b"a b,1.5\na b,2\nc\td,0.25\n"
    plan = plan_from_flags(group_by=["1"], aggs=["count", "sum:2", "avg:2"], sample=data)
    result = run(plan, [data])
    assert format_group_result(result, "csv") == (
        "c1,count,sum(c2),avg(c2)\na b,2,3.50,1.75\nc\td,1,0.25,0.25\n"
    )
    assert format_group_result(result, "tsv") == (
        "c1\tcount\tsum(c2)\tavg(c2)\na b\t2\t3.50\t1.75\nc\\td\t1\t0.25\t0.25\n"
    )
    assert format_group_result(result, "text") == (
        "c1   count  sum(c2)  avg(c2)\n"
        "a b      2     3.50     1.75\n"
        "c\td      1     0.25     0.25\n"
    )
    doc = json.loads(format_group_result(result, "json"))
    assert doc["columns"] == ["c1", "count", "sum(c2)", "avg(c2)"]
    assert doc["rows"][0] == {"c1": "a b", "count": 2, "sum(c2)": 3.5, "avg(c2)": 1.75}
    assert (doc["lines"], doc["malformed_lines"], doc["complete"]) == (3, 0, True)


def test_header_names_and_ranges_after_the_first(tmp_path: Path) -> None:
    data = b"seg,bal\nA,1\nB,2\nA,3\n"
    plan = plan_from_flags(header=True, group_by=["seg"], aggs=["sum:bal"], sample=data)
    assert plan.names == ("seg", "bal")
    first, rest = data[:12], data[12:]
    assert rest == b"B,2\nA,3\n"
    merger = GroupMerger(plan)
    merger.add(compute_partial(plan, io.BytesIO(first)))
    merger.add(compute_partial(plan, io.BytesIO(rest), skip_header=False))
    assert rows(merger.result()) == [("A", 4), ("B", 2)]


def test_plan_travels_as_msgpack(tpch: Path) -> None:
    _, plan = parse_sql(Q1, columns=LINEITEM)
    plan = bind(plan, (tpch / "lineitem.tbl").read_bytes()[:100_000])
    assert plans.decode(plans.encode(plan)) == plan
    with pytest.raises(ConfigError, match="bad plan"):
        plans.decode(msgspec.msgpack.encode({"delimiter": 5}))


def test_partials_that_do_not_fit_are_refused() -> None:
    plan = plan_from_flags(group_by=["1"], aggs=["count"], sample=b"a\n")
    other = plan_from_flags(group_by=["1"], aggs=["sum:1"], sample=b"1\n")
    merger = GroupMerger(plan)
    with pytest.raises(ProtocolError):
        merger.add(compute_partial(other, io.BytesIO(b"1\n")))
    with pytest.raises(ProtocolError):
        decode_partial(b"garbage")
    partial = compute_partial(plan, io.BytesIO(b"a\n"))
    bad = GroupPartial(partial.table, lines=1, malformed=2)
    with pytest.raises(ProtocolError, match="out of range"):
        decode_partial(encode_partial(bad))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggs": ["median:1"]}, "unknown aggregate 'median'"),
        ({"aggs": ["sum"]}, "needs a column"),
        ({"aggs": []}, "at least one --agg"),
        ({"group_by": ["0"]}, "start at 1"),
        ({"group_by": ["9"]}, "no column 9"),
        ({"group_by": ["nope"]}, "no column named 'nope'"),
        ({"order_by": ["5"]}, "no output column 5"),
        ({"order_by": ["1:up"]}, "bad --order-by"),
        ({"order_by": ["total"]}, "no output column named 'total'"),
        ({"delimiter": "ab"}, "bad delimiter"),
        ({"schema": "c1:money"}, "unknown type 'money'"),
        ({"schema": "c9:bigint"}, "unknown column 'c9'"),
        ({"where": "c1 = "}, "cannot parse expression"),
        ({"where": "c1 in (select 1)"}, "subquery"),
        ({"where": "c1 + 1"}, "bad query: Binder Error"),
        ({"where": "c2 + 1"}, "must be a condition"),
        ({"aggs": ["sum:1"]}, "sum needs a number"),
        ({"limit": -1}, "bad limit"),
        ({"columns": ["a", "a"]}, "duplicate column name"),
        ({"columns": ["a", "b", "c"]}, "3 column names given but the data has 2"),
    ],
)
def test_bad_flags_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"group_by": ["1"], "aggs": ["count"], "sample": b"a,1\nb,2\n"}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message) as error:
        plan = plan_from_flags(**args)  # type: ignore[arg-type]
        compute_partial(plan, io.BytesIO(b"a,1\n"))
    assert "\n" not in str(error.value)


def test_types_inferred_from_a_sample() -> None:
    assert infer_type(["1", "-2", ""]) == "BIGINT"
    assert infer_type(["1.50", "2", "-0.125"]) == "DECIMAL(18,3)"
    assert infer_type(["1e5", "2.5"]) == "DOUBLE"
    assert infer_type(["1996-03-13"]) == "DATE"
    assert infer_type(["x", "1"]) == "VARCHAR"
    assert infer_type([""]) == "VARCHAR"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.booleans(),
    st.integers(1, 40),
    st.integers(0, 10),
    st.booleans(),
)
def test_line_chunks_keep_whole_lines_and_drop_long_ones(
    lines: list[bytes], final_newline: bool, chunk_size: int, limit: int, skip_first: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    chunks = LineChunks(io.BytesIO(data), chunk_size, limit, skip_first_line=skip_first)
    out = b"".join(bytes(c) for c in chunks)
    expected = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        expected.pop()
    if skip_first and expected:
        expected.pop(0)
    kept = [line for line in expected if len(line) <= limit]
    assert out == b"".join(line + b"\n" for line in kept)
    assert chunks.oversized == len(expected) - len(kept)
    assert chunks.bytes_read == len(data)


def test_positions_take_the_header_names_once_bound() -> None:
    data = b"seg|bal|\nA|1|\nB|2|\n"
    plan = plan_from_flags(
        delimiter="|", header=True, group_by=["1"], aggs=["sum:2", "count"], order_by=["sum(c2)"]
    )
    assert plan.output_names == ("c1", "sum(c2)", "count")
    plan = bind(plan, data)
    assert plan.output_names == ("seg", "sum(bal)", "count")
    assert plan.trailing_delimiter and plan.width == 2
    assert rows(run(plan, [data])) == [("A", 1, 1), ("B", 2, 1)]


def test_an_empty_last_column_that_is_named_is_not_a_trailing_delimiter() -> None:
    data = b"A,1,\nB,2,\n"
    plan = plan_from_flags(group_by=["a"], aggs=["count:c"], columns="a,b,c", sample=data)
    assert not plan.trailing_delimiter and plan.width == 3
    assert rows(run(plan, [data])) == [("A", 0), ("B", 0)]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: msgspec.structs.replace(p, schema={"c2": "BIGINT) FROM x; --"}),
        lambda p: msgspec.structs.replace(
            p, where=Binary(">", Col("c2", 1), Lit("BIGINT", "1; --"))
        ),
        lambda p: msgspec.structs.replace(
            p, where=Binary("; --", Col("c2", 1), Lit("BIGINT", "1"))
        ),
        lambda p: msgspec.structs.replace(p, aggregates=(Aggregate("sum; --", Col("c2", 1)),)),
        lambda p: msgspec.structs.replace(p, group_by=(Col("c9", 8),)),
    ],
)
def test_a_plan_from_the_wire_cannot_carry_sql(tamper: Callable[[Plan], Plan]) -> None:
    plan = plan_from_flags(group_by=["1"], aggs=["sum:2"], sample=b"a,1\n")
    tampered = plans.decode(plans.encode(tamper(plan)))
    with pytest.raises(ConfigError):
        compute_partial(tampered, io.BytesIO(b"a,1\n"))


class ReadSizes(io.RawIOBase):
    """A long stream made on the fly that records the size of every read asked of it."""

    def __init__(self, line: bytes, lines: int) -> None:
        self.data = line * lines
        self.pos = 0
        self.sizes: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.sizes.append(len(buffer))
        got = self.data[self.pos : self.pos + len(buffer)]
        buffer[: len(got)] = got
        self.pos += len(got)
        return len(got)


def test_a_partition_is_read_a_chunk_at_a_time() -> None:
    stream = ReadSizes(b"key-1|12.50|x|\n", 200_000)
    plan = plan_from_flags(delimiter="|", group_by=["1"], aggs=["sum:2"], sample=b"k|1.5|x|\n")
    partial = compute_partial(plan, stream, chunk_size=1 << 16)  # type: ignore[arg-type]
    assert max(stream.sizes) <= 1 << 16 and len(stream.sizes) > 40
    assert partial.table.to_pylist() == [
        {"g0": "key-1", "a0_n": 200_000, "a0_s": Decimal("2500000.00")}
    ]


def test_double_columns_equal_duckdb(tpch: Path) -> None:
    path = tpch / "customer.tbl"
    data = path.read_bytes()
    plan = plan_from_flags(
        delimiter="|", group_by=["c_mktsegment"],
        aggs=["sum:c_acctbal", "avg:c_acctbal", "min:c_acctbal", "sum:c_acctbal*c_acctbal"],
        columns=CUSTOMER, schema={"c_acctbal": "double"}, sample=data,
    )  # fmt: skip
    result = run(plan, split_lines(data, 9), chunk_size=4096)
    source = duck_source(path, plan)
    # DuckDB's compensated sum prints the same digits; its plain sum is off in the last place
    for total in ("fsum", "sum"):
        theirs = duck_rows(
            f"select c_mktsegment, {total}(c_acctbal), {total}(c_acctbal) / count(c_acctbal),"
            f" min(c_acctbal), {total}(c_acctbal * c_acctbal) from {source} group by 1 order by 1"
        )
        assert_same(rows(result), theirs)
        if total == "fsum":
            printed = [[show(v) for v in row] for row in rows(result)]
            assert printed == [[show(v) for v in row] for row in theirs]
    assert {type(v) for v in rows(result)[0][1:]} == {float}
