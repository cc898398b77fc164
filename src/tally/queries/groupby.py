"""Combining group-by partials exactly, and finalizing them into the result table.

Every partial column combines associatively and exactly, so the order in which partials
arrive never changes the result:

* counts add as integers; DECIMAL and integer sums add as DECIMAL(38, s) (DuckDB checks
  overflow); min and max are min and max; count_distinct keeps each group's distinct values
  and unions them. These are also independent of how rows were split into partials.
* a sum of doubles arrives as one Kahan sum per partial and group. Those are kept as a list
  per group (condensed, when long, into Shewchuk's exact expansion) and added at the end by
  ``math.fsum``, which rounds their exact total once: the digits never depend on the order of
  merging. How rows were split can move a partial's Kahan sum by its last bit, far below the
  15 significant digits printed (short of a cancellation of about 16 digits). Numbers with a
  fixed number of decimals are DECIMAL (see :mod:`tally.queries.infer`), exact throughout.

The merger stays columnar: partials pile up as Arrow tables and are combined by one DuckDB
aggregation whenever the pile passes ``compact_rows`` rows, and once more at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from tally.errors import ProtocolError
from tally.kernels.delimited import SOURCE, GroupPartial, arrow_sql
from tally.queries.plan import Plan

_CONDENSE_AT = 16  # a group's list of double sums longer than this becomes an exact expansion


@dataclass
class GroupResult:
    """The finalized answer: ``table`` holds the printed columns in order."""

    table: pa.Table
    lines: int
    malformed: int
    failed_partitions: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed_partitions


def encode_partial(partial: GroupPartial) -> bytes:
    """A partial as bytes: an Arrow IPC stream whose schema metadata holds the counts."""
    meta = {
        b"lines": str(partial.lines).encode(),
        b"malformed": str(partial.malformed).encode(),
        b"bytes_read": str(partial.bytes_read).encode(),
    }
    table = partial.table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def decode_partial(data: bytes | memoryview) -> GroupPartial:
    """The inverse of :func:`encode_partial`; ProtocolError for anything else."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        meta = table.schema.metadata or {}
        counts = [int(meta[k]) for k in (b"lines", b"malformed", b"bytes_read")]
    except (pa.ArrowException, KeyError, ValueError) as e:
        raise ProtocolError(f"malformed group-by partial: {e}") from None
    if not 0 <= counts[1] <= counts[0] or counts[2] < 0:
        raise ProtocolError("malformed group-by partial: line counts out of range")
    return GroupPartial(table.replace_schema_metadata(None), *counts)


def check_layout(plan: Plan, schema: pa.Schema) -> None:
    """ProtocolError unless a partial's columns are the ones ``plan``'s tasks make."""
    expected = [f"g{i}" for i in range(len(plan.group_by))]
    for j, agg in enumerate(plan.aggregates):
        parts = {"count": "n", "sum": "ns", "avg": "ns", "min": "v", "max": "v"}
        expected += [f"a{j}_{p}" for p in parts.get(agg.func, "d")]
    if schema.names != expected:
        raise ProtocolError(f"a group-by partial has columns {schema.names}, not {expected}")


class GroupMerger:
    """Merges the partials of one plan: ``add(partial)`` any number of times, then ``result()``."""

    def __init__(self, plan: Plan, compact_rows: int = 1 << 18) -> None:
        self.plan = plan
        self.compact_rows = compact_rows
        self.lines = 0
        self.malformed = 0
        self.bytes_read = 0
        self._tables: list[pa.Table] = []
        self._schema: pa.Schema | None = None  # of incoming partials
        self._rows = 0
        self._double_sums = [
            f"a{j}_s" for j, a in enumerate(plan.aggregates) if a.func in ("sum", "avg")
        ]

    def add(self, partial: GroupPartial) -> None:
        table = partial.table
        if self._schema is None:
            self._check_layout(table.schema)
            self._schema = table.schema
            self._double_sums = [
                name
                for name in self._double_sums
                if pa.types.is_floating(table.schema.field(name).type)
            ]
        elif not table.schema.equals(self._schema):
            raise ProtocolError("a group-by partial does not match the others' columns")
        self.lines += partial.lines
        self.malformed += partial.malformed
        self.bytes_read += partial.bytes_read
        for name in self._double_sums:  # one value per partial -> a list of them
            sums = table[name].combine_chunks()
            zeros = pc.fill_null(sums, _zero(pa.float64(), np.float64))
            lists = pa.ListArray.from_arrays(_offsets(len(sums) + 1), zeros)
            table = table.set_column(table.schema.get_field_index(name), name, lists)
        self._tables.append(table)
        self._rows += table.num_rows
        if self._rows > self.compact_rows and len(self._tables) > 1:
            self._compact()

    def _check_layout(self, schema: pa.Schema) -> None:
        check_layout(self.plan, schema)

    def _compact(self) -> pa.Table:
        if self._schema is None:
            raise RuntimeError("nothing to compact")
        table = pa.concat_tables(self._tables) if len(self._tables) > 1 else self._tables[0]
        if len(self._tables) > 1:
            table = self._combine(table)
        table = self._condense(table)
        self._tables = [table]
        self._rows = table.num_rows
        return table

    def _combine(self, table: pa.Table) -> pa.Table:
        keys = [f"g{i}" for i in range(len(self.plan.group_by))]
        items = list(keys)
        for name in table.schema.names[len(keys) :]:
            j, part = int(name[1 : name.index("_")]), name[-1]
            func = self.plan.aggregates[j].func
            if part == "n":
                items.append(f"sum({name})::BIGINT AS {name}")
            elif part == "s" and name in self._double_sums:
                items.append(f"flatten(list({name})) AS {name}")
            elif part == "s":
                items.append(f"sum({name}) AS {name}")
            elif part == "v":
                items.append(f"{func}({name}) AS {name}")
            else:
                items.append(f"list_distinct(flatten(list({name}))) AS {name}")
        group = f" GROUP BY {', '.join(keys)}" if keys else ""
        merged = arrow_sql(table, f"SELECT {', '.join(items)} FROM {SOURCE}{group}", "merge")
        return merged.to_arrow_table().cast(table.schema)

    def _condense(self, table: pa.Table) -> pa.Table:
        for name in self._double_sums:
            column = table[name].combine_chunks()
            if not len(column) or pc.max(pc.list_value_length(column)).as_py() <= _CONDENSE_AT:
                continue
            lists = [exact_expansion(v) for v in column.to_pylist()]
            table = table.set_column(
                table.schema.get_field_index(name), name, pa.array(lists, column.type)
            )
        return table

    def result(self, failed_partitions: Sequence[str] = ()) -> GroupResult:
        """The finalized result (the merger may be added to afterwards)."""
        if self._schema is None:
            return GroupResult(self._empty(), self.lines, self.malformed, list(failed_partitions))
        table = self._compact()
        return GroupResult(
            finalize(self.plan, table), self.lines, self.malformed, list(failed_partitions)
        )

    def _empty(self) -> pa.Table:
        """No partial at all: no groups; a global aggregate still has its one row."""
        rows = 0 if self.plan.group_by else 1
        columns = [pa.nulls(rows, pa.null()) for _ in self.plan.group_by]
        for agg in self.plan.aggregates:
            counted = agg.func in ("count", "count_distinct")
            columns.append(pa.array([0] * rows, pa.int64()) if counted else pa.nulls(rows))
        return _order(self.plan, pa.Table.from_arrays(columns, list(self.plan.output_names)))


