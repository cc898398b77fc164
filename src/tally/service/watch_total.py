"""The running total of a storage watcher: the query over every object's done version.

Each object's partials are merged in once. Its first version is *added*; a later version
*rebuilds* the total from every object's stored partials, since min and max cannot be
subtracted. The two can cross: jobs end (and store their partials) before the writer takes
their changes in turn, so a rebuild may already hold an object whose own ``add`` is still
queued. The total knows which objects it holds, and such an ``add`` changes nothing: the
rebuild read that object's newest partials already.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tally.coordinator import TaskPartial
from tally.protocol import Plan
from tally.queries import Merger, QueryResult, merger_for


class RunningTotal:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.merger: Merger = merger_for(plan)
        self.holds: set[str] = set()  # the objects whose partials are merged in

    def rebuild(self, plan: Plan, parts: Mapping[str, Iterable[TaskPartial]]) -> None:
        """Everything afresh from each object's stored partials (in name order)."""
        self.plan = plan
        self.merger = merger_for(plan)
        self.holds = set()
        for name in sorted(parts):
            self.add(name, parts[name])

    def add(self, name: str, parts: Iterable[TaskPartial]) -> bool:
        """Merge in ``name``'s first contribution; False (nothing done) if it is held."""
        if name in self.holds:
            return False
        for part in parts:
            self.merger.add(part.table, part.lines, part.malformed)
        self.holds.add(name)
        return True

    def finalize(self) -> QueryResult:
        return self.merger.finalize()
