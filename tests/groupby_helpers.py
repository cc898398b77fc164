"""Shared by the group-by tests: TPC-H data from tpchgen-cli, running a plan over partitions,
and DuckDB's answer over the same files with the same column types."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from tally.kernels.delimited import compute_partial
from tally.queries.groupby import GroupMerger, GroupResult, decode_partial, encode_partial
from tally.queries.groupby_output import show
from tally.queries.plan import Plan

LINEITEM = [
    "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity", "l_extendedprice",
    "l_discount", "l_tax", "l_returnflag", "l_linestatus", "l_shipdate", "l_commitdate",
    "l_receiptdate", "l_shipinstruct", "l_shipmode", "l_comment",
]  # fmt: skip
CUSTOMER = [
    "c_custkey", "c_name", "c_address", "c_nationkey", "c_phone", "c_acctbal", "c_mktsegment",
    "c_comment",
]  # fmt: skip

Q1 = """
select
    l_returnflag, l_linestatus,
    sum(l_quantity) as sum_qty,
    sum(l_extendedprice) as sum_base_price,
    sum(l_extendedprice * (1 - l_discount)) as sum_disc_price,
    sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) as sum_charge,
    avg(l_quantity) as avg_qty,
    avg(l_extendedprice) as avg_price,
    avg(l_discount) as avg_disc,
    count(*) as count_order
from 'lineitem.tbl'
where l_shipdate <= date '1998-12-01' - interval '90' day
group by l_returnflag, l_linestatus
order by l_returnflag, l_linestatus
"""


def tpchgen() -> str:
    found = Path(sys.executable).with_name("tpchgen-cli")
    return str(found) if found.exists() else (shutil.which("tpchgen-cli") or "tpchgen-cli")


def generate_tpch(out: Path) -> Path:
    """TPC-H SF 0.01 lineitem and customer as .tbl files in ``out``."""
    subprocess.run(
        [tpchgen(), "-s", "0.01", "-T", "lineitem,customer", "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


@pytest.fixture(scope="session")
def tpch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_tpch(tmp_path_factory.mktemp("tpch"))


def split_lines(data: bytes, parts: int) -> list[bytes]:
    """``data`` cut at newlines into ``parts`` pieces of about equal size."""
    pieces, start = [], 0
    for i in range(1, parts + 1):
        end = len(data) if i == parts else data.find(b"\n", len(data) * i // parts) + 1 or len(data)
        pieces.append(data[start : max(start, end)])
        start = max(start, end)
    return pieces


def run(
    plan: Plan, pieces: Sequence[bytes], *, compact_rows: int = 1 << 18, **kw: object
) -> GroupResult:
    """Each piece as a task, every partial through its wire form, merged in order."""
    merger = GroupMerger(plan, compact_rows=compact_rows)
    for i, piece in enumerate(pieces):
        partial = compute_partial(plan, io.BytesIO(piece), skip_header=plan.header and i == 0, **kw)  # type: ignore[arg-type]
        merger.add(decode_partial(encode_partial(partial)))
    return merger.result()


def duck_source(path: Path, plan: Plan, *, ignore_errors: bool = False) -> str:
    """A DuckDB read_csv(...) of ``path`` with the plan's column names and types."""
    names = [plan.column_name(i) for i in range(plan.width)]
    columns = {n: plan.schema.get(n, "VARCHAR") for n in names}
    if plan.trailing_delimiter:
        columns["__trailing"] = "VARCHAR"
    options = ", ignore_errors=true" if ignore_errors else ""
    delim = plan.delimiter.replace("'", "''")
    return (
        f"read_csv('{path}', delim='{delim}', header={str(plan.header).lower()},"
        f" columns={columns!r}, quote='', escape='', auto_detect=false{options})"
    )


def duck_rows(sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    answer: list[tuple[object, ...]] = con.sql(sql).fetchall()
    con.close()
    return answer


def rows(result: GroupResult) -> list[tuple[object, ...]]:
    columns = [result.table[n].to_pylist() for n in result.table.schema.names]
    return list(zip(*columns, strict=True))


def assert_same(ours: list[tuple[object, ...]], theirs: list[tuple[object, ...]]) -> None:
    """Equal row by row: exact for everything but doubles, which agree to the printed digits
    (15 significant) or, when DuckDB's own double sum is off in the last place, to 1e-12."""
    assert len(ours) == len(theirs), (ours, theirs)
    for mine, other in zip(ours, theirs, strict=True):
        assert len(mine) == len(other)
        for a, b in zip(mine, other, strict=True):
            if isinstance(a, float) or isinstance(b, float):
                assert a is not None and b is not None, (mine, other)
                same = show(a) == show(b) or math.isclose(a, b, rel_tol=1e-12)  # type: ignore[arg-type]
                assert same, (mine, other)
            elif isinstance(b, Decimal) and isinstance(a, Decimal):
                assert a == b and a.as_tuple().exponent == b.as_tuple().exponent, (mine, other)
            else:
                assert a == b, (mine, other)
