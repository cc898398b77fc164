"""The Python API: run a job from a script or a notebook.

    import tally

    result = tally.run("data/filelist.csv", top=10, workers=2)
    result.rows          # [("go.mail", 1050248), ("smeshariki.ru", 811723), ...]
    result.to_pandas()   # columns domain, count

:func:`run` does what ``tally run`` does: a coordinator in this process and ``workers``
worker processes on 127.0.0.1, stopped before it returns. It writes nothing on stdout. When an
event loop is already running in the calling thread (Jupyter), the job runs on a private loop
in another thread. Errors are :class:`~tally.errors.TallyError` subclasses:
:class:`~tally.errors.ConfigError` for bad arguments or sources, :class:`JobFailed` when a
partition failed too often or the workers were lost. Ctrl-C (or SIGTERM, in the main thread)
stops the workers and raises :class:`Interrupted`, a ``KeyboardInterrupt``.

This module imports nothing heavy until a job runs, so ``import tally`` stays cheap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tally.errors import ConfigError, TallyError

if TYPE_CHECKING:
    from tally.groupby_options import GroupByOptions
    from tally.job import Outcome
    from tally.local import Job
    from tally.queries import QueryResult
    from tally.spawn import LocalWorkers

__all__ = ["Interrupted", "JobFailed", "JobOptions", "Result", "run", "sql"]

KERNELS = ("auto", "fast", "reference")
DEFAULT_TOP = 25
DEFAULT_RECORD_LIMIT = 1 << 20
MAX_RECORD_LIMIT = 1 << 30
LEASE_TIMEOUT_RANGE = (0.3, 86400.0)
DEFAULT_SPLIT_SIZE = 64 << 20


class JobFailed(TallyError):
    """The job ended without a result: a partition failed too often, or the workers were lost.

    ``stats`` holds the record of the run (as ``--stats`` writes it)."""

    def __init__(self, message: str, stats: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.stats = stats or {}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM ended the job; its workers were stopped first."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _whole(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a whole number, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(f"{name} must be {bound}, not {value}")
    return value


def _seconds(name: str, value: object, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low:g} to {high:g} seconds, not {value:g}")
    return float(value)


def to_bytes(name: str, value: int | str, low: int = 1, high: int | None = MAX_RECORD_LIMIT) -> int:
    """A byte count given as a number or a size with a unit (``"1MiB"``, ``"512KB"``)."""
    if isinstance(value, str):
        from tally.datagen import parse_size

        value = parse_size(value)
    return _whole(name, value, low, high if low else None)


@dataclass(frozen=True)
class JobOptions:
    """Everything a job needs, checked when made (ConfigError). The command line and
    :func:`run` both build one; their defaults are the same."""

    source: str
    top: int | None = None  # DEFAULT_TOP when no query is chosen
    domain: str | None = None
    all: bool = False
    workers: int | None = None  # local worker processes; None: one per CPU
    kernel: str = "auto"
    max_attempts: int = 3
    lease_timeout: float = 3.0
    skip_failed: bool = False
    record_limit: int = DEFAULT_RECORD_LIMIT
    min_workers: int | None = None  # None: every local worker, or 1
    speculation: bool = True
    stats: str | None = None  # a path: the JSON record of the run
    events: str | None = None  # a path: every attempt's life as JSON lines
    progress: bool = False  # a progress bar or periodic line on stderr
    task_delay: float = 0.0  # fault injection: seconds added to every task of a local worker
    split_size: int = DEFAULT_SPLIT_SIZE  # larger partitions run as ranges; 0: never split
    task_timeout: float | None = None  # an attempt running longer fails and is retried
    group_by: GroupByOptions | None = None  # a group-by over delimited files instead
    output: str | None = None  # a path or URL: the result, in the format its extension names
    storage_options: dict[str, str] = field(default_factory=dict)  # KEY=VALUE for fsspec

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"source must be a path, URL or glob, not {self.source!r}")
        chosen = [self.domain is not None, self.top is not None, bool(self.all)]
        if sum(chosen) > 1:
            raise ConfigError("choose one query: domain, top or all")
        if self.domain is not None and not isinstance(self.domain, str):
            raise ConfigError(f"domain must be text, not {self.domain!r}")
        if self.top is not None:
            _whole("top", self.top, 1)
        if self.workers is not None:
            _whole("workers", self.workers, 1)
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {', '.join(KERNELS)}, not {self.kernel!r}")
        _whole("max attempts", self.max_attempts, 1)
        _seconds("lease timeout", self.lease_timeout, *LEASE_TIMEOUT_RANGE)
        _whole("record limit", self.record_limit, 1, MAX_RECORD_LIMIT)
        if self.min_workers is not None:
            _whole("min workers", self.min_workers, 1)
        _seconds("task delay", self.task_delay, 0.0)
        _whole("split size", self.split_size, 0)
        if self.task_timeout is not None:
            _seconds("task timeout", self.task_timeout, 0.001)
        self._check_storage()
        self.query()  # a bad group-by or SQL fails here, before anything starts

    def _check_storage(self) -> None:
        from tally.storage.outputs import check_name

        for key, value in self.storage_options.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise ConfigError(f"storage option {key!r} must map a name to text")
        for option, target in (("output", self.output), ("stats", self.stats)):
            if target is not None:
                check_name(target, option)
        if self.events is not None:
            check_name(self.events, "events")

    @property
    def local_workers(self) -> int:
        """Worker processes a local run starts; ConfigError if the job could never start."""
        count = self.workers or os.cpu_count() or 2
        if self.min_workers is not None and self.min_workers > count:
            raise ConfigError(
                f"min workers {self.min_workers} is more than the {count} workers started: "
                "the job would never start"
            )
        return count

    def query(self) -> Any:
        """The plan of the job: a group-by (not yet bound to the data) or a domain count."""
        from tally.protocol import QuerySpec

        if self.group_by is not None and self.group_by.wanted:
            if self.domain is not None or self.top is not None or self.all:
                raise ConfigError("choose one query: a group-by, or domain, top or all")
            return self.group_by.source_and_plan()[1]
        if self.domain is not None:
            return QuerySpec("domain", domain=self.domain.encode("utf-8", "surrogateescape"))
        if self.all:
            return QuerySpec("all")
        return QuerySpec("top", k=self.top or DEFAULT_TOP)


@dataclass(frozen=True, repr=False)
class Result:
    """A job's answer and its accounting.

    ``rows`` are ``(domain, count)`` pairs, most frequent first, then by domain bytes; for a
    ``domain`` query, the one row of that domain. Domains are text as the command line
    prints them (bytes that are not UTF-8 written as ``\\xff``); ``raw.rows`` has the bytes.
    """

    query: str  # "top", "all", "domain" or "groupby"
    rows: list[tuple[Any, ...]]
    lines: int  # lines read (blank lines not counted), malformed ones included
    malformed: int  # lines skipped as malformed
    failed_partitions: list[str]  # partitions skipped by skip_failed: empty when complete
    stats: dict[str, Any] = field(compare=False)  # the record of the run, as --stats writes it
    raw: QueryResult = field(compare=False)

    @classmethod
    def of(cls, result: QueryResult, stats: dict[str, Any]) -> Result:
        from tally.protocol import QuerySpec
        from tally.queries import show

        query: str
        if isinstance(result.plan, QuerySpec):
            query, rows = result.plan.kind, [(show(d), n) for d, n in result.rows]
        else:  # a group-by: the output columns' values
            query, rows = "groupby", result.rows
        return cls(
            query,
            rows,
            result.lines,
            result.malformed,
            list(result.failed_partitions),
            stats,
            result,
        )

    @property
    def complete(self) -> bool:
        """False when partitions were skipped (``skip_failed``): the counts are partial."""
        return not self.failed_partitions

    @property
    def count(self) -> int:
        """The count of a ``domain`` query; for the others, the sum of the rows' counts."""
        return sum(n for _, n in self.rows)

    def format(self, fmt: str = "text") -> str:
        """The result as ``tally run --format FMT`` prints it: text, json, csv or tsv."""
        from tally.queries import format_result

        return format_result(self.raw, fmt)

    def to_arrow(self) -> Any:
        """A ``pyarrow.Table``: for the domain count, columns ``domain`` (string) and
        ``count`` (int64); for a group-by, its output columns."""
        import pyarrow as pa  # type: ignore[import-untyped]

        if self.query == "groupby":
            return self.raw.table

        domains = [domain for domain, _ in self.rows]
        counts = [count for _, count in self.rows]
        return pa.table(
            {"domain": pa.array(domains, pa.string()), "count": pa.array(counts, pa.int64())}
        )

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with columns ``domain`` and ``count`` (needs pandas)."""
        import importlib.util

        if importlib.util.find_spec("pandas") is None:
            raise ImportError("Result.to_pandas() needs pandas: pip install pandas")
        return self.to_arrow().to_pandas()

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self.failed_partitions)} partitions skipped"
        return (
            f"<tally.Result {self.query}: {len(self.rows)} rows, {self.lines} lines, "
            f"{self.malformed} malformed, {state}>"
        )


def run(
    source: str | os.PathLike[str],
    *,
    top: int | None = None,
    domain: str | None = None,
    all: bool = False,
    workers: int | None = None,
    kernel: str = "auto",
    max_attempts: int = 3,
    lease_timeout: float = 3.0,
    skip_failed: bool = False,
    record_limit: int | str = DEFAULT_RECORD_LIMIT,
    min_workers: int | None = None,
    speculation: bool = True,
    stats: str | os.PathLike[str] | None = None,
    events: str | os.PathLike[str] | None = None,
    progress: bool = False,
    task_delay: float = 0.0,
    split_size: int | str = DEFAULT_SPLIT_SIZE,
    task_timeout: float | None = None,
    output: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Result:
    """Run one job over ``source`` on this machine and return its :class:`Result`.

    ``source`` is a file list, a folder or a glob, as for ``tally run``. The query is one of
    ``top=K`` (the default, 25), ``domain="D"`` or ``all=True``. ``workers`` worker processes
    (default: one per CPU) start on 127.0.0.1 and are stopped before this returns. The other
    options are those of ``tally run``: ``record_limit`` and ``split_size`` take bytes or a
    size such as ``"1MiB"``; ``stats`` and ``events`` are paths or URLs to write the run's
    records to, ``output`` one for the result (``.json``, ``.csv`` or ``.parquet``);
    ``storage_options`` are keyword arguments for the fsspec filesystems (values that are not
    text are passed as JSON).
    """
    options = JobOptions(
        source=os.fspath(source),
        top=top,
        domain=domain,
        all=all,
        workers=workers,
        kernel=kernel,
        max_attempts=max_attempts,
        lease_timeout=lease_timeout,
        skip_failed=skip_failed,
        record_limit=to_bytes("record limit", record_limit),
        min_workers=min_workers,
        speculation=speculation,
        stats=None if stats is None else os.fspath(stats),
        events=None if events is None else os.fspath(events),
        progress=progress,
        task_delay=task_delay,
        split_size=to_bytes("split size", split_size, low=0),
        task_timeout=task_timeout,
        output=None if output is None else os.fspath(output),
        storage_options=_texts(storage_options or {}),
    )
    return run_job(options)


def sql(
    query: str,
    *,
    workers: int | None = None,
    columns: str | list[str] | None = None,
    header: bool = False,
    delimiter: str | None = None,
    schema: str | None = None,
    split_size: int | str = DEFAULT_SPLIT_SIZE,
    **options: Any,
) -> Result:
    """Answer a group-by in SQL (``SELECT ... FROM 'SOURCE' ... GROUP BY ...``) as
    ``tally sql`` does; ``options`` are those of :func:`run`. ``rows`` are the output
    columns' values (decimals as :class:`decimal.Decimal`); ``to_arrow()`` gives the table."""
    from tally.groupby_options import GroupByOptions

    names = ",".join(columns) if isinstance(columns, list) else columns
    group_by = GroupByOptions(sql=query, columns=names, header=header, delimiter=delimiter,
                              schema=schema)  # fmt: skip
    source = group_by.source_and_plan()[0] or ""
    if "record_limit" in options:
        options["record_limit"] = to_bytes("record limit", options["record_limit"])
    job = JobOptions(source=source, workers=workers, group_by=group_by,
                     split_size=to_bytes("split size", split_size, low=0), **options)  # fmt: skip
    return run_job(job)


