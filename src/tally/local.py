"""Running one job in this process: a coordinator and, for ``tally run``, N worker processes
on 127.0.0.1. SIGINT and SIGTERM end the job and stop those workers before anything exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from tally.coordinator import Coordinator, CoordinatorConfig
from tally.errors import ConfigError, TallyError
from tally.job import JobSpec, Outcome
from tally.jobs.tasks import JobConfig
from tally.queries.infer import bind
from tally.queries.plan import Plan as GroupByPlan
from tally.spawn import LocalWorkers, WorkerProcess, worker_args, worker_command
from tally.storage.outputs import probe, write_json, write_result
from tally.storage.ranges import plan_tasks
from tally.storage.sources import expand_source, open_partition

if TYPE_CHECKING:
    from tally.options import JobOptions

log = logging.getLogger("tally.local")
Process = asyncio.subprocess.Process | WorkerProcess
WORKER_EXIT_GRACE_S = 5.0
SAMPLE_BYTES = 1 << 20  # what a group-by reads to learn the columns and their types
CAUGHT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def coordinator_config(
    options: JobOptions, token: bytes, host: str = "127.0.0.1", port: int = 0
) -> CoordinatorConfig:
    return CoordinatorConfig(
        host=host,
        port=port,
        token=token,
        lease_timeout_s=options.lease_timeout,
        progress=options.progress,
        events=options.events,
        storage_options=dict(options.storage_options),
    )


def job_spec(options: JobOptions, urls: list[str], min_workers: int = 1) -> JobSpec:
    """The job ``options`` ask for over the partitions ``urls``; a group-by is bound to the
    first lines of the first partition (column names, count, types)."""
    plan = options.query()
    if isinstance(plan, GroupByPlan) and not plan.bound:
        plan = bind(plan, sample_of(urls[0], options=options.storage_options))
    return JobSpec(
        tasks=plan_tasks(urls, options.split_size, options=options.storage_options),
        plan=plan,
        record_limit=options.record_limit,
        config=JobConfig(
            max_attempts=options.max_attempts,
            skip_failed=options.skip_failed,
            min_workers=options.min_workers or min_workers,
            speculate=options.speculation,
            task_timeout_s=options.task_timeout,
        ),
    )


def check_outputs(options: JobOptions) -> None:
    """Fail before the job, not after it, when the result, stats or events cannot be
    written where they are asked for (a small marker is written there and deleted), or the
    workers' cache directory cannot be."""
    if options.cache is not None:
        from tally.cache import PartialStore

        PartialStore(options.cache, options.cache_size).close()  # ConfigError if unwritable
    targets = (("output", options.output), ("stats", options.stats), ("events", options.events))
    for option, target in targets:
        if target:
            probe(target, option, options.storage_options)


def sample_of(
    url: str, size: int = SAMPLE_BYTES, options: Mapping[str, str] | None = None
) -> bytes:
    """The whole lines among the first ``size`` bytes of ``url`` (ConfigError if unreadable)."""
    try:
        with open_partition(url, options=options) as stream:
            data = stream.read(size)
    except TallyError as exc:
        raise ConfigError(f"cannot read the first lines of {url}: {exc.message}") from exc
    if len(data) == size and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]
    return bytes(data)


def load_merge_engine(group_by: bool) -> None:
    """What the coordinator's merge of a job's partials loads on first use (a group-by:
    DuckDB; the domain count: Arrow's hash aggregation, 0.25 s of modules)."""
    if group_by:
        from tally.queries.groupby import warm_up

        warm_up()
    else:
        import pyarrow.acero  # type: ignore[import-untyped]  # noqa: F401

        import tally.queries.registry  # noqa: F401


def write_records(outcome: Outcome, options: JobOptions) -> None:
    """The result (``--output``, only when there is one) and the stats record (the events
    were written as they happened, or are uploaded as the coordinator closes)."""
    if options.stats:
        write_json(outcome.stats, options.stats, "stats", options.storage_options)
    if options.output and outcome.result is not None:
        from tally.result import Result

        write_result(Result.of(outcome.result, outcome.stats), options.output,
                     options.storage_options)  # fmt: skip


async def start_workers(
    port: int, count: int, token: bytes, extra_args: list[str]
) -> list[asyncio.subprocess.Process]:
    env = dict(os.environ, TALLY_TOKEN=token.decode())
    return [
        await asyncio.create_subprocess_exec(
            *worker_command("127.0.0.1", port, extra_args),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,  # stdout carries the result alone
            start_new_session=True,  # a Ctrl-C at the terminal reaches this process alone
        )
        for _ in range(count)
    ]


