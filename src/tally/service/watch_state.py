"""What a storage watcher decides, without any I/O: which listed objects are new or changed,
which of those have settled, and what the checkpoint becomes as their jobs start and end.

An object is named by its path under the watched SOURCE and versioned by what storage
says of it (an ETag, or size and mtime for a file). A version is *settled*, and may be
read, once it has been seen unchanged for ``settle_s`` seconds, or once its mtime is that
old: a file still being written keeps changing its size and mtime, so it is not read.

The checkpoint maps each object to the last version given a job and that job's state
(``running``, ``done``, ``failed``). A version in the checkpoint is never submitted again,
whatever its state (a failed version is retried only when the object changes); a new
version of an object whose job is still running waits for that job to end, so the
checkpoint always ends at the newest version processed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass(frozen=True)
class Listed:
    """One object as a listing shows it."""

    name: str  # its path under the watched source, with ``/`` separators
    url: str
    version: str
    mtime: float | None = None  # Unix seconds, when storage tells it


@dataclass(frozen=True)
class Checkpointed:
    """The last version of an object given a job, and how that job stands."""

    version: str
    job: str
    state: str  # RUNNING, DONE or FAILED


@dataclass
class _Sighting:
    version: str
    since: float  # when this version was first seen


def ignored(name: str) -> bool:
    """Hidden and ``_``-prefixed names (an uploader's temporary files, markers such as
    ``_SUCCESS``) at any level are not objects to process."""
    return any(part.startswith((".", "_")) for part in name.split("/"))


class WatchState:
    """The watcher's decisions; ``now`` is Unix time throughout."""

    def __init__(
        self,
        settle_s: float,
        checkpoint: dict[str, Checkpointed] | None = None,
        contributed: Iterable[str] | None = None,
    ) -> None:
        """``contributed``: the objects with a version in the total (default: the done
        ones; a restarted watcher passes those whose partials it keeps)."""
        self.settle_s = settle_s
        self.checkpoint: dict[str, Checkpointed] = dict(checkpoint or {})
        self._seen: dict[str, _Sighting] = {}
        # objects with a version in the total: a done one, or a running one's predecessor
        self._done: set[str] = (
            {n for n, c in self.checkpoint.items() if c.state == DONE}
            if contributed is None
            else set(contributed)
        )

    def poll(self, listing: Iterable[Listed], now: float, complete: bool = True) -> list[Listed]:
        """The objects of ``listing`` to submit now, in name order: a version not in the
        checkpoint, settled, and no job of the same object still running. ``complete``:
        the listing shows every object (else one missing from it is not forgotten)."""
        ready: list[Listed] = []
        listed: set[str] = set()
        for obj in sorted(listing, key=lambda o: o.name):
            if ignored(obj.name):
                continue
            listed.add(obj.name)
            seen = self._seen.get(obj.name)
            if seen is None or seen.version != obj.version:
                seen = self._seen[obj.name] = _Sighting(obj.version, now)
            if self.wanted(obj) != "new":
                continue
            stable_since = seen.since if obj.mtime is None else min(seen.since, obj.mtime)
            if now - stable_since >= self.settle_s:
                ready.append(obj)
        for gone in set(self._seen) - listed if complete else ():
            del self._seen[gone]  # a deleted object's sighting is forgotten
        return ready

    def wanted(self, obj: Listed) -> str:
        """Whether a job of ``obj`` is due, settling aside: ``new`` (its version was never
        given a job), ``known`` (it was: a duplicate or an older sighting), ``waiting``
        (another version's job is running; the newer one is due once that ends) or
        ``ignored`` (a name that is not an object to process)."""
        if ignored(obj.name):
            return "ignored"
        known = self.checkpoint.get(obj.name)
        if known is None:
            return "new"
        if known.version == obj.version:
            return "known"
        return "waiting" if known.state == RUNNING else "new"

    def started(self, obj: Listed, job: str) -> Checkpointed:
        """The checkpoint entry of ``obj`` once its job is accepted."""
        entry = self.checkpoint[obj.name] = Checkpointed(obj.version, job, RUNNING)
        return entry

    def refused(self, obj: Listed) -> None:
        """``obj`` cannot become a job (unreadable now): not tried again until it changes
        (nor journaled: a restart tries it once more); an earlier version stays in the total."""
        self.checkpoint[obj.name] = Checkpointed(obj.version, "", FAILED)

    def ended(self, name: str, job: str, succeeded: bool) -> str:
        """Record the end of ``job``. Returns how the running total changes: ``add`` (the
        object's first contribution: merge it in), ``rebuild`` (it replaces or drops an
        earlier version's contribution: min and max cannot be subtracted, so every object's
        partials are merged afresh) or ``none``."""
        known = self.checkpoint.get(name)
        if known is None or known.job != job or known.state != RUNNING:
            raise KeyError(f"job {job} is not the running job of {name}")
        self.checkpoint[name] = Checkpointed(known.version, job, DONE if succeeded else FAILED)
        had = self.contributed(name)
        if succeeded:
            self._done.add(name)
        else:
            self._done.discard(name)
        return "rebuild" if had else "add" if succeeded else "none"

    def contributed(self, name: str) -> bool:
        """Whether ``name`` has a version in the total."""
        return name in self._done
