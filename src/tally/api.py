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
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tally.errors import ConfigError
from tally.options import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_RECORD_LIMIT,
    DEFAULT_SPLIT_SIZE,
    JobOptions,
    to_bytes,
)
from tally.result import JobFailed, Result

if TYPE_CHECKING:
    from tally.job import Outcome
    from tally.local import Job
    from tally.spawn import LocalWorkers

__all__ = ["Interrupted", "JobFailed", "JobOptions", "Result", "run", "sql"]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM ended the job; its workers were stopped first."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


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
    cache: str | os.PathLike[str] | None = None,
    cache_size: int | str = DEFAULT_CACHE_SIZE,
) -> Result:
    """Run one job over ``source`` on this machine and return its :class:`Result`.

    ``source`` is a file list, a folder or a glob, as for ``tally run``. The query is one of
    ``top=K`` (the default, 25), ``domain="D"`` or ``all=True``. ``workers`` worker processes
    (default: one per CPU) start on 127.0.0.1 and are stopped before this returns. The other
    options are those of ``tally run``: ``record_limit`` and ``split_size`` take bytes or a
    size such as ``"1MiB"``; ``stats`` and ``events`` are paths or URLs to write the run's
    records to, ``output`` one for the result (``.json``, ``.csv`` or ``.parquet``);
    ``storage_options`` are keyword arguments for the fsspec filesystems (values that are not
    text are passed as JSON). ``cache`` is a directory where the workers keep partials
    (``tally run --cache``), holding at most ``cache_size`` bytes (or a size like ``"1GiB"``).
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
        cache=None if cache is None else os.fspath(cache),
        cache_size=to_bytes("cache size", cache_size, high=None),
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
