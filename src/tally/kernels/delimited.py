"""Per-task computation of a group-by over delimited text: bytes in, a partial Arrow table out.

Engine (chosen by measurement, ``bench/groupby_speed.py``): the stream is cut into chunks of
whole lines (:class:`~tally.kernels.lines.LineChunks`), each chunk is parsed by PyArrow's CSV
reader on one thread (only the columns the plan reads, straight into their types), and the
typed batches stream into one DuckDB aggregation per task (one thread), which keeps only its
hash table: memory stays a few chunks whatever the size of the partition.

Bad rows never crash a task; they are skipped and counted as malformed:

* a wrong number of columns (PyArrow's invalid-row handler),
* a line longer than the record limit (dropped by the chunker before parsing),
* a value that does not parse as its column's type. PyArrow refuses such a chunk as a whole;
  the chunk is then parsed again as text and cast with DuckDB's ``TRY_CAST``, which keeps the
  good rows. Every value PyArrow accepts, ``TRY_CAST`` accepts with the same result, so a
  row's fate never depends on which path its chunk took: the semantics are DuckDB's own
  ``read_csv`` with the same column types (``tests/test_groupby.py`` pins the edge cases).

Empty fields are NULL, as in DuckDB. Fields are not quoted (a quote is an ordinary byte), so
that a partition can be cut at any newline.

The partial table has one row per group: the keys ``g0, g1, ...`` and, per aggregate ``j``,
``a{j}_n`` (a count), ``a{j}_s`` (an exact sum: DECIMAL/HUGEINT, or a Kahan sum of doubles),
``a{j}_v`` (min or max) and ``a{j}_d`` (the group's distinct values, for count_distinct).
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import duckdb
import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.csv as pacsv  # type: ignore[import-untyped]

from tally.errors import ConfigError, PartitionError
from tally.kernels import DEFAULT_RECORD_LIMIT
from tally.kernels.fields import FieldReader
from tally.kernels.lines import LineChunks
from tally.queries.expr import Col, columns_of, normalize_type, to_sql
from tally.queries.plan import FUNCS, Plan, plan_from_flags

CHUNK_SIZE = 8 << 20  # bytes of whole lines parsed at a time (bench/groupby_speed.py)
_LINE_END = re.compile(rb"\r\n|\r|\n")
_FIRST_DAY, _LAST_DAY = -719162, 2932896  # 0001-01-01 and 9999-12-31, in days from 1970
_EXACT_SUM = ("DECIMAL", "HUGEINT", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UBIGINT")


@dataclass
class GroupPartial:
    """A task's partial aggregate and its accounting: ``lines`` counts non-blank lines (good
    and malformed), ``malformed`` the skipped ones, ``bytes_read`` the bytes consumed."""

    table: pa.Table
    lines: int = 0
    malformed: int = 0
    bytes_read: int = 0


def arrow_type(duck_type: str) -> pa.DataType:
    if duck_type.startswith("DECIMAL("):
        precision, scale = duck_type[8:-1].split(",")
        return pa.decimal128(int(precision), int(scale))
    return {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "DATE": pa.date32()}.get(
        duck_type, pa.string()
    )


def field(index: int) -> str:
    return f"f{index}"


def _column_sql(col: Col) -> str:
    return field(col.index)


_local = threading.local()
_database: list[duckdb.DuckDBPyConnection] = []  # this process's one, once opened
_opening = threading.Lock()


def connection(purpose: str = "query") -> duckdb.DuckDBPyConnection:
    """This thread's DuckDB connection for ``purpose``: a cursor of the process's in-memory
    database (one thread, no insertion order kept), which is opened once: a database costs
    tens of milliseconds to open, a cursor next to nothing. Casting a chunk happens while the
    task's query runs, so it has a connection of its own."""
    con: duckdb.DuckDBPyConnection | None = getattr(_local, purpose, None)
    if con is None:
        with _opening:
            if not _database:
                config: dict[str, str | bool | int | float | list[str]]
                config = {"threads": 1, "preserve_insertion_order": False}
                _database.append(duckdb.connect(config=config))
            con = _database[0].cursor()
        setattr(_local, purpose, con)
    return con


def _forget_the_database() -> None:
    """In a forked child: the parent's database is not used (its threads did not come
    along); the child opens its own."""
    global _opening
    _database.clear()
    _local.__dict__.clear()
    _opening = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_database)


