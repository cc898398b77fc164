"""Group-by jobs through the whole cluster (coordinator, worker processes, byte ranges):
TPC-H Q1 and a customer group-by equal DuckDB's answers on the same files."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import tally
from groupby_helpers import CUSTOMER, LINEITEM, Q1, assert_same, duck_rows, duck_source, tpch
from tally.local import sample_of
from tally.queries.infer import bind
from tally.queries.sql import parse_sql

__all__ = ["tpch"]  # the session fixture, used by name


def duck_answer(query: str, table: Path, columns: list[str]) -> list[tuple[object, ...]]:
    """DuckDB's rows for ``query`` over ``table`` read with the types Tally infers."""
    source, plan = parse_sql(query, columns=",".join(columns))
    plan = bind(plan, sample_of(str(table)))
    return duck_rows(query.replace(f"'{source}'", duck_source(table, plan)))


def test_q1_through_the_cluster_equals_duckdb(tpch: Path) -> None:
    query = Q1.replace("'lineitem.tbl'", f"'{tpch / 'lineitem.tbl'}'")
    result = tally.sql(query, workers=2, columns=LINEITEM, split_size="512KiB")
    assert result.stats["partitions"] == 14  # 7.3 MB in ranges of 512 KiB
    assert result.malformed == 0 and result.complete
    assert_same(result.rows, duck_answer(query, tpch / "lineitem.tbl", LINEITEM))
    assert [row[:2] for row in result.rows] == [("A", "F"), ("N", "F"), ("N", "O"), ("R", "F")]


def test_a_customer_group_by_with_flags_prints_what_the_api_returns(tpch: Path) -> None:
    table = tpch / "customer.tbl"
    query = (f"select c_mktsegment, count(*), avg(c_acctbal), max(c_acctbal) from '{table}' "
             "where c_nationkey < 10 group by c_mktsegment order by 2 desc")  # fmt: skip
    expected = tally.sql(query, workers=1, columns=CUSTOMER)
    assert_same(expected.rows, duck_answer(query, table, CUSTOMER))
    done = subprocess.run(
        [sys.executable, "-m", "tally", "run", str(table), "--workers", "2", "--delimiter", "|",
         "--columns", ",".join(CUSTOMER), "--group-by", "c_mktsegment", "--agg", "count",
         "--agg", "avg:c_acctbal", "--agg", "max:c_acctbal", "--where", "c_nationkey < 10",
         "--order-by", "2:desc", "--format", "csv", "--split-size", "64KiB", "-q"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["c_mktsegment", "count", "avg(c_acctbal)", "max(c_acctbal)"]
    assert rows[1:] == [row for row in csv.reader(io.StringIO(expected.format("csv")))][1:]


def test_sql_outside_the_subset_is_exit_2_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tally", "sql", "select a.x from 't.csv' a join 'u.csv' b on 1=1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("tally: ") and "join" in done.stderr.lower()
    assert "Traceback" not in done.stderr