def _texts(options: dict[str, Any]) -> dict[str, str]:
    """Storage options as the command line gives them: text, JSON for anything else."""
    import json

    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in options.items()}


def run_job(
    options: JobOptions,
    on_result: Callable[[Result], None] | None = None,
    spawned: LocalWorkers | None = None,
) -> Result:
    """:func:`run` for ready-made options. ``on_result`` sees the result as soon as it is
    known, while the workers are still leaving. ``spawned``: the workers, started already."""
    from tally.local import Job

    if spawned is not None:
        if options.local_workers != spawned.count:  # checks --min-workers, too
            raise ConfigError(f"{spawned.count} workers started, {options.local_workers} asked")
        return _finish(Job(options, spawned=spawned), on_result)
    return _finish(Job(options, local_workers=options.local_workers), on_result)


def run_coordinator(
    options: JobOptions,
    host: str,
    port: int,
    token: bytes,
    on_result: Callable[[Result], None] | None = None,
) -> Result:
    """Run one job for the workers that connect to ``host:port`` (``tally coordinator``).
    Beyond loopback, ``token`` (the cluster secret) must not be empty."""
    from tally.local import Job

    if not token and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without a cluster token: "
            "set TALLY_TOKEN or pass --token-file"
        )

    return _finish(Job(options, host=host, port=port, token=token), on_result)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (listening there needs no token)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _finish(job: Job, on_result: Callable[[Result], None] | None) -> Result:
    made: list[Result] = []

    def seen(outcome: Outcome) -> None:
        if outcome.result is not None:
            made.append(Result.of(outcome.result, outcome.stats))
            if on_result is not None:
                on_result(made[0])

    job.on_outcome = seen
    outcome = _drive(job)
    if made:
        return made[0]
    if job.signum is not None:
        raise Interrupted(job.signum)
    raise JobFailed(outcome.error or "no result", outcome.stats)


def _drive(job: Job) -> Outcome:
    """Run ``job`` to its end on a fresh event loop: in this thread if it has no running loop
    (catching SIGINT and SIGTERM when it is the main thread), else in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        main = threading.current_thread() is threading.main_thread()
        return asyncio.run(job.run(catch_signals=main))
    done: list[Outcome] = []
    failed: list[BaseException] = []
    over = threading.Event()  # not Thread.join(), which a KeyboardInterrupt can leave unsure

    def work() -> None:
        try:
            done.append(asyncio.run(job.run(catch_signals=False)))
        except BaseException as exc:  # handed to the calling thread
            failed.append(exc)
        finally:
            over.set()

    threading.Thread(target=work, name="tally-job", daemon=True).start()
    try:
        over.wait()
    except KeyboardInterrupt:  # Ctrl-C in a notebook: stop the job and its workers first
        job.interrupt_threadsafe(signal.SIGINT)
        over.wait()
    if failed:
        raise failed[0]
    return done[0]
