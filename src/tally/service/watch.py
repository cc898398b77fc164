"""``tally serve --watch SOURCE --output PREFIX``: every object that appears under SOURCE
becomes a job whose result goes to ``PREFIX/<object name>.json``; ``PREFIX/_total.json``
holds the same query over every object seen so far.

The decisions (new, changed, settled; the checkpoint) are :mod:`tally.service.watch_state`;
the checkpoint lives in the journal (:mod:`tally.service.watch_journal`), written in the
transactions that journal each job's start and end, so each object version is processed
exactly once across restarts. The total is kept incrementally: the service holds a running
merger and adds only a new object's partials to it. A changed object's new version replaces
the old one's contribution; min and max cannot be subtracted, so then every object's
partials (kept in the journal, one small table per task) are merged afresh.

With ``--notify QUEUE_URL`` object-created events (:mod:`tally.service.watch_events`)
trigger a describe of their object; the listing goes on as a slower backfill. Listing,
events and a running job's end all submit through :meth:`Watcher.consider`, one object at a
time, so an object seen by two of them at once still gets one job per version.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from tally.errors import ConfigError, TallyError
from tally.events_file import EventFile
from tally.job import JobSpec
from tally.jobs.tasks import JobConfig
from tally.protocol import Plan, QuerySpec
from tally.queries import format_result
from tally.queries.plan import Plan as GroupByPlan
from tally.service import watch_journal as wj
from tally.service.bodies import SUCCEEDED
from tally.service.jobs import JobService
from tally.service.notify_io import open_queue as open_notify_queue
from tally.service.store import Statements
from tally.service.watch_events import EventConsumer
from tally.service.watch_io import (
    check_places,
    describe,
    list_after,
    list_objects,
    object_url,
    output_url,
    write_atomic,
)
from tally.service.watch_state import RUNNING, Listed, WatchState
from tally.service.watch_total import RunningTotal
from tally.storage.ranges import plan_tasks
from tally.storage.sources import is_remote

log = logging.getLogger("tally.watch")
TOTAL = "_total"
POLL_S = 0.5  # seconds between listings
NOTIFY_BACKFILL_S = 60.0  # ... when events come from a queue: a backfill
FULL_LISTING_SHARE = 10.0  # full listings take at most about a tenth of the time


@dataclass(frozen=True)
class WatchConfig:
    source: str
    output: str
    plan: Plan  # a group-by plan is bound to the first object read
    query: dict[str, Any]  # the query as job documents show it
    poll_s: float = 0.5
    settle_s: float = 0.5
    record_limit: int = 1 << 20
    split_size: int = 64 << 20
    job: JobConfig = field(default_factory=JobConfig)
    full_listing_s: float | None = None  # between full listings only names after the last are
    # listed; None: see Watcher._full_listing_gap
    notify: str | None = None  # a queue of object-created events
    max_tries: int = 3  # receipts of a failing message before it is dead-lettered
    events: str | None = None  # where the watcher's records go (JSON lines)

    def record(self) -> dict[str, Any]:
        """What a journal is checked against when the watcher restarts."""
        return {"source": self.source, "output": self.output, "query": self.query}


class Watcher:
    """The watcher's shell: polls, submits jobs to the service, writes the results. It is
    the service's :class:`tally.service.jobs.JobObserver`."""

    def __init__(self, service: JobService, config: WatchConfig) -> None:
        self.service = service
        self.config = config
        self.plan: Plan = config.plan
        self.jobs: dict[str, str] = {}  # running job -> object name
        self.state = WatchState(config.settle_s)
        self.total = RunningTotal(self.plan)
        self._ended: asyncio.Queue[tuple[str, str, bool, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._unwritten: list[tuple[str, str]] = []
        self._listing_failed = ""
        self._one_at_a_time = asyncio.Lock()
        self._recheck: set[str] = set()  # objects whose newer version waits for a job's end
        self._rechecks: set[asyncio.Task[None]] = set()
        self._events: EventFile | None = None
        self._consumer: EventConsumer | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Read the checkpoint back (before the service resumes its jobs)."""
        check_places(self.config.source, self.config.output)
        if self.config.notify:
            self._consumer = EventConsumer(
                self, open_notify_queue(self.config.notify), self.config.max_tries
            )
        if self.config.events:
            self._events = EventFile(self.config.events)
        store = self.service.store
        wj.check_config(store, self.config.record())
        entries = wj.checkpoint(store)
        parts = wj.partials(store)
        self.state = WatchState(
            self.config.settle_s, {name: entry for name, (entry, _) in entries.items()}, parts
        )
        for name, (entry, written) in entries.items():
            if entry.state == RUNNING:
                self.jobs[entry.job] = name
            elif entry.job and not written and name in parts:
                self._unwritten.append((name, entry.job))
            if isinstance(self.plan, GroupByPlan) and not self.plan.bound and entry.job:
                self.plan = store.spec(entry.job).plan  # every object's jobs share one plan
        self.total.rebuild(self.plan, parts)
        self.service.observer = self
        log.info("watching %s into %s: %d object(s) done, %d running", self.config.source,
                 self.config.output, len(parts), len(self.jobs))  # fmt: skip

    async def start(self) -> None:
        """Write what a crash left unwritten, then poll. TallyError when the output cannot
        be written to at all: better said at once than after the first upload."""
        try:
            for name, job in self._unwritten:
                await self._write_object(name, job)
            await self._write_total()
        except Exception as exc:
            from tally.storage.objectstore import failure

            raise TallyError(f"cannot write results into {self.config.output}: "
                             f"{failure(exc)[0]}") from exc  # fmt: skip
        self._tasks = [asyncio.create_task(self._writer()), asyncio.create_task(self._poll())]
        if self._consumer is not None:
            self._tasks.append(asyncio.create_task(self._consumer.run()))
            log.info("reading object-created events from %s", self._consumer.queue.url)

    def stop_polling(self) -> None:
        for task in self._tasks[1:]:
            task.cancel()

    async def close(self) -> None:
        """Write the results of the jobs that have ended, then stop."""
        self.stop_polling()
        await self._ended.join()
        for task in self._tasks:
            task.cancel()
        if self._consumer is not None:
            log.info("events from %s: %s", self._consumer.queue.url,
                     self._consumer.counts.shown())  # fmt: skip
        if self._events is not None:
            self._events.close()

    def note(self, event: str, obj: Listed, via: str, **more: Any) -> None:
        """A record of the watcher's in the events file (``--watch-events``)."""
        if self._events is not None:
            self._events.write({"t": time.time(), "event": event, "object": obj.name,
                                "version": obj.version, "via": via, **more})  # fmt: skip

    # --- polling -----------------------------------------------------------------------------

    async def _poll(self) -> None:
        full_at, after = 0.0, ""  # when the next full listing is due; the greatest name seen
        first = True  # the first listing's time includes opening the store's client
        while True:
            full = not is_remote(self.config.source) or time.monotonic() >= full_at
            try:
                if full:
                    started = time.monotonic()
                    listing = await asyncio.to_thread(list_objects, self.config.source)
                    took = time.monotonic() - started
                    full_at = started + (0.0 if first else self._full_listing_gap(took))
                    if first:
                        log.info("listed %s: %d object(s) in %.2fs", self.config.source,
                                 len(listing), took)  # fmt: skip
                    first = False
                else:  # only the names after the greatest one seen
                    listing = await asyncio.to_thread(list_after, self.config.source, after)
            except Exception as exc:  # storage down: say so once, keep polling
                problem = f"{type(exc).__name__}: {exc}"
                if problem != self._listing_failed:
                    log.warning("cannot list %s: %s", self.config.source, problem)
                self._listing_failed = problem
            else:
                if self._listing_failed:
                    log.info("listing %s again", self.config.source)
                self._listing_failed = ""
                after = max([after, *(obj.name for obj in listing)])
                for obj in self.state.poll(listing, time.time(), complete=full):
                    if self.service.draining:
                        break
                    self.note("detected", obj, "listing")
                    await self.consider(obj, "listing")
            await asyncio.sleep(self.config.poll_s)

    def _full_listing_gap(self, took: float) -> float:
        """Seconds from one full listing to the next: ``--full-listing-interval``, else none
        while a full listing is quicker than a poll interval (every poll lists in full),
        and then ten times its duration, so full listings take about a tenth of the time."""
        if self.config.full_listing_s is not None:
            return self.config.full_listing_s
        return 0.0 if took <= self.config.poll_s else FULL_LISTING_SHARE * took

    async def consider(self, obj: Listed, via: str) -> str:
        """Submit a job of ``obj`` if its version is due. Returns ``submitted``,
        ``refused``, ``draining`` or what :meth:`WatchState.wanted` says."""
        async with self._one_at_a_time:
            verdict = self.state.wanted(obj)
            if verdict == "waiting":
                self._recheck.add(obj.name)
            if verdict != "new":
                return verdict
            if self.service.draining:
                return "draining"
            return "submitted" if await self._submit(obj, via) else "refused"

    async def _describe_again(self, name: str) -> None:
        url = object_url(self.config.source, name)
        try:
            obj = await asyncio.to_thread(describe, url, name)
        except Exception as exc:  # the backfill listing will see it
            log.warning("cannot describe %s: %s", url, exc)
            return
        if obj is not None:
            await self.consider(obj, "recheck")

    async def _submit(self, obj: Listed, via: str) -> bool:
        try:
            plan = await self._bound_plan(obj.url)
            tasks = await asyncio.to_thread(plan_tasks, [obj.url], self.config.split_size)
        except TallyError as exc:
            log.warning("not processing %s: %s", obj.name, exc.message)
            self.state.refused(obj)
            return False
        spec = JobSpec(tasks, plan, self.config.job, self.config.record_limit)
        job_id = secrets.token_hex(8)
        shown = {"source": obj.url, "query": self.config.query,
                 "watch": {"object": obj.name, "version": obj.version}}  # fmt: skip
        self.jobs[job_id] = obj.name
        self.state.started(obj, job_id)
        self.service.accept(shown, spec, job_id, wj.started(obj.name, obj.version, job_id))
        log.info("%s (version %s): job %s", obj.name, obj.version, job_id)
        self.note("submitted", obj, via, job=job_id)
        return True

    async def _bound_plan(self, url: str) -> Plan:
        if isinstance(self.plan, GroupByPlan) and not self.plan.bound:
            from tally.local import sample_of
            from tally.queries.infer import bind

            sample = await asyncio.to_thread(sample_of, url)
            self.plan = bind(self.plan, sample)
            self.total = RunningTotal(self.plan)  # nothing merged yet: no object was done
        return self.plan

    # --- the service's job observer ----------------------------------------------------------

    def finishing(self, job_id: str, succeeded: bool) -> Statements:
        name = self.jobs.get(job_id)
        return () if name is None else wj.ended(name, job_id, succeeded)

    def finished(self, job_id: str, state: str) -> None:
        name = self.jobs.pop(job_id, None)
        if name is None:
            return
        succeeded = state == SUCCEEDED
        change = self.state.ended(name, job_id, succeeded)
        if not succeeded:
            log.warning("%s: job %s %s: no result written", name, job_id, state)
        self._ended.put_nowait((name, job_id, succeeded, change))
        if name in self._recheck and is_remote(self.config.source):
            self._recheck.discard(name)  # an event for a newer version came meanwhile
            again = asyncio.create_task(self._describe_again(name))
            self._rechecks.add(again)
            again.add_done_callback(self._rechecks.discard)

    # --- results -----------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            name, job_id, succeeded, change = await self._ended.get()
            try:
                if succeeded:
                    await self._write_object(name, job_id)
                if change == "add":
                    parts = wj.partials(self.service.store, name).get(name, [])
                    if not self.total.add(name, parts):
                        change = "none"  # a rebuild taken in before it holds it already
                elif change == "rebuild":
                    self.total.rebuild(self.plan, wj.partials(self.service.store))
                if change != "none":
                    await self._write_total()
            except Exception:  # a result that cannot be written must not stop the others
                log.exception("cannot write the results of %s", name)
            finally:
                self._ended.task_done()

    async def _write_object(self, name: str, job_id: str) -> None:
        result = self.service.store.result(job_id)
        if result is None:
            return
        url = output_url(self.config.output, f"{name}.json")
        data = format_result(result, "json").encode("utf-8")
        await asyncio.to_thread(write_atomic, url, data)
        wj.written(self.service.store, name, job_id)
        log.info("wrote %s", url)
        if self._events is not None:
            self._events.write({"t": time.time(), "event": "written", "object": name,
                                "job": job_id, "url": url})  # fmt: skip

    async def _write_total(self) -> None:
        if isinstance(self.plan, GroupByPlan) and not self.plan.bound:
            return  # no object read yet: no columns to show
        total = self.total

        def write() -> None:
            data = format_result(total.finalize(), "json").encode("utf-8")
            write_atomic(output_url(self.config.output, f"{TOTAL}.json"), data)

        await asyncio.to_thread(write)


def query_of(
    domain: str | None, top: int | None, every: bool, group_by: Any
) -> tuple[Plan, dict[str, Any]]:
    """The plan and the shown query of ``--domain``/``--top``/``--all`` or group-by flags."""
    if group_by.wanted:
        if domain is not None or top is not None or every:
            raise ConfigError("give --domain, --top or --all, or a group-by, not both")
        plan = group_by.source_and_plan()[1]
        shown = {k: v for k, v in vars(group_by).items() if v not in (None, (), False)}
        return plan, {"group_by": {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in shown.items()}}  # fmt: skip
    if domain is not None:
        return QuerySpec("domain", domain=domain.encode("utf-8", "surrogateescape")), {
            "domain": domain.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        }
    if every:
        return QuerySpec("all"), {"all": True}
    return QuerySpec("top", k=top or 25), {"top": top or 25}


def watch_config(args: Any) -> WatchConfig:
    """The watcher's configuration from ``tally serve``'s arguments."""
    from tally.groupby_options import options_of
    from tally.service.notify_io import check_url

    if not args.output:
        raise ConfigError("--watch needs --output PREFIX: where the results go")
    remote = is_remote(args.watch)
    if args.notify:
        store = check_url(args.notify)
        if not remote or notify_scheme(args.watch) != store:
            kind = "Azure Blob Storage (az://)" if store == "az" else "S3 (s3://)"
            raise ConfigError(f"--notify {args.notify} carries events of {kind}: "
                              f"it cannot notify of {args.watch}")  # fmt: skip
    poll_s = args.poll_interval
    if poll_s is None:
        poll_s = NOTIFY_BACKFILL_S if args.notify else POLL_S
    plan, query = query_of(args.domain, args.top, args.all, options_of(args))
    import os

    def place(url: str) -> str:  # the journal keeps absolute paths: the same across cwds
        return url if is_remote(url) or url.startswith("file://") else os.path.abspath(url)

    return WatchConfig(
        source=place(args.watch),
        output=place(args.output),
        plan=plan,
        query=query,
        poll_s=poll_s,
        full_listing_s=args.full_listing_interval,
        settle_s=0.0 if remote else args.settle,  # a blob is listed once committed
        record_limit=args.record_limit,
        split_size=args.split_size,
        job=JobConfig(max_attempts=args.max_attempts),
        notify=args.notify,
        max_tries=args.notify_tries,
        events=args.watch_events,
    )


def notify_scheme(source: str) -> str:
    scheme = source.partition("://")[0]
    return {"abfs": "az", "abfss": "az", "s3a": "s3"}.get(scheme, scheme)