def exact_expansion(values: Iterable[float]) -> list[float]:
    """Non-overlapping doubles whose exact sum is the exact sum of ``values`` (Shewchuk)."""
    partials: list[float] = []
    for x in values:
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]
    return partials


def finalize(plan: Plan, table: pa.Table) -> pa.Table:
    """The merged partial table -> the result: keys then aggregates, ordered, limited."""
    keys = len(plan.group_by)
    columns = [table[f"g{i}"] for i in range(keys)]
    for j, agg in enumerate(plan.aggregates):
        if agg.func == "count":
            columns.append(table[f"a{j}_n"])
        elif agg.func in ("min", "max"):
            columns.append(table[f"a{j}_v"])
        elif agg.func == "count_distinct":
            distinct = pc.list_value_length(table[f"a{j}_d"]).cast(pa.int64())
            zero = _zero(pa.int64(), np.int64)  # no value but NULLs: none distinct
            columns.append(pc.fill_null(distinct, zero))
        else:
            columns.append(_sum_or_avg(agg.func, table[f"a{j}_n"], table[f"a{j}_s"]))
    return _order(plan, pa.Table.from_arrays(columns, list(plan.output_names)))


def _sum_or_avg(func: str, counts: pa.ChunkedArray, sums: pa.ChunkedArray) -> pa.Array:
    n = counts.to_pylist()
    if pa.types.is_list(sums.type):
        totals = [math.fsum(v) if c else None for v, c in zip(sums.to_pylist(), n, strict=True)]
        if func == "sum":
            return _doubles(totals)
        return _doubles([t / c if c else None for t, c in zip(totals, n, strict=True)])
    if func == "sum":
        return sums.combine_chunks()
    values = sums.to_pylist()  # Decimal: exact, so the quotient is rounded once
    averages = [
        float(Fraction(v) / c) if c and v is not None else None
        for v, c in zip(values, n, strict=True)
    ]
    return _doubles(averages)


def _zero(kind: pa.DataType, dtype: type[np.number[Any]]) -> pa.Scalar:
    """A zero of ``kind`` (see :func:`_doubles`: ``pa.scalar`` would import pandas)."""
    return pa.Array.from_buffers(kind, 1, [None, pa.py_buffer(np.zeros(1, dtype))])[0]


def _offsets(count: int) -> pa.Array:
    """0, 1, ..., count - 1 as int32 (see :func:`_doubles`)."""
    data = np.arange(count, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), count, [None, pa.py_buffer(data)])


def _doubles(values: list[float | None]) -> pa.Array:
    """A double column from Python values, built from its buffers: ``pa.array`` and
    ``pa.table`` import pandas, when installed, to check their input (0.2 s of a cold run)."""
    valid = np.array([v is not None for v in values], dtype=bool)
    data = np.array([0.0 if v is None else v for v in values], dtype=np.float64)
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.float64(), len(values), [bitmap, pa.py_buffer(data)])


def _order(plan: Plan, table: pa.Table) -> pa.Table:
    names = table.schema.names
    sort_keys = [
        (names[k.column], "descending" if k.descending else "ascending") for k in plan.order_by
    ]
    taken = {name for name, _ in sort_keys}
    sort_keys += [(n, "ascending") for n in names[: len(plan.group_by)] if n not in taken]
    if sort_keys and table.num_rows > 1:
        order = pc.sort_indices(table, sort_keys=sort_keys)  # nulls last, as in DuckDB
        table = table.take(order)
    if plan.limit is not None:
        table = table.slice(0, plan.limit)
    if plan.select:
        table = table.select(list(plan.select))
    return table


def warm_up() -> None:
    """Load what the first merge and finalize would load on the way to the answer (DuckDB,
    Arrow's conversions). A coordinator calls this on a thread while its workers start."""
    _doubles([1.0, None])
