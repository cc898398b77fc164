"""The group-by kind: aggregates over delimited files (see docs/groupby.md) on the query
plugin interface. The work is done by :mod:`tally.kernels.delimited` (per task),
:mod:`tally.queries.groupby` (merge and finalize) and :mod:`tally.queries.groupby_output`."""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

import pyarrow as pa  # type: ignore[import-untyped]

from tally.queries.base import QueryResult, TaskOutput, check_lines
from tally.queries.plan import Plan

if TYPE_CHECKING:  # the engine (DuckDB) loads with the first group-by, not with every worker
    from tally.queries.groupby import GroupMerger


class GroupBy:
    def compute(
        self, plan: Plan, stream: BinaryIO, record_limit: int, kernel: str, at_start: bool
    ) -> TaskOutput:
        from tally.kernels.delimited import compute_partial

        partial = compute_partial(plan, stream, record_limit, skip_header=plan.header and at_start)
        table = partial.table if partial.table.num_rows else None
        return TaskOutput(table, partial.lines, partial.malformed, partial.bytes_read)

    def check(self, plan: Plan, table: pa.Table | None, lines: int, malformed: int) -> None:
        from tally.queries.groupby import check_layout

        check_lines(lines, malformed)
        if table is not None:
            check_layout(plan, table.schema)

    def merger(self, plan: Plan) -> GroupByMerger:
        return GroupByMerger(plan)

    def format(self, result: QueryResult, fmt: str) -> str:
        from tally.queries.groupby import GroupResult
        from tally.queries.groupby_output import format_group_result

        return format_group_result(
            GroupResult(result.table, result.lines, result.malformed, result.failed_partitions),
            fmt,
        )


class GroupByMerger:
    """:class:`GroupMerger` on the merger interface of every kind."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.lines = 0
        self.malformed = 0
        self._merger: GroupMerger | None = None  # made with the first rows: it loads DuckDB

    def _rows(self) -> GroupMerger:
        if self._merger is None:
            from tally.queries.groupby import GroupMerger

            self._merger = GroupMerger(self.plan)
        return self._merger

    def add(self, table: pa.Table | None, lines: int, malformed: int) -> None:
        if table is not None:  # else a task without rows: only its accounting
            from tally.kernels.delimited import GroupPartial

            self._rows().add(GroupPartial(table, 0, 0))
        self.lines += lines
        self.malformed += malformed

    def finalize(self, failed_partitions: list[str] | None = None) -> QueryResult:
        merger = self._rows()
        merger.lines, merger.malformed = self.lines, self.malformed
        done = merger.result(failed_partitions or [])
        return QueryResult(self.plan, done.table, done.lines, done.malformed,
                           list(done.failed_partitions))  # fmt: skip
