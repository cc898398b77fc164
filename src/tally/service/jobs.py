"""The service: a serving coordinator, its journal in the state store, and the views the
HTTP API shows (jobs, their progress, workers).

It is the coordinator's :class:`tally.coordinator.Journal`: an accepted job is journaled
before it is acknowledged, a committed task's partial before it is merged, the attempt-id
reservation before an id in it is issued, and a job's result when it ends. On start it
reads the journal back: finished jobs stay queryable, unfinished ones are submitted again
with their committed partials, so only the tasks not yet committed run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from tally.coordinator import Coordinator, CoordinatorConfig, JobRun, JobSpec, TaskPartial
from tally.errors import ConfigError
from tally.queries import format_result
from tally.service import store as st
from tally.service.bodies import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    BadRequest,
    JobRequest,
    ServiceError,
    to_builtins,
    to_spec,
)
from tally.service.live import LiveView
from tally.service.metrics import Metrics
from tally.storage.sources import expand_source

log = logging.getLogger("tally.service")
SAMPLE_EVERY_S = 1.0
GONE_WORKERS_SHOWN = 50
FINISHED_JOBS_STREAMED = 20


class JobObserver(Protocol):
    """Hears of jobs ending (the storage watcher): what to journal with a job's end, and
    that it has ended (called once the end is journaled)."""

    def finishing(self, job_id: str, succeeded: bool) -> st.Statements: ...

    def finished(self, job_id: str, state: str) -> None: ...


@dataclass
class JobEntry:
    """What the service knows of one job; ``state`` is set once the job has ended."""

    id: str
    seq: int
    submitted: float  # Unix time
    request: dict[str, Any]
    tasks: int
    state: str | None = None
    finished: float | None = None
    error: str | None = None
    stats: dict[str, Any] | None = None
    done: int = 0  # tasks committed, before a restart included
    bytes: int = 0
    started: float | None = None  # Unix time of its first attempt in this process
    run_t0: float | None = None  # the same on the coordinator's clock
    done_here: int = 0  # tasks committed in this process
    bytes_here: int = 0
    cancelling: bool = False
    done_before: int = 0  # tasks committed before this process resumed the job
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set once ``state`` is

    @classmethod
    def from_row(cls, row: st.JobRow) -> JobEntry:
        final = row.state != st.UNFINISHED
        return cls(row.id, row.seq, row.submitted, row.request, row.tasks,
                   row.state if final else None, row.finished, row.error, row.stats,
                   row.done, row.bytes, done_before=0 if final else row.done)  # fmt: skip


class JobService:
    def __init__(self, store: st.StateStore, config: CoordinatorConfig, max_queued: int = 1000):
        self.store = store
        self.config = replace(config, serving=True, first_attempt=store.attempts_below())
        self.max_queued = max_queued
        self.metrics = Metrics()
        self.live = LiveView(self.metrics)
        self.entries: dict[str, JobEntry] = {}
        self.unfinished = 0
        self.draining = False  # no more jobs accepted
        self.stopping = False  # event streams end
        self.resumed: list[str] = []
        self.worker_port = 0
        self._coordinator: Coordinator | None = None
        self._commit_bytes: dict[tuple[str, int], int] = {}
        self._sampler: asyncio.Task[None] | None = None
        self.observer: JobObserver | None = None  # set before start

    @property
    def coordinator(self) -> Coordinator:
        assert self._coordinator is not None, "the service has not started"
        return self._coordinator

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen for workers, read the journal back and resume unfinished jobs; return the
        workers' port."""
        coordinator = self._coordinator = Coordinator(self.config, journal=self)
        coordinator.add_listener(self._on_record)
        coordinator.add_listener(self.live.on_record)
        port = self.worker_port = await coordinator.start()
        for row in self.store.jobs():
            self.entries[row.id] = JobEntry.from_row(row)
        for entry in list(self.entries.values()):
            if entry.state is None:
                self.unfinished += 1
                self.resumed.append(entry.id)
                coordinator.submit(
                    self.store.spec(entry.id), entry.id, self.store.partials(entry.id)
                )
        if self.resumed:
            log.info("resumed %d unfinished job(s)", len(self.resumed))
        self.metrics.watch(self.counts, self.alive_workers)
        self._sampler = asyncio.create_task(self._sample())
        return port

    async def drain(self, timeout_s: float) -> None:
        """Accept no more jobs and start no more attempts; give the running ones up to
        ``timeout_s`` to finish and commit. Unfinished jobs stay journaled."""
        self.draining = True
        self.coordinator.drain()
        deadline = time.monotonic() + timeout_s
        while self.coordinator.scheduler.attempts and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Tell the workers to leave, and close the journal."""
        self.stopping = True
        if self._sampler is not None:
            self._sampler.cancel()
        await self.coordinator.close()
        self.store.close()

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            self.live.sample(self.coordinator.now())

    # --- submissions -------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> JobEntry:
        """Accept a job: journal it, then start it. ServiceError if it is refused."""
        self._check_room()
        try:
            urls = await asyncio.to_thread(expand_source, request.source)
        except ConfigError as exc:
            raise BadRequest(exc.message) from None
        spec = await asyncio.to_thread(to_spec, request, urls)
        self._check_room()  # again: others may have come in while the source was read
        return self.accept(to_builtins(request), spec)

    def accept(
        self,
        shown: dict[str, Any],
        spec: JobSpec,
        job_id: str | None = None,
        also: st.Statements = (),
    ) -> JobEntry:
        """Journal a job (``also`` in the same transaction) and start it; ``shown`` is the
        request its documents show."""
        job_id = job_id or secrets.token_hex(8)
        submitted = time.time()
        seq = self.store.add_job(job_id, submitted, shown, spec, also)
        entry = self.entries[job_id] = JobEntry(job_id, seq, submitted, shown, len(spec.tasks))
        self.unfinished += 1
        self.coordinator.submit(spec, job_id)
        return entry

    def _check_room(self) -> None:
        if self.draining:
            raise ServiceError(503, "the server is shutting down")
        if self.unfinished >= self.max_queued:
            raise ServiceError(
                429, f"{self.unfinished} unfinished jobs: the server holds at most "
                f"{self.max_queued} (--max-queued)"
            )  # fmt: skip

    def cancel(self, job_id: str) -> JobEntry:
        entry = self.entry(job_id)
        if entry.state is not None:
            raise ServiceError(409, f"job {job_id} has already {entry.state}")
        entry.cancelling = True
        self.coordinator.cancel(job_id, "cancelled")  # the job ends now (see ended)
        return entry

    # --- the coordinator's journal -----------------------------------------------------------

    def reserve_attempts(self, below: int) -> None:
        self.store.reserve_attempts(below)

    def committed(self, job_id: str, task: int, partial: TaskPartial) -> None:
        nbytes = self._commit_bytes.pop((job_id, task), 0)
        self.store.add_partial(job_id, task, partial, nbytes)
        entry = self.entries[job_id]
        entry.done += 1
        entry.done_here += 1
        entry.bytes += nbytes
        entry.bytes_here += nbytes

    def ended(self, run: JobRun) -> None:
        entry = self.entries[run.id]
        outcome = run.outcome
        assert outcome is not None
        state = (
            CANCELLED if entry.cancelling else SUCCEEDED if outcome.result is not None else FAILED
        )
        finished = time.time()
        # this process's record, and how many tasks it took from the journal instead
        outcome.stats["partitions_resumed"] = entry.done_before
        observer = self.observer
        also = observer.finishing(run.id, state == SUCCEEDED) if observer is not None else ()
        self.store.finish_job(run.id, state, finished, outcome.error, outcome.result,
                              outcome.stats, also)  # fmt: skip
        entry.state, entry.finished = state, finished
        entry.error, entry.stats = outcome.error, outcome.stats
        entry.ended.set()
        self.unfinished -= 1
        self.live.job_ended(run.id, self.coordinator.now())
        log.info("job %s %s%s", run.id, state, f": {outcome.error}" if outcome.error else "")
        if observer is not None:
            observer.finished(run.id, state)
        asyncio.get_running_loop().call_soon(self.coordinator.forget, run.id)

    def _on_record(self, record: dict[str, Any]) -> None:
        kind = record["event"]
        if kind == "committed":
            self._commit_bytes[(record["job"], record["partition"])] = int(record.get("bytes", 0))
        elif kind == "assigned":
            entry = self.entries.get(record["job"])
            if entry is not None and entry.started is None:
                entry.started, entry.run_t0 = time.time(), record["t"]

    # --- views -------------------------------------------------------------------------------

    def entry(self, job_id: str) -> JobEntry:
        entry = self.entries.get(job_id)
        if entry is None:
            raise ServiceError(404, f"no job {job_id}")
        return entry

    async def until_ended(self, entry: JobEntry, timeout: float) -> None:
        """Return once the job has ended, or after ``timeout`` seconds."""
        if entry.state is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.ended.wait(), timeout)

    def state_of(self, entry: JobEntry) -> str:
        if entry.state is not None:
            return entry.state
        return RUNNING if entry.started is not None or entry.done else QUEUED

    def progress(self, entry: JobEntry) -> dict[str, Any]:
        progress: dict[str, Any] = {
            "partitions_done": entry.done,
            "partitions": entry.tasks,
            "bytes": entry.bytes,
            "mb_s": None,
            "eta_s": None,
        }
        if entry.state is None and entry.run_t0 is not None:
            elapsed = self.coordinator.now() - entry.run_t0
            if elapsed > 0:
                progress["mb_s"] = round(entry.bytes_here / elapsed / 1e6, 3)
            if entry.done_here:
                progress["eta_s"] = round((entry.tasks - entry.done) * elapsed / entry.done_here, 1)
        elif entry.stats and entry.stats.get("wall_s"):
            progress["mb_s"] = round(entry.stats["bytes"] / entry.stats["wall_s"] / 1e6, 3)
            progress["eta_s"] = 0.0
        return progress

    def job_doc(self, entry: JobEntry, full: bool = True) -> dict[str, Any]:
        state = self.state_of(entry)
        doc: dict[str, Any] = {
            "id": entry.id,
            "state": state,
            "submitted": entry.submitted,
            "started": entry.started,
            "finished": entry.finished,
            "source": entry.request["source"],
            "query": entry.request["query"],
            "progress": self.progress(entry),
        }
        if entry.error is not None:
            doc["error"] = entry.error
        if full:
            doc["options"] = entry.request.get("options", {})
            if state == SUCCEEDED:
                result = self.store.result(entry.id)
                assert result is not None
                doc["result"] = json.loads(format_result(result, "json"))
            doc["stats"] = entry.stats
        return doc

    def jobs(self) -> list[dict[str, Any]]:
        return [self.job_doc(entry, full=False) for entry in self.entries.values()]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries.values():
            state = self.state_of(entry)
            counts[state] = counts.get(state, 0) + 1
        return counts

    def alive_workers(self) -> int:
        return self.coordinator.scheduler.pool.alive_count()

    def workers(self) -> list[dict[str, Any]]:
        now, wall = self.coordinator.now(), time.time()
        members = sorted(self.coordinator.scheduler.pool.members.values(), key=lambda m: m.id)
        alive = [m for m in members if not m.gone]
        gone = [m for m in members if m.gone][-GONE_WORKERS_SHOWN:]
        shown = []
        for m in sorted(alive + gone, key=lambda m: m.id):
            totals = self.live.workers.get(m.id)
            shown.append({
                "id": m.id,
                "name": m.name,
                "slots": m.slots,
                "running": len(m.live),
                "partitions": totals.partitions if totals else 0,
                "bytes": totals.bytes if totals else 0,
                "last_heartbeat": round(wall - (now - m.last_seen), 3),
                "heartbeat_age_s": round(now - m.last_seen, 3),
                "state": "lost" if m.lost else "left" if m.gone else "alive",
            })  # fmt: skip
        return shown

    def snapshot(self, since: int, throughput_since: float) -> dict[str, Any]:
        """What the dashboard needs that changed since record ``since``."""
        finished = [e for e in self.entries.values() if e.state in FINAL_STATES]
        shown = [e for e in self.entries.values() if e.state is None]
        shown += finished[-FINISHED_JOBS_STREAMED:]
        shown.sort(key=lambda e: e.seq)
        return {
            "now": round(self.coordinator.now(), 3),
            "draining": self.draining,
            "counts": self.counts(),
            "workers": self.workers(),
            "jobs": [self.job_doc(e, full=False) for e in shown],
            "throughput": [p for p in self.live.throughput if p[0] > throughput_since],
            "records": self.live.records_since(since),
        }

    def result_ipc(self, job_id: str) -> bytes:
        entry = self.entry(job_id)
        if entry.state != SUCCEEDED:
            raise ServiceError(409, f"job {job_id} is {self.state_of(entry)}: no result")
        blob = self.store.result_ipc(job_id)
        assert blob is not None
        return blob
