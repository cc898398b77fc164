"""The worker's asyncio shell: connect, heartbeat, take assigned partitions, send partials.

The event loop thread does all the I/O, heartbeats included; partitions are computed on a
separate thread, so a long computation never silences the heartbeat. If the connection
drops mid-job, the worker reconnects (with backoff) and first delivers the results it could
not send: the coordinator commits them if still wanted and drops them otherwise. How long it
tries, what it says, and when it exits are in docs/protocol.md, "Connection life".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from tally import protocol as p
from tally.cache import DEFAULT_CACHE_SIZE, PartialCache
from tally.errors import PartitionError, ProtocolError, TallyError
from tally.joining import Gone, Joined, join
from tally.net import Connection
from tally.prefetch import Prefetcher
from tally.queries import kind_of, to_ipc
from tally.queries.domains import load_kernel
from tally.queries.registry import warm_up

log = logging.getLogger("tally.worker")
CANCEL_AGAIN_S = 0.05  # how soon a lost cancellation of a connecting session is repeated


@dataclass
class WorkerConfig:
    host: str
    port: int
    token: bytes = b""
    slots: int = 2  # tasks held at once: one computing, the rest prefetched
    connect_timeout_s: float = 60.0
    kernel: str = "auto"
    task_delay_s: float = 0.0  # fault injection: extra seconds per task (a slow machine)
    slowdown: float = 1.0  # fault injection: every task takes this many times longer
    storage_options: dict[str, str] = field(default_factory=dict)  # KEY=VALUE for fsspec
    cache_dir: str | None = None  # keep partials there (tally.cache); None: no cache
    cache_size: int = DEFAULT_CACHE_SIZE


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.conn: Connection | None = None
        self.welcome: p.Welcome | None = None
        self.plans: dict[str, p.JobPlan] = {}  # by job id, as the coordinator sent them
        # (session, task) from the event loop to the compute thread; None stops it
        self.queue: queue.SimpleQueue[tuple[int, p.Assign] | None] = queue.SimpleQueue()
        self.session = 0  # counts ended connections; tasks of an ended one were re-queued there
        self.cancelled: set[int] = set()
        self.current: p.Assign | None = None
        self.outbox: list[p.Result | p.Failed] = []  # finished while disconnected
        self.done = asyncio.Event()
        self.exit_code = 0
        self.tasks_done = 0
        self.last_beat = 0.0  # event-loop time of the last heartbeat sent
        self.warming: threading.Thread | None = None  # loads the engines once joined
        self._session_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.cache = None if config.cache_dir is None else PartialCache(
            config.cache_dir, config.cache_size, config.storage_options
        )  # fmt: skip

    async def run(self) -> int:
        """Work until the job ends (0), SIGTERM (0), or the coordinator cannot be joined (1)."""
        loop = self._loop = asyncio.get_running_loop()
        # signal.signal, not loop.add_signal_handler: asyncio resets that to the default
        # action when the loop closes, and SIGTERM must never kill a worker
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            load_kernel(self.config.kernel)  # before joining: joined means ready
            if "duckdb" in sys.modules:  # loaded already (a forked worker): warm it up now
                self._warm_up()

            computing = threading.Thread(
                target=self._compute_loop, args=(loop,), name="tally-compute", daemon=True
            )
            computing.start()
            await self._sessions()
        finally:
            self.done.set()
            self._drain_queue()
            self.queue.put(None)
            if previous is not None:  # else it was not set from Python: leave this one
                signal.signal(signal.SIGTERM, previous)
            if self.cache is not None:
                log.info("cache: %s", self.cache.close())
        return self.exit_code

    async def _sessions(self) -> None:
        while not self.done.is_set():
            self._session_task = asyncio.create_task(self._session())
            try:
                await self._session_task
            except asyncio.CancelledError:  # SIGTERM while connecting or joining
                return
            except TallyError as exc:  # not a coordinator, refused, or not found in time
                if not self.done.is_set():
                    log.error("%s", exc.message)
                    self.exit_code = 1
                return
            except (EOFError, OSError) as exc:  # TimeoutError and ConnectionError included
                if self.done.is_set():
                    return
                log.warning(
                    "connection to coordinator lost (%s); reconnecting for up to %gs",
                    str(exc) or type(exc).__name__,
                    self.config.connect_timeout_s,
                )
                self.conn = None

    async def _session(self) -> None:
        cfg = self.config
        joined = await join(
            cfg.host,
            cfg.port,
            cfg.token,
            self.name,
            cfg.slots,
            timeout_s=cfg.connect_timeout_s,
            # a one-job coordinator that refuses us has ended its job: leave; a server that
            # refuses us is restarting: keep trying for the whole connect timeout
            rejoining=self.welcome is not None and not self.welcome.serving,
        )
        if isinstance(joined, Gone):  # refused for a while after having joined: job over
            log.warning("%s", joined.reason)
        elif isinstance(joined, p.Shutdown):  # it answered a new connection: job over
            log.info("coordinator: %s", joined.reason)
        if not isinstance(joined, Joined):
            self.done.set()
            return
        conn, welcome = joined.conn, joined.welcome
        try:
            if self.done.is_set():  # SIGTERM arrived while joining
                conn.send(p.Leaving([]))
                return
            self.welcome, self.conn = welcome, conn
            conn.give_up_after(welcome.lease_s)  # a silent link breaks within the lease
            self.last_beat = time.monotonic()
            log.info("joined as worker %d", welcome.worker_id)
            self._warm_up()  # while the job is planned, beside any task: not in one
            for message in self.outbox:
                conn.send(message)
            self.outbox.clear()
            heartbeat = asyncio.create_task(self._heartbeat(conn, welcome.heartbeat_s))
            try:
                await self._read(conn)
            finally:
                heartbeat.cancel()
        finally:
            self.conn = None
            self.session += 1  # what is still queued from this session was re-queued there
            await conn.close()

    def _warm_up(self) -> None:
        """Load the engines on a thread of their own, once: after joining, so that loading
        never delays the join, or at once when they are loaded already (only warmed)."""
        if self.warming is None:
            self.warming = threading.Thread(target=warm_up, name="tally-warm-up", daemon=True)
            self.warming.start()

    async def _read(self, conn: Connection) -> None:
        while True:
            msg = await conn.receive()
            match msg:
                case p.JobPlan():
                    self.plans[msg.job_id] = msg
                case p.Assign():
                    self.queue.put_nowait((self.session, msg))
                case p.JobEnded():
                    self.plans.pop(msg.job_id, None)
                case p.Cancel():
                    self.cancelled.add(msg.attempt)
                case p.Shutdown():
                    log.info("coordinator: %s; %d task(s) done", msg.reason, self.tasks_done)
                    self.done.set()
                    return
                case p.Refused():
                    raise ProtocolError(f"coordinator refused: {msg.reason}")
                case _:
                    raise ProtocolError(f"unexpected {type(msg).__name__} from the coordinator")

    async def _heartbeat(self, conn: Connection, interval: float) -> None:
        seq = 0
        while True:
            await asyncio.sleep(interval)
            if self._past_lease():
                return
            seq += 1
            conn.send(p.Heartbeat(seq))
            self.last_beat = time.monotonic()

    def _silent_s(self) -> float:
        return time.monotonic() - self.last_beat  # the event loop's clock is time.monotonic

    def _past_lease(self) -> bool:
        """After a silence longer than the lease (this process was stopped or starved), the
        coordinator has declared this worker lost: drop the session and join again, so that
        nothing is written into a connection the coordinator already closed."""
        conn, welcome = self.conn, self.welcome
        if conn is None or welcome is None:
            return False
        silent = self._silent_s()
        if silent <= welcome.lease_s:
            return False
        log.warning("silent for %.1fs, past the %gs lease: joining again", silent, welcome.lease_s)
        conn.writer.transport.abort()
        return True

    def _compute_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The compute thread: run tasks one by one, hand each result to the event loop, and
        get the next partition ready while the current one computes. None stops it."""
        prefetch = Prefetcher(options=self.config.storage_options)
        ahead: list[tuple[int, p.Assign] | None] = []  # the next item, taken early
        while (item := ahead.pop() if ahead else self.queue.get()) is not None:
            with contextlib.suppress(queue.Empty):
                ahead.append(self.queue.get_nowait())
            session, assign = item
            welcome = self.welcome
            if (
                assign.attempt in self.cancelled
                or session != self.session
                or welcome is None
                or self._silent_s() > welcome.lease_s
            ):  # cancelled, or its session died and the coordinator re-queued it
                self.cancelled.discard(assign.attempt)
                prefetch.discard(assign.attempt)
                continue
            self.current = assign
            log.debug("attempt %d of job %s: computing %s", assign.attempt, assign.job_id,
                      assign.task.label)  # fmt: skip
            try:
                if ahead and (following := ahead[0]) is not None and not self._cached(following[1]):
                    prefetch.start(following[1].attempt, following[1].task)
                message = self._compute(assign, prefetch)
            except Exception as exc:  # never lose the thread: the attempt fails as data
                message = p.Failed(assign.attempt, assign.job_id, p.ErrorInfo.from_exception(exc))
            self.current = None
            loop.call_soon_threadsafe(self._finished, assign.attempt, message)

    def _finished(self, attempt: int, message: p.Result | p.Failed) -> None:
        self.tasks_done += 1
        if attempt in self.cancelled:
            self.cancelled.discard(attempt)
            return
        # one more turn of the loop first: a connection that died meanwhile is noticed then
        asyncio.get_running_loop().call_soon(self._send_result, message)

    def _send_result(self, message: p.Result | p.Failed) -> None:
        conn = None if self._past_lease() else self._live()
        if conn is not None:
            conn.send(message)
        else:
            self.outbox.append(message)

    def _live(self) -> Connection | None:
        conn = self.conn
        return conn if conn is not None and conn.usable else None

    def _compute(self, assign: p.Assign, prefetch: Prefetcher) -> p.Result | p.Failed:
        started = time.perf_counter()
        task = assign.task
        try:
            job = self.plans.get(assign.job_id)
            if job is None:
                raise ProtocolError(f"no plan for job {assign.job_id}", retryable=True)
            cached = self.cache.lookup(task, job.plan, job.record_limit) if self.cache else None
            if cached is not None and (cached.hit is not None or cached.reopen):
                prefetch.discard(assign.attempt)  # not needed, or opened before the version seen
            if cached is not None and cached.hit is not None:
                partial = p.Partial(cached.hit.table, cached.hit.lines, cached.hit.malformed)
                busy = time.perf_counter() - started
                return p.Result(assign.attempt, assign.job_id, partial, 0, busy, cached=True)
            with prefetch.take(assign.attempt, task) as stream:
                output = kind_of(job.plan).compute(
                    job.plan, stream, job.record_limit, self.config.kernel, task.start == 0
                )
            self._inject_delay(time.perf_counter() - started)
            table = to_ipc(output.table)
            if table is not None and len(table) > p.MAX_FRAME - (1 << 10):
                raise PartitionError(
                    f"{task.url}: its partial of {len(table)} bytes exceeds the frame limit "
                    f"({p.MAX_FRAME} bytes)",
                    retryable=False,
                )
            if cached is not None and self.cache is not None:
                self.cache.keep(cached, task, table, output.lines, output.malformed)
            partial = p.Partial(
                None if table is None else memoryview(table), output.lines, output.malformed
            )
            return p.Result(
                assign.attempt, assign.job_id, partial, output.bytes_read,
                time.perf_counter() - started,
            )  # fmt: skip
        except Exception as exc:  # any failure of a task is data for the coordinator
            return p.Failed(assign.attempt, assign.job_id, p.ErrorInfo.from_exception(exc))

    def _cached(self, assign: p.Assign) -> bool:
        """Whether the cache will likely serve ``assign`` (its partition need not be read)."""
        job = self.plans.get(assign.job_id)
        if self.cache is None or job is None:
            return False
        return self.cache.probably_cached(assign.task, job.plan, job.record_limit)

    def _inject_delay(self, elapsed: float) -> None:
        extra = self.config.task_delay_s + (self.config.slowdown - 1.0) * elapsed
        if extra > 0:
            time.sleep(extra)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM, run by Python in the main thread between two bytecodes: leave from the
        event loop. A worker already on its way out (a second SIGTERM, or one after the loop
        ended) exits at once with the status it has."""
        loop = self._loop
        if loop is None or loop.is_closed() or self.done.is_set():
            sys.stderr.flush()
            os._exit(self.exit_code)
        loop.call_soon_threadsafe(self._leave)

    def _leave(self) -> None:
        """SIGTERM: hand back every unfinished attempt and stop."""
        returned = [a.attempt for s, a in self._drain_queue() if s == self.session]
        if self.current is not None:
            returned.append(self.current.attempt)
        log.info("SIGTERM: leaving, returning %d attempt(s)", len(returned))
        if self.conn is not None:
            self.conn.send(p.Leaving(returned))
        elif self._session_task is not None:  # still connecting or joining
            asyncio.get_running_loop().create_task(_cancel_until_done(self._session_task))
        self.done.set()
        asyncio.get_running_loop().create_task(self._close_after_leaving())

    def _drain_queue(self) -> list[tuple[int, p.Assign]]:
        items = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                items.append(item)
        return items

    async def _close_after_leaving(self) -> None:
        conn = self.conn  # the session may end (and forget it) while this waits
        if conn is not None:
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(conn.drain(), 2.0)
            await conn.close()


async def _cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel ``task``, again and again until it has stopped: asyncio.wait_for (Python 3.11)
    drops a cancellation that arrives as the step it awaits finishes (a connection closing
    under a handshake), and the task would go on connecting."""
    while not task.done():
        task.cancel()
        await asyncio.sleep(CANCEL_AGAIN_S)
