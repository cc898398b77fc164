"""Every query kind, by the type of its plan."""

from __future__ import annotations

from tally.protocol import QuerySpec
from tally.queries.base import QueryKind
from tally.queries.domains import DomainCount
from tally.queries.groupby_kind import GroupBy
from tally.queries.plan import Plan

DOMAINS: QueryKind = DomainCount()
GROUP_BY: QueryKind = GroupBy()
KINDS: dict[type, QueryKind] = {QuerySpec: DOMAINS, Plan: GROUP_BY}
