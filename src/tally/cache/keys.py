"""What a cached partial is keyed by, derived without any I/O.

A task's partial depends on the bytes it reads (the partition's URL, its version and the byte
range) and on what it computes from them (the query plan, with every option, and the record
limit), and on the form partials take (the cache's entry format and Tally's version, which
fixes the partial schema). The key is a SHA-256 over a canonical encoding of all of these: two
tasks share a key only when they would compute the same partial.

A task whose version is not known is never cached: nothing would tell a changed partition
from the one that was stored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec

CACHE_FORMAT = 1  # the layout of an entry and of its key; bump to forget every entry


def canonical_plan(plan: Any, record_limit: int) -> str:
    """The plan (a msgspec struct whose tag names its query kind) and the record limit as
    JSON with sorted keys: equal plans give equal text, whatever order their dicts were
    built in."""
    return json.dumps(
        {"plan": msgspec.to_builtins(plan), "record_limit": record_limit},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )


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