SOURCE = "__tally_source"  # the name of the Arrow data in the queries below


def arrow_sql(
    data: pa.Table | pa.RecordBatchReader, sql: str, purpose: str = "query"
) -> duckdb.DuckDBPyRelation:
    """``sql`` over the Arrow ``data``, named :data:`SOURCE` in it. Always a stream, through
    ``from_arrow``: registering a Python object, or reading a table, makes DuckDB import
    pandas (when it is installed) to check its type, tenths of a second on a worker's first
    task."""
    if isinstance(data, pa.Table):
        data = pa.RecordBatchReader.from_batches(data.schema, data.to_batches())
    relation = connection(purpose).from_arrow(data).query(SOURCE, sql)
    assert relation is not None  # a SELECT always has one
    return relation


class PartialLayout:
    """How a bound plan turns into SQL: the input schema, and one aggregation query."""

    def __init__(self, plan: Plan) -> None:
        if not plan.bound:
            raise ConfigError("the plan is not bound to its data (see tally.queries.infer.bind)")
        _check(plan)
        self.plan = plan
        self.used = plan.used_columns()
        self.schema = pa.schema([(field(i), arrow_type(plan.type_of(i))) for i in self.used])
        self.arg_types = self._describe()
        self.select = self._select_list()

    def _describe(self) -> list[str]:
        """The DuckDB type of every aggregate's argument (and a check of the whole plan)."""
        exprs = [to_sql(a.arg, _column_sql) for a in self.plan.aggregates if a.arg is not None]
        where = to_sql(self.plan.where, _column_sql) if self.plan.where is not None else "TRUE"
        try:
            select = f"SELECT {', '.join([*exprs, where])} FROM {SOURCE}"
            rel = arrow_sql(pa.RecordBatchReader.from_batches(self.schema, []), select)
            types = [str(t) for t in rel.types]
        except duckdb.Error as e:
            raise ConfigError(f"bad query: {_one_line(e)}") from None
        if types[-1] not in ("BOOLEAN", '"NULL"', "NULL"):
            raise ConfigError(f"the where clause must be a condition, not a {types[-1]}")
        it = iter(types)
        return [next(it) if a.arg is not None else "" for a in self.plan.aggregates]

    def _select_list(self) -> list[str]:
        items = [f"{field(c.index)} AS g{i}" for i, c in enumerate(self.plan.group_by)]
        for j, (agg, kind) in enumerate(zip(self.plan.aggregates, self.arg_types, strict=True)):
            arg = to_sql(agg.arg, _column_sql) if agg.arg is not None else "*"
            if agg.func == "count":
                items.append(f"count({arg}) AS a{j}_n")
            elif agg.func in ("sum", "avg"):
                if not _numeric(kind):
                    raise ConfigError(f"{agg.func} needs a number: {agg.name} is {kind}")
                total = "sum" if kind.startswith(_EXACT_SUM) else "fsum"
                items += [f"count({arg}) AS a{j}_n", f"{total}({arg}) AS a{j}_s"]
            elif agg.func in ("min", "max"):
                items.append(f"{agg.func}({arg}) AS a{j}_v")
            else:  # count_distinct
                items.append(f"list(DISTINCT {arg}) FILTER (WHERE {arg} IS NOT NULL) AS a{j}_d")
        return items

    def query(self, source: str) -> str:
        where = f" WHERE {to_sql(self.plan.where, _column_sql)}" if self.plan.where else ""
        keys = ", ".join(f"g{i}" for i in range(len(self.plan.group_by)))
        group = f" GROUP BY {keys}" if keys else ""
        return f"SELECT {', '.join(self.select)} FROM {source}{where}{group}"


def _check(plan: Plan) -> None:
    """ConfigError unless every part of a plan that reaches SQL is one Tally makes."""
    for name, kind in plan.schema.items():
        if normalize_type(kind) != kind:
            raise ConfigError(f"bad type {kind!r} for column {name!r}")
    if len(plan.delimiter) != 1 or plan.delimiter in "\r\n":
        raise ConfigError(f"bad delimiter {plan.delimiter!r}")
    for agg in plan.aggregates:
        if agg.func not in FUNCS or (agg.arg is None and agg.func != "count"):
            raise ConfigError(f"bad aggregate {agg.func!r}")
    columns = [*plan.group_by, *(c for a in plan.aggregates if a.arg for c in columns_of(a.arg))]
    if plan.where is not None:
        columns += columns_of(plan.where)
    if any(not 0 <= c.index < plan.width for c in columns):
        raise ConfigError("a column of the plan is out of range")


