"""Queries: a partial per partition, an exact merge, a finalize step and output formats.

Every query of the reference job is a filtered domain count: ``--domain D`` counts only D,
``--top K`` and ``--all`` count every domain and differ only in how many rows they print.
Rows are ordered by count descending, then by domain bytes ascending.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from tally.errors import ProtocolError
from tally.kernels import DomainCounts
from tally.protocol import Partial, QuerySpec

_ENDS = np.dtype("<u4")
_COUNTS = np.dtype("<i8")


def pack(result: DomainCounts) -> Partial:
    """DomainCounts -> compact wire form (one bytes blob for all keys, two numeric arrays)."""
    keys = list(result.counts)
    ends = np.cumsum([len(k) for k in keys], dtype=np.int64).astype(_ENDS)
    counts = np.fromiter(result.counts.values(), dtype=_COUNTS, count=len(keys))
    return Partial(
        memoryview(b"".join(keys)), memoryview(ends.tobytes()), memoryview(counts.tobytes()),
        result.lines,
        result.malformed,
    )  # fmt: skip


def check_partial(partial: Partial) -> None:
    """ProtocolError unless ``partial``'s buffers describe a well-formed set of keys."""
    keys, ends, counts = len(partial.keys), len(partial.ends), len(partial.counts)
    if ends % _ENDS.itemsize or counts != ends // _ENDS.itemsize * _COUNTS.itemsize:
        raise ProtocolError(f"malformed partial: {ends} bytes of offsets, {counts} of counts")
    if not 0 <= partial.malformed <= partial.lines:
        raise ProtocolError("malformed partial: line counts out of range")
    if not ends:
        if keys:
            raise ProtocolError("malformed partial: key bytes without offsets")
        return
    offsets = np.frombuffer(partial.ends, dtype=_ENDS)
    if int(offsets[-1]) != keys or keys >= 1 << 31 or (np.diff(offsets.astype(np.int64)) < 0).any():
        raise ProtocolError("malformed partial: key offsets out of order or out of bounds")


def key_array(partial: Partial) -> pa.Array:
    """A partial's keys as an Arrow binary array over the received buffers (no copy of keys)."""
    ends = np.frombuffer(partial.ends, dtype=_ENDS)
    offsets = np.zeros(len(ends) + 1, dtype=np.int32)
    offsets[1:] = ends
    return pa.Array.from_buffers(
        pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(partial.keys)]
    )


@dataclass
class QueryResult:
    """The merged, finalized answer to a query, with its accounting."""

    query: QuerySpec
    rows: list[tuple[bytes, int]]  # for kind == "domain": one row (domain, count)
    lines: int
    malformed: int
    failed_partitions: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed_partitions


class Merger:
    """Merges partials exactly; the order of merging never changes the result.

    Partials stay columnar: their keys and counts pile up as Arrow arrays and are summed
    per key by an Arrow hash aggregation whenever the pile grows past ``compact_rows``, so no
    Python object is made per key until the final rows are printed.
    """

    def __init__(self, query: QuerySpec, compact_rows: int = 1 << 18) -> None:
        self.query = query
        self.compact_rows = compact_rows
        self.lines = 0
        self.malformed = 0
        self._keys: list[pa.Array] = []
        self._counts: list[pa.Array] = []
        self._rows = 0

    def add(self, partial: Partial) -> None:
        self.lines += partial.lines
        self.malformed += partial.malformed
        keys = key_array(partial)
        if not len(keys):
            return
        self._keys.append(keys)
        # a copy: a view into the frame is not 8-byte aligned, and the keys stay views
        self._counts.append(pa.array(np.frombuffer(partial.counts, dtype=_COUNTS).copy()))
        self._rows += len(keys)
        if self._rows > self.compact_rows and len(self._keys) > 1:
            self._compact()

    def _compact(self) -> pa.Table:
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
        return table

    def finalize(self, failed_partitions: list[str] | None = None) -> QueryResult:
        table = self._compact()
        if self.query.kind == "domain":
            domain = self.query.domain or b""
            rows = [(domain, sum(table["n"].to_pylist()))]  # at most one key was counted
        else:
            order = pc.sort_indices(table, sort_keys=[("n", "descending"), ("key", "ascending")])
            if self.query.kind == "top":
                order = order[: self.query.k]
            top = table.take(order)
            rows = list(zip(top["key"].to_pylist(), top["n"].to_pylist(), strict=True))
        return QueryResult(self.query, rows, self.lines, self.malformed, failed_partitions or [])


def show(domain: bytes) -> str:
    """Domain bytes as UTF-8 text; invalid bytes appear as ``\\xff``, never dropped."""
    return domain.decode("utf-8", "backslashreplace")


FORMATS = ("text", "json", "csv", "tsv")


def format_result(result: QueryResult, fmt: str) -> str:
    """The text printed on stdout (ending with a newline, unless there is nothing to print).

    ``text``: ``domain count`` lines (the count alone for a domain query). ``json``: one
    document with the rows and the accounting. ``csv`` and ``tsv``: a ``domain,count`` header
    and one row per domain (a single row for a domain query), quoted and ended as RFC 4180
    says (the csv module's ``excel`` and ``excel-tab`` dialects: CRLF line ends, a field with
    a delimiter, quote or line break in double quotes).
    """
    if fmt == "json":
        doc: dict[str, object] = {
            "query": result.query.kind,
            "complete": result.complete,
            "lines": result.lines,
            "malformed_lines": result.malformed,
            "failed_partitions": result.failed_partitions,
        }
        if result.query.kind == "domain":
            doc["domain"] = show(result.rows[0][0])
            doc["count"] = result.rows[0][1]
        else:
            doc["rows"] = [{"domain": show(d), "count": n} for d, n in result.rows]
        return json.dumps(doc, ensure_ascii=False) + "\n"
    if fmt in ("csv", "tsv"):
        out = io.StringIO()
        writer = csv.writer(out, dialect="excel" if fmt == "csv" else "excel-tab")
        writer.writerow(("domain", "count"))
        writer.writerows((show(d), n) for d, n in result.rows)
        return out.getvalue()
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if result.query.kind == "domain":
        return f"{result.rows[0][1]}\n"
    return "".join(f"{show(d)} {n}\n" for d, n in result.rows)
