"""Length-prefixed frames over asyncio streams, the token handshake, connect with backoff.

Handshake (both sides prove they know the token; the token itself never crosses the wire):
1. coordinator -> Challenge(version, nonce_c)
2. worker      -> Hello(version, nonce_w, proof_w = HMAC(token, "worker" nonce_c nonce_w), ...)
3. coordinator -> Welcome(proof_c = HMAC(token, "coordinator" nonce_w nonce_c), ...) or Refused
The worker checks proof_c before it trusts any work from the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
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
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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


async def offer_handshake(
    conn: Connection, token: bytes, name: str, slots: int
) -> Welcome | Shutdown:
    """Worker side: answer the challenge and check the coordinator's proof. A coordinator
    whose job is already over answers Shutdown instead of a challenge."""
    challenge = await asyncio.wait_for(conn.receive(MAX_HANDSHAKE_FRAME), HANDSHAKE_TIMEOUT_S)
    if isinstance(challenge, Shutdown):
        return challenge
    if not isinstance(challenge, Challenge):
        raise ProtocolError(f"expected challenge, got {type(challenge).__name__}")
    if challenge.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"coordinator speaks protocol version {challenge.version}, "
            f"this worker {PROTOCOL_VERSION}"
        )
    nonce_w = os.urandom(NONCE_BYTES)
    conn.send(
        Hello(
            PROTOCOL_VERSION,
            nonce_w,
            proof(token, b"worker", challenge.nonce, nonce_w),
            name,
            slots,
        )
    )
    answer = await asyncio.wait_for(conn.receive(MAX_HANDSHAKE_FRAME), HANDSHAKE_TIMEOUT_S)
    if isinstance(answer, Refused):
        if "token" in answer.reason:
            raise AuthError(f"refused by coordinator: {answer.reason}")
        raise ProtocolError(f"refused by coordinator: {answer.reason}")
    if not isinstance(answer, Welcome):
        raise ProtocolError(f"expected welcome, got {type(answer).__name__}")
    expected = proof(token, b"coordinator", nonce_w, challenge.nonce)
    if not hmac.compare_digest(expected, answer.proof):
        raise AuthError("coordinator could not prove the token")
    return answer


async def connect_with_backoff(
    host: str, port: int, give_up_after_s: float, first_delay_s: float = 0.05
) -> Connection:
    """Connect, retrying with capped exponential backoff and jitter until the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after_s
    delay = first_delay_s
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
            return Connection(reader, writer)
        except OSError as exc:
            if loop.time() + delay > deadline:
                raise ConnectionRefusedError(
                    f"cannot connect to {host}:{port} within {give_up_after_s:.0f}s: {exc}"
                ) from exc
            log.debug("connect to %s:%d failed (%s); retrying in %.2fs", host, port, exc, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 2.0)
