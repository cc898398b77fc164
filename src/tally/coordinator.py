"""The coordinator's asyncio shell: accepts workers, turns what they say and the passing of
time into scheduler events, and carries out the scheduler's actions. All decisions live in
:mod:`tally.scheduler`; this module only does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from tally import protocol as p
from tally import scheduler as s
from tally.errors import ConfigError, ProtocolError
from tally.kernels import DEFAULT_RECORD_LIMIT
from tally.net import Connection, accept_handshake
from tally.progress import ProgressDisplay, Snapshot
from tally.queries import Merger, QueryResult, check_partial

log = logging.getLogger("tally.coordinator")
TICK_S = 0.1
PROGRESS_EVERY_TICKS = 3


@dataclass
class CoordinatorConfig:
    query: p.QuerySpec = field(default_factory=p.QuerySpec)
    host: str = "127.0.0.1"
    port: int = 0
    token: bytes = b""
    scheduler: s.SchedulerConfig = field(default_factory=s.SchedulerConfig)
    record_limit: int = DEFAULT_RECORD_LIMIT
    progress: bool = False  # a progress bar (or periodic log line) on stderr
    events: str | None = None  # a file that receives every event record as it happens

    @property
    def heartbeat_s(self) -> float:
        return max(0.05, self.scheduler.lease_timeout_s / 6)


@dataclass
class Outcome:
    """What a finished job hands back: the result (None if it failed) and its record."""

    result: QueryResult | None
    error: str | None
    stats: dict[str, Any]
    timeline: list[dict[str, Any]]


class EventFile:
    """The scheduler's event records as JSON lines, each written and flushed as it happens, so
    that the file can be followed while the job runs."""

    def __init__(self, path: str) -> None:
        self.written = 0  # records of the timeline already in the file
        try:
            self._file: TextIO = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot write --events {path}: {exc.strerror}") from exc

    def follow(self, timeline: list[dict[str, Any]]) -> None:
        """Write the records added to ``timeline`` since the last call."""
        for record in timeline[self.written :]:
            self._file.write(json.dumps(record) + "\n")  # line-buffered: flushed per record
            self.written += 1

    def close(self) -> None:
        self._file.close()


class Coordinator:
    def __init__(self, urls: list[str], config: CoordinatorConfig) -> None:
        self.urls = urls
        self.config = config
        self.job_id = secrets.token_hex(8)
        self.scheduler = s.Scheduler(len(urls), config.scheduler)
        self.merger = Merger(config.query)
        self.conns: dict[int, Connection] = {}
        self.refused = 0
        self._next_worker = 1
        self._finished = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._wall0 = time.time()
        self._events: EventFile | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; return the bound port."""
        if self.config.events and self._events is None:
            self._events = EventFile(self.config.events)
        self._server = await asyncio.start_server(
            self._serve_peer, self.config.host, self.config.port, limit=1 << 20
        )
        port: int = self._server.sockets[0].getsockname()[1]
        self._t0, self._wall0 = self._loop.time(), time.time()
        log.info(
            "job %s: %d partitions, listening on %s:%d",
            self.job_id,
            len(self.urls),
            self.config.host,
            port,
        )
        return port

    async def run(self) -> Outcome:
        """Serve until the scheduler finishes the job; then tell every worker to leave."""
        if self._server is None:
            await self.start()
        ticker = asyncio.create_task(self._tick())
        self._apply(self.scheduler.handle(s.Tick(self._now())))  # an empty job ends at once
        try:
            await self._finished.wait()
        finally:
            ticker.cancel()
            await self._shutdown()
            self._close_events()
        return self._outcome()

    def abort(self, reason: str) -> None:
        """Give up on the job: :meth:`run` returns an outcome that carries ``reason``."""
        self.scheduler.abort(reason)
        self._finished.set()

    async def _shutdown(self) -> None:
        finish = self.scheduler.finished
        reason = "job failed" if finish is not None and finish.error else "job complete"
        for conn in list(self.conns.values()):
            conn.send(p.Shutdown(reason))
        await asyncio.gather(*(c.close() for c in self.conns.values()), return_exceptions=True)
        if self._server is not None:
            self._server.close()

    def _now(self) -> float:
        return self._loop.time() - self._t0

    async def _tick(self) -> None:
        display = ProgressDisplay(len(self.urls), self.config.progress)
        ticks = 0
        try:
            while True:
                await asyncio.sleep(TICK_S)
                self._apply(self.scheduler.handle(s.Tick(self._now())))
                ticks += 1
                if ticks % PROGRESS_EVERY_TICKS == 0:
                    self._show_progress(display)
        finally:
            display.close()

    def _show_progress(self, display: ProgressDisplay) -> None:
        sch = self.scheduler
        if sch.started_at is None:
            return
        workers = sch.workers.values()
        display.update(
            Snapshot(
                done=sch.counters.commits,
                total=sch.partitions,
                bytes_done=sum(w.bytes_read for w in workers),
                elapsed_s=self._now() - sch.started_at,
                workers=sum(1 for w in workers if not w.gone),
            )
        )

    # --- peers -------------------------------------------------------------------------------

    def _welcome(self, hello: p.Hello, proof: bytes) -> p.Welcome:
        worker_id = self._next_worker
        self._next_worker += 1
        return p.Welcome(
            proof,
            worker_id,
            self.job_id,
            self.config.query,
            self.config.heartbeat_s,
            self.config.scheduler.lease_timeout_s,
            self.config.record_limit,
        )

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        if self._finished.is_set():
            conn.send(p.Shutdown("job complete"))
            await conn.close()
            return
        try:
            hello, welcome = await accept_handshake(conn, self.config.token, self._welcome)
        except (ProtocolError, EOFError, OSError) as exc:
            self.refused += 1
            log.warning("refused %s: %s", conn.peer, exc)
            await conn.close()
            return
        worker = welcome.worker_id
        if self._finished.is_set():  # the job ended during the handshake
            conn.send(p.Shutdown("job complete"))
            await conn.close()
            return
        self.conns[worker] = conn
        log.info("worker %d joined: %s from %s", worker, hello.name, conn.peer)
        self._apply(
            self.scheduler.handle(s.WorkerJoined(worker, hello.slots, self._now(), hello.name))
        )
        reason = "connection closed"
        try:

            def receiving() -> None:  # a large frame is arriving: the worker is alive
                self._apply(self.scheduler.handle(s.HeartbeatSeen(worker, self._now())))

            while True:
                event = self._event_for(worker, await conn.receive(progress=receiving))
                self._apply(self.scheduler.handle(event))
        except (EOFError, ConnectionError, OSError) as exc:
            reason = f"connection closed ({exc})" if str(exc) else reason
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            conn.send(p.Refused(str(exc)))
        if self._finished.is_set():
            return  # the shutdown closes every connection
        if self.conns.pop(worker, None) is not None:  # else: already left or lease expired
            log.warning("worker %d lost: %s", worker, reason)
        # the scheduler hears of the loss before anything can await, so nothing is assigned
        # to a connection that is going away
        self._apply(self.scheduler.handle(s.WorkerLost(worker, self._now(), reason)))
        await conn.close()

    def _event_for(self, worker: int, msg: p.AnyMessage) -> s.Event:
        now = self._now()
        match msg:
            case p.Heartbeat():
                return s.HeartbeatSeen(worker, now)
            case p.Result() if msg.job_id == self.job_id:
                check_partial(msg.partial)  # a bad one drops this worker, never the merge
                return s.Delivered(
                    worker, msg.attempt, now, msg.partial, msg.bytes_read, msg.busy_s
                )
            case p.Failed() if msg.job_id == self.job_id:
                log.warning(
                    "worker %d: attempt %d failed: %s: %s",
                    worker,
                    msg.attempt,
                    msg.error.type,
                    msg.error.message,
                )
                return s.AttemptFailed(
                    worker,
                    msg.attempt,
                    now,
                    f"{msg.error.type}: {msg.error.message}",
                    msg.error.retryable,
                )
            case p.Leaving():
                log.info("worker %d leaving, returning %d attempt(s)", worker, len(msg.returned))
                return s.WorkerLeft(worker, now, tuple(msg.returned))
            case p.Result() | p.Failed():
                log.info("worker %d: dropped a message from an earlier job", worker)
                return s.HeartbeatSeen(worker, now)
        raise ProtocolError(f"unexpected {type(msg).__name__} from a worker")

    # --- actions -----------------------------------------------------------------------------

    def _apply(self, actions: list[s.Action]) -> None:
        self._follow_events()
        try:
            self._carry_out(actions)
        except Exception as exc:  # a bug here must end the job with a reason, not hang it
            log.exception("coordinator failed")
            self.abort(f"internal error: {type(exc).__name__}: {exc}")

    def _carry_out(self, actions: list[s.Action]) -> None:
        for action in actions:
            match action:
                case s.Assign(worker, attempt, partition):
                    conn = self.conns.get(worker)
                    if conn is not None:
                        conn.send(p.Assign(attempt, partition, self.urls[partition]))
                case s.Cancel(worker, attempt):
                    conn = self.conns.get(worker)
                    if conn is not None:
                        conn.send(p.Cancel(attempt))
                case s.Disconnect(worker, reason):
                    log.warning("worker %d lost: %s", worker, reason)
                    conn = self.conns.pop(worker, None)
                    if conn is not None:
                        conn.writer.transport.abort()
                case s.Commit(payload=payload):
                    self.merger.add(payload)
                case s.Finish():
                    self._finished.set()

    def _follow_events(self) -> None:
        if self._events is None:
            return
        try:
            self._events.follow(self.scheduler.timeline)
        except OSError as exc:  # records missing from the file would tell a wrong story
            self._close_events()
            self.abort(f"cannot write --events {self.config.events}: {exc.strerror or exc}")

    def _close_events(self) -> None:
        if self._events is not None:
            events, self._events = self._events, None
            with contextlib.suppress(OSError):
                events.close()

    # --- results -----------------------------------------------------------------------------

    def _outcome(self) -> Outcome:
        finish = self.scheduler.finished
        assert finish is not None
        failed = [self.urls[i] for i in finish.failed_partitions]
        result = None if finish.error else self.merger.finalize(failed)
        return Outcome(result, finish.error, self._stats(result), self.scheduler.timeline)

    def _stats(self, result: QueryResult | None) -> dict[str, Any]:
        sch = self.scheduler
        c = sch.counters
        finish = sch.finished
        return {
            "job_id": self.job_id,
            "wall_s": round(self._now(), 6),
            "ready_s": sch.started_at,  # until --min-workers workers had joined
            "started_at": self._wall0,
            "partitions": sch.partitions,
            "attempts": c.attempts,
            "reassigned": c.reassigned,
            "duplicates_dropped": c.duplicates_dropped,
            "workers_lost": c.workers_lost,
            "backup_attempts": c.backups,
            "failed_attempts": c.failures,
            "malformed_lines": self.merger.malformed,
            "lines": self.merger.lines,
            "bytes": sum(w.bytes_read for w in sch.workers.values()),
            "complete": finish is not None and not finish.error and not finish.failed_partitions,
            "error": finish.error if finish else None,
            "failed_partitions": [self.urls[i] for i in finish.failed_partitions] if finish else [],
            "peers_refused": self.refused,
            "workers": [
                {
                    "id": w.id,
                    "name": w.name,
                    "partitions": w.committed,
                    "attempts": w.attempts,
                    "bytes": w.bytes_read,
                    "busy_s": round(w.busy_s, 6),
                    "lost": w.lost,
                }
                for w in sch.workers.values()
            ],
        }