def layout_of(plan: Plan) -> PartialLayout:
    """The layout of ``plan``, cached per thread: every task of a job has the same plan."""
    key = msgspec.msgpack.encode(plan)
    cache: dict[bytes, PartialLayout] = getattr(_local, "layouts", None) or {}
    _local.layouts = cache
    layout = cache.get(key)
    if layout is None:
        if len(cache) >= 8:
            cache.clear()
        layout = cache[key] = PartialLayout(plan)
    return layout


def _numeric(kind: str) -> bool:
    return kind.startswith(_EXACT_SUM) or kind in ("DOUBLE", "FLOAT", "REAL")


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Parser:
    """Parses chunks of whole lines into typed batches, counting bad rows."""

    def __init__(self, layout: PartialLayout, block_size: int) -> None:
        plan = layout.plan
        self.layout = layout
        self.rows = 0
        self.invalid = 0  # wrong number of columns
        self.unparsable = 0  # a value that is not of its column's type
        names = [field(i) for i in range(plan.width + plan.trailing_delimiter)]
        # one block per chunk: a chunk of whole lines is at most chunk_size + record_limit + 1
        self.read_options = pacsv.ReadOptions(
            column_names=names, use_threads=False, block_size=block_size
        )
        self.parse_options = pacsv.ParseOptions(
            delimiter=plan.delimiter,
            quote_char=False,
            escape_char=False,
            newlines_in_values=False,
            ignore_empty_lines=True,
            invalid_row_handler=self._invalid_row,
        )
        include = [field(i) for i in layout.used]
        common = {"null_values": [""], "strings_can_be_null": True, "include_columns": include}
        self.typed = pacsv.ConvertOptions(
            column_types={f.name: f.type for f in layout.schema}, **common
        )
        self.as_text = pacsv.ConvertOptions(
            column_types={f.name: pa.binary() for f in layout.schema}, **common
        )
        self.fields = FieldReader.for_schema(layout.schema, plan.delimiter, len(names))

    def _invalid_row(self, row: object) -> str:
        self.invalid += 1
        return "skip"

    def _read(self, chunk: memoryview, options: pacsv.ConvertOptions) -> pa.Table:
        return pacsv.read_csv(
            pa.py_buffer(chunk),
            read_options=self.read_options,
            parse_options=self.parse_options,
            convert_options=options,
        )

    def parse(self, chunk: memoryview) -> pa.Table:
        if self.fields is not None:
            read = self.fields.read(chunk)
            if read is not None:
                table, invalid = read
                self.invalid += invalid
                self.rows += table.num_rows
                return table
        if not _is_utf8(chunk):
            # PyArrow cannot hand a bad row that is not UTF-8 to its handler: drop them first
            chunk = self._good_rows(chunk)
            if not chunk:
                return self.layout.schema.empty_table()
        invalid = self.invalid
        try:
            table = self._read(chunk, self.typed)
        except pa.ArrowInvalid:
            self.invalid = invalid  # the rows are seen again
            table = self._read(chunk, self.as_text)
            self.rows += table.num_rows
            return self._dates_in_range(self._cast(table))
        self.rows += table.num_rows
        return self._dates_in_range(table)

    def _dates_in_range(self, table: pa.Table) -> pa.Table:
        """Only dates of the years 1 to 9999 (SQL's DATE, which the C parser reads, and the
        results print): a row with another date is unparsable, counted."""
        keep = None
        for f in self.layout.schema:
            if not pa.types.is_date32(f.type):
                continue
            days = table[f.name].cast(pa.int32())
            low, high = pc.min_max(days).values()
            if low.as_py() is None or (low.as_py() >= _FIRST_DAY and high.as_py() <= _LAST_DAY):
                continue
            inside = pc.and_(pc.greater_equal(days, _FIRST_DAY), pc.less_equal(days, _LAST_DAY))
            inside = pc.fill_null(inside, True)
            keep = inside if keep is None else pc.and_(keep, inside)
        if keep is None:
            return table
        kept = table.filter(keep)
        self.unparsable += table.num_rows - kept.num_rows
        return kept

    def _good_rows(self, chunk: memoryview) -> memoryview:
        """The chunk's lines of the right number of fields; the others counted. Lines end as
        PyArrow's do, at a CR, an LF or both."""
        width = len(self.read_options.column_names)
        delimiter = self.parse_options.delimiter.encode()
        lines = [line for line in _LINE_END.split(bytes(chunk)) if line]
        good = [line for line in lines if line.count(delimiter) == width - 1]
        self.invalid += len(lines) - len(good)
        return memoryview(b"\n".join(good))

    def _cast(self, text: pa.Table) -> pa.Table:
        """Text columns -> the typed schema with DuckDB's TRY_CAST; bad rows dropped, counted."""
        checks = []
        for f in self.layout.schema:
            try:
                as_str = text[f.name].cast(pa.string())
            except pa.ArrowInvalid:  # not UTF-8: such values are bad, the others kept
                values = [_utf8_or_none(v) for v in text[f.name].to_pylist()]
                bad = pa.array([v is None for v in values], pa.bool_())
                text = text.append_column(f"bad_{f.name}", pc.and_(bad, text[f.name].is_valid()))
                as_str = pa.array(values, pa.string())
                checks.append(f"NOT bad_{f.name}")
            text = text.set_column(text.schema.get_field_index(f.name), f.name, as_str)
        casts = []
        for f in self.layout.schema:
            duck = self.layout.plan.type_of(int(f.name[1:]))
            value = f"TRY_CAST({f.name} AS {duck})" if duck != "VARCHAR" else f.name
            casts.append(f"{value} AS {f.name}")
            checks.append(f"({f.name} IS NULL OR {value} IS NOT NULL)")
        select = f"SELECT {', '.join(casts)} FROM {SOURCE} WHERE {' AND '.join(checks)}"
        typed = arrow_sql(text, select, "cast").to_arrow_table()
        self.unparsable += text.num_rows - typed.num_rows
        return typed.cast(self.layout.schema)


