"""The worker pool: membership, slots, heartbeats and leases. Pure: no I/O, no clock.

The pool outlives jobs. It knows which attempts each worker holds (by id) but nothing of
the jobs they belong to. Time comes in with every call (``now``, seconds on a monotonic
clock), so tests drive it by hand.

A coordinator that was itself not running (stopped, starved, a suspended laptop) sees its
clock jump with no heartbeat processed in between. That silence is its own, not its
workers': when the gap since the previous tick exceeds half a lease, every member's lease
is extended by the gap instead of expiring.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_SLOTS = 16  # no worker may take a whole queue


@dataclass
class Member:
    id: int
    name: str
    slots: int
    joined_at: float
    last_seen: float
    live: set[int] = field(default_factory=set)  # attempt ids held and not yet settled
    assigned: int = 0  # attempts ever given to this worker
    gone: bool = False
    lost: bool = False

    @property
    def free_slots(self) -> int:
        return 0 if self.gone else self.slots - len(self.live)


class Pool:
    def __init__(self, lease_timeout_s: float = 3.0) -> None:
        self.lease_timeout_s = lease_timeout_s
        self.members: dict[int, Member] = {}  # every worker ever joined
        self.losses = 0
        self._last_tick: float | None = None

    # --- membership --------------------------------------------------------------------------

    def join(self, worker: int, slots: int, now: float, name: str = "") -> Member:
        member = Member(worker, name, min(max(1, slots), MAX_SLOTS), now, now)
        self.members[worker] = member
        return member

    def touch(self, worker: int, now: float) -> None:
        member = self.members.get(worker)
        if member is not None and not member.gone:
            member.last_seen = max(member.last_seen, now)

    def remove(self, worker: int, lost: bool) -> set[int] | None:
        """Mark a worker gone; return the attempts it held (None if it was already gone)."""
        member = self.members.get(worker)
        if member is None or member.gone:
            return None
        member.gone, member.lost = True, lost
        self.losses += lost
        held, member.live = member.live, set()
        return held

    def is_live(self, worker: int) -> bool:
        member = self.members.get(worker)
        return member is not None and not member.gone

    # --- attempts ----------------------------------------------------------------------------

    def hold(self, worker: int, attempt: int) -> None:
        member = self.members[worker]
        member.live.add(attempt)
        member.assigned += 1

    def release(self, worker: int, attempt: int) -> None:
        member = self.members.get(worker)
        if member is not None:
            member.live.discard(attempt)

    # --- time --------------------------------------------------------------------------------

    def expired(self, now: float) -> list[tuple[Member, float]]:
        """Members silent past the lease, with their silence; call once per tick."""
        last, self._last_tick = self._last_tick, now
        if last is not None and now - last > self.lease_timeout_s / 2:
            gap = now - last  # this process was not running: forgive the gap
            for member in self.alive():
                member.last_seen += gap
            return []
        return [
            (m, now - m.last_seen) for m in self.alive() if now - m.last_seen > self.lease_timeout_s
        ]

    # --- views -------------------------------------------------------------------------------

    def alive(self) -> Iterator[Member]:
        return (m for m in self.members.values() if not m.gone)

    def alive_count(self) -> int:
        return sum(1 for _ in self.alive())

    def with_room(self) -> list[Member]:
        """Members with a free slot: the emptiest first, then the least used (an even load)."""
        ready = [m for m in self.members.values() if m.free_slots > 0]
        ready.sort(key=lambda m: (-m.free_slots, m.assigned, m.id))
        return ready

    def idle(self) -> list[Member]:
        return [m for m in self.alive() if not m.live]
