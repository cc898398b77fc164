"""The coordinator's brain: one worker pool, many jobs, fair sharing. Pure: events in,
actions out; no I/O, no clock.

The pool (:mod:`tally.cluster.pool`) tracks workers and leases; each job
(:mod:`tally.jobs.tasks`) tracks its tasks and attempts; :mod:`tally.jobs.fairshare`
decides which job a free slot serves. Attempt ids are unique across jobs and increase
from ``first_attempt``, which a restarted service sets past every id it ever issued.

A result or failure counts only from the worker its attempt was assigned to: anything else
is a lying or broken peer, and it is disconnected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tally.cluster.pool import Pool
from tally.jobs import fairshare
from tally.jobs.events import (
    Action,
    Assign,
    AttemptFailed,
    Cancel,
    Commit,
    Delivered,
    Disconnect,
    Event,
    HeartbeatSeen,
    JobCancelled,
    JobSubmitted,
    Tick,
    WorkerJoined,
    WorkerLeft,
    WorkerLost,
)
from tally.jobs.tasks import Attempt, Finish, JobTasks

Listener = Callable[[dict[str, Any]], None]
ATTEMPT_BLOCK = 4096


class Scheduler:
    def __init__(
        self,
        lease_timeout_s: float = 3.0,
        first_attempt: int = 1,
        listener: Listener | None = None,
        reserve: Callable[[int], None] | None = None,
        keep_timeline: bool = True,
    ) -> None:
        """``reserve(n)`` is called before any attempt id reaches ``n``: a service journals
        it, and a restart begins at the last ``n`` reserved, so no id is ever issued twice."""
        self.pool = Pool(lease_timeout_s)
        self.jobs: dict[str, JobTasks] = {}  # every job, in submission order
        self.active: dict[str, JobTasks] = {}  # the unfinished ones
        self.attempts: dict[int, Attempt] = {}  # live attempts of every job
        self.next_attempt = first_attempt
        self.reserve = reserve
        self._reserved = first_attempt  # ids below this may be issued
        self.timeline: list[dict[str, Any]] = []
        self.keep_timeline = keep_timeline
        self.draining = False  # a stopping service: start no more attempts
        self.listener = listener
        self.refused: list[str] = []  # reasons peers were disconnected for lying

    # --- public ------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return what the shell must do, in order."""
        actions: list[Action] = []
        match event:
            case WorkerJoined():
                self.pool.join(event.worker, event.slots, event.now, event.name)
                self._record(event.now, "joined", worker=event.worker, name=event.name)
                self._start_ready_jobs(event.now)
            case HeartbeatSeen():
                self.pool.touch(event.worker, event.now)
            case Delivered():
                self.pool.touch(event.worker, event.now)
                self._deliver(event, actions)
            case AttemptFailed():
                self.pool.touch(event.worker, event.now)
                self._fail(event, actions)
            case WorkerLost():
                self._remove(event.worker, event.now, event.reason, actions)
            case WorkerLeft():
                self._remove(event.worker, event.now, None, actions, set(event.returned))
            case Tick():
                self._time_out(event.now, actions)
                for member, silent in self.pool.expired(event.now):
                    lease = self.pool.lease_timeout_s
                    reason = f"silent for {silent:.1f}s (lease {lease:g}s)"
                    actions.append(Disconnect(member.id, reason))
                    self._remove(member.id, event.now, reason, actions)
            case JobSubmitted():
                self._submit(event)
            case JobCancelled():
                job = self.active.get(event.job)
                if job is not None:
                    self._cancel_attempts(job.cancel(event.now, event.reason), actions)
        self._settle_jobs(event.now, actions)
        self._dispatch(event.now, actions)
        return actions

    def abort(self, job_id: str, reason: str, now: float = 0.0) -> list[Action]:
        """End a job now without a result (its shell gave up)."""
        return self.handle(JobCancelled(job_id, now, reason))

    @property
    def high_water(self) -> int:
        """Every attempt id issued so far is below this."""
        return self.next_attempt

    # --- event handlers ----------------------------------------------------------------------

    def _submit(self, event: JobSubmitted) -> None:
        if event.job in self.jobs:
            return  # submitted twice: the first one stands

        def record(now: float, kind: str, **fields: Any) -> None:
            self._record(now, kind, job=event.job, **fields)

        job = JobTasks(event.job, event.tasks, event.config, event.now, record, event.done)
        self.jobs[event.job] = self.active[event.job] = job
        self._start_ready_jobs(event.now)

    def _start_ready_jobs(self, now: float) -> None:
        alive = self.pool.alive_count()
        for job in self.active.values():
            if job.started_at is None and alive >= job.config.min_workers:
                job.started_at = now
                self._record(now, "ready", job=job.job, workers=alive)

    def _deliver(self, event: Delivered, actions: list[Action]) -> None:
        attempt = self.attempts.get(event.attempt)
        if attempt is not None and attempt.worker != event.worker:
            self._refuse(event.worker, event.now, f"delivered attempt {event.attempt} of "
                         f"worker {attempt.worker}", actions)  # fmt: skip
            return
        job = self.jobs.get(attempt.job if attempt is not None else event.job)
        if job is not None:
            tally = job.tally(event.worker)
            tally.busy_s += event.busy_s
            tally.attempts += 1
            # the worker measured busy_s: the attempt started that long before it was delivered
            job.record(event.now - event.busy_s, "started", worker=event.worker,
                       attempt=event.attempt)  # fmt: skip
            cached = {"cached": True} if event.cached else {}
            job.record(event.now, "finished", worker=event.worker, attempt=event.attempt,
                        bytes=event.bytes_read, busy_s=event.busy_s, **cached)  # fmt: skip
        if attempt is None or job is None:  # settled (a rival won, it failed) or never issued
            if job is not None:
                job.counters.duplicates_dropped += 1
                job.record(event.now, "duplicate_dropped", worker=event.worker,
                            attempt=event.attempt)  # fmt: skip
            else:  # a job this scheduler does not know (forgotten, or before a restart)
                self._record(event.now, "duplicate_dropped", job=event.job, worker=event.worker,
                             attempt=event.attempt)  # fmt: skip
            return
        self._forget(attempt)
        actions.append(Commit(job.job, attempt.task, attempt.id, event.worker, event.payload))
        rivals = job.deliver(attempt, event.now, event.bytes_read, event.cached)
        self._cancel_attempts(rivals, actions)

    def _fail(self, event: AttemptFailed, actions: list[Action]) -> None:
        attempt = self.attempts.get(event.attempt)
        if attempt is None:
            return  # settled already: a failure after a rival's success changes nothing
        if attempt.worker != event.worker:
            self._refuse(event.worker, event.now, f"reported a failure of attempt "
                         f"{event.attempt} of worker {attempt.worker}", actions)  # fmt: skip
            return
        job = self.jobs[attempt.job]
        job.tally(event.worker).attempts += 1
        self._forget(attempt)
        rivals = job.fail(attempt, event.now, event.error, event.retryable)
        self._cancel_attempts(rivals, actions)

    def _time_out(self, now: float, actions: list[Action]) -> None:
        """Attempts past their job's task time limit fail, and their workers drop them."""
        for job in list(self.active.values()):
            for attempt in job.overdue(now):
                self._forget(attempt)
                if self.pool.is_live(attempt.worker):
                    actions.append(Cancel(attempt.worker, attempt.id))
                limit = job.config.task_timeout_s
                error = f"no result within {limit:g}s (--task-timeout)"
                rivals = job.fail(attempt, now, error, retryable=True)
                self._cancel_attempts(rivals, actions)

    def _refuse(self, worker: int, now: float, why: str, actions: list[Action]) -> None:
        reason = f"refused: {why}"
        self.refused.append(reason)
        actions.append(Disconnect(worker, reason))
        self._remove(worker, now, reason, actions)

    def _remove(
        self,
        worker: int,
        now: float,
        lost_because: str | None,
        actions: list[Action],
        returned: set[int] | None = None,
    ) -> None:
        """A worker is gone: lost, or left (handing back ``returned``)."""
        held = self.pool.remove(worker, lost=lost_because is not None)
        if held is None:
            return
        if lost_because is None:
            self._record(now, "left", worker=worker)
        else:
            self._record(now, "lost", worker=worker, reason=lost_because)
            for job in self.active.values():
                job.worker_lost()
        for attempt_id in sorted(held, reverse=True):  # re-queued in front, in order
            attempt = self.attempts.pop(attempt_id)
            job = self.jobs[attempt.job]
            if lost_because is None:
                job.give_back(attempt, now)
            else:
                job.lose(attempt, now, lost_because)

    # --- mechanics ---------------------------------------------------------------------------

    def _forget(self, attempt: Attempt) -> None:
        del self.attempts[attempt.id]
        self.pool.release(attempt.worker, attempt.id)

    def _cancel_attempts(self, attempts: list[Attempt], actions: list[Action]) -> None:
        for attempt in attempts:
            self._forget(attempt)
            if self.pool.is_live(attempt.worker):
                actions.append(Cancel(attempt.worker, attempt.id))

    def _settle_jobs(self, now: float, actions: list[Action]) -> None:
        for job in list(self.active.values()):
            finish = job.finished or job.check_finished()
            if finish is None:
                continue
            self._cancel_attempts(job.cancel(now, finish.error or ""), actions)
            del self.active[job.job]
            actions.append(finish)

    def _dispatch(self, now: float, actions: list[Action]) -> None:
        if self.draining:
            return
        waiting = [job for job in self.active.values() if job.wants_slots]
        while waiting:
            room = self.pool.with_room()
            if not room:
                return
            job = fairshare.next_job(waiting)
            assert job is not None
            self._start(job, job.queue.popleft(), room[0].id, now, backup=False, actions=actions)
            if not job.queue:
                waiting.remove(job)
        self._speculate(now, actions)

    def _speculate(self, now: float, actions: list[Action]) -> None:
        """Idle workers, nothing waiting: back up the oldest slow attempts (one backup each)."""
        jobs = [job for job in self.active.values() if job.started_at is not None]
        if not jobs:
            return
        for member in sorted(self.pool.idle(), key=lambda m: m.id):
            for job in fairshare.backup_order(jobs):
                slow = job.backup_candidate(member.id, now)
                if slow is not None:
                    self._start(job, slow.task, member.id, now, backup=True, actions=actions)
                    break

    def _start(
        self, job: JobTasks, task: int, worker: int, now: float, backup: bool, actions: list[Action]
    ) -> None:
        if self.next_attempt >= self._reserved:
            self._reserved = self.next_attempt + ATTEMPT_BLOCK
            if self.reserve is not None:
                self.reserve(self._reserved)
        attempt = job.start(task, self.next_attempt, worker, now, backup)
        self.next_attempt += 1
        self.attempts[attempt.id] = attempt
        self.pool.hold(worker, attempt.id)
        actions.append(Assign(worker, attempt.id, job.job, task))

    def _record(self, now: float, kind: str, **fields: Any) -> None:
        record = {"t": now, "event": kind, **fields}
        if self.keep_timeline:
            self.timeline.append(record)
        if self.listener is not None:
            self.listener(record)


__all__ = ["Finish", "Scheduler"]
