"""Whole lines from a stream, a chunk at a time, in bounded memory.

:class:`LineChunks` reads a stream into one reused buffer and yields runs of whole lines
(each ending with ``\\n``; a last line without one gets one). A line longer than the record
limit is never buffered whole: it is dropped and counted in ``oversized``, whether it spans
chunks (skipped as it streams past) or sits inside one (found with one ``rfind`` per
``record_limit`` bytes, so the check costs almost nothing). Memory: the buffer holds at most
``chunk_size + record_limit`` bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

_FIRST_READ = 1 << 16  # later reads grow 16-fold up to chunk_size: tiny streams stay cheap


class LineChunks:
    """Iterate over memoryviews of whole lines; ``bytes_read`` and ``oversized`` count as it
    goes. A yielded view is valid until the next one is asked for."""

    def __init__(
        self, stream: BinaryIO, chunk_size: int, record_limit: int, *, skip_first_line: bool
    ) -> None:
        if chunk_size < 1 or record_limit < 0:
            raise ValueError("chunk_size must be positive and record_limit not negative")
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self.chunk_size = chunk_size
        self.record_limit = record_limit
        self.skip_first_line = skip_first_line
        self.bytes_read = 0
        self.oversized = 0

    def _fill(self, target: memoryview) -> int:
        size = 0
        while size < len(target):
            if self._readinto is not None:
                got = int(self._readinto(target[size:]) or 0)
            else:
                data = self._stream.read(len(target) - size)
                got = len(data)
                target[size : size + got] = data
            if not got:
                break
            size += got
        self.bytes_read += size
        return size

    def __iter__(self) -> Iterator[memoryview]:
        step = min(self.chunk_size, _FIRST_READ)
        buffer = bytearray()
        kept = 0  # bytes of the partial line at the front of the buffer, at most record_limit
        skipping = self.skip_first_line  # inside a line to drop (the header, or too long)
        counting = False  # the line being skipped is an oversized one
        while True:
            if len(buffer) < kept + step + 1:
                grown = bytearray(kept + step + 1)
                grown[:kept] = memoryview(buffer)[:kept]
                buffer = grown
            got = self._fill(memoryview(buffer)[kept : kept + step])
            if not got:
                break
            if got == step:
                step = min(self.chunk_size, step * 16)
            end = kept + got
            begin = 0
            if skipping:
                begin = buffer.find(b"\n", 0, end) + 1
                if begin == 0:
                    continue
                self.oversized += counting
                skipping = counting = False
            last = buffer.rfind(b"\n", begin, end) + 1
            if last > begin:
                yield from self._checked(buffer, begin, last)
                begin = last
            kept = end - begin
            if kept > self.record_limit:
                kept, skipping, counting = 0, True, True
            elif begin:
                buffer[:kept] = buffer[begin:end]
        if skipping:
            self.oversized += counting
        elif kept:
            buffer[kept] = 10  # the last line had no newline
            yield from self._checked(buffer, 0, kept + 1)

    def _checked(self, buffer: bytearray, begin: int, end: int) -> Iterator[memoryview]:
        """The lines of ``buffer[begin:end]``, without those longer than the record limit."""
        limit = self.record_limit
        pos, start = begin, begin
        view = memoryview(buffer)
        while end - pos > limit + 1:
            newline = buffer.rfind(b"\n", pos, pos + limit + 1)
            if newline >= 0:
                pos = newline + 1
                continue
            # the line at pos has no newline within the limit: drop it
            if pos > start:
                yield view[start:pos]
            self.oversized += 1
            pos = start = buffer.find(b"\n", pos) + 1
        if end > start:
            yield view[start:end]
