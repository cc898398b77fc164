"""What a cached partial is keyed by, derived without any I/O.

A task's partial depends on the bytes it reads (the partition's URL, its version and the byte
range), on what it computes from them (the query plan, with every option that changes a
partial, and the record limit), and on the form partials take (the cache's entry format and
Tally's version, which fixes the partial schema). The key is a SHA-256 over a canonical
encoding of all of these: two tasks share a key only when they would compute the same
partial.

A task whose version is not known is never cached: nothing would tell a changed partition
from the one that was stored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

from tally.queries.plan import Plan as GroupByPlan

CACHE_FORMAT = 1  # the layout of an entry and of its key; bump to forget every entry


def canonical_plan(plan: Any, record_limit: int) -> str:
    """The plan (a msgspec struct whose tag names its query kind) and the record limit as
    JSON with sorted keys: equal plans give equal text, whatever order their dicts were
    built in. What shapes only the answer made from the merged partials (a group-by's order,
    limit, shown columns, output names and the names its columns were given) is left out: a
    partial is the same without it."""
    if isinstance(plan, GroupByPlan):
        plan = msgspec.structs.replace(
            plan,
            group_names=(),
            aggregates=tuple(msgspec.structs.replace(a, name="") for a in plan.aggregates),
            order_by=(),
            limit=None,
            select=(),
        )
    return json.dumps(
        {"plan": _without_column_names(msgspec.to_builtins(plan)), "record_limit": record_limit},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )


def _without_column_names(value: Any) -> Any:
    """A column reference by its position alone (how a task reads it), not the name the
    query spelled it with."""
    if isinstance(value, dict):
        kept = {k: _without_column_names(v) for k, v in value.items()}
        if kept.get("type") == "col":
            kept.pop("name", None)
        return kept
    if isinstance(value, list | tuple):
        return [_without_column_names(v) for v in value]
    return value


def cache_key(
    url: str, version: str, start: int, end: int, plan: str, tally_version: str
) -> str | None:
    """The hex key of the partial of ``[start, end)`` of ``url`` at ``version`` under
    ``plan`` (its :func:`canonical_plan`), or None when the version is unknown (such a task
    is never cached)."""
    if not version:
        return None
    material = json.dumps(
        [CACHE_FORMAT, tally_version, url, version, start, end, plan],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(material.encode("ascii")).hexdigest()
