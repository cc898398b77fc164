"""Fair sharing of the pool between jobs: which job a free slot serves next.

Each free slot goes to the job, among those with tasks waiting, that holds the fewest
running attempts; ties go to the job submitted first. A short job submitted behind a long
one therefore gets every slot that frees until both hold as many, and finishes in about
its own time instead of waiting behind the long one's queue.
"""

from __future__ import annotations

from collections.abc import Iterable

from tally.jobs.tasks import JobTasks


def next_job(waiting: Iterable[JobTasks]) -> JobTasks | None:
    """The job that gets the next free slot (``waiting`` in submission order)."""
    best: JobTasks | None = None
    for job in waiting:
        if best is None or job.running < best.running:
            best = job
    return best


def backup_order(jobs: Iterable[JobTasks]) -> list[JobTasks]:
    """Jobs in the order an idle worker looks for an attempt to back up: fewest running first."""
    return sorted(jobs, key=lambda job: job.running)  # stable: submission order on ties
