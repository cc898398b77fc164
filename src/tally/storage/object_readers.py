"""Reading one object of an object store from an offset, a few chunks ahead of the caller,
with bounded memory whatever its size.

- :class:`StreamedReader` (S3): one streamed ranged GET up to the end of the range the task
  needs (then, only if its last line goes on, one to the end of the object), its body pumped by a
  coroutine on the filesystem's event loop into a queue of at most ``QUEUED`` pieces. One
  request per task: no gap between requests, and a store that serves a range at a cost that
  grows with the object (moto's S3 server copies the whole object per request) is asked
  once. A body that breaks off is asked for again from where it stopped. When the version
  listed is an ETag, the GET carries ``If-Match``: a changed object fails the read.
- :class:`RangedReader` (any fsspec filesystem: Azure, memory): consecutive ranged reads of
  ``CHUNK`` bytes, ``AHEAD`` of them in flight on threads, up to the end of the range the task
  needs; past it, reads of ``TAIL`` bytes only as the caller asks (its last line goes on).
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tally.errors import PartitionError

CHUNK = 8 << 20  # bytes per ranged read
TAIL = 256 << 10  # past the bytes a range needs: just enough to finish its last line
AHEAD = 2  # ranged reads in flight per open object
PIECE = 1 << 20  # bytes per read of a streamed body
QUEUED = 8  # pieces read ahead of the caller
STREAM_TRIES = 3  # GETs for one stream that breaks off (each resumes where the last stopped)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class _Short(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"the object ended before its listed size ({size} bytes)")


def _read_error(url: str, exc: BaseException) -> PartitionError:
    from tally.storage.objectstore import failure
    from tally.storage.remote import display

    if isinstance(exc, _Short):
        return PartitionError(f"cannot read {display(url)}: {exc}")
    why, retryable = failure(exc)
    return PartitionError(f"cannot read {display(url)}: {why}", retryable=retryable)


class StreamedReader(io.RawIOBase):
    """The bytes ``[offset, size)`` of an S3 object (s3fs), streamed (see the module)."""

    def __init__(
        self, fs: Any, path: str, url: str, size: int | None, offset: int, needed: int, etag: str
    ) -> None:
        """``size`` None: not asked for (a range task whose version is known); the first
        answer says it, and ``needed`` must be given."""
        self._fs = fs
        self._url = url
        self._bucket, self._key, _ = fs.split_path(path)
        self._size: int = size if size is not None else 1 << 62  # until an answer says
        self._needed = self._size if needed < 0 else min(needed, self._size)
        self._etag = etag
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUED)
        self._loop: asyncio.AbstractEventLoop = fs.loop
        self._current = memoryview(b"")
        self._ended = False
        start = min(offset, self._size)
        self._segment_end = self._needed if start < self._needed else self._size
        self._pump = asyncio.run_coroutine_threadsafe(
            self._run(start, self._segment_end), self._loop
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._current:
            if self._ended:
                return 0
            item = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop).result()
            if item is None and self._segment_end < self._size:  # the range's bytes are read:
                start, self._segment_end = self._segment_end, self._size  # the rest, if asked
                self._pump = asyncio.run_coroutine_threadsafe(
                    self._run(start, self._size), self._loop
                )
                return self.readinto(buffer)
            if item is None:
                self._ended = True
                return 0
            if isinstance(item, BaseException):
                self._ended = True
                raise _read_error(self._url, item) from item
            self._current = memoryview(item)
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        self._pump.cancel()  # and with it the body: the connection is dropped
        self._current = memoryview(b"")
        super().close()

    async def _run(self, position: int, end: int) -> None:
        """Queue the bytes ``[position, end)``, then None."""
        from tally.storage.objectstore import backoff_s, failure

        failures = 0
        while position < min(end, self._size):  # the size may be learnt on the way
            try:
                position = await self._stream(position, end)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the request failed, or its body broke off
                failures += 1
                if failures >= STREAM_TRIES or not failure(exc)[1]:
                    await self._queue.put(exc)
                    return
                await asyncio.sleep(backoff_s(failures))
                continue
            failures = 0
        await self._queue.put(None)

    async def _stream(self, start: int, end: int) -> int:
        """GET ``[start, end)`` and queue its body; the position reached."""
        condition = {"IfMatch": f'"{self._etag}"'} if self._etag else {}
        answer = await self._fs._call_s3(
            "get_object", Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end - 1}",
            **condition,
        )  # fmt: skip
        total = str(answer.get("ContentRange") or "").rpartition("/")[2]
        if total.isdigit():  # "bytes a-b/size": the object's size, as the store says now
            self._size = int(total)
            end = min(end, self._size)
        body = answer["Body"]
        try:
            while start < end and (piece := await body.read(min(PIECE, end - start))):
                await self._queue.put(piece)
                start += len(piece)
        finally:
            body.close()
        if start < end:
            raise _Short(self._size)
        return start


class RangedReader(io.RawIOBase):
    """The bytes ``[offset, size)`` of an object, fetched as ranged reads of ``CHUNK`` bytes
    (``TAIL`` past ``needed``), ``AHEAD`` of them in flight."""

    def __init__(
        self, fs: Any, path: str, url: str, size: int, offset: int, needed: int = -1
    ) -> None:
        self._fs = fs
        self._path = path
        self._url = url
        self._size = size
        self._needed = size if needed < 0 else min(needed, size)
        self._next = min(offset, size)  # the first byte not yet asked for
        self._fetches: deque[Future[bytes]] = deque()
        self._current = memoryview(b"")
        self._fill()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._current:
            if not self._fetches:
                self._fill(past_needed=True)  # the caller reads on past the range's end
                if not self._fetches:
                    return 0
            future = self._fetches.popleft()
            self._fill()
            self._current = memoryview(self._result(future))
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        for future in self._fetches:
            future.cancel()
        self._fetches.clear()
        self._current = memoryview(b"")
        super().close()

    def _fill(self, past_needed: bool = False) -> None:
        """Keep AHEAD reads in flight up to ``needed``; past it, one read when asked for."""
        while len(self._fetches) < AHEAD and self._next < self._size:
            start = self._next
            if start >= self._needed and not past_needed:
                return
            past_needed = False
            step = CHUNK if start < self._needed else TAIL
            end = min(start + step, self._size)
            if start < self._needed < end:
                end = self._needed  # whole chunks up to the end of the range, no further
            self._next = end
            self._fetches.append(_fetch_pool().submit(self._fetch, start, end))

    def _fetch(self, start: int, end: int) -> bytes:
        return bytes(self._fs.cat_file(self._path, start=start, end=end))

    def _result(self, future: Future[bytes]) -> bytes:
        try:
            data = future.result()
        except Exception as exc:  # any storage library's failure: one line, never a traceback
            raise _read_error(self._url, exc) from exc
        if not data:  # shorter than listed: it changed, or the store broke off
            raise _read_error(self._url, _Short(self._size))
        return data


def _fetch_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(8, thread_name_prefix="tally-fetch")
        return _pool
