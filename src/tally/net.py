"""Length-prefixed frames over asyncio streams, the token handshake, joining with backoff.

Handshake (both sides prove they know the token; the token itself never crosses the wire):
1. coordinator -> Challenge(version, nonce_c)
2. worker      -> Hello(version, nonce_w, proof_w = HMAC(token, "worker" nonce_c nonce_w), ...)
3. coordinator -> Welcome(proof_c = HMAC(token, "coordinator" nonce_w nonce_c), ...) or Refused
The worker checks proof_c before it trusts any work from the coordinator.

A worker joins with :func:`join`: it tries again until its connect timeout passes, and
:class:`Patience` (pure) decides when it says why, when it gives up, and when a coordinator
that welcomed it is gone for good (docs/protocol.md, "Connection life").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import hmac
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass

from tally.errors import AuthError, ProtocolError, TallyError
from tally.protocol import (
    HEADER,
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    PROTOCOL_VERSION,
    AnyMessage,
    Challenge,
    Hello,
    Message,
    Refused,
    Shutdown,
    Welcome,
    check_length,
    decode,
    encode,
)

log = logging.getLogger("tally.net")
HANDSHAKE_TIMEOUT_S = 5.0
NONCE_BYTES = 16
PIECE = 1 << 20  # a large frame is read in pieces of at most this size
QUIET_FRAME = 16 << 10  # frames up to this size are read whole, without progress calls


class Connection:
    """One peer: typed messages in and out over a stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = writer.get_extra_info("socket")
        self._tcp = (
            sock if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None
        )
        if self._tcp is not None:
            self._tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def give_up_after(self, seconds: float) -> None:
        """Let the kernel break the connection when what this side sent stays unacknowledged
        for ``seconds`` (TCP_USER_TIMEOUT, where the system has it): a link that went silent
        (cut, black-holed) is noticed within that time instead of after minutes of
        retransmissions. A stopped peer process does not trigger it: its kernel still
        acknowledges."""
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if self._tcp is not None and option is not None:
            with contextlib.suppress(OSError):
                self._tcp.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))

    async def receive(
        self, limit: int = MAX_FRAME, progress: Callable[[], None] | None = None
    ) -> AnyMessage:
        """The next message; EOFError when the peer closed, ProtocolError on a bad frame.

        A frame larger than ``QUIET_FRAME`` is read as its bytes arrive, calling ``progress``
        each time some do: a peer busy sending one is alive, although its heartbeats queue
        behind the frame, however slow its link."""
        try:
            header = await self.reader.readexactly(HEADER.size)
            (length,) = HEADER.unpack(header)
            check_length(length, limit)
            if length <= QUIET_FRAME or progress is None:
                return decode(await self.reader.readexactly(length))
            payload = bytearray()
            while len(payload) < length:
                piece = await self.reader.read(min(PIECE, length - len(payload)))
                if not piece:
                    raise EOFError("connection closed")
                payload += piece
                progress()
            return decode(payload)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed") from exc

    @property
    def usable(self) -> bool:
        """False once either side closed: a frame written now would be lost."""
        return not (self.writer.is_closing() or self.reader.at_eof())

    def send(self, message: Message) -> None:
        """Queue a message for sending (asyncio writes it out in the background)."""
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    async def drain(self) -> None:
        await self.writer.drain()

    async def refuse(self, reason: str) -> None:
        """Tell the peer why, then close."""
        self.send(Refused(reason))
        await self.close()

    async def close(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def proof(token: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, role + first + second, hashlib.sha256).digest()


async def accept_handshake(
    conn: Connection, token: bytes, make_welcome: Callable[[Hello, bytes], Welcome]
) -> tuple[Hello, Welcome]:
    """Coordinator side. Raises ProtocolError/AuthError (after telling the peer) on refusal."""
    nonce_c = os.urandom(NONCE_BYTES)
    conn.send(Challenge(PROTOCOL_VERSION, nonce_c))
    try:
        hello = await asyncio.wait_for(conn.receive(MAX_HANDSHAKE_FRAME), HANDSHAKE_TIMEOUT_S)
    except TimeoutError as exc:
        raise ProtocolError("no hello within the handshake timeout") from exc
    if not isinstance(hello, Hello):
        raise ProtocolError(f"expected hello, got {type(hello).__name__}")
    if len(hello.nonce) != NONCE_BYTES:
        raise ProtocolError(f"hello with a nonce of {len(hello.nonce)} bytes, not {NONCE_BYTES}")
    if hello.version != PROTOCOL_VERSION:
        reason = f"protocol version {hello.version} not supported (need {PROTOCOL_VERSION})"
        await conn.refuse(reason)
        raise ProtocolError(reason)
    expected = proof(token, b"worker", nonce_c, hello.nonce)
    if not hmac.compare_digest(expected, hello.proof):
        await conn.refuse("bad token")
        raise AuthError("bad token")
    welcome = make_welcome(hello, proof(token, b"coordinator", hello.nonce, nonce_c))
    conn.send(welcome)
    return hello, welcome


# --- the worker side: reaching and joining a coordinator --------------------------------------

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


def _not_a_coordinator(where: str, what: str) -> ProtocolError:
    return ProtocolError(f"{where} is not a Tally coordinator: {what}")


async def read_challenge(conn: Connection, where: str, within_s: float) -> Challenge | Shutdown:
    """The coordinator's first frame: a challenge, or Shutdown when its job is already over.

    EOFError when the peer closes first, TimeoutError when it sends nothing within
    ``within_s``: a coordinator may come later. ProtocolError at once when it sends anything
    else: whatever it is, it is not a Tally coordinator."""
    reader = conn.reader

    async def first() -> AnyMessage:
        try:
            header = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _not_a_coordinator(where, f"it sent {exc.partial!r} and closed") from exc
            raise EOFError("connection closed") from exc
        (length,) = HEADER.unpack(header)
        if length > MAX_HANDSHAKE_FRAME:
            raise _not_a_coordinator(where, f"it sent {header!r}..., not a Tally frame")
        try:
            payload = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            sent = (header + exc.partial)[:32]
            raise _not_a_coordinator(where, f"it sent {sent!r} and closed") from exc
        try:
            return decode(payload)
        except ProtocolError as exc:
            sent = (header + payload)[:32]
            raise _not_a_coordinator(where, f"it sent {sent!r}, not a Tally message") from exc

    message = await asyncio.wait_for(first(), within_s)
    if isinstance(message, Challenge | Shutdown):
        return message
    raise _not_a_coordinator(
        where, f"its first message is {type(message).__name__}, not a challenge"
    )


async def answer_challenge(
    conn: Connection, challenge: Challenge, where: str, token: bytes, name: str, slots: int
) -> Welcome:
    """Prove the token, then check the coordinator's proof before trusting it with any work."""
    if challenge.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"coordinator at {where} speaks protocol version {challenge.version}, "
            f"this worker {PROTOCOL_VERSION}"
        )
    nonce_w = os.urandom(NONCE_BYTES)
    mine = proof(token, b"worker", challenge.nonce, nonce_w)
    conn.send(Hello(PROTOCOL_VERSION, nonce_w, mine, name, slots))
    answer = await asyncio.wait_for(conn.receive(MAX_HANDSHAKE_FRAME), HANDSHAKE_TIMEOUT_S)
    if isinstance(answer, Refused):
        error = AuthError if "token" in answer.reason else ProtocolError
        raise error(f"refused by coordinator at {where}: {answer.reason}")
    if not isinstance(answer, Welcome):
        raise ProtocolError(
            f"coordinator at {where}: expected welcome, got {type(answer).__name__}"
        )
    expected = proof(token, b"coordinator", nonce_w, challenge.nonce)
    if not hmac.compare_digest(expected, answer.proof):
        raise AuthError(f"coordinator at {where} could not prove the token")
    return answer