def _is_utf8(chunk: memoryview) -> bool:
    data = bytes(chunk)
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _utf8_or_none(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def compute_partial(
    plan: Plan,
    stream: BinaryIO,
    record_limit: int = DEFAULT_RECORD_LIMIT,
    *,
    skip_header: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> GroupPartial:
    """The partial aggregate of ``plan`` over the whole lines of ``stream``.

    ``skip_header`` (default ``plan.header``) drops the stream's first line: pass False for a
    byte range that does not start the file. Stream errors propagate as they are; a query
    that fails on the data (an overflow) is a PartitionError.
    """
    layout = layout_of(plan)
    parser = _Parser(layout, block_size=chunk_size + record_limit + 2)
    first = plan.header if skip_header is None else skip_header
    chunks = LineChunks(stream, chunk_size, record_limit, skip_first_line=first)
    failure: list[BaseException] = []

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for chunk in chunks:
                yield from parser.parse(chunk).to_batches()
        except BaseException as e:  # re-raised below with its own type
            failure.append(e)
            raise

    reader = pa.RecordBatchReader.from_batches(layout.schema, batches())
    try:
        table = arrow_sql(reader, layout.query(SOURCE)).to_arrow_table()
    except duckdb.Error as e:
        if failure:
            raise failure[0] from None
        raise PartitionError(f"query failed on the data: {_one_line(e)}", retryable=False) from None
    if failure:
        raise failure[0]
    malformed = parser.invalid + parser.unparsable + chunks.oversized
    return GroupPartial(
        table=table,
        lines=parser.rows + parser.invalid + chunks.oversized,
        malformed=malformed,
        bytes_read=chunks.bytes_read,
    )


# a few lines with every type a task converts (text, integer, DECIMAL, double, date)
_WARM_UP_LINES = b"a|1|2.50|0.5|1998-01-02|\nb|2|3.25|1.5|1998-01-03|\n"


def warm_up() -> None:
    """Load the engine and run one tiny task: DuckDB, PyArrow's CSV reader and their first
    queries cost a few tenths of a second once per process (a connection, per thread, a few
    hundredths). A worker does this once joined, so its first task costs what the others do."""
    plan = plan_from_flags(
        delimiter="|",
        group_by=["1"],
        aggs=["count", "sum:2", "avg:3", "sum:4", "max:5", "count_distinct:2"],
        sample=_WARM_UP_LINES,
    )
    compute_partial(plan, io.BytesIO(_WARM_UP_LINES))
