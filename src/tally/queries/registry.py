"""Every query kind, by the type of its plan."""

from __future__ import annotations

import logging

from tally.protocol import QuerySpec
from tally.queries.base import QueryKind
from tally.queries.domains import DomainCount
from tally.queries.groupby_kind import GroupBy
from tally.queries.plan import Plan

DOMAINS: QueryKind = DomainCount()
GROUP_BY: QueryKind = GroupBy()
KINDS: dict[type, QueryKind] = {QuerySpec: DOMAINS, Plan: GROUP_BY}


def warm_up() -> None:
    """Load the engines of the kinds and run a tiny task of each (a worker does this on a
    thread of its own once it has joined, while the job is planned): the first real task
    then costs about what every other one does. A failure here is only logged; the task
    that needs the engine fails as data, with its reason."""
    from tally.kernels.delimited import warm_up as warm_up_group_by

    try:
        warm_up_group_by()
    except Exception as exc:
        logging.getLogger("tally.worker").warning("could not load the group-by engine: %s", exc)
