"""The group-by part of a job's options: the command line's flags (``--group-by``, ``--agg``,
...) and ``tally sql``, turned into a group-by plan (docs/groupby.md)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from tally.errors import ConfigError


@dataclass(frozen=True)
class GroupByOptions:
    """A group-by query as flags or SQL; :meth:`plan` makes the (unbound) plan."""

    sql: str | None = None
    group_by: tuple[str, ...] = ()
    aggs: tuple[str, ...] = ()
    delimiter: str | None = None
    where: str | None = None
    order_by: tuple[str, ...] = ()
    limit: int | None = None
    header: bool = False
    columns: str | None = None
    schema: str | None = None

    @property
    def wanted(self) -> bool:
        """Whether these options ask for a group-by at all."""
        return bool(self.sql or self.group_by or self.aggs or self.where or self.order_by)

    def source_and_plan(self) -> tuple[str | None, Any]:
        """The source named in SQL (None for flags) and the plan; ConfigError if bad."""
        if self.sql is not None:
            if self.group_by or self.aggs or self.where or self.order_by or self.limit:
                raise ConfigError("give the query as SQL or as flags, not both")
            from tally.queries.sql import parse_sql

            return parse_sql(self.sql, delimiter=self.delimiter, header=self.header,
                             columns=self.columns, schema=self.schema)  # fmt: skip
        from tally.queries.plan import plan_from_flags

        plan = plan_from_flags(
            delimiter=self.delimiter or ",",
            group_by=self.group_by,
            aggs=self.aggs or ("count",),
            where=self.where,
            order_by=self.order_by,
            limit=self.limit,
            header=self.header,
            columns=self.columns,
            schema=self.schema,
        )
        return None, plan


def add_flags(parser: argparse.ArgumentParser, sql: bool = False) -> None:
    """The options of a group-by over delimited files (all of them but the query itself for
    ``tally sql``)."""
    group = parser.add_argument_group("group-by aggregates over delimited files")
    group.add_argument(
        "--delimiter",
        metavar="C",
        default=None,
        help="the column delimiter (default: | for .tbl, tab for .tsv, else ,)",
    )
    group.add_argument(
        "--header", action="store_true", help="the first line of each file names the columns"
    )
    group.add_argument(
        "--columns",
        metavar="A,B,C",
        default=None,
        help="name the columns (default: from --header, else c1, c2, c3...)",
    )
    group.add_argument("--schema", metavar="COL:TYPE,...", default=None,
                       help="column types: bigint, double, decimal(p,s), varchar, date "
                       "(default: inferred from the first lines)")  # fmt: skip
    if sql:
        return
    group.add_argument(
        "--group-by",
        metavar="COLS",
        action="append",
        default=[],
        help="group by these columns, 1-based positions or names; repeatable (default: one group)",
    )
    group.add_argument("--agg", metavar="FUNC[:COL]", action="append", default=[],
                       help="count, sum, min, max, avg or count_distinct, over a column"
                       "; repeatable (default: count)")  # fmt: skip
    group.add_argument(
        "--where",
        metavar="EXPR",
        default=None,
        help="keep the rows where EXPR holds, in SQL syntax (default: every row)",
    )
    group.add_argument(
        "--order-by",
        metavar="COL[:desc]",
        action="append",
        default=[],
        help="order by an output column, by position or name; repeatable (default: by the keys)",
    )
    group.add_argument(
        "--limit", metavar="N", type=int, default=None, help="print at most N rows (default: all)"
    )


def options_of(args: argparse.Namespace) -> GroupByOptions:
    return GroupByOptions(
        sql=getattr(args, "sql", None),
        group_by=tuple(getattr(args, "group_by", ())),
        aggs=tuple(getattr(args, "agg", ())),
        delimiter=args.delimiter,
        where=getattr(args, "where", None),
        order_by=tuple(getattr(args, "order_by", ())),
        limit=getattr(args, "limit", None),
        header=args.header,
        columns=args.columns,
        schema=args.schema,
    )
