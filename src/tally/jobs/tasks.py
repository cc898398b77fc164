"""One job's tasks: attempts, commit-once, retries and backups. Pure: no I/O, no clock.

Tasks move PENDING -> RUNNING -> DONE (or FAILED). Each start of a task on a worker is an
*attempt* whose id the scheduler hands out (unique across jobs). The first delivery of a
live attempt commits its task; its rivals are cancelled; every later delivery is stale.

Accounting, per task:
- ``--max-attempts`` K bounds every attempt that can end in failure, backups included: a
  task has at most K such attempts, and fails once K have failed (at once when an error
  says retrying cannot help).
- An attempt lost with its worker (crash, silence, a clean leave) is not the task's fault
  and is not charged, unless the same task keeps taking workers down: after
  ``poison_limit`` such losses it fails as a poison task, named in the job's error.
- A backup never goes to a worker on which the task already failed.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

Recorder = Callable[..., None]  # record(now, kind, **fields)


class TaskState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class JobConfig:
    max_attempts: int = 3  # attempts of one task that may fail, backups included
    poison_limit: int = 4  # workers lost under one task before it fails as poison
    skip_failed: bool = False  # finish with a partial result instead of failing the job
    min_workers: int = 1  # hold assignment until this many workers are in the pool
    speculate: bool = True  # give slow attempts a backup on idle workers
    backup_min_s: float = 0.2  # never back up an attempt younger than this
    backup_factor: float = 1.5  # ... or younger than this times the median attempt time
    task_timeout_s: float | None = None  # an attempt running longer fails (retryable)


@dataclass
class Attempt:
    id: int
    job: str
    task: int
    worker: int
    assigned_at: float
    backup: bool = False


@dataclass
class WorkerTally:
    """What one worker did for one job."""

    committed: int = 0
    attempts: int = 0  # attempts it finished (delivered or failed)
    bytes_read: int = 0
    busy_s: float = 0.0
    cached: int = 0  # committed partials its cache served


@dataclass
class Counters:
    attempts: int = 0
    reassigned: int = 0
    duplicates_dropped: int = 0
    workers_lost: int = 0
    backups: int = 0
    failures: int = 0
    commits: int = 0
    cache_hits: int = 0  # committed partials served by a worker's cache


@dataclass(frozen=True)
class Finish:
    """A job is over: complete, partial (skipped tasks) or failed (``error`` set)."""

    job: str
    failed_tasks: tuple[int, ...] = ()
    error: str | None = None


@dataclass
class _Task:
    state: TaskState = TaskState.PENDING
    live: set[int] = field(default_factory=set)  # live attempt ids
    charged: int = 0  # attempts started that were not lost with their worker
    failures: int = 0
    losses: int = 0
    failed_on: set[int] = field(default_factory=set)  # workers it failed on
    last_error: str = ""


class JobTasks:
    def __init__(
        self,
        job: str,
        tasks: int,
        config: JobConfig,
        now: float,
        record: Recorder,
        done: frozenset[int] = frozenset(),
    ) -> None:
        self.job = job
        self.config = config
        self.submitted_at = now
        self.tasks = [
            _Task(TaskState.DONE if i in done else TaskState.PENDING) for i in range(tasks)
        ]
        self.queue: deque[int] = deque(i for i in range(tasks) if i not in done)
        self.live: dict[int, Attempt] = {}
        self.counters = Counters(commits=sum(1 for i in done if 0 <= i < tasks))
        self.workers: dict[int, WorkerTally] = {}
        self.durations: list[float] = []
        self.started_at: float | None = None
        self.finished: Finish | None = None
        self._failed = 0
        self.record = record

    # --- views -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.tasks)

    @property
    def running(self) -> int:
        return len(self.live)

    @property
    def wants_slots(self) -> bool:
        return self.finished is None and self.started_at is not None and bool(self.queue)

    def failed_tasks(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.tasks) if t.state == TaskState.FAILED)

    def tally(self, worker: int) -> WorkerTally:
        tally = self.workers.get(worker)
        if tally is None:
            tally = self.workers[worker] = WorkerTally()
        return tally

    # --- starting attempts -------------------------------------------------------------------

    def start(self, task: int, attempt_id: int, worker: int, now: float, backup: bool) -> Attempt:
        attempt = Attempt(attempt_id, self.job, task, worker, now, backup)
        state = self.tasks[task]
        state.state = TaskState.RUNNING
        state.live.add(attempt_id)
        state.charged += 1
        self.live[attempt_id] = attempt
        self.tally(worker)
        self.counters.attempts += 1
        self.counters.backups += backup
        self.record(now, "assigned", worker=worker, attempt=attempt_id, partition=task,
                     backup=backup)  # fmt: skip
        return attempt

    def backup_candidate(self, worker: int, now: float) -> Attempt | None:
        """The oldest slow attempt that ``worker`` may back up, if any."""
        if not self.config.speculate or not self.durations or self.finished is not None:
            return None
        threshold = max(
            self.config.backup_min_s, self.config.backup_factor * statistics.median(self.durations)
        )
        best: Attempt | None = None
        for attempt in self.live.values():
            task = self.tasks[attempt.task]
            if (
                attempt.worker != worker
                and len(task.live) == 1
                and worker not in task.failed_on
                and task.charged < self.config.max_attempts
                and now - attempt.assigned_at > threshold
                and (
                    best is None or (attempt.assigned_at, attempt.id) < (best.assigned_at, best.id)
                )
            ):
                best = attempt
        return best

    # --- settling attempts -------------------------------------------------------------------

    def deliver(
        self, attempt: Attempt, now: float, bytes_read: int, cached: bool = False
    ) -> list[Attempt]:
        """Commit ``attempt``'s task (``cached``: a worker's cache served its partial);
        return the rival attempts to cancel."""
        task = self.tasks[attempt.task]
        self._settle(attempt)
        task.state = TaskState.DONE
        self.counters.commits += 1
        self.durations.append(now - attempt.assigned_at)
        tally = self.tally(attempt.worker)
        tally.committed += 1
        tally.bytes_read += bytes_read
        if cached:
            self.counters.cache_hits += 1
            tally.cached += 1
        self.record(now, "committed", worker=attempt.worker, attempt=attempt.id,
                     partition=attempt.task, bytes=bytes_read,
                     **({"cached": True} if cached else {}))  # fmt: skip
        return self._drop_rivals(attempt.task, now)

    def fail(self, attempt: Attempt, now: float, error: str, retryable: bool) -> list[Attempt]:
        """An attempt failed; return the rivals to cancel (when the task fails for good)."""
        task = self.tasks[attempt.task]
        self._settle(attempt)
        self.counters.failures += 1
        task.failures += 1
        task.failed_on.add(attempt.worker)
        task.last_error = error
        self.record(now, "failed", worker=attempt.worker, attempt=attempt.id,
                     partition=attempt.task, error=error)  # fmt: skip
        if not retryable or (not task.live and task.failures >= self.config.max_attempts):
            why = "" if retryable else " (retrying cannot help)"
            self._fail_task(
                attempt.task,
                now,
                f"partition {attempt.task} failed {task.failures} time(s){why}; "
                f"last error: {error}",
            )
            return self._drop_rivals(attempt.task, now)
        self._requeue(attempt.task, now)
        return []

    def lose(self, attempt: Attempt, now: float, reason: str) -> None:
        """The attempt's worker was lost: not the task's failure, unless it is poison."""
        task = self.tasks[attempt.task]
        self._settle(attempt)
        task.charged -= 1
        task.losses += 1
        self.record(now, "attempt_lost", worker=attempt.worker, attempt=attempt.id,
                     partition=attempt.task)  # fmt: skip
        if task.losses >= self.config.poison_limit and not task.live:
            self._fail_task(
                attempt.task,
                now,
                f"partition {attempt.task} is poison: {task.losses} workers were lost while "
                f"running it; last: {reason}",
            )
            return
        self._requeue(attempt.task, now)

    def give_back(self, attempt: Attempt, now: float) -> None:
        """The attempt's worker left cleanly and handed it back."""
        self._settle(attempt)
        self.tasks[attempt.task].charged -= 1
        self._requeue(attempt.task, now)

    def overdue(self, now: float) -> list[Attempt]:
        """Live attempts past the task time limit."""
        limit = self.config.task_timeout_s
        if limit is None:
            return []
        return [a for a in self.live.values() if now - a.assigned_at > limit]

    def worker_lost(self) -> None:
        if self.finished is None:
            self.counters.workers_lost += 1

    def cancel(self, now: float, reason: str) -> list[Attempt]:
        """End the job without a result; return its live attempts (to cancel)."""
        live = sorted(self.live.values(), key=lambda a: a.id)
        for attempt in live:
            self._settle(attempt)
        self.queue.clear()
        if self.finished is None:
            self.finished = Finish(self.job, (), reason)
        return live

    # --- mechanics ---------------------------------------------------------------------------

    def check_finished(self) -> Finish | None:
        if self.finished is None and self.counters.commits + self._failed == len(self.tasks):
            self.finished = Finish(self.job, self.failed_tasks())
            return self.finished
        return None

    def _settle(self, attempt: Attempt) -> None:
        del self.live[attempt.id]
        self.tasks[attempt.task].live.discard(attempt.id)

    def _drop_rivals(self, task_index: int, now: float) -> list[Attempt]:
        rivals = [self.live[i] for i in sorted(self.tasks[task_index].live)]
        for rival in rivals:
            self._settle(rival)
            self.record(now, "cancelled", worker=rival.worker, attempt=rival.id,
                         partition=task_index)  # fmt: skip
        return rivals

    def _fail_task(self, task_index: int, now: float, error: str) -> None:
        task = self.tasks[task_index]
        if task.state in (TaskState.DONE, TaskState.FAILED):
            return
        task.state = TaskState.FAILED
        self._failed += 1
        self.record(now, "partition_failed", partition=task_index, error=error)
        if not self.config.skip_failed and self.finished is None:
            self.finished = Finish(self.job, (task_index,), error)

    def _requeue(self, task_index: int, now: float) -> None:
        task = self.tasks[task_index]
        if task.state != TaskState.RUNNING or task.live or self.finished is not None:
            return
        task.state = TaskState.PENDING
        self.queue.appendleft(task_index)
        self.counters.reassigned += 1
        self.record(now, "requeued", partition=task_index)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "attempts": c.attempts,
            "reassigned": c.reassigned,
            "duplicates_dropped": c.duplicates_dropped,
            "workers_lost": c.workers_lost,
            "backup_attempts": c.backups,
            "failed_attempts": c.failures,
            "cache_hits": c.cache_hits,
        }
