"""What the scheduler hears (events) and what it asks its shell to do (actions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tally.jobs.tasks import Finish, JobConfig

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
    job: str = ""  # as the worker says; the attempt id decides
    cached: bool = False  # the worker's cache served it


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


@dataclass(frozen=True)
class JobSubmitted:
    job: str
    tasks: int
    now: float
    config: JobConfig = field(default_factory=JobConfig)
    done: frozenset[int] = frozenset()  # tasks committed before (a job resumed from a journal)


@dataclass(frozen=True)
class JobCancelled:
    job: str
    now: float
    reason: str = "cancelled"


Event = (
    WorkerJoined
    | HeartbeatSeen
    | Delivered
    | AttemptFailed
    | WorkerLost
    | WorkerLeft
    | Tick
    | JobSubmitted
    | JobCancelled
)

# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assign:
    worker: int
    attempt: int
    job: str
    task: int


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
    job: str
    task: int
    attempt: int
    worker: int
    payload: Any


Action = Assign | Cancel | Disconnect | Commit | Finish
