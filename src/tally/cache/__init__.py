"""A worker's cache of partials (``tally worker --cache DIR``): a repeated query over
unchanged data computes nothing, and a changed partition recomputes only itself.

- :mod:`tally.cache.keys`: the key of a task's partial (URL, version, byte range, plan),
  pure;
- :mod:`tally.cache.entries`: an entry's bytes and the checks that find a damaged one, pure;
- :mod:`tally.cache.versions`: a partition's version as this process sees it, so that a
  partition changed between planning and reading never files a partial under the wrong key;
- :mod:`tally.cache.store`: the directory, its index and least-recently-used eviction.

The worker asks :meth:`PartialCache.lookup` before computing a task, and gives the computed
partial to :meth:`PartialCache.keep` afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tally.cache.entries import CachedPartial
from tally.cache.keys import cache_key, canonical_plan
from tally.cache.store import DEFAULT_CACHE_SIZE, PartialStore
from tally.cache.versions import seen_version, unchanged
from tally.protocol import Task
from tally.storage.sources import is_remote


@dataclass(frozen=True)
class Lookup:
    """What the cache said of one task: its key and version (None: not cacheable) and the
    stored partial, if any."""

    key: str | None = None
    version: str = ""
    hit: CachedPartial | None = None
    local: bool = False  # a file: the worker must open it after its version was seen

    @property
    def reopen(self) -> bool:
        """Whether a stream opened before the lookup must be dropped: a file's version was
        seen just now, and the bytes read must be those of that file."""
        return self.key is not None and self.local


class PartialCache:
    """The worker's cache: a :class:`PartialStore` and the rules for what may go in it."""

    def __init__(
        self,
        root: str,
        max_bytes: int = DEFAULT_CACHE_SIZE,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.store = PartialStore(root, max_bytes)
        self.options = dict(options or {})
        import tally

        self.tally_version = str(tally.__version__)
        self._plans: dict[int, tuple[Any, int, str]] = {}  # id(plan) -> plan, limit, text

    def key_of(self, task: Task, plan: Any, record_limit: int) -> tuple[str | None, str]:
        version = seen_version(task)
        if version is None:
            return None, ""
        key = cache_key(task.url, version, task.start, task.end,
                        self._plan_text(plan, record_limit), self.tally_version)  # fmt: skip
        return key, version

    def _plan_text(self, plan: Any, record_limit: int) -> str:
        """The canonical plan, encoded once per job (a job's tasks share its plan object)."""
        known = self._plans.get(id(plan))
        if known is not None and known[0] is plan and known[1] == record_limit:
            return known[2]
        if len(self._plans) >= 64:
            self._plans.clear()
        text = canonical_plan(plan, record_limit)
        self._plans[id(plan)] = (plan, record_limit, text)  # the plan kept: its id stays its
        return text

    def lookup(self, task: Task, plan: Any, record_limit: int) -> Lookup:
        key, version = self.key_of(task, plan, record_limit)
        if key is None:
            return Lookup()
        return Lookup(key, version, self.store.get(key), not is_remote(task.url))

    def probably_cached(self, task: Task, plan: Any, record_limit: int) -> bool:
        """Whether ``task`` will likely be a hit (no need to read its partition ahead)."""
        key, _ = self.key_of(task, plan, record_limit)
        return key is not None and self.store.contains(key)

    def keep(
        self, lookup: Lookup, task: Task, table: bytes | None, lines: int, malformed: int
    ) -> None:
        """Store a computed partial, unless its partition changed while it was read."""
        if lookup.key is None or lookup.hit is not None:
            return
        if not unchanged(task, lookup.version, self.options):
            return
        self.store.put(lookup.key, table, lines, malformed)

    def close(self) -> str:
        """Close the index; return a one-line summary of what the cache did."""
        self.store.close()
        return self.store.counters.summary()


__all__ = ["DEFAULT_CACHE_SIZE", "CachedPartial", "Lookup", "PartialCache", "PartialStore"]
