"""Getting the next partition ready while the current one computes.

A local partition is opened at once and the kernel is asked to read it ahead
(``posix_fadvise(WILLNEED)``), which costs microseconds. An object in an object store is
opened on a background thread, and its reader starts its first ranged reads there: it keeps
a few chunks in flight by itself (:mod:`tally.storage.objectstore`), so memory stays at a few chunks
whatever the size. An ``http(s)`` one (a single streamed GET) is downloaded on a background
thread into memory (up to ``max_bytes``; a larger one is streamed instead), so that the
network and the CPU work at the same time.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from tally.errors import PartitionError, TallyError
from tally.protocol import Task
from tally.storage.ranges import open_range
from tally.storage.remote import HTTP_SCHEMES, display, scheme_of
from tally.storage.sources import is_remote, open_partition

DEFAULT_MAX_BYTES = 256 << 20
LINE_SLACK = 4096  # read past a range's end in whole chunks: most last lines end there


class Prefetcher:
    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, options: Mapping[str, str] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.options = dict(options or {})  # storage options, for object stores
        self._pool: ThreadPoolExecutor | None = None
        self._ready: dict[int, Future[BinaryIO]] = {}

    def start(self, key: int, task: Task) -> None:
        """Begin getting ``task`` ready; :meth:`take` with the same key returns it."""
        if key in self._ready:
            return
        future: Future[BinaryIO]
        if is_remote(task.url):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="tally-prefetch")
            future = self._pool.submit(self._download, task)
        else:
            future = Future()
            try:
                future.set_result(_open_local(task))
            except PartitionError as exc:
                future.set_exception(exc)
        self._ready[key] = future

    def take(self, key: int, task: Task) -> BinaryIO:
        """The lines ``task`` owns: prefetched if :meth:`start` was called, else opened now."""
        future = self._ready.pop(key, None)
        if future is None:
            if not is_remote(task.url):
                return _open_local(task)
            return self._open_remote(task)
        return future.result()

    def discard(self, key: int) -> None:
        """Forget a prefetched partition that will not be computed (and close it)."""
        future = self._ready.pop(key, None)
        if future is not None:
            future.add_done_callback(_close_quietly)

    def _open_remote(self, task: Task) -> BinaryIO:
        offset = _offset(task)
        needed = -1 if task.end < 0 else task.end + LINE_SLACK
        stream = open_partition(task.url, offset, self.options, needed, task.version)
        return open_range(stream, task.start, task.end, offset)

    def _download(self, task: Task) -> BinaryIO:
        if scheme_of(task.url) not in HTTP_SCHEMES:  # reads ahead by itself, a few chunks
            return self._open_remote(task)
        url, offset = task.url, _offset(task)
        stream = open_partition(url, offset)
        # a range needs its own bytes and a little more to finish its last line
        limit = (
            self.max_bytes if task.end < 0 else min(self.max_bytes, task.end - offset + LINE_SLACK)
        )
        data = bytearray()
        try:
            while len(data) <= limit:  # a read may return less than asked: loop
                piece = stream.read(limit + 1 - len(data))
                if not piece:
                    break
                data += piece
        except TallyError:  # already says which URL and why, in one line
            stream.close()
            raise
        except Exception as exc:
            stream.close()
            raise PartitionError(f"cannot read {display(url)}: {exc}") from exc
        if len(data) <= limit:
            stream.close()
            ready: BinaryIO = io.BytesIO(data)
        else:  # more to come: the head, then the rest
            ready = io.BufferedReader(_Prefixed(bytes(data), stream))
        return open_range(ready, task.start, task.end, offset)


def _offset(task: Task) -> int:
    """Where reading starts: the byte before a range, to tell whether a line starts in it."""
    return max(task.start - 1, 0)


def _open_local(task: Task) -> BinaryIO:
    offset = _offset(task)
    stream = open_partition(task.url, offset)
    if hasattr(os, "posix_fadvise"):
        length = 0 if task.end < 0 else task.end - offset
        with contextlib.suppress(OSError):  # advice only
            os.posix_fadvise(stream.fileno(), offset, length, os.POSIX_FADV_WILLNEED)
    return open_range(stream, task.start, task.end, offset)


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
