"""Queries as plugins: one module per query kind, found by the type of its plan.

Each kind (:class:`tally.queries.base.QueryKind`) computes a per-task partial (an Arrow
table), checks partials, merges them exactly in any order, finalizes and formats the
result. ``domains`` is the domain count of the reference job; ``groupby_kind`` runs group-by
aggregates over delimited files. The registry is loaded when first asked, so that the plans
(which :mod:`tally.protocol` carries) can be imported without it.
"""

from __future__ import annotations

from typing import Any

from tally.queries.base import (
    FORMATS,
    Merger,
    QueryKind,
    QueryResult,
    TaskOutput,
    from_ipc,
    show,
    to_ipc,
)

_kinds: dict[type, QueryKind] = {}


def kind_of(plan: Any) -> QueryKind:
    """The query kind that runs ``plan``."""
    kind = _kinds.get(type(plan))
    if kind is None:
        from tally.queries.registry import KINDS

        _kinds.update(KINDS)
        if type(plan) not in _kinds:
            raise TypeError(f"no query kind for {type(plan).__name__}")
        kind = _kinds[type(plan)]
    return kind


def merger_for(plan: Any) -> Merger:
    return kind_of(plan).merger(plan)


def format_result(result: QueryResult, fmt: str) -> str:
    """The text printed on stdout for ``result`` in ``fmt`` (text, json, csv or tsv)."""
    return kind_of(result.plan).format(result, fmt)


__all__ = [
    "FORMATS",
    "Merger",
    "QueryKind",
    "QueryResult",
    "TaskOutput",
    "format_result",
    "from_ipc",
    "kind_of",
    "merger_for",
    "show",
    "to_ipc",
]
