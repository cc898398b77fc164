"""Length-prefixed frames over asyncio streams, and the token handshake.

Handshake (both sides prove they know the token; the token itself never crosses the wire):
1. coordinator -> Challenge(version, nonce_c)
2. worker      -> Hello(version, nonce_w, proof_w = HMAC(token, "worker" nonce_c nonce_w), ...)
3. coordinator -> Welcome(proof_c = HMAC(token, "coordinator" nonce_w nonce_c), ...) or Refused
The worker checks proof_c before it trusts any work from the coordinator.

How a worker reaches and joins a coordinator, with backoff, is :mod:`tally.joining`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import socket
from collections.abc import Callable

from tally.errors import AuthError, ProtocolError
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
