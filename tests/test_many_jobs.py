"""One coordinator, one pool of real worker processes, several jobs at once: exact results
despite a killed worker, and a short job that does not wait behind a long one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import SAMPLE, reference_output
from groupby_helpers import run as run_plan
from tally.coordinator import Coordinator, CoordinatorConfig
from tally.job import JobRun, JobSpec
from tally.jobs.tasks import JobConfig
from tally.protocol import Plan, QuerySpec, Task
from tally.queries import format_result
from tally.queries.groupby_output import format_group_result
from tally.queries.infer import bind
from tally.queries.plan import plan_from_flags

TOKEN = b"many-jobs-token"


def spawn_workers(port: int, count: int, *args: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "TALLY_TOKEN": TOKEN.decode()}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tally", "worker", "127.0.0.1", str(port), "-q", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def tasks_of(filelist: Path) -> list[Task]:
    base = filelist.parent
    return [Task(line.removeprefix("file://") if line.startswith("file://") else str(base / line))
            for line in filelist.read_text().split()]  # fmt: skip


def output(run: JobRun) -> str:
    assert run.outcome is not None and run.outcome.result is not None, run.outcome
    return format_result(run.outcome.result, "text")


def test_three_jobs_share_a_pool_and_survive_a_killed_worker(sample_filelist: Path) -> None:
    group_by = bind(
        plan_from_flags(delimiter="\t", group_by=["2"], aggs=["count", "count_distinct:1"]),
        SAMPLE.read_bytes(),
    )
    queries: list[Plan] = [QuerySpec("all"), QuerySpec("top", k=7), group_by]

    async def scenario() -> tuple[list[str], dict[str, int]]:
        coordinator = Coordinator(CoordinatorConfig(token=TOKEN, lease_timeout_s=3.0))
        port = await coordinator.start()
        workers = spawn_workers(port, 3, "--task-delay", "0.02")
        try:
            await until(lambda: coordinator.scheduler.pool.alive_count() == 3)
            config = JobConfig(min_workers=3)
            runs = [
                coordinator.submit(JobSpec(tasks_of(sample_filelist), q, config)) for q in queries
            ]
            jobs = [coordinator.scheduler.jobs[run.id] for run in runs]
            # every job under way on the shared pool, then a worker dies holding attempts
            await until(lambda: all(job.counters.commits >= 5 for job in jobs))
            victim = next(iter(coordinator.scheduler.pool.alive())).id
            await until(lambda: bool(coordinator.scheduler.pool.members[victim].live))
            workers[victim - 1].kill()
            outcomes = [await asyncio.wait_for(run.wait(), 120) for run in runs]
            lost = {r.id: o.stats["workers_lost"] for r, o in zip(runs, outcomes, strict=True)}
            return [output(run) for run in runs], lost
        finally:
            await coordinator.close()
            for w in workers:
                w.kill()
                w.wait()

    outputs, lost = asyncio.run(scenario())
    assert outputs[:2] == [reference_output(SAMPLE, q) for q in queries[:2]]
    assert outputs[2] == format_group_result(run_plan(group_by, [SAMPLE.read_bytes()]), "text")
    assert len(outputs[2].splitlines()) > 100  # one row per distinct URL, and a header
    assert list(lost.values()) == [1, 1, 1]


def test_a_short_job_submitted_behind_a_long_one_finishes_in_about_its_own_time(
    sample_filelist: Path, tmp_path: Path
) -> None:
    async def scenario() -> tuple[float, float, bool, str]:
        coordinator = Coordinator(CoordinatorConfig(token=TOKEN))
        port = await coordinator.start()
        workers = spawn_workers(port, 2, "--task-delay", "0.1", "--slots", "1")
        try:
            await until(lambda: coordinator.scheduler.pool.alive_count() == 2)
            tasks = tasks_of(sample_filelist)
            long_run = coordinator.submit(JobSpec(tasks * 2, QuerySpec("all")))  # ~10 s
            long_job = coordinator.scheduler.jobs[long_run.id]
            await until(lambda: long_job.counters.commits >= 4)
            short_run = coordinator.submit(JobSpec(tasks[:4], QuerySpec("top", k=3)))
            await asyncio.wait_for(short_run.wait(), 60)
            short_done = not long_run.done.is_set()
            assert short_run.outcome is not None and long_run.outcome is None
            short_s = short_run.outcome.stats["wall_s"]
            long_outcome = await asyncio.wait_for(long_run.wait(), 120)
            return short_s, long_outcome.stats["wall_s"], short_done, output(short_run)
        finally:
            await coordinator.close()
            for w in workers:
                w.kill()
                w.wait()

    short_s, long_s, short_first, text = asyncio.run(scenario())
    assert short_first
    # 4 tasks of 0.1 s on 2 workers take 0.2 s alone; FIFO would make it wait for ~190 tasks
    assert short_s < long_s / 4, (short_s, long_s)
    joined = tmp_path / "first-four.tsv"
    joined.write_bytes(b"".join(Path(t.url).read_bytes() for t in tasks_of(sample_filelist)[:4]))
    assert text == reference_output(joined, QuerySpec("top", k=3))
