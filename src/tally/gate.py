"""Admission of peers that have not yet proved the token: a cap on handshakes in progress,
refusals logged without flooding the log, and a file-descriptor limit raised as far as the
system allows.

A flood of connections that never complete a handshake (a port scanner, a misconfigured
client, an attack) must cost the coordinator little and say little: at most
``MAX_HANDSHAKES`` of them are held at once (each for at most the handshake timeout), the
rest are closed at once; the first refusals of each kind are logged, then one summary line
every ``SUMMARY_EVERY_S`` says how many more there were.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from typing import Any

log = logging.getLogger("tally.gate")
MAX_HANDSHAKES = 64
LOGGED_PER_KIND = 3
SUMMARY_EVERY_S = 10.0


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class Gate:
    def __init__(self, max_handshakes: int = MAX_HANDSHAKES) -> None:
        self.max_handshakes = max_handshakes
        self.handshaking = 0
        self.refused = 0
        self._kinds: Counter[str] = Counter()
        self._unlogged = 0
        self._last_summary = time.monotonic()

    def admit(self) -> bool:
        """Whether a new connection may start a handshake (then call :meth:`done`)."""
        if self.handshaking >= self.max_handshakes:
            self.refuse("", f"more than {self.max_handshakes} handshakes in progress")
            return False
        self.handshaking += 1
        return True

    def done(self) -> None:
        self.handshaking -= 1

    def refuse(self, peer: str, reason: str) -> None:
        """Count a refused peer; log it if it is among the first of its kind."""
        self.refused += 1
        kind = reason.split(":", 1)[0]
        self._kinds[kind] += 1
        if self._kinds[kind] <= LOGGED_PER_KIND:
            last = self._kinds[kind] == LOGGED_PER_KIND
            more = " (more like it are counted, not logged)" if last else ""
            log.warning("refused %s: %s%s", peer or "a peer", reason, more)
        else:
            self._unlogged += 1
        self.summarize()

    def summarize(self, now: float | None = None, final: bool = False) -> None:
        """Log how many refusals went unlogged, every ``SUMMARY_EVERY_S`` (or now, ``final``)."""
        now = time.monotonic() if now is None else now
        if self._unlogged and (final or now - self._last_summary >= SUMMARY_EVERY_S):
            log.warning("refused %d more peers in the last %.0fs", self._unlogged,
                        now - self._last_summary)  # fmt: skip
            self._unlogged = 0
            self._last_summary = now


def quiet_accept_errors(loop: Any, context: dict[str, Any]) -> None:
    """An event-loop exception handler: a failed ``accept()`` (out of file descriptors) is one
    line, not a traceback; anything else goes to the default handler."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and "accept" in str(context.get("message", "")).lower():
        log.error("cannot accept a connection: %s", exc.strerror or exc)
        return
    loop.default_exception_handler(context)
