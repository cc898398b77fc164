"""Queries: a partial per partition, an exact merge, a finalize step and output formats.

Every query of the reference job is a filtered domain count: ``--domain D`` counts only D,
``--top K`` and ``--all`` count every domain and differ only in how many rows they print.
Rows are ordered by count descending, then by domain bytes ascending.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from tally.kernels import DomainCounts
from tally.protocol import Partial, QuerySpec

_ENDS = np.dtype("<u4")
_COUNTS = np.dtype("<i8")


def pack(result: DomainCounts) -> Partial:
    """DomainCounts -> compact wire form (one bytes blob for all keys, two numeric arrays)."""
    keys = list(result.counts)
    ends = np.cumsum([len(k) for k in keys], dtype=np.int64).astype(_ENDS)
    counts = np.fromiter(result.counts.values(), dtype=_COUNTS, count=len(keys))
    return Partial(b"".join(keys), ends.tobytes(), counts.tobytes(), result.lines, result.malformed)


def unpack(partial: Partial) -> DomainCounts:
    """The inverse of :func:`pack`."""
    ends = np.frombuffer(partial.ends, dtype=_ENDS).tolist()
    counts = np.frombuffer(partial.counts, dtype=_COUNTS).tolist()
    blob = partial.keys
    result = DomainCounts(lines=partial.lines, malformed=partial.malformed)
    start = 0
    for end, n in zip(ends, counts, strict=True):
        result.counts[blob[start:end]] = n
        start = end
    return result


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
    """Merges partials exactly; the order of merging never changes the result."""

    def __init__(self, query: QuerySpec) -> None:
        self.query = query
        self.total = DomainCounts()

    def add(self, partial: Partial) -> None:
        self.total.merge(unpack(partial))

    def finalize(self, failed_partitions: list[str] | None = None) -> QueryResult:
        counts = self.total.counts
        if self.query.kind == "domain":
            domain = self.query.domain or b""
            rows = [(domain, counts.get(domain, 0))]
        else:
            rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if self.query.kind == "top":
                rows = rows[: self.query.k]
        return QueryResult(
            self.query, rows, self.total.lines, self.total.malformed, failed_partitions or []
        )


def show(domain: bytes) -> str:
    """Domain bytes as UTF-8 text; invalid bytes appear as ``\\xff``, never dropped."""
    return domain.decode("utf-8", "backslashreplace")


def format_result(result: QueryResult, fmt: str) -> str:
    """The text printed on stdout (ending with a newline, unless there is nothing to print)."""
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
    if result.query.kind == "domain":
        return f"{result.rows[0][1]}\n"
    return "".join(f"{show(d)} {n}\n" for d, n in result.rows)
