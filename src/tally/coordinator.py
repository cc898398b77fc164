"""The coordinator's asyncio shell: accepts workers, turns what they say and the passing of
time into scheduler events, and carries out the scheduler's actions. All decisions live in
:mod:`tally.jobs.scheduler` (pool, jobs, fair share); this module only does I/O.

One coordinator serves many jobs on one pool of workers: :meth:`Coordinator.submit` adds a
job, :meth:`JobRun.wait` gives its outcome. ``tally coordinator`` and ``tally run`` run one
job (:meth:`Coordinator.run_one`) and then tell the workers to leave; ``tally serve`` keeps
them across jobs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tally import protocol as p
from tally.errors import ProtocolError
from tally.events_file import EventFile
from tally.gate import Gate, quiet_accept_errors, raise_fd_limit
from tally.job import JobRun, JobSpec, Outcome, TaskPartial, job_stats
from tally.jobs import events as ev
from tally.jobs.scheduler import Scheduler
from tally.jobs.tasks import Finish
from tally.net import Connection, accept_handshake
from tally.progress import ProgressDisplay, Snapshot
from tally.queries import from_ipc, kind_of

log = logging.getLogger("tally.coordinator")
TICK_S = 0.1
PROGRESS_EVERY_TICKS = 3


@dataclass
class CoordinatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    token: bytes = b""
    lease_timeout_s: float = 3.0  # silence after which a worker is declared lost
    progress: bool = False  # a progress bar (or periodic log line) on stderr
    events: str | None = None  # a file that receives every event record as it happens
    serving: bool = False  # workers stay across jobs (``tally serve``)
    first_attempt: int = 1  # a restarted service starts past every id it ever issued
    storage_options: dict[str, str] = field(default_factory=dict)  # for an --events URL

    @property
    def heartbeat_s(self) -> float:
        return max(0.05, self.lease_timeout_s / 6)


class Journal(Protocol):
    """Where a service keeps what must survive a restart (see :mod:`tally.service`)."""

    def reserve_attempts(self, below: int) -> None: ...

    def committed(self, job_id: str, task: int, partial: TaskPartial) -> None: ...

    def ended(self, run: JobRun) -> None: ...


class Coordinator:
    def __init__(self, config: CoordinatorConfig, journal: Journal | None = None) -> None:
        self.config = config
        self.journal = journal
        self.events = EventFile(config.events, config.storage_options) if config.events else None
        self.scheduler = Scheduler(
            config.lease_timeout_s,
            first_attempt=config.first_attempt,
            listener=self._on_record,
            reserve=journal.reserve_attempts if journal is not None else None,
            keep_timeline=not config.serving,  # a service's listeners keep what they need
        )
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.runs: dict[str, JobRun] = {}
        self.conns: dict[int, Connection] = {}
        self.plans_sent: dict[int, set[str]] = {}  # worker -> jobs whose plan it has
        self.gate = Gate()
        self._next_worker = 1
        self._closing = False
        self._events_failed: str | None = None
        self._closed_because = ""
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> int:
        """Listen (on ``sock`` when given, a listening socket it then owns) and start the
        clock; return the bound port."""
        raise_fd_limit()
        self._loop.set_exception_handler(quiet_accept_errors)
        # Arrow's hash aggregation (the domain count's merge) loads 0.25 s of modules on first
        # use: a service loads them now, rather than between a job's last result and its
        # answer (a one-job coordinator loads what its job's merge needs: tally.local)
        if self.config.serving:
            self._loop.run_in_executor(None, importlib.import_module, "pyarrow.acero")
        if sock is not None:
            self._server = await asyncio.start_server(self._serve_peer, sock=sock, limit=1 << 20)
        else:
            self._server = await asyncio.start_server(
                self._serve_peer, self.config.host, self.config.port, limit=1 << 20
            )
        port: int = self._server.sockets[0].getsockname()[1]
        self._t0 = self._loop.time()
        self._ticker = asyncio.create_task(self._tick())
        log.info("listening on %s:%d", self.config.host, port)
        return port

    def submit(
        self, spec: JobSpec, job_id: str | None = None, done: dict[int, TaskPartial] | None = None
    ) -> JobRun:
        """Start a job; ``done`` holds the partials of tasks committed before (a job resumed
        from a journal): they are merged now and not run again."""
        run = JobRun(job_id or secrets.token_hex(8), spec, self._now())
        self.runs[run.id] = run
        done = {task: part for task, part in (done or {}).items() if 0 <= task < len(spec.tasks)}
        for part in done.values():
            run.merger.add(part.table, part.lines, part.malformed)
        before = f" ({len(done)} done before a restart)" if done else ""
        log.info("job %s: %d partitions%s", run.id, len(spec.tasks), before)
        self._apply(
            self.scheduler.handle(
                ev.JobSubmitted(
                    run.id, len(spec.tasks), run.submitted_at, spec.config, frozenset(done)
                )
            )
        )
        return run

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        self._apply(self.scheduler.handle(ev.JobCancelled(job_id, self._now(), reason)))

    def drain(self) -> None:
        """Start no more attempts; those running may still finish and commit."""
        self.scheduler.draining = True

    def forget(self, job_id: str) -> None:
        """Drop a finished job's state (a long-lived service keeps its own record)."""
        if job_id not in self.scheduler.active:
            self.runs.pop(job_id, None)
            self.scheduler.jobs.pop(job_id, None)

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Hear every event record (an attempt assigned, committed, lost...) as it happens."""
        self.listeners.append(listener)

    def now(self) -> float:
        """The clock of event records: seconds since the coordinator started."""
        return self._now()

    def abort(self, reason: str) -> None:
        """Give up on every unfinished job: each ends with ``reason``."""
        for job_id in list(self.scheduler.active):
            self.cancel(job_id, reason)

    async def run_one(self, spec: JobSpec) -> Outcome:
        """Run one job, then tell every worker to leave."""
        if self._server is None:
            await self.start()
        return await self.finish_one(self.submit(spec))

    async def finish_one(self, run: JobRun) -> Outcome:
        """Wait for a submitted job (showing its progress), then tell every worker to leave."""
        display = ProgressDisplay(len(run.spec.tasks), self.config.progress)
        progress = asyncio.create_task(self._show_progress(run, display))
        try:
            return await run.wait()
        finally:
            progress.cancel()
            display.close()
            failed = run.finish is None or run.finish.error is not None
            await self.close("job failed" if failed else "job complete")

    async def close(self, reason: str = "coordinator stopping") -> None:
        """Tell every worker to leave (saying ``reason``) and stop listening."""
        self._closing = True
        self._closed_because = reason
        self.gate.summarize(final=True)
        if self._ticker is not None:
            self._ticker.cancel()
        for conn in list(self.conns.values()):
            conn.send(p.Shutdown(reason))
        await asyncio.gather(*(c.close() for c in self.conns.values()), return_exceptions=True)
        if self._server is not None:
            self._server.close()
        if self.events is not None:
            self.events.close()

    @property
    def any_job_started(self) -> bool:
        return any(job.started_at is not None for job in self.scheduler.jobs.values())

    def _now(self) -> float:
        return self._loop.time() - self._t0

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._apply(self.scheduler.handle(ev.Tick(self._now())))

    async def _show_progress(self, run: JobRun, display: ProgressDisplay) -> None:
        while True:
            await asyncio.sleep(TICK_S * PROGRESS_EVERY_TICKS)
            job = self.scheduler.jobs[run.id]
            if job.started_at is None:
                continue
            display.update(
                Snapshot(
                    done=job.counters.commits,
                    total=job.size,
                    bytes_done=sum(t.bytes_read for t in job.workers.values()),
                    elapsed_s=self._now() - job.started_at,
                    workers=self.scheduler.pool.alive_count(),
                )
            )

    def _on_record(self, record: dict[str, Any]) -> None:
        if self.events is not None:
            # records missing from the file would tell a wrong story: the jobs end (in _apply)
            self._events_failed = self.events.write(record) or self._events_failed
        for listener in self.listeners:
            listener(record)

    # --- peers -------------------------------------------------------------------------------

    def _welcome(self, hello: p.Hello, proof: bytes) -> p.Welcome:
        worker_id = self._next_worker
        self._next_worker += 1
        return p.Welcome(
            proof,
            worker_id,
            self.config.heartbeat_s,
            self.config.lease_timeout_s,
            self.config.serving,
        )

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:  # the coordinator is ending: this peer's story ends too
            writer.transport.abort()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = Connection(reader, writer)
        if self._closing:
            conn.send(p.Shutdown(self._closed_because))
            await conn.close()
            return
        if not self.gate.admit():
            conn.writer.transport.abort()
            return
        try:
            hello, welcome = await accept_handshake(conn, self.config.token, self._welcome)
        except (ProtocolError, EOFError, OSError) as exc:
            self.gate.refuse(conn.peer, str(exc) or type(exc).__name__)
            await conn.close()
            return
        finally:
            self.gate.done()
        worker = welcome.worker_id
        if self._closing:  # the coordinator began closing during the handshake
            conn.send(p.Shutdown(self._closed_because))
            await conn.close()
            return
        self.conns[worker] = conn
        self.plans_sent[worker] = set()
        log.info("worker %d joined: %s from %s", worker, hello.name, conn.peer)
        self._apply(
            self.scheduler.handle(ev.WorkerJoined(worker, hello.slots, self._now(), hello.name))
        )
        reason = "connection closed"
        try:

            def receiving() -> None:  # a large frame is arriving: the worker is alive
                self._apply(self.scheduler.handle(ev.HeartbeatSeen(worker, self._now())))

            while True:
                event = self._event_for(worker, await conn.receive(progress=receiving))
                self._apply(self.scheduler.handle(event))
        except (EOFError, ConnectionError, OSError) as exc:
            reason = f"connection closed ({exc})" if str(exc) else reason
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            conn.send(p.Refused(str(exc)))
        if self._closing:
            return  # closing shuts every connection
        if self.conns.pop(worker, None) is not None:  # else: already left or lease expired
            log.warning("worker %d lost: %s", worker, reason)
        self.plans_sent.pop(worker, None)
        # the scheduler hears of the loss before anything can await, so nothing is assigned
        # to a connection that is going away
        self._apply(self.scheduler.handle(ev.WorkerLost(worker, self._now(), reason)))
        await conn.close()

    def _event_for(self, worker: int, msg: p.AnyMessage) -> ev.Event:
        now = self._now()
        match msg:
            case p.Heartbeat():
                return ev.HeartbeatSeen(worker, now)
            case p.Result():
                attempt = self.scheduler.attempts.get(msg.attempt)
                if attempt is None or attempt.job != msg.job_id:  # stale: dropped and counted
                    return ev.Delivered(worker, msg.attempt, now, None, msg.bytes_read,
                                        msg.busy_s, msg.job_id)  # fmt: skip
                run = self.runs[attempt.job]
                partial = msg.partial
                table = from_ipc(partial.table)
                # a bad partial drops this worker, never the merge
                kind_of(run.spec.plan).check(run.spec.plan, table, partial.lines, partial.malformed)
                payload = TaskPartial(table, partial.lines, partial.malformed)
                return ev.Delivered(worker, msg.attempt, now, payload, msg.bytes_read, msg.busy_s,
                                    msg.job_id, msg.cached)  # fmt: skip
            case p.Failed():
                attempt = self.scheduler.attempts.get(msg.attempt)
                if attempt is None or attempt.job != msg.job_id:
                    log.info("worker %d: dropped a failure of a settled attempt", worker)
                    return ev.HeartbeatSeen(worker, now)
                log.warning("worker %d: attempt %d failed: %s: %s", worker, msg.attempt,
                            msg.error.type, msg.error.message)  # fmt: skip
                error = f"{msg.error.type}: {msg.error.message}"
                return ev.AttemptFailed(worker, msg.attempt, now, error, msg.error.retryable)
            case p.Leaving():
                log.info("worker %d leaving, returning %d attempt(s)", worker, len(msg.returned))
                return ev.WorkerLeft(worker, now, tuple(msg.returned))
        raise ProtocolError(f"unexpected {type(msg).__name__} from a worker")

    # --- actions -----------------------------------------------------------------------------

    def _apply(self, actions: list[ev.Action]) -> None:
        try:
            self._carry_out(actions)
        except Exception as exc:  # a bug here must end the jobs with a reason, not hang them
            log.exception("coordinator failed")
            self.abort(f"internal error: {type(exc).__name__}: {exc}")
        if self._events_failed is not None and self.scheduler.active:
            self.abort(self._events_failed)

    def _carry_out(self, actions: list[ev.Action]) -> None:
        for action in actions:
            match action:
                case ev.Assign(worker, attempt, job_id, task):
                    conn = self.conns.get(worker)
                    if conn is None:
                        continue
                    run = self.runs[job_id]
                    sent = self.plans_sent[worker]
                    if job_id not in sent:
                        sent.add(job_id)
                        conn.send(p.JobPlan(job_id, run.spec.plan, run.spec.record_limit))
                    conn.send(p.Assign(attempt, job_id, run.spec.tasks[task]))
                case ev.Cancel(worker, attempt):
                    conn = self.conns.get(worker)
                    if conn is not None:
                        conn.send(p.Cancel(attempt))
                case ev.Disconnect(worker, reason):
                    log.warning("worker %d lost: %s", worker, reason)
                    conn = self.conns.pop(worker, None)
                    self.plans_sent.pop(worker, None)
                    if conn is not None:
                        conn.writer.transport.abort()
                case ev.Commit(job=job_id, task=task, payload=payload):
                    if self.journal is not None:
                        self.journal.committed(job_id, task, payload)
                    self.runs[job_id].merger.add(payload.table, payload.lines, payload.malformed)
                case Finish():
                    self._end(action)

    def _end(self, finish: Finish) -> None:
        run = self.runs[finish.job]
        run.finish, run.ended_at = finish, self._now()
        for worker, sent in self.plans_sent.items():
            if finish.job in sent:
                sent.discard(finish.job)
                conn = self.conns.get(worker)
                if conn is not None and self.config.serving:
                    conn.send(p.JobEnded(finish.job))
        run.outcome = self._outcome(run, finish)
        if self.journal is not None:
            self.journal.ended(run)
        run.done.set()

    # --- results -----------------------------------------------------------------------------

    def _outcome(self, run: JobRun, finish: Finish) -> Outcome:
        urls = run.spec.labels
        failed = [urls[i] for i in finish.failed_tasks]
        result = None if finish.error else run.merger.finalize(failed)
        timeline = [r for r in self.scheduler.timeline if r.get("job", run.id) == run.id]
        job = self.scheduler.jobs[run.id]
        refused = self.gate.refused + len(self.scheduler.refused)
        stats = job_stats(run, job, finish, self.scheduler.pool, refused, self._now())
        return Outcome(result, finish.error, stats, timeline)


__all__ = [
    "Coordinator",
    "CoordinatorConfig",
    "JobRun",
    "JobSpec",
    "Journal",
    "Outcome",
    "TaskPartial",
]
