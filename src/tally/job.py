"""A job as the coordinator runs it: what was asked (:class:`JobSpec`), its progress and
outcome (:class:`JobRun`, :class:`Outcome`), and the ``--stats`` record of its run."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tally import protocol as p
from tally.cluster.pool import Pool
from tally.jobs.tasks import Finish, JobConfig, JobTasks
from tally.kernels import DEFAULT_RECORD_LIMIT
from tally.queries import Merger, QueryResult, merger_for


@dataclass
class JobSpec:
    """A job: its tasks, what each computes, and how hard to try."""

    tasks: list[p.Task]
    plan: p.Plan = field(default_factory=p.QuerySpec)
    config: JobConfig = field(default_factory=JobConfig)
    record_limit: int = DEFAULT_RECORD_LIMIT

    @property
    def labels(self) -> list[str]:
        return [task.label for task in self.tasks]


@dataclass
class TaskPartial:
    """A committed task's partial: what the merger adds, and what a journal keeps."""

    table: Any  # pa.Table | None
    lines: int
    malformed: int


@dataclass
class Outcome:
    """What a finished job hands back: the result (None if it failed) and its record."""

    result: QueryResult | None
    error: str | None
    stats: dict[str, Any]
    timeline: list[dict[str, Any]]


class JobRun:
    """One submitted job: its merger, and its outcome once it ends."""

    def __init__(self, job_id: str, spec: JobSpec, now: float) -> None:
        self.id = job_id
        self.spec = spec
        self.merger: Merger = merger_for(spec.plan)
        self.submitted_at = now
        self.submitted_wall = time.time()
        self.ended_at: float | None = None
        self.finish: Finish | None = None
        self.done = asyncio.Event()
        self.outcome: Outcome | None = None

    async def wait(self) -> Outcome:
        await self.done.wait()
        assert self.outcome is not None
        return self.outcome


def job_stats(
    run: JobRun, job: JobTasks, finish: Finish, pool: Pool, refused: int, now: float
) -> dict[str, Any]:
    """The ``--stats`` record of a job that ended."""
    members = pool.members
    started = job.started_at
    end = run.ended_at if run.ended_at is not None else now
    return {
        "job_id": run.id,
        "wall_s": round(end - run.submitted_at, 6),
        "ready_s": None if started is None else round(started - run.submitted_at, 6),
        "started_at": run.submitted_wall,
        "partitions": job.size,
        **job.stats(),
        "malformed_lines": run.merger.malformed,
        "lines": run.merger.lines,
        "bytes": sum(t.bytes_read for t in job.workers.values()),
        "complete": not finish.error and not finish.failed_tasks,
        "error": finish.error,
        "failed_partitions": [run.spec.labels[i] for i in finish.failed_tasks],
        "peers_refused": refused,
        "workers": [
            {
                "id": worker,
                "name": members[worker].name,
                "partitions": t.committed,
                "attempts": t.attempts,
                "bytes": t.bytes_read,
                "busy_s": round(t.busy_s, 6),
                "cached": t.cached,
                "lost": members[worker].lost,
            }
            for worker, t in sorted(job.workers.items())
        ],
    }
