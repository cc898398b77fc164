"""Frames arriving slowly: the receiver hears of every piece, so a lease can be renewed while
a slow link carries one large frame (behind which the sender's heartbeats wait)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tally import protocol as p
from tally.net import Connection


def receive_in_pieces(frame: bytes, pieces: int, close: bool = False) -> tuple[object, int]:
    """Send ``frame`` over a socket pair in ``pieces`` parts, a pause after each, and receive
    it with a progress callback; return the message and how often progress was called."""

    async def main() -> tuple[object, int]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=ours)
        conn = Connection(reader, writer)
        calls = 0

        def progress() -> None:
            nonlocal calls
            calls += 1

        async def send() -> None:
            size = -(-len(frame) // pieces)
            for start in range(0, len(frame), size):
                await loop.sock_sendall(theirs, frame[start : start + size])
                await asyncio.sleep(0.02)
            if close:
                theirs.close()

        sending = asyncio.create_task(send())
        try:
            message: object = await conn.receive(progress=progress)
        except EOFError as exc:
            message = exc
        await sending
        theirs.close()
        await conn.close()
        return message, calls

    return asyncio.run(main())


def failure_frame(size: int) -> bytes:
    return p.encode(p.Failed(7, "job", p.ErrorInfo("PartitionError", "x" * size, True)))


def test_a_mid_sized_frame_arriving_slowly_reports_each_piece() -> None:
    # 200 KB: far below the piece size, yet five seconds' worth over a 300 kbit/s link
    message, calls = receive_in_pieces(failure_frame(200_000), pieces=5)
    assert isinstance(message, p.Failed) and message.error.message == "x" * 200_000
    assert calls >= 5


def test_a_small_frame_is_read_whole_without_progress() -> None:
    frame = p.encode(p.Heartbeat(3))
    assert len(frame) < 1 << 10
    message, calls = receive_in_pieces(frame, pieces=2)
    assert (message, calls) == (p.Heartbeat(3), 0)


@pytest.mark.parametrize("size", [100, 200_000])
def test_a_frame_cut_short_is_a_closed_connection(size: int) -> None:
    frame = failure_frame(size)
    message, _ = receive_in_pieces(frame[: len(frame) // 2], pieces=2, close=True)
    assert isinstance(message, EOFError)
