"""The domain count: lines per domain under the domain rule (docs/domain-rule.md).

``--domain D`` counts only D; ``--top K`` and ``--all`` count every domain and differ only in
how many rows they print. Rows are ordered by count descending, then by domain bytes
ascending. A partial is a table ``key`` (binary) and ``n`` (int64).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from tally.errors import ProtocolError
from tally.kernels import DomainCounts, arrow_table
from tally.protocol import QuerySpec
from tally.queries.base import FORMATS, QueryResult, TaskOutput, check_lines, show

SCHEMA = pa.schema([("key", pa.binary(), False), ("n", pa.int64(), False)])
MAX_LINES = 1 << 62  # more lines than any job has: a sum below it cannot overflow int64


def to_table(counts: DomainCounts) -> pa.Table | None:
    """A partial's table (as the fast kernel made it, or built from the counts' dict)."""
    return counts.table


def load_kernel(name: str) -> Any:
    """``reference`` (plain Python), ``fast`` (columnar) or ``auto`` (fast when installed)."""
    if name in ("fast", "auto"):
        try:
            from tally.kernels.fast import count_domains as fast

            return fast
        except ImportError:
            if name == "fast":
                raise
    from tally.kernels.reference import count_domains

    return count_domains


class DomainCount:
    """The query kind of :class:`tally.protocol.QuerySpec` plans."""

    def compute(
        self, plan: QuerySpec, stream: BinaryIO, record_limit: int, kernel: str, at_start: bool
    ) -> TaskOutput:
        only = plan.domain if plan.kind == "domain" else None
        counts = load_kernel(kernel)(stream, only=only, record_limit=record_limit)
        return TaskOutput(to_table(counts), counts.lines, counts.malformed, counts.bytes_read)

    def check(self, plan: QuerySpec, table: pa.Table | None, lines: int, malformed: int) -> None:
        check_lines(lines, malformed)
        if lines >= MAX_LINES:
            raise ProtocolError(f"malformed partial: {lines} lines")
        if table is None:
            if plan.kind != "domain" and lines != malformed:
                raise ProtocolError("malformed partial: well-formed lines without a count")
            return
        if not table.schema.equals(SCHEMA):
            raise ProtocolError(f"malformed partial: schema {table.schema}")
        keys, n = table["key"], table["n"]
        if pc.min(n).as_py() < 1 or pc.min(pc.binary_length(keys)).as_py() < 1:
            raise ProtocolError("malformed partial: an empty domain or a count below 1")
        counted = pc.sum(n).as_py()
        if plan.kind == "domain":
            if table.num_rows != 1 or keys[0].as_py() != plan.domain:
                raise ProtocolError("malformed partial: a domain other than the one asked for")
            if counted > lines - malformed:
                raise ProtocolError("malformed partial: more matches than lines")
            return
        if counted != lines - malformed:
            raise ProtocolError(
                f"malformed partial: {counted} counted, {lines - malformed} well-formed lines"
            )
        for chunk in keys.chunks:  # no domain spans a line or a column
            data = chunk.buffers()[2]
            if data is None:
                continue
            raw = data.to_pybytes()  # a copy, then memchr: many times faster than a regex
            if raw.find(b"\t") >= 0 or raw.find(b"\n") >= 0:
                raise ProtocolError("malformed partial: a domain holding a newline or a tab")

    def merger(self, plan: QuerySpec) -> DomainMerger:
        return DomainMerger(plan)

    def format(self, result: QueryResult, fmt: str) -> str:
        return format_domains(result, fmt)


class DomainMerger:
    """Merges partials exactly; the order of merging never changes the result.

    Partials stay columnar: no Python object is made per key until the final rows. With the
    fast kernel's C extension, each partial's buffers are added as they come into one hash
    table (the kernel's own, ``Counter.merge``), whose buffers become the merged table.
    Without it, keys and counts pile up as Arrow arrays (views into the received frames) and
    are summed per key by an Arrow hash aggregation whenever the pile has doubled since the
    last (or passed ``compact_rows``).
    """

    def __init__(self, plan: QuerySpec, compact_rows: int = 1 << 18) -> None:
        from tally.kernels.fast import load_native

        self.plan = plan
        self.compact_rows = compact_rows
        self.lines = 0
        self.malformed = 0
        native = load_native()
        seed = int.from_bytes(os.urandom(8), "little")
        self._counter = None if native is None else native.Counter(None, seed)
        self._keys: list[pa.Array] = []
        self._counts: list[pa.Array] = []
        self._rows = 0
        self._limit = compact_rows

    def add(self, table: pa.Table | None, lines: int, malformed: int) -> None:
        if self.lines + lines >= MAX_LINES:
            raise ProtocolError(f"malformed partial: {lines} lines would overflow the job's count")
        self.lines += lines
        self.malformed += malformed
        if table is None or table.num_rows == 0:
            return
        if self._counter is not None:
            for batch in table.to_batches():
                self._merge(batch.column(0), batch.column(1))
            return
        self._keys.extend(table["key"].chunks)
        self._counts.extend(table["n"].chunks)
        self._rows += table.num_rows
        if self._rows > self._limit and len(self._keys) > 1:
            self._compact()

    def _merge(self, keys: pa.Array, n: pa.Array) -> None:
        """Add one batch's buffers to the C table (which checks every key and count)."""
        if keys.null_count or n.null_count:
            raise ProtocolError("malformed partial: a null domain or count")
        _, offsets, data = keys.buffers()
        starts = np.frombuffer(offsets, np.int32)[keys.offset : keys.offset + len(keys) + 1]
        counts = np.frombuffer(n.buffers()[1], np.int64)[n.offset : n.offset + len(n)]
        assert self._counter is not None
        try:
            self._counter.merge(b"" if data is None else data, starts, counts)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc

    def _compact(self) -> pa.Table:
        if self._counter is not None:  # the merger may go on after a finalize
            return arrow_table(*self._counter.columns()) or SCHEMA.empty_table()
        # chunked columns: no concatenation, so no 2 GiB limit on 32-bit binary offsets, and
        # hashing binary is several times faster than large_binary
        table = pa.table(
            {
                "key": pa.chunked_array(self._keys, pa.binary()),
                "n": pa.chunked_array(self._counts, pa.int64()),
            }
        )
        table = table.group_by("key").aggregate([("n", "sum")]).rename_columns(["key", "n"])
        self._keys, self._counts = table["key"].chunks, table["n"].chunks
        self._rows = table.num_rows
        # the next compaction once as many rows again have come: each row is summed a few
        # times at most, however many distinct keys there are (not once per partial)
        self._limit = max(self.compact_rows, 2 * self._rows)
        return table

    def finalize(self, failed_partitions: list[str] | None = None) -> QueryResult:
        table = self._compact()
        if self.plan.kind == "domain":
            domain = self.plan.domain or b""
            total = pc.sum(table["n"]).as_py() or 0  # at most one key was counted
            table = pa.table({"domain": pa.array([domain], pa.binary()), "count": [total]})
        else:
            keys = [("n", "descending"), ("key", "ascending")]
            if self.plan.kind == "top" and table.num_rows > self.plan.k:
                # the k first in that order (keys are distinct: no tie left to chance)
                table = table.take(pc.select_k_unstable(table, self.plan.k, sort_keys=keys))
            table = table.take(pc.sort_indices(table, sort_keys=keys))
            table = table.rename_columns(["domain", "count"])
        return QueryResult(self.plan, table, self.lines, self.malformed, failed_partitions or [])


def format_domains(result: QueryResult, fmt: str) -> str:
    """The text printed on stdout (ending with a newline, unless there is nothing to print).

    ``text``: ``domain count`` lines (the count alone for a domain query). ``json``: one
    document with the rows and the accounting. ``csv`` and ``tsv``: a ``domain,count`` header
    and one row per domain (a single row for a domain query), quoted and ended as RFC 4180
    says (the csv module's ``excel`` and ``excel-tab`` dialects: CRLF line ends, a field with
    a delimiter, quote or line break in double quotes).
    """
    plan: QuerySpec = result.plan
    rows = result.rows
    if fmt == "json":
        doc: dict[str, object] = {
            "query": plan.kind,
            "complete": result.complete,
            "lines": result.lines,
            "malformed_lines": result.malformed,
            "failed_partitions": result.failed_partitions,
        }
        if plan.kind == "domain":
            doc["domain"] = show(rows[0][0])
            doc["count"] = rows[0][1]
        else:
            doc["rows"] = [{"domain": show(d), "count": n} for d, n in rows]
        return json.dumps(doc, ensure_ascii=False) + "\n"
    if fmt in ("csv", "tsv"):
        out = io.StringIO()
        writer = csv.writer(out, dialect="excel" if fmt == "csv" else "excel-tab")
        writer.writerow(("domain", "count"))
        writer.writerows((show(d), n) for d, n in rows)
        return out.getvalue()
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if plan.kind == "domain":
        return f"{rows[0][1]}\n"
    return "".join(f"{show(d)} {n}\n" for d, n in rows)
