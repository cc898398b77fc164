"""The HTTP API's shapes: a job request (validated with msgspec), the job states, and the
one error type that carries an HTTP status.

A request is ``{"source": ..., "query": {...}, "output": URL?, "options": {...}?}``; the
query is ``{"top": K}``, ``{"domain": D}``, ``{"all": true}`` or ``{"sql": ...}`` and
defaults to ``{"top": 25}``; the options are those of ``tally run``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from tally.coordinator import JobSpec
from tally.errors import ConfigError, TallyError
from tally.jobs.tasks import JobConfig
from tally.protocol import QuerySpec, Task

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


class Options(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    skip_failed: bool = False
    speculation: bool = True
    min_workers: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1
    record_limit: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 1 << 20


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


def plan_of(query: Query) -> QuerySpec:
    """The plan a query names; BadRequest unless it names exactly one kind."""
    named = [name for name in ("top", "domain", "all", "sql") if getattr(query, name) is not None]
    if len(named) != 1:
        raise BadRequest(
            "query must name exactly one of top, domain, all, sql"
            + (f" (got {', '.join(named)})" if named else "")
        )
    if query.sql is not None:
        raise BadRequest("sql queries are not supported by this server")
    if query.domain is not None:
        return QuerySpec("domain", domain=query.domain.encode("utf-8"))
    if query.all is not None:
        if not query.all:
            raise BadRequest('query {"all": false} names nothing: use {"top": K}')
        return QuerySpec("all")
    assert query.top is not None
    return QuerySpec("top", k=query.top)


def to_spec(request: JobRequest, urls: list[str]) -> JobSpec:
    """The job a request asks for over the partitions ``urls``."""
    opts = request.options
    return JobSpec(
        tasks=[Task(url) for url in urls],
        plan=plan_of(request.query),
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
