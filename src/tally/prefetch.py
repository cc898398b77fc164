"""Getting the next partition ready while the current one computes.

A local partition is opened at once and the kernel is asked to read it ahead
(``posix_fadvise(WILLNEED)``), which costs microseconds. A remote one is downloaded on a
background thread into memory (up to ``max_bytes``; a larger one is streamed instead), so
that the network and the CPU work at the same time.
"""

from __future__ import annotations

import contextlib
import io
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from tally.errors import PartitionError, TallyError
from tally.remote import display
from tally.storage import is_remote, open_partition

DEFAULT_MAX_BYTES = 256 << 20


class Prefetcher:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._ready: dict[int, Future[BinaryIO]] = {}

    def start(self, key: int, url: str) -> None:
        """Begin getting ``url`` ready; :meth:`take` with the same key returns it."""
        if key in self._ready:
            return
        future: Future[BinaryIO]
        if is_remote(url):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="tally-prefetch")
            future = self._pool.submit(self._download, url)
        else:
            future = Future()
            try:
                future.set_result(_open_local(url))
            except PartitionError as exc:
                future.set_exception(exc)
        self._ready[key] = future

    def take(self, key: int, url: str) -> BinaryIO:
        """The stream for ``url``: prefetched if :meth:`start` was called, else opened now."""
        future = self._ready.pop(key, None)
        if future is None:
            return _open_local(url) if not is_remote(url) else open_partition(url)
        return future.result()

    def discard(self, key: int) -> None:
        """Forget a prefetched partition that will not be computed (and close it)."""
        future = self._ready.pop(key, None)
        if future is not None:
            future.add_done_callback(_close_quietly)

    def _download(self, url: str) -> BinaryIO:
        stream = open_partition(url)
        data = bytearray()
        try:
            while len(data) <= self.max_bytes:  # a read may return less than asked: loop
                piece = stream.read(self.max_bytes + 1 - len(data))
                if not piece:
                    break
                data += piece
        except TallyError:  # already says which URL and why, in one line
            stream.close()
            raise
        except Exception as exc:
            stream.close()
            raise PartitionError(f"cannot read {display(url)}: {exc}") from exc
        if len(data) <= self.max_bytes:
            stream.close()
            return io.BytesIO(data)
        return io.BufferedReader(_Prefixed(bytes(data), stream))  # too large: head, then the rest


def _open_local(url: str) -> BinaryIO:
    stream = open_partition(url)
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):  # advice only
            os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
    return stream


def _close_quietly(future: Future[BinaryIO]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class _Prefixed(io.RawIOBase):
    """Bytes already read, followed by the rest of a stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        piece = self._rest.read(len(buffer))
        buffer[: len(piece)] = piece
        return len(piece)

    def close(self) -> None:
        self._rest.close()
        super().close()
