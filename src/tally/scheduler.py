"""The coordinator's brain: a pure state machine. Events in, actions out; no I/O, no clock.

Partitions move PENDING -> RUNNING -> DONE (or FAILED, with --skip-failed). Each assignment
of a partition to a worker is an *attempt* with a fresh id. The first delivery of an issued
attempt whose partition is not yet done commits it; every other delivery is dropped and
counted. A lost worker's attempts go back to the front of the queue. Time comes in with
each event (``now``, seconds on any monotonic clock), so tests drive it by hand.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# --- configuration ---------------------------------------------------------------------------

MAX_SLOTS = 16


@dataclass(frozen=True)
class SchedulerConfig:
    max_attempts: int = 3  # failures of one partition before it fails the job
    lease_timeout_s: float = 3.0  # silence after which a worker is declared lost
    skip_failed: bool = False  # finish with a partial result instead of failing the job
    min_workers: int = 1  # hold assignment until this many workers have joined
    speculate: bool = True  # give slow attempts a backup on idle workers
    backup_min_s: float = 0.2  # never back up an attempt younger than this
    backup_factor: float = 1.5  # ... or younger than this times the median attempt time


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerJoined:
    worker: int
    slots: int
    now: float
    name: str = ""


@dataclass(frozen=True)
class HeartbeatSeen:
    worker: int
    now: float


@dataclass(frozen=True)
class Delivered:
    worker: int
    attempt: int
    now: float
    payload: Any = None
    bytes_read: int = 0
    busy_s: float = 0.0


@dataclass(frozen=True)
class AttemptFailed:
    worker: int
    attempt: int
    now: float
    error: str
    retryable: bool = True


@dataclass(frozen=True)
class WorkerLost:
    worker: int
    now: float
    reason: str


@dataclass(frozen=True)
class WorkerLeft:
    """A worker leaving cleanly, handing back the attempts it had not finished."""

    worker: int
    now: float
    returned: tuple[int, ...] = ()


@dataclass(frozen=True)
class Tick:
    now: float


Event = WorkerJoined | HeartbeatSeen | Delivered | AttemptFailed | WorkerLost | WorkerLeft | Tick

# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assign:
    worker: int
    attempt: int
    partition: int


@dataclass(frozen=True)
class Cancel:
    worker: int
    attempt: int


@dataclass(frozen=True)
class Disconnect:
    worker: int
    reason: str


@dataclass(frozen=True)
class Commit:
    partition: int
    attempt: int
    worker: int
    payload: Any


@dataclass(frozen=True)
class Finish:
    """The job is over: complete, partial (skipped partitions) or failed (``error`` set)."""

    failed_partitions: tuple[int, ...] = ()
    error: str | None = None


Action = Assign | Cancel | Disconnect | Commit | Finish

# --- state -----------------------------------------------------------------------------------


class PartitionState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Attempt:
    id: int
    partition: int
    worker: int
    assigned_at: float


@dataclass
class WorkerState:
    id: int
    name: str
    slots: int
    last_seen: float
    live: set[int] = field(default_factory=set)  # attempt ids assigned and not yet settled
    committed: int = 0
    attempts: int = 0
    bytes_read: int = 0
    busy_s: float = 0.0
    lost: bool = False
    gone: bool = False


@dataclass
class Counters:
    attempts: int = 0
    reassigned: int = 0
    duplicates_dropped: int = 0
    workers_lost: int = 0
    backups: int = 0
    failures: int = 0
    commits: int = 0


class Scheduler:
    def __init__(self, partitions: int, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.state = [PartitionState.PENDING] * partitions
        self.queue: deque[int] = deque(range(partitions))
        self.failures = [0] * partitions
        self.last_error: dict[int, str] = {}
        self.attempts: dict[int, Attempt] = {}  # live attempts only
        self.partition_attempts: dict[int, set[int]] = {}  # partition -> live attempt ids
        self.workers: dict[int, WorkerState] = {}  # every worker ever joined
        self.counters = Counters()
        self.durations: list[float] = []
        self.timeline: list[dict[str, Any]] = []
        self.started_at: float | None = None  # when min_workers had joined
        self.finished: Finish | None = None
        self._next_attempt = 1
        self._failed = 0

    # --- public ------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return what the shell must do, in order."""
        if self.finished is not None:
            if isinstance(event, Delivered):
                self.counters.duplicates_dropped += 1
            return []
        actions: list[Action] = []
        match event:
            case WorkerJoined():
                self._join(event, actions)
            case HeartbeatSeen():
                self._touch(event.worker, event.now)
            case Delivered():
                self._touch(event.worker, event.now)
                self._deliver(event, actions)
            case AttemptFailed():
                self._touch(event.worker, event.now)
                self._fail(event, actions)
            case WorkerLost():
                self._remove(event.worker, event.now, actions, lost_because=event.reason)
            case WorkerLeft():
                self._remove(event.worker, event.now, actions, lost_because=None)
            case Tick():
                self._expire_leases(event.now, actions)
        if self.finished is None:
            self._dispatch(event.now, actions)
            self._check_finished(actions)
        return actions

    def abort(self, reason: str) -> Finish:
        """End the job now without a result (the shell gave up, e.g. its workers are gone)."""
        if self.finished is None:
            self.finished = Finish((), reason)
        return self.finished

    @property
    def started(self) -> bool:
        """Whether assignment has begun (min_workers had joined once)."""
        return self.started_at is not None

    @property
    def partitions(self) -> int:
        return len(self.state)

    # --- event handlers ----------------------------------------------------------------------

    def _join(self, event: WorkerJoined, actions: list[Action]) -> None:
        slots = min(max(1, event.slots), MAX_SLOTS)  # no worker may take the whole queue
        self.workers[event.worker] = WorkerState(event.worker, event.name, slots, event.now)
        self._record(event.now, "joined", worker=event.worker, name=event.name)
        if not self.started and len(self.workers) >= self.config.min_workers:
            self.started_at = event.now
            self._record(event.now, "ready", workers=len(self.workers))

    def _touch(self, worker: int, now: float) -> None:
        state = self.workers.get(worker)
        if state is not None and not state.gone:
            state.last_seen = now

    def _deliver(self, event: Delivered, actions: list[Action]) -> None:
        attempt = self.attempts.get(event.attempt)
        worker = self.workers.get(event.worker)
        if worker is not None:
            worker.busy_s += event.busy_s
            worker.attempts += 1
        # the worker measured busy_s, so the attempt started that long before it was delivered
        self._record(event.now - event.busy_s, "started", worker=event.worker,
                     attempt=event.attempt)  # fmt: skip
        self._record(event.now, "finished", worker=event.worker, attempt=event.attempt,
                     bytes=event.bytes_read, busy_s=event.busy_s)  # fmt: skip
        if attempt is None:  # its partition is settled (a rival won, it failed) or never issued
            self.counters.duplicates_dropped += 1
            self._record(event.now, "duplicate_dropped", worker=event.worker, attempt=event.attempt)
            return
        partition = attempt.partition  # live attempts always belong to a running partition
        self._settle(attempt)
        self.state[partition] = PartitionState.DONE
        self.counters.commits += 1
        self.durations.append(event.now - attempt.assigned_at)
        if worker is not None:
            worker.committed += 1
            worker.bytes_read += event.bytes_read
        actions.append(Commit(partition, attempt.id, event.worker, event.payload))
        self._record(event.now, "committed", worker=event.worker, attempt=attempt.id,
                     partition=partition, bytes=event.bytes_read)  # fmt: skip
        for other in sorted(self.partition_attempts.pop(partition, set())):
            rival = self.attempts.pop(other)
            owner = self.workers[rival.worker]
            owner.live.discard(other)
            if not owner.gone:
                actions.append(Cancel(rival.worker, other))
            self._record(
                event.now, "cancelled", worker=rival.worker, attempt=other, partition=partition
            )

    def _fail(self, event: AttemptFailed, actions: list[Action]) -> None:
        worker = self.workers.get(event.worker)
        if worker is not None:
            worker.attempts += 1
        attempt = self.attempts.get(event.attempt)
        if attempt is None:
            return
        self._settle(attempt)
        self._record(
            event.now,
            "failed",
            worker=event.worker,
            attempt=attempt.id,
            partition=attempt.partition,
            error=event.error,
        )
        self._count_failure(attempt.partition, event.now, event.error, not event.retryable, actions)

    def _remove(
        self, worker_id: int, now: float, actions: list[Action], lost_because: str | None
    ) -> None:
        """A worker is gone: lost (its attempts count as failures) or left (they do not)."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.gone:
            return
        worker.gone, worker.lost = True, lost_because is not None
        if lost_because is None:
            self._record(now, "left", worker=worker_id)
        else:
            self.counters.workers_lost += 1
            self._record(now, "lost", worker=worker_id, reason=lost_because)
        for attempt_id in sorted(worker.live, reverse=True):  # re-queued in front, in order
            attempt = self.attempts[attempt_id]
            self._settle(attempt)
            if lost_because is None:
                self._requeue(attempt.partition, now)
                continue
            self._record(now, "attempt_lost", worker=worker_id, attempt=attempt_id,
                         partition=attempt.partition)  # fmt: skip
            error = f"worker lost ({lost_because})"
            self._count_failure(attempt.partition, now, error, False, actions)

    def _expire_leases(self, now: float, actions: list[Action]) -> None:
        for worker in list(self.workers.values()):
            if not worker.gone and now - worker.last_seen > self.config.lease_timeout_s:
                silent = now - worker.last_seen
                reason = f"silent for {silent:.1f}s (lease {self.config.lease_timeout_s:g}s)"
                actions.append(Disconnect(worker.id, reason))
                self._remove(worker.id, now, actions, lost_because=reason)

    # --- mechanics ---------------------------------------------------------------------------

    def _settle(self, attempt: Attempt) -> None:
        """Forget a live attempt (delivered, failed, lost or returned)."""
        del self.attempts[attempt.id]
        self.workers[attempt.worker].live.discard(attempt.id)
        live = self.partition_attempts.get(attempt.partition)
        if live is not None:
            live.discard(attempt.id)
            if not live:
                del self.partition_attempts[attempt.partition]

    def _count_failure(
        self, partition: int, now: float, error: str, fatal: bool, actions: list[Action]
    ) -> None:
        if self.state[partition] != PartitionState.RUNNING or self.finished is not None:
            return
        self.counters.failures += 1
        self.failures[partition] += 1
        self.last_error[partition] = error
        if self.partition_attempts.get(partition):
            return  # a backup attempt is still running
        if fatal or self.failures[partition] >= self.config.max_attempts:
            self.state[partition] = PartitionState.FAILED
            self._failed += 1
            self._record(now, "partition_failed", partition=partition, error=error)
            if not self.config.skip_failed:
                self.finished = Finish(
                    (partition,),
                    f"partition {partition} failed {self.failures[partition]} time(s); "
                    f"last error: {error}",
                )
                actions.append(self.finished)
            return
        self._requeue(partition, now)

    def _requeue(self, partition: int, now: float) -> None:
        if self.state[partition] != PartitionState.RUNNING or self.partition_attempts.get(
            partition
        ):
            return
        self.state[partition] = PartitionState.PENDING
        self.queue.appendleft(partition)
        self.counters.reassigned += 1
        self._record(now, "requeued", partition=partition)

    def _free_slots(self, worker: WorkerState) -> int:
        return 0 if worker.gone else worker.slots - len(worker.live)

    def _dispatch(self, now: float, actions: list[Action]) -> None:
        if not self.started:
            return
        while self.queue:
            ready = [w for w in self.workers.values() if self._free_slots(w) > 0]
            if not ready:
                return
            # the emptiest worker first keeps the load even when several have room
            worker = max(ready, key=lambda w: (self._free_slots(w), -w.attempts, -w.id))
            partition = self.queue.popleft()
            self._start_attempt(partition, worker, now, actions, backup=False)
        if self.config.speculate:
            self._speculate(now, actions)

    def _speculate(self, now: float, actions: list[Action]) -> None:
        """Idle workers and an empty queue: back up the oldest slow attempts (one backup each)."""
        if not self.durations:
            return
        threshold = max(
            self.config.backup_min_s, self.config.backup_factor * statistics.median(self.durations)
        )
        idle = [w for w in self.workers.values() if not w.gone and not w.live]
        for worker in sorted(idle, key=lambda w: w.id):
            candidates = [
                a
                for a in self.attempts.values()
                if a.worker != worker.id
                and len(self.partition_attempts[a.partition]) == 1
                and now - a.assigned_at > threshold
            ]
            if not candidates:
                return
            oldest = min(candidates, key=lambda a: (a.assigned_at, a.id))
            self.counters.backups += 1
            self._start_attempt(oldest.partition, worker, now, actions, backup=True)

    def _start_attempt(
        self, partition: int, worker: WorkerState, now: float, actions: list[Action], backup: bool
    ) -> None:
        attempt = Attempt(self._next_attempt, partition, worker.id, now)
        self._next_attempt += 1
        self.attempts[attempt.id] = attempt
        self.partition_attempts.setdefault(partition, set()).add(attempt.id)
        worker.live.add(attempt.id)
        self.state[partition] = PartitionState.RUNNING
        self.counters.attempts += 1
        actions.append(Assign(worker.id, attempt.id, partition))
        self._record(
            now,
            "assigned",
            worker=worker.id,
            attempt=attempt.id,
            partition=partition,
            backup=backup,
        )

    def _check_finished(self, actions: list[Action]) -> None:
        if self.counters.commits + self._failed == len(self.state):
            failed = [p for p, s in enumerate(self.state) if s == PartitionState.FAILED]
            self.finished = Finish(tuple(failed))
            actions.append(self.finished)

    def _record(self, now: float, kind: str, **fields: Any) -> None:
        self.timeline.append({"t": now, "event": kind, **fields})
