"""The watcher's notification consumer: reads a queue of object-created events
(:mod:`tally.service.notify_io`), turns each into a describe of its object and hands that
to the watcher, which submits a job if the version is new.

A message is deleted only once every object it names is handled: submitted (its job
journaled with its checkpoint entry), found already done or running (a duplicate, or an
event older than what was processed), outside the watched prefix, or waiting for the
running job of an older version (the watcher describes the object again when that job
ends; a restart's backfill listing catches it too). So a SIGKILL between receipt and
journal leaves the message on the queue, and its redelivery meets the checkpoint. A
message that fails (poison: :mod:`tally.service.notify`; or an object that cannot be
described) is released to be tried again after a short delay, and dead-lettered with its
reason on its ``max_tries``-th receipt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tally.service import notify
from tally.service.notify_io import EventQueue, Received
from tally.service.watch_io import describe, object_url
from tally.service.watch_state import ignored

if TYPE_CHECKING:
    from tally.service.watch import Watcher

log = logging.getLogger("tally.watch")
RETRY_DELAY_S = 1  # a failed message is visible again after this long
RECEIVE_WAIT_S = 1.0  # long poll (SQS); Azure queues are polled every 50 ms instead
BACKOFF_S = (0.5, 5.0)  # first and longest pause while the queue cannot be reached


class _Later(Exception):
    """The message cannot be handled now (the server is draining): release it."""


class EventConsumer:
    def __init__(self, watcher: Watcher, queue: EventQueue, max_tries: int) -> None:
        self.watcher = watcher
        self.queue = queue
        self.max_tries = max_tries
        self.counts = notify.Counts()
        self._failing = ""

    async def run(self) -> None:
        pause = BACKOFF_S[0]
        while True:
            try:
                messages = await asyncio.to_thread(self.queue.receive, RECEIVE_WAIT_S)
            except Exception as exc:  # the queue cannot be reached: say so once, keep trying
                self._trouble(f"cannot read queue {self.queue.url}: {_shown(exc)} (retrying)")
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF_S[1])
                continue
            if self._failing:
                log.info("reading queue %s again", self.queue.url)
                self._failing, pause = "", BACKOFF_S[0]
            for message in messages:
                if self.watcher.service.draining:
                    break  # left on the queue: it reappears after its visibility timeout
                await self.handle(message)

    def _trouble(self, line: str) -> None:
        if line != self._failing:
            log.warning("%s", line)
        self._failing = line

    async def handle(self, message: Received) -> None:
        received = time.time()
        self.counts.messages += 1
        try:
            parsed = notify.parse(message.body)
            self.counts.other += parsed.other
            for event in parsed.created:
                await self._created(event, message, received)
        except notify.Poison as exc:
            reason = exc.reason
        except _Later:
            await self._call(self.queue.release, message, 0)
            return
        except Exception as exc:  # the object cannot be described: storage refused or down
            reason = f"cannot read the object: {_shown(exc)}"
        else:
            await self._call(self.queue.delete, message)
            return
        if notify.dead_letter(message.tries, self.max_tries):
            if await self._call(self.queue.dead_letter, message, reason):
                self.counts.dead_lettered += 1
                log.warning("message %s of %s dead-lettered to %s%s after %d tries: %s",
                            message.id, self.queue.url, self.queue.url, "-poison",
                            message.tries, reason)  # fmt: skip
        else:
            self.counts.retried += 1
            log.debug("message %s (try %d): %s", message.id, message.tries, reason)
            await self._call(self.queue.release, message, RETRY_DELAY_S)

    async def _created(self, event: notify.Created, message: Received, received: float) -> None:
        watcher = self.watcher
        name = notify.name_under(event, watcher.config.source)
        if name is None or ignored(name):
            self.counts.outside += 1
            log.debug("event for %s/%s outside %s: ignored", event.container, event.key,
                      watcher.config.source)  # fmt: skip
            return
        self.counts.objects += 1
        known = watcher.state.checkpoint.get(name)
        if event.version is not None and known is not None and known.version == event.version:
            self.counts.duplicates += 1  # no need to describe it
            return
        url = object_url(watcher.config.source, name)
        obj = await asyncio.to_thread(describe, url, name)
        if obj is None:
            raise notify.Poison(f"no object {url}")
        watcher.note("detected", obj, "event", received=received, sent=message.sent)
        verdict = await watcher.consider(obj, "event")
        if verdict == "draining":
            raise _Later
        if verdict == "submitted":
            self.counts.submitted += 1
        elif verdict == "known":
            self.counts.duplicates += 1

    async def _call(self, method: object, *args: object) -> bool:
        """A delete, release or dead-letter; False (and one log line) if the queue refuses:
        the message then reappears by itself and meets the checkpoint."""
        try:
            await asyncio.to_thread(method, *args)  # type: ignore[arg-type]
        except Exception as exc:
            self._trouble(f"cannot update queue {self.queue.url}: {_shown(exc)}")
            return False
        return True


def _shown(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
