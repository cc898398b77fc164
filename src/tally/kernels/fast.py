"""The fast kernel: the domain rule (docs/domain-rule.md) in C, or in NumPy and Arrow.

Same signature and result as :func:`tally.kernels.reference.count_domains`.

The stream is read in chunks into one reused buffer; each chunk, after the partial line
carried over from the previous one, gives a *piece* of whole lines, which one of two
implementations counts:

- ``native``: the C extension ``tally.kernels._native`` (``_native.c``), built when the
  package is installed if a C compiler is there: one pass over each piece's bytes, the
  domains counted in its own hash table (the C file says how), which keeps them as the
  buffers of the partial's Arrow table: the result's ``table`` wraps them without a copy,
  and no Python object is made per domain unless ``counts`` (a dict) is asked for.
- ``numpy``: :mod:`tally.kernels.columnar`, NumPy and Arrow calls over whole pieces; used
  when the extension was not built, cannot be loaded, is from another version of this file,
  or ``TALLY_NATIVE=0`` is set.

Both give the same result, byte for byte (tests/test_kernel_fast.py checks both against the
reference kernel). :data:`IMPLEMENTATION` names the one in use.

Memory: a line longer than ``record_limit`` is never buffered. The partial last line of a
chunk is carried only while it is within the limit; beyond it, the rest of that line is
skipped as it streams past and the line counted malformed. The buffer is therefore at most
``record_limit + chunk_size`` bytes (plus 16), and the counts hold each distinct domain once.
``chunk_size + record_limit`` must stay below 2 GiB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType
from typing import BinaryIO, Protocol

from tally.kernels import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_RECORD_LIMIT,
    DomainCounts,
    arrow_table,
    load_extension,
)

_ABI = 2  # the NATIVE_ABI of the _native.c this file goes with
_PAD = 16  # room after each piece, so 8-byte loads near its end stay in the buffer
_MAX_PIECE = (1 << 31) - _PAD  # the NumPy path's Arrow views use 32-bit offsets
_FIRST_READ = 1 << 16  # later reads grow 16-fold up to chunk_size
_PORTABLE = False  # native: 8-byte words and memchr instead of SSE2 (the path on other CPUs)

Piece = tuple[bytearray, int, int]


class _Tally(Protocol):
    def add(self, lines: Piece | None, record_limit: int) -> None: ...

    def finish(self) -> DomainCounts: ...


def load_native() -> ModuleType | None:
    """The C extension, or ``None`` when it is switched off, missing or of another version."""
    return load_extension("_native", _ABI)


_native = load_native()
IMPLEMENTATION = "native" if _native is not None else "numpy"


# distinct domains of the last partition counted in this process: the next table starts that
# large (the partitions of a job are alike), so that it does not grow, and rehash, step by step
_last_distinct = 0


class _NativeTally:
    """Accumulates the pieces of one ``count_domains`` call in the C extension's table."""

    def __init__(self, native: ModuleType, only: bytes | None) -> None:
        seed = int.from_bytes(os.urandom(8), "little")  # no input can aim at the hash
        self._counter = native.Counter(only, seed, _PORTABLE, _last_distinct)
        self._only = only
        self.result = DomainCounts()

    def add(self, lines: Piece | None, record_limit: int) -> None:
        """Count the lines in ``buffer[begin:end]``, or one line over the limit (``None``)."""
        if lines is None:
            self.result.lines += 1
            self.result.malformed += 1
            return
        counted, malformed = self._counter.add(*lines, record_limit)
        self.result.lines += counted
        self.result.malformed += malformed

    def finish(self) -> DomainCounts:
        if self._only is not None:
            self.result.counts = self._counter.counts()
            return self.result
        global _last_distinct
        table = arrow_table(*self._counter.take())  # the table's buffers: no copy
        _last_distinct = 0 if table is None else table.num_rows
        result = self.result
        return DomainCounts(lines=result.lines, malformed=result.malformed, table=table)


class _Reader:
    """Fills buffers from a stream (``readinto`` when it has one), counting the bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self.bytes_read = 0

    def _read_once(self, target: memoryview) -> int:
        if self._readinto is not None:
            return int(self._readinto(target) or 0)
        data = self._stream.read(len(target))
        target[: len(data)] = data
        return len(data)

    def fill(self, target: memoryview) -> int:
        """Read until ``target`` is full or the stream ends; the number of bytes read."""
        size = 0
        while size < len(target) and (got := self._read_once(target[size:])):
            size += got
        self.bytes_read += size
        return size


# the read buffer of the last partition the C extension counted (it copies what it keeps):
# the next one reads into it rather than into fresh pages, which the system faults in and
# zeroes one by one (1,000 faults a partition)
_spare_buffers: list[bytearray] = []


def _pieces(
    reader: _Reader, record_limit: int, chunk_size: int, buffer: bytearray
) -> Iterator[Piece | None]:
    """Yield ``(buffer, begin, end)`` for each run of whole lines, ``None`` for a line over
    the limit that was skipped. ``buffer`` is reused: it holds the partial last line of the
    previous chunk (moved to the front), the next chunk, and room for 8-byte loads."""
    step = min(chunk_size, _FIRST_READ)  # small first reads keep tiny partitions cheap
    kept = 0  # bytes of the partial line at the front of the buffer, at most record_limit
    skipping = False  # inside a line already known to be too long
    while True:
        if len(buffer) < kept + step + _PAD:
            grown = bytearray(kept + step + _PAD)
            grown[:kept] = memoryview(buffer)[:kept]
            buffer = grown
        got = reader.fill(memoryview(buffer)[kept : kept + step])
        if not got:
            break
        if got == step:
            step = min(chunk_size, step * 16)
        end = kept + got
        begin = 0
        if skipping:
            begin = buffer.find(b"\n", 0, end) + 1
            if begin == 0:
                continue
            yield None
            skipping = False
        last = buffer.rfind(b"\n", begin, end) + 1
        if last > begin:
            yield buffer, begin, last
            begin = last
        kept = end - begin
        if kept > record_limit + 1:  # + 1: a \r that may be the line's ending
            kept, skipping = 0, True
        elif begin:
            buffer[:kept] = buffer[begin:end]  # a copy first: the two ranges may overlap
    if skipping:
        yield None
    elif kept:
        buffer[kept] = 10  # the last line had no newline
        yield buffer, 0, kept + 1


def count_domains(
    stream: BinaryIO,
    only: bytes | None = None,
    record_limit: int = DEFAULT_RECORD_LIMIT,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> DomainCounts:
    """Count lines per domain in ``stream`` (only domain ``only`` when given)."""
    if chunk_size < 1 or record_limit < 0:
        raise ValueError("chunk_size must be positive and record_limit not negative")
    if chunk_size + record_limit > _MAX_PIECE:
        raise ValueError("chunk_size + record_limit must stay below 2 GiB")
    if only is not None:
        only = bytes(only)
    tally: _Tally
    if _native is not None:
        tally = _NativeTally(_native, only)
    else:
        from tally.kernels.columnar import Tally

        tally = Tally(only)
    reader = _Reader(stream)
    keep = _native is not None  # the NumPy path's partial may be a view of the buffer
    buffer = _spare_buffers.pop() if keep and _spare_buffers else bytearray()
    for lines in _pieces(reader, record_limit, chunk_size, buffer):
        buffer = bytearray() if lines is None else lines[0]
        tally.add(lines, record_limit)
    result = tally.finish()
    if keep and 0 < len(buffer) <= chunk_size + _PAD + (1 << 20):  # not one grown for a long line
        _spare_buffers.append(buffer)
    result.bytes_read = reader.bytes_read
    return result
