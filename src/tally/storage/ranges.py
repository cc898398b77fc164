"""Line-aligned byte ranges: cutting partitions into tasks, and reading one task's lines.

A range ``[start, end)`` owns every line that *starts* in it; the first range also owns the
line at 0. Reading a range skips to the first line that starts at or after ``start`` and
reads past ``end`` to finish the last line it owns, so the ranges of a partition together
hold each of its lines exactly once, whatever the cut points. Memory stays bounded: a line
longer than a range streams through in chunks like any other.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from tally.errors import PartitionError
from tally.protocol import Task
from tally.storage.sources import is_remote, local_path

CHUNK = 1 << 20
DESCRIBE_TIMEOUT_S = 5.0


def cut(size: int, split_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of about ``split_size`` bytes covering ``size`` bytes; one
    range ``(0, -1)`` (the whole partition) when it needs no cutting."""
    if split_size <= 0 or size <= split_size:
        return [(0, -1)]
    count = -(-size // split_size)
    step = -(-size // count)  # even ranges: no tiny last one
    return [(a, min(a + step, size)) for a in range(0, size, step)]


class RangeReader(io.RawIOBase):
    """The lines ``[start, end)`` owns, read from ``stream``, whose first byte is the
    partition's byte ``base`` (at most ``start - 1``; the stream is read from there, or
    sought when it can be)."""

    def __init__(
        self, stream: BinaryIO, start: int, end: int, base: int = 0, chunk: int = CHUNK
    ) -> None:
        self._stream = stream
        self._chunk = chunk
        self._end = end  # the owned lines are those starting before this position
        self._base = base
        self._pos = base  # the partition position of the next byte of self._buffer
        self._buffer = b""
        self._done = False
        self.bytes_read = 0
        if start > 0:
            self._skip_to(start - 1)
            self._skip_line()  # the line holding byte start-1 belongs to the range before

    # --- io.RawIOBase ------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            return 0
        if not self._buffer:
            self._buffer = self._read(max(len(target), self._chunk))
            if not self._buffer:
                self._done = True
                return 0
        piece = self._buffer[: len(target)]
        if self._pos + len(piece) >= self._end:  # at or past the end: stop after this line
            last = max(self._end - 1 - self._pos, 0)  # a line starting at end-1 or before
            newline = piece.find(b"\n", last)
            if newline >= 0:
                piece = piece[: newline + 1]
                self._done = True
        n = len(piece)
        target[:n] = piece
        self._buffer = self._buffer[n:]
        self._pos += n
        return n

    def close(self) -> None:
        self._stream.close()
        super().close()

    # --- mechanics ---------------------------------------------------------------------------

    def _read(self, size: int) -> bytes:
        data = self._stream.read(size)
        self.bytes_read += len(data)
        return data

    def _skip_to(self, position: int) -> None:
        if position == self._pos:
            return
        try:
            self._stream.seek(position - self._base)
            self._pos = position
        except (OSError, io.UnsupportedOperation, AttributeError):
            while self._pos < position:  # not seekable: read and drop
                data = self._read(min(self._chunk, position - self._pos))
                if not data:
                    self._done = True
                    return
                self._pos += len(data)

    def _skip_line(self) -> None:
        """Drop bytes up to and including the next newline."""
        while not self._done:
            data = self._read(self._chunk)
            if not data:
                self._done = True
                return
            newline = data.find(b"\n")
            if newline >= 0:
                self._pos += newline + 1
                self._buffer = data[newline + 1 :]
                if self._pos >= self._end:
                    self._done = True  # the first line it could own starts past its end
                return
            self._pos += len(data)


def open_range(stream: BinaryIO, start: int, end: int, base: int = 0) -> BinaryIO:
    """``stream`` itself for a whole partition, else a buffered reader of the lines of
    ``[start, end)`` (``end`` -1: to the end); ``stream`` begins at byte ``base``."""
    if start == 0 and end < 0:
        return stream
    return io.BufferedReader(RangeReader(stream, start, end if end >= 0 else 1 << 62, base))


def describe(url: str, options: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """A partition's size (None when unknown) and version: size and mtime for a file, the
    ETag (or size and last-modified) of an object (as listed, when the source was a prefix
    or a glob; ``options`` are the storage options)."""
    if not is_remote(url):
        try:
            st = os.stat(local_path(url))
        except OSError as exc:
            raise PartitionError(f"cannot open {url}: {exc.strerror}") from exc
        return st.st_size, f"{st.st_size}-{st.st_mtime_ns}"
    if url.startswith(("http://", "https://")):
        return _http_describe(url)
    from tally.storage.objectstore import describe as describe_object
    from tally.storage.remote import Unavailable, display

    try:
        return describe_object(url, options)
    except Unavailable as exc:  # reported by the task that reads it
        raise PartitionError(f"cannot open {display(url)}: {exc.reason}") from exc


def _http_describe(url: str) -> tuple[int | None, str]:
    """Size and version from a HEAD request (briefly: a server that does not answer at once
    leaves the partition whole, and its attempts say what is wrong)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=DESCRIBE_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            tag = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise PartitionError(f"cannot describe {url}: {exc}") from exc
    size = int(length) if length is not None and length.isdigit() else None
    accepts_ranges = response.headers.get("Accept-Ranges", "") == "bytes"
    return (size if accepts_ranges else None), tag.strip('"')


def plan_tasks(
    urls: list[str],
    split_size: int,
    threads: int = 16,
    options: Mapping[str, str] | None = None,
) -> list[Task]:
    """One task per partition, or per line-aligned range of ``split_size`` bytes of one
    larger than that; each with the version listed. A partition that cannot be described
    now stays one task, so that its attempts report why."""

    def tasks_of(url: str) -> list[Task]:
        try:
            size, version = describe(url, options)
        except PartitionError:
            return [Task(url)]
        if size is None:
            return [Task(url, version=version)]
        return [Task(url, a, b, version) for a, b in cut(size, split_size)]

    if len(urls) > 1 and any(is_remote(u) for u in urls):
        with ThreadPoolExecutor(min(threads, len(urls))) as pool:
            nested = list(pool.map(tasks_of, urls))
    else:
        nested = [tasks_of(url) for url in urls]
    return [task for tasks in nested for task in tasks]
