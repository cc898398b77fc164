"""``tally sql``: the SQL subset parses into the same plans the flags make, answers equal
DuckDB's, and SQL outside the subset is a ConfigError that names the construct."""

from __future__ import annotations

from pathlib import Path

import pytest

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
from tally.errors import ConfigError
from tally.queries.expr import Lit
from tally.queries.infer import bind
from tally.queries.plan import plan_from_flags
from tally.queries.sql import parse_sql

__all__ = ["tpch"]  # the session fixture


def answer(
    sql: str, path: Path, **options: object
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """(Tally's rows, DuckDB's rows) for ``sql`` over ``path`` (named 'data' in the query)."""
    source, plan = parse_sql(sql, **options)  # type: ignore[arg-type]
    assert source == "data"
    data = path.read_bytes()
    plan = bind(plan, data[: 1 << 20])
    ours = rows(run(plan, split_lines(data, 3)))
    theirs = duck_rows(sql.replace("'data'", duck_source(path, plan)))
    return ours, theirs


def test_q1_parses_with_its_date_arithmetic_folded() -> None:
    source, plan = parse_sql(Q1)
    assert source == "lineitem.tbl" and plan.delimiter == "|"
    assert plan.where is not None and plan.where.right == Lit("DATE", "1998-09-02")  # type: ignore[union-attr]
    assert [a.func for a in plan.aggregates] == ["sum"] * 4 + ["avg"] * 3 + ["count"]
    assert plan.output_names[:3] == ("l_returnflag", "l_linestatus", "sum_qty")


def test_sql_and_flags_make_the_same_plan(tpch: Path) -> None:
    sample = (tpch / "customer.tbl").read_bytes()
    _, from_sql = parse_sql(
        'SELECT c_mktsegment, count(*) AS count, sum(c_acctbal) AS "sum(c_acctbal)"'
        " FROM 'customer.tbl' WHERE c_nationkey < 10 GROUP BY c_mktsegment"
        " ORDER BY 2 DESC LIMIT 3",
        columns=CUSTOMER,
    )
    from_flags = plan_from_flags(
        delimiter="|", group_by=["c_mktsegment"], aggs=["count", "sum:c_acctbal"],
        where="c_nationkey < 10", order_by=["2:desc"], limit=3, columns=CUSTOMER,
    )  # fmt: skip
    assert bind(from_sql, sample) == bind(from_flags, sample)


def test_aliases_positions_and_select_order(tpch: Path) -> None:
    sql = (
        "SELECT count(*) AS n, c.c_mktsegment AS segment, max(c_acctbal) AS top,"
        " count(DISTINCT c_nationkey) FROM 'data' AS c"
        " WHERE c_acctbal BETWEEN 0 AND 5000 AND c_phone NOT LIKE '1%'"
        " GROUP BY segment ORDER BY top DESC, segment LIMIT 4"
    )
    ours, theirs = answer(sql, tpch / "customer.tbl", columns=CUSTOMER, delimiter="|")
    assert_same(ours, theirs)
    _, plan = parse_sql(sql.replace("'data'", "'x.tbl'"), columns=CUSTOMER)
    assert plan.output_names == ("segment", "n", "top", "count_distinct(c_nationkey)")
    assert plan.select == (1, 0, 2, 3)


def test_arithmetic_in_aggregates_and_group_by_position(tpch: Path) -> None:
    sql = (
        "SELECT l_shipmode, sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS charge,"
        " avg(l_quantity * 2 + 1), min(l_extendedprice / 3), sum(-l_quantity)"
        " FROM 'data' WHERE l_shipdate >= date '1995-01-31' + interval 1 month"
        " AND l_returnflag IN ('A', 'R') GROUP BY 1 ORDER BY charge"
    )
    ours, theirs = answer(sql, tpch / "lineitem.tbl", columns=LINEITEM, delimiter="|")
    assert_same(ours, theirs)
    assert len(ours) == 7


def test_group_by_a_key_not_selected_and_global_aggregate(tpch: Path) -> None:
    path = tpch / "customer.tbl"
    for sql in (
        "SELECT count(*) FROM 'data' GROUP BY c_nationkey ORDER BY 1 DESC, c_nationkey LIMIT 3",
        "SELECT count(*), sum(c_acctbal), avg(c_custkey) FROM 'data' WHERE c_acctbal > 9000",
        "SELECT c_nationkey FROM 'data' GROUP BY ALL ORDER BY c_nationkey DESC LIMIT 2",
    ):
        ours, theirs = answer(sql, path, columns=CUSTOMER, delimiter="|")
        assert_same(ours, theirs)


def test_header_names_and_delimiter_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_bytes(b"k\tv\na\t1\nb\t2\na\t3\n")
    source, plan = parse_sql("SELECT k, sum(v) FROM 'data/t.tsv' GROUP BY k", header=True)
    assert source == "data/t.tsv" and plan.delimiter == "\t"
    plan = bind(plan, path.read_bytes())
    assert rows(run(plan, [path.read_bytes()])) == [("a", 4), ("b", 2)]


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT a, count(*) FROM 'x' JOIN 'y' ON x.a = y.a GROUP BY a", "a join"),
        ("SELECT count(*) FROM 'x', 'y'", "a join"),
        ("SELECT count(*) FROM (SELECT a FROM 'x')", "a subquery in FROM"),
        ("SELECT count(*) FROM 'x' WHERE a IN (SELECT b FROM 'y')", "a subquery"),
        ("SELECT count(*) FROM 'x' WHERE a > (SELECT 1)", "a subquery"),
        ("SELECT a, sum(b) OVER () FROM 'x'", "a window function"),
        ("SELECT a, row_number() OVER (ORDER BY a) FROM 'x'", "a window function"),
        ("SELECT a, count(*) FROM 'x' GROUP BY a HAVING count(*) > 1", "HAVING"),
        ("SELECT count(*) FROM 'x' UNION SELECT count(*) FROM 'y'", "UNION"),
        ("WITH t AS (SELECT 1) SELECT count(*) FROM 'x'", "WITH"),
        ("SELECT * FROM 'x'", "SELECT *"),
        ("SELECT DISTINCT a FROM 'x'", "SELECT DISTINCT"),
        ("SELECT a, median(b) FROM 'x' GROUP BY a", "the aggregate"),
        ("SELECT sum(a) / count(*) FROM 'x'", "an expression over aggregates"),
        ("SELECT a, count(*) FROM 'x'", "needs GROUP BY"),
        ("SELECT a, b, count(*) FROM 'x' GROUP BY a", "must be in GROUP BY"),
        ("SELECT count(*) FROM x", "in quotes"),
        ("SELECT count(*) FROM read_csv('x')", "table function"),
        ("SELECT count(*)", "FROM 'SOURCE' is missing"),
        ("SELECT count(*) FROM 'x' LIMIT 1 OFFSET 2", "OFFSET"),
        ("SELECT a, count(*) FROM 'x' GROUP BY ROLLUP (a)", "ROLLUP"),
        ("SELECT upper(a), count(*) FROM 'x' GROUP BY 1", "the function UPPER"),
        ("SELECT count(*) FROM 'x' WHERE upper(a) = 'A'", "the function"),
        ("SELECT a, count(*) FROM 'x' GROUP BY a ORDER BY a NULLS FIRST", "NULLS FIRST"),
        ("SELECT count(*) FROM 'x' WHERE sum(a) > 1", "an aggregate is not allowed"),
        ("SELECT count(*) FROM 'x'; SELECT 1", "exactly one SELECT"),
        ("INSERT INTO t VALUES (1)", "only SELECT"),
        ("SELECT count(* FROM 'x'", "cannot parse SQL"),
        ("SELECT count(DISTINCT a, b) FROM 'x'", "DISTINCT is only supported"),
        ("SELECT sum(*) FROM 'x'", r"sum\(\*\)"),
    ],
)
def test_sql_outside_the_subset_names_the_construct(sql: str, construct: str) -> None:
    with pytest.raises(ConfigError, match=construct) as error:
        parse_sql(sql)
    assert "\n" not in str(error.value)