async def stop_workers(workers: Sequence[Process], terminate: bool) -> None:
    """Workers leave by themselves when the job ends; with ``terminate`` (the job did not
    finish) each gets SIGTERM at once. Any that lingers past the grace period is killed."""
    if terminate:
        for w in workers:
            if w.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.terminate()
    try:
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), WORKER_EXIT_GRACE_S)
    except TimeoutError:
        for w in workers:
            if w.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.kill()
        await asyncio.gather(*(w.wait() for w in workers))


async def watch_workers(coordinator: Coordinator, workers: Sequence[Process]) -> None:
    """Abort the job when it can no longer finish: every worker process has exited, or one
    exited before the job could start (it waits for all of them to join)."""
    pending = {asyncio.create_task(w.wait()) for w in workers}
    while pending:
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if not pending or not coordinator.any_job_started:
            codes = ", ".join(str(w.returncode) for w in workers if w.returncode is not None)
            gone = len(workers) - len(pending)
            every = "all " if not pending else ""
            coordinator.abort(
                f"{every}{gone} of {len(workers)} worker processes exited (status {codes}) "
                "before the job ended"
            )
            return


class Job:
    """One job: a coordinator listening on ``host:port`` and ``local_workers`` processes.

    :meth:`run` returns the outcome once the workers have left, after calling
    ``on_outcome`` with it (so a result can be printed while they leave). :meth:`interrupt`
    ends the job early: the coordinator aborts it and the workers get SIGTERM.
    """

    def __init__(
        self,
        options: JobOptions,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: bytes | None = None,
        local_workers: int = 0,
        spawned: LocalWorkers | None = None,
    ) -> None:
        self.options = options
        self.host = host
        self.port = port
        self.token = secrets.token_hex(16).encode() if token is None else token
        self.local_workers = local_workers
        self.spawned = spawned  # the local workers, started already (see tally.spawn)
        if spawned is not None:
            self.token, self.local_workers = spawned.token, spawned.count
        self.on_outcome: Callable[[Outcome], None] | None = None
        self.signum: int | None = None  # the signal that interrupted the job
        self._coordinator: Coordinator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def interrupt(self, signum: int) -> None:
        """End the job now (on the job's event loop)."""
        if self.signum is None:
            self.signum = signum
        if self._coordinator is not None:
            self._coordinator.abort(f"interrupted by {signal.Signals(self.signum).name}")

    def interrupt_threadsafe(self, signum: int) -> None:
        self.signum = self.signum or signum
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing runs
                loop.call_soon_threadsafe(self.interrupt, signum)

    async def run(self, catch_signals: bool = False) -> Outcome:
        self._loop = asyncio.get_running_loop()
        with self._catching_signals() if catch_signals else contextlib.nullcontext():
            return await self._run()

    @contextlib.contextmanager
    def _catching_signals(self) -> Iterator[None]:
        assert self._loop is not None
        previous = {sig: signal.getsignal(sig) for sig in CAUGHT_SIGNALS}
        for sig in CAUGHT_SIGNALS:
            self._loop.add_signal_handler(sig, self.interrupt, sig)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                self._loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)

    async def _run(self) -> Outcome:
        options = self.options
        check_outputs(options)
        urls = expand_source(options.source, options.storage_options)  # a bad one: not listening
        config = coordinator_config(options, self.token, self.host, self.port)
        coordinator = self._coordinator = Coordinator(config)
        spawned = self.spawned
        try:
            port = await coordinator.start(None if spawned is None else spawned.take_socket())
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        # the workers start (a few tenths of a second: the interpreter, the engine) while
        # the job is planned; they join and wait for it
        workers: list[Process] = []
        if spawned is not None:
            workers += spawned.processes
        else:
            extra = worker_args(options.kernel, options.storage_options, options.task_delay,
                                  options.cache, options.cache_size)  # fmt: skip
            workers += await start_workers(port, self.local_workers, self.token, extra)
        watch: asyncio.Task[None] | None = None
        loading: asyncio.Task[None] | None = None
        outcome: Outcome | None = None
        try:
            # the merge's engine loads meanwhile too, on a thread (the loop serves the joins)
            grouping = options.group_by is not None and options.group_by.wanted
            loading = asyncio.create_task(asyncio.to_thread(load_merge_engine, grouping))
            spec = job_spec(options, urls, max(1, self.local_workers))
            submitted = coordinator.submit(spec)
            if self.signum is not None:  # interrupted while the job was being set up
                self.interrupt(self.signum)
            job = asyncio.create_task(coordinator.finish_one(submitted))
            watch = asyncio.create_task(watch_workers(coordinator, workers))
            outcome = await job
            write_records(outcome, options)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
            return outcome
        finally:
            if loading is not None:
                with contextlib.suppress(Exception):  # the merge loads it again, and says why
                    await loading
            if watch is None:  # the job could not be planned: its coordinator stops here
                await coordinator.close("job failed")
            else:
                watch.cancel()
            await stop_workers(workers, terminate=outcome is None or outcome.result is None)
