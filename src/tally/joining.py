"""A worker reaching and joining a coordinator: connect with backoff, then the handshake.

:func:`join` tries again until its connect timeout passes, and :class:`Patience` (pure)
decides when it says why, when it gives up, and when a coordinator that welcomed it is gone
for good (docs/protocol.md, "Connection life").
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import random
import socket
from dataclasses import dataclass

from tally.errors import TallyError
from tally.net import HANDSHAKE_TIMEOUT_S, Connection, answer_challenge, read_challenge
from tally.protocol import Shutdown, Welcome

log = logging.getLogger("tally.joining")


FIRST_DELAY_S = 0.05  # backoff between tries: doubling from this, capped, with jitter
MAX_DELAY_S = 2.0
TRY_S = 3.0  # one TCP connect (a host that drops packets is tried again)
MIN_TRY_S = 1.0  # the least a try gets, even at the deadline
NOTICE_AFTER_S = 1.0  # a peer silent this long is worth a word: it may not be a coordinator
GONE_AFTER_S = 3.0  # refused this long after having been welcomed: the coordinator is gone


class Failure(enum.Enum):
    """Why one try to join did not succeed; each kind may succeed when tried again."""

    REFUSED = "refused"  # nobody listens there
    UNREACHABLE = "unreachable"  # no answer, no route, no such host
    CLOSED = "closed"  # it accepted the connection and closed it without a word
    SILENT = "silent"  # it accepted the connection and said nothing
    HANDSHAKE = "handshake"  # a coordinator, but the handshake did not finish


@dataclass(frozen=True)
class Retry:
    delay_s: float
    notice: str | None  # say this once: why the worker is still waiting


@dataclass(frozen=True)
class GiveUp:
    reason: str  # exit 1


@dataclass(frozen=True)
class Gone:
    reason: str  # the coordinator that welcomed this worker is gone for good: exit 0


@dataclass
class Patience:
    """How long a worker keeps trying to join, and what it says: pure, time comes in.

    A worker tries for ``timeout_s`` from its first try. It says once why it is still waiting;
    every other retry is quiet. A worker that was welcomed before (``rejoining``) and now finds
    nobody listening for ``GONE_AFTER_S`` knows that the coordinator, and with it the job, is
    gone."""

    where: str
    timeout_s: float
    started: float
    rejoining: bool = False
    gone_after_s: float = GONE_AFTER_S
    notified: bool = False
    challenged: bool = False  # a challenge came from there: it is a Tally coordinator
    refused_since: float | None = None
    delay_s: float = FIRST_DELAY_S

    def left(self, now: float) -> float:
        return self.started + self.timeout_s - now

    def failed(
        self, now: float, kind: Failure, why: str, jitter: float = 1.0
    ) -> Retry | GiveUp | Gone:
        """One try failed at ``now``; ``jitter`` (0.5 to 1) scales the next delay."""
        if kind is not Failure.REFUSED:
            self.refused_since = None
        elif self.refused_since is None:
            self.refused_since = now
        gone_at = None
        if self.rejoining and self.refused_since is not None:
            gone_at = self.refused_since + min(self.gone_after_s, self.timeout_s)
            if now >= gone_at:
                return Gone(
                    f"coordinator at {self.where} is gone (connection refused for "
                    f"{now - self.refused_since:.1f}s after this worker had joined): "
                    "its job is over"
                )
        if self.left(now) <= 0:
            return GiveUp(self._reason(kind, why))
        delay = min(self.delay_s * jitter, self.left(now))
        if gone_at is not None:
            delay = min(delay, gone_at - now)
        self.delay_s = min(self.delay_s * 2, MAX_DELAY_S)
        notice = None
        if not self.notified and not self.rejoining:  # a rejoining worker said it lost the link
            self.notified = True
            notice = (
                f"waiting for coordinator at {self.where} ({why}); "
                f"retrying for up to {self.timeout_s:g}s"
            )
        return Retry(max(delay, 0.0), notice)

    def silent_notice(self) -> str | None:
        """A peer has accepted the connection and said nothing for ``NOTICE_AFTER_S``."""
        if self.notified:
            return None
        self.notified = True
        hint = "" if self.rejoining else "; is it a Tally coordinator?"
        return (
            f"waiting for coordinator at {self.where} (connected, but nothing received in "
            f"{NOTICE_AFTER_S:g}s{hint}); waiting for up to {self.timeout_s:g}s"
        )

    def _reason(self, kind: Failure, why: str) -> str:
        again = "re" if self.rejoining else ""
        within = f"at {self.where} within {self.timeout_s:g}s ({why})"
        if kind in (Failure.REFUSED, Failure.UNREACHABLE):
            return f"cannot {again}connect to coordinator {within}"
        if kind is not Failure.HANDSHAKE and not (self.rejoining or self.challenged):
            every = f", on every try for {self.timeout_s:g}s" if kind is Failure.CLOSED else ""
            return f"{self.where} is not a Tally coordinator: {why}{every}"
        return f"cannot {again}join coordinator {within}"


@dataclass(frozen=True)
class Joined:
    conn: Connection
    welcome: Welcome


async def join(
    host: str,
    port: int,
    token: bytes,
    name: str,
    slots: int,
    *,
    timeout_s: float,
    rejoining: bool = False,
) -> Joined | Shutdown | Gone:
    """Connect and handshake, trying again with capped exponential backoff and jitter.

    Returns the welcomed connection; ``Shutdown`` when the coordinator says its job is over;
    ``Gone`` when a ``rejoining`` worker finds nobody listening any more. Raises TallyError when
    ``timeout_s`` passes, and ProtocolError at once when the peer speaks something other than
    the Tally protocol, another version of it, or refuses this worker (AuthError: the token)."""
    loop = asyncio.get_running_loop()
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    patience = Patience(where, timeout_s, loop.time(), rejoining)
    while True:
        outcome = await _try_join(host, port, where, token, name, slots, patience)
        if not isinstance(outcome, tuple):
            return outcome
        kind, why = outcome
        match patience.failed(loop.time(), kind, why, random.uniform(0.5, 1.0)):
            case Retry(delay_s, notice):
                if notice is not None:
                    log.info("%s", notice)
                log.debug("%s: %s; trying again in %.2fs", where, why, delay_s)
                await asyncio.sleep(delay_s)
            case GiveUp(reason):
                raise TallyError(reason)
            case Gone() as gone:
                return gone


async def _try_join(
    host: str, port: int, where: str, token: bytes, name: str, slots: int, patience: Patience
) -> Joined | Shutdown | tuple[Failure, str]:
    loop = asyncio.get_running_loop()
    opened = await open_connection(
        host, port, max(min(TRY_S, patience.left(loop.time())), MIN_TRY_S)
    )
    if isinstance(opened, tuple):
        return opened
    conn, joined = opened, False
    try:
        notice = None if patience.notified else loop.call_later(NOTICE_AFTER_S, _notice, patience)
        started = loop.time()
        try:
            first = await read_challenge(conn, where, max(patience.left(started), MIN_TRY_S))
        except EOFError:
            return Failure.CLOSED, "connection closed before the handshake"
        except TimeoutError:
            return (
                Failure.SILENT,
                f"connected, but nothing received in {loop.time() - started:.0f}s",
            )
        except OSError as exc:
            return Failure.CLOSED, f"{_describe(exc)} before the handshake"
        finally:
            if notice is not None:
                notice.cancel()
        if isinstance(first, Shutdown):
            return first
        patience.challenged = True
        try:
            welcome = await answer_challenge(conn, first, where, token, name, slots)
        except TimeoutError:
            return Failure.HANDSHAKE, f"no answer to hello within {HANDSHAKE_TIMEOUT_S:g}s"
        except EOFError:
            return Failure.HANDSHAKE, "connection closed during the handshake"
        except OSError as exc:
            return Failure.HANDSHAKE, f"{_describe(exc)} during the handshake"
        joined = True
        return Joined(conn, welcome)
    finally:
        if not joined:
            await conn.close()


_UNUSABLE_ADDRESS = {errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EAFNOSUPPORT}


async def open_connection(
    host: str, port: int, within_s: float
) -> Connection | tuple[Failure, str]:
    """One try to connect to each address of ``host`` in turn, all within ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), within_s
        )
    except TimeoutError:
        return Failure.UNREACHABLE, f"cannot resolve {host} within {within_s:g}s"
    except OSError as exc:  # socket.gaierror
        return Failure.UNREACHABLE, f"cannot resolve {host}: {_describe(exc)}"
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, address), deadline - loop.time())
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
            return Connection(reader, writer)
        except OSError as exc:  # TimeoutError included
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
    refused = any(isinstance(e, ConnectionRefusedError) for e in errors)
    if refused and all(
        isinstance(e, ConnectionRefusedError) or e.errno in _UNUSABLE_ADDRESS for e in errors
    ):  # every address that can be reached refused: nobody listens
        return Failure.REFUSED, "connection refused"
    last = errors[-1] if errors else OSError("no address")
    if isinstance(last, TimeoutError):
        return Failure.UNREACHABLE, f"no answer within {within_s:g}s"
    return Failure.UNREACHABLE, _describe(last)


def _notice(patience: Patience) -> None:
    if (notice := patience.silent_notice()) is not None:
        log.info("%s", notice)


def _describe(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
