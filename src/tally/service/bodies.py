"""The HTTP API's shapes: a job request (validated with msgspec), the job states, and the
one error type that carries an HTTP status.

A request is ``{"source": ..., "query": {...}, "output": URL?, "options": {...}?}``; the
query is ``{"top": K}``, ``{"domain": D}``, ``{"all": true}`` or ``{"sql": ...}`` and
defaults to ``{"top": 25}``; the options are those of ``tally run``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from tally.errors import ConfigError, TallyError
from tally.groupby_options import GroupByOptions
from tally.job import JobSpec
from tally.jobs.tasks import JobConfig
from tally.local import sample_of
from tally.protocol import Plan, QuerySpec
from tally.queries.infer import bind
from tally.queries.plan import Plan as GroupByPlan
from tally.storage.ranges import plan_tasks

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
MAX_BODY = 1 << 20


class ServiceError(TallyError):
    """A request the service refuses, with its HTTP status (0: the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BadRequest(ServiceError, ConfigError):
    """400: a bad body or source; the command line exits 2, as for bad arguments."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Query(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    top: Annotated[int, msgspec.Meta(ge=1, le=1 << 31)] | None = None
    domain: str | None = None
    all: bool | None = None
    sql: str | None = None
    # how a SQL group-by reads its delimited files (see docs/groupby.md)
    columns: str | None = None
    delimiter: str | None = None
    header: bool = False
    schema: str | None = None


class Options(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    skip_failed: bool = False
    speculation: bool = True
    min_workers: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1
    record_limit: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 1 << 20
    split_size: Annotated[int, msgspec.Meta(ge=0)] = 64 << 20


def _top25() -> Query:
    return Query(top=25)


class JobRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=65536)]
    query: Query = msgspec.field(default_factory=_top25)
    output: str | None = None
    options: Options = msgspec.field(default_factory=Options)


def parse_request(body: bytes) -> JobRequest:
    """The request in ``body``; BadRequest naming what is wrong with it."""
    if len(body) > MAX_BODY:
        raise BadRequest(f"body of {len(body)} bytes exceeds {MAX_BODY}")
    try:
        request = msgspec.json.decode(body, type=JobRequest)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"bad job: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"bad job: not JSON ({exc})") from None
    plan_of(request.query)  # a query that names no kind fails here, before the source is read
    if request.output is not None:
        raise BadRequest(
            "output is not supported by this server: the result is kept with the job "
            "(GET /api/jobs/{id})"
        )
    return request


def plan_of(query: Query) -> Plan:
    """The plan a query names; BadRequest unless it names exactly one kind."""
    named = [name for name in ("top", "domain", "all", "sql") if getattr(query, name) is not None]
    if len(named) != 1:
        raise BadRequest(
            "query must name exactly one of top, domain, all, sql"
            + (f" (got {', '.join(named)})" if named else "")
        )
    if query.sql is not None:
        options = GroupByOptions(sql=query.sql, columns=query.columns, delimiter=query.delimiter,
                                 header=query.header, schema=query.schema)  # fmt: skip
        try:
            plan: GroupByPlan = options.source_and_plan()[1]
            return plan
        except ConfigError as exc:
            raise BadRequest(exc.message) from None
    if query.domain is not None:
        return QuerySpec("domain", domain=query.domain.encode("utf-8"))
    if query.all is not None:
        if not query.all:
            raise BadRequest('query {"all": false} names nothing: use {"top": K}')
        return QuerySpec("all")
    assert query.top is not None
    return QuerySpec("top", k=query.top)


def to_spec(request: JobRequest, urls: list[str]) -> JobSpec:
    """The job a request asks for over the partitions ``urls`` (reads their first lines for a
    group-by, and their sizes to cut large ones into ranges: call it off the event loop)."""
    opts = request.options
    plan = plan_of(request.query)
    try:
        if isinstance(plan, GroupByPlan) and not plan.bound:
            plan = bind(plan, sample_of(urls[0]))
    except ConfigError as exc:
        raise BadRequest(exc.message) from None
    return JobSpec(
        tasks=plan_tasks(urls, opts.split_size),
        plan=plan,
        record_limit=opts.record_limit,
        config=JobConfig(
            max_attempts=opts.max_attempts,
            skip_failed=opts.skip_failed,
            min_workers=opts.min_workers,
            speculate=opts.speculation,
        ),
    )


def to_builtins(request: JobRequest) -> dict[str, Any]:
    """The request as plain JSON values (what the job documents show)."""
    value: dict[str, Any] = msgspec.to_builtins(request)
    return value
