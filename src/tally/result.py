"""A job's answer and its accounting (:class:`Result`), and the error of a job that ended
without one (:class:`JobFailed`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tally.errors import TallyError

if TYPE_CHECKING:
    from tally.queries import QueryResult


class JobFailed(TallyError):
    """The job ended without a result: a partition failed too often, or the workers were lost.

    ``stats`` holds the record of the run (as ``--stats`` writes it)."""

    def __init__(self, message: str, stats: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.stats = stats or {}


@dataclass(frozen=True, repr=False)
class Result:
    """A job's answer and its accounting.

    ``rows`` are ``(domain, count)`` pairs, most frequent first, then by domain bytes; for a
    ``domain`` query, the one row of that domain. Domains are text as the command line
    prints them (bytes that are not UTF-8 written as ``\\xff``); ``raw.rows`` has the bytes.
    """

    query: str  # "top", "all", "domain" or "groupby"
    rows: list[tuple[Any, ...]]
    lines: int  # lines read (blank lines not counted), malformed ones included
    malformed: int  # lines skipped as malformed
    failed_partitions: list[str]  # partitions skipped by skip_failed: empty when complete
    stats: dict[str, Any] = field(compare=False)  # the record of the run, as --stats writes it
    raw: QueryResult = field(compare=False)

    @classmethod
    def of(cls, result: QueryResult, stats: dict[str, Any]) -> Result:
        from tally.protocol import QuerySpec
        from tally.queries import show

        query: str
        if isinstance(result.plan, QuerySpec):
            query, rows = result.plan.kind, [(show(d), n) for d, n in result.rows]
        else:  # a group-by: the output columns' values
            query, rows = "groupby", result.rows
        return cls(
            query,
            rows,
            result.lines,
            result.malformed,
            list(result.failed_partitions),
            stats,
            result,
        )

    @property
    def complete(self) -> bool:
        """False when partitions were skipped (``skip_failed``): the counts are partial."""
        return not self.failed_partitions

    @property
    def count(self) -> int:
        """The count of a ``domain`` query; for the others, the sum of the rows' counts."""
        return sum(n for _, n in self.rows)

    def format(self, fmt: str = "text") -> str:
        """The result as ``tally run --format FMT`` prints it: text, json, csv or tsv."""
        from tally.queries import format_result

        return format_result(self.raw, fmt)

    def to_arrow(self) -> Any:
        """A ``pyarrow.Table``: for the domain count, columns ``domain`` (string) and
        ``count`` (int64); for a group-by, its output columns."""
        import pyarrow as pa  # type: ignore[import-untyped]

        if self.query == "groupby":
            return self.raw.table

        domains = [domain for domain, _ in self.rows]
        counts = [count for _, count in self.rows]
        return pa.table(
            {"domain": pa.array(domains, pa.string()), "count": pa.array(counts, pa.int64())}
        )

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with columns ``domain`` and ``count`` (needs pandas)."""
        import importlib.util

        if importlib.util.find_spec("pandas") is None:
            raise ImportError("Result.to_pandas() needs pandas: pip install pandas")
        return self.to_arrow().to_pandas()

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self.failed_partitions)} partitions skipped"
        return (
            f"<tally.Result {self.query}: {len(self.rows)} rows, {self.lines} lines, "
            f"{self.malformed} malformed, {state}>"
        )
