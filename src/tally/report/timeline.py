"""Pure functions over a job's event log (the coordinator's ``--events`` JSON lines).

Every figure about attempts, detection and recovery in the report comes from here, computed
from the recorded events and never estimated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]
OUTCOMES = {"attempt_lost": "lost", "duplicate_dropped": "dropped"}


@dataclass
class AttemptLife:
    """One attempt as the events tell it. ``outcome`` is committed, dropped (a delivery that
    lost the race or came too late), lost (its worker was lost first), cancelled (a rival
    committed first), failed, or running (still live when the log ended)."""

    attempt: int
    worker: int
    partition: int
    assigned: float
    backup: bool = False
    started: float | None = None
    finished: float | None = None
    ended: float | None = None  # when its outcome was decided
    outcome: str = "running"
    bytes: int = 0
    lost_at: float | None = None  # its worker was declared lost while it was live


def attempts(events: list[Event]) -> dict[int, AttemptLife]:
    """Every assigned attempt and its outcome, keyed by attempt id."""
    lives: dict[int, AttemptLife] = {}
    for e in events:
        kind = e["event"]
        if kind == "assigned":
            lives[e["attempt"]] = AttemptLife(
                e["attempt"], e["worker"], e["partition"], e["t"], bool(e.get("backup"))
            )
            continue
        life = lives.get(e.get("attempt", -1))
        if life is None:
            continue
        if kind == "started":
            life.started = e["t"]
        elif kind == "finished":
            life.finished = e["t"]
            life.bytes = int(e.get("bytes", 0))
        elif kind in ("committed", "cancelled", "failed", "attempt_lost", "duplicate_dropped"):
            if kind == "attempt_lost":
                life.lost_at = e["t"]
            outcome = OUTCOMES.get(str(kind), str(kind))
            if kind == "duplicate_dropped" or life.outcome == "running":
                life.outcome, life.ended = outcome, e["t"]
    return lives


def committed_per_worker(events: list[Event]) -> dict[int, int]:
    """Partitions committed by each worker id (workers that committed none are left out)."""
    return dict(Counter(e["worker"] for e in events if e["event"] == "committed"))


def commit_times(events: list[Event]) -> dict[int, float]:
    """When each partition committed."""
    return {e["partition"]: e["t"] for e in events if e["event"] == "committed"}


def first_event(events: list[Event], kind: str, worker: int) -> Event | None:
    return next((e for e in events if e["event"] == kind and e.get("worker") == worker), None)


@dataclass
class Recovery:
    """What a fault on one worker cost, from the events.

    ``stranded`` are the partitions whose attempts on that worker were live at the fault and
    never committed there; ``recovered`` is when the last of them committed elsewhere.
    """

    worker: int
    fault_t: float
    lost_t: float | None
    reason: str
    stranded: list[int]
    recovered_t: float | None
    attempts_lost: int
    requeued: int
    bytes_redone: int

    @property
    def detect_s(self) -> float | None:
        return None if self.lost_t is None else self.lost_t - self.fault_t

    @property
    def recover_s(self) -> float | None:
        return None if self.recovered_t is None else self.recovered_t - self.fault_t


def recovery(events: list[Event], worker: int, fault_t: float) -> Recovery:
    """Detection and recovery after a fault at ``fault_t`` (events' clock) on ``worker``."""
    lives = attempts(events)
    lost = first_event(events, "lost", worker)
    commits = commit_times(events)
    stranded = sorted(
        {
            a.partition
            for a in lives.values()
            if a.worker == worker
            and a.assigned <= fault_t
            and a.outcome != "committed"
            and not (a.ended is not None and a.ended <= fault_t)
        }
    )
    lost_attempts = [
        e for e in events if e["event"] == "attempt_lost" and e.get("worker") == worker
    ]
    lost_partitions = {e["partition"] for e in lost_attempts}
    requeued = [
        e
        for e in events
        if e["event"] == "requeued"
        and e["partition"] in lost_partitions
        and lost is not None
        and e["t"] == lost["t"]
    ]
    committed_bytes = {
        e["partition"]: int(e.get("bytes", 0)) for e in events if e["event"] == "committed"
    }
    recovered = [commits[p] for p in stranded if p in commits]
    return Recovery(
        worker=worker,
        fault_t=fault_t,
        lost_t=None if lost is None else float(lost["t"]),
        reason="" if lost is None else str(lost.get("reason", "")),
        stranded=stranded,
        recovered_t=max(recovered) if recovered and len(recovered) == len(stranded) else None,
        attempts_lost=len(lost_attempts),
        requeued=len(requeued),
        bytes_redone=sum(committed_bytes.get(p, 0) for p in lost_partitions),
    )


def wasted_busy_s(events: list[Event]) -> float:
    """Worker seconds spent on deliveries that were dropped (late or lost races)."""
    lives = attempts(events)
    finished = {
        e["attempt"]: float(e.get("busy_s", 0.0)) for e in events if e["event"] == "finished"
    }
    return sum(finished.get(a.attempt, 0.0) for a in lives.values() if a.outcome == "dropped")
