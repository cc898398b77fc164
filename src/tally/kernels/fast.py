"""The fast kernel: the domain rule of DESIGN.md section 1, vectorised with NumPy and Arrow.

Same signature and result as :func:`tally.kernels.reference.count_domains`.

The stream is read in chunks into one reused buffer; each chunk, after the partial line
carried over from the previous one, gives a *piece* of whole lines. A piece is processed
with a fixed number of NumPy and Arrow calls, never a Python loop over all its lines:

1. Lines and columns: one comparison pass finds every byte ``<= 0x0a``; of those, the ``\\n``
   positions end the lines and the ``\\t`` positions separate the columns. From here on
   the work is on arrays with one entry per line. A ``\\r`` before a ``\\n`` is dropped,
   blank and over-long lines are marked, and the URL is the text between a line's first
   and second tab (a ``searchsorted`` finds them unless every line has exactly one tab).
2. Scheme: a URL starting with ``http://`` or ``https://`` is recognised from one unaligned
   8-byte load at its start (no earlier ``://`` can exist there). Any other URL looks for
   its first ``://`` with ``bytes.find`` when such URLs are rare, otherwise among all the
   ``://`` of the piece found by one more scan.
3. Domain end: the first ``/`` after the domain start is found 8 bytes at a time with the
   SWAR zero-byte trick on unaligned 64-bit loads, then capped at the URL end.
4. Counting: a domain of at most 15 bytes becomes an exact 16-byte key (its bytes, zero
   padded, and its length in the last byte), loaded from the same two words; Arrow's hash
   table dictionary-encodes the keys and ``bincount`` counts the codes. Longer domains
   form an Arrow ``binary_view`` array pointing into the piece (no bytes are copied) that
   is dictionary-encoded the same way. Keys are turned into ``bytes`` once per distinct
   domain. With ``only=D`` the keys (or, for a long D, the lines with a domain of D's
   length and first 8 bytes) are compared with D instead.

Memory: a line longer than ``record_limit`` is never buffered. The partial last line of a
chunk is carried only while it is within the limit; beyond it, the rest of that line is
skipped as it streams past and the line counted malformed. The buffer is therefore at
most ``record_limit + chunk_size`` bytes (plus 16), and the per-piece arrays add about as
much again (a mask over the chunk, then a few integers per line).
``chunk_size + record_limit`` must stay below 2 GiB (Arrow views use 32-bit offsets).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from tally.kernels import DEFAULT_CHUNK_SIZE, DEFAULT_RECORD_LIMIT, DomainCounts

Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]

_PAD = 16  # room after each piece, so 8-byte loads near its end stay in the buffer
_MAX_PIECE = (1 << 31) - _PAD  # binary_view offsets are 32-bit
_KEY_MAX = 15  # longest domain held in a 16-byte key
_NO_KEY = np.uint64(0xFF << 56)  # length byte of rows that are not counted through keys
_FIRST_READ = 1 << 16  # later reads grow 16-fold up to chunk_size
_SCAN_EVERY = 512  # scan a piece for "://" if more than one line per this many bytes needs it

_HTTP = np.uint64(int.from_bytes(b"http://", "little"))
_HTTPS = np.uint64(int.from_bytes(b"https://", "little"))
_LOW7 = np.uint64((1 << 56) - 1)
_SLASHES = np.uint64(0x2F2F2F2F2F2F2F2F)
_LOW7S = np.uint64(0x7F7F7F7F7F7F7F7F)
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # k low bytes
_56 = np.uint64(56)


def _load_words(buffer: bytearray) -> Words:
    """Unaligned little-endian 64-bit loads: ``words[i]`` is ``buffer[i : i + 8]``."""
    return np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))


def _first_slash(word: Words) -> Ints:
    """Index (0-7) of the first ``/`` byte in each word, 8 if there is none."""
    x = word ^ _SLASHES
    zero = ~(((x & _LOW7S) + _LOW7S) | x | _LOW7S)  # high bit set exactly in the zero bytes
    return (np.bitwise_count((zero - np.uint64(1)) & ~zero) >> 3).astype(np.int64)


class _Piece:
    """The lines in ``buffer[begin:end]`` (whole lines, the last one ending in ``\\n``)."""

    def __init__(self, buffer: bytearray, begin: int, end: int, record_limit: int) -> None:
        buf = np.frombuffer(buffer, dtype=np.uint8)
        words = _load_words(buffer)
        special = np.flatnonzero(buf[begin:end] <= 10)
        special += begin
        kind = buf[special]
        ends = special[kind == 10]
        tabs = special[kind == 9]
        n = len(ends)
        starts = np.empty_like(ends)
        starts[:1] = begin
        starts[1:] = ends[:-1] + 1
        too_long = ends - starts > record_limit
        stop = ends - ((buf[ends - 1] == 13) & (ends > starts))
        blank = (stop == starts) & ~too_long

        # The URL: from the first tab to the second one or the end of the line.
        if len(tabs) == n and bool(((tabs >= starts) & (tabs < ends)).all()):
            has_url = np.ones(n, dtype=bool)
            url_start, url_end = tabs + 1, stop
        else:
            idx = np.searchsorted(tabs, starts)
            tabs = np.append(tabs, [end, end])
            has_url = tabs[idx] < stop
            url_start = np.where(has_url, tabs[idx] + 1, stop)
            url_end = np.where(has_url, np.minimum(tabs[idx + 1], stop), stop)

        # The domain start: after the first "://", or the URL start without one.
        head = words[url_start]
        http = (head & _LOW7) == _HTTP
        https = head == _HTTPS
        start = url_start + 7 * http + 8 * https
        has_sep = http | https
        other = np.flatnonzero(~has_sep & (url_end > url_start))
        if len(other):
            sep = _find_separator(buffer, begin, end, url_start[other], url_end[other])
            found = sep >= 0
            start[other[found]] = sep[found] + 3
            has_sep[other[found]] = True

        # The domain end: the first '/' after the start, or the URL end.
        self.first = words[start]
        self.second = words[start + 8]
        offset = _first_slash(self.first)
        offset += (offset == 8) * _first_slash(self.second)
        stop = np.where(has_sep, np.minimum(start + offset, url_end), url_end)
        more = np.flatnonzero(has_sep & (offset == 16) & (url_end > start + 16))
        if len(more):
            stop[more] = _find_slash(words, start[more] + 16, url_end[more])

        self.buffer = buffer
        self.start = start
        self.length = stop - start
        self.good = has_url & ~too_long & (self.length > 0)
        self.lines = n - int(np.count_nonzero(blank))
        self.malformed = self.lines - int(np.count_nonzero(self.good))

    def keys(self) -> Words:
        """16-byte keys (two words per row) of the good rows with a domain of <= 15 bytes."""
        keyed = self.good & (self.length <= _KEY_MAX)
        size = self.length * keyed  # 0 for the rows without a key: all get the same key
        keys = np.empty((len(size), 2), dtype=np.uint64)
        keys[:, 0] = self.first & _BYTE_MASKS[np.minimum(size, 8)]
        keys[:, 1] = (self.second & _BYTE_MASKS[np.clip(size - 8, 0, 7)]) | np.where(
            keyed, size.astype(np.uint64) << _56, _NO_KEY
        )
        return keys

    def long_rows(self) -> Ints:
        return np.flatnonzero(self.good & (self.length > _KEY_MAX))


def _find_separator(buffer: bytearray, begin: int, end: int, first: Ints, last: Ints) -> Ints:
    """Position of the first ``://`` within ``[first, last)`` per row, ``-1`` if none."""
    if len(first) * _SCAN_EVERY <= end - begin:
        found = buffer.find
        return np.array(
            [found(b"://", b, e) for b, e in zip(first.tolist(), last.tolist(), strict=True)],
            dtype=np.int64,
        )
    buf = np.frombuffer(buffer, dtype=np.uint8)
    colons = np.flatnonzero(buf[begin:end] == 58)
    colons += begin
    colons = colons[(buf[colons + 1] == 47) & (buf[colons + 2] == 47)]
    colons = np.append(colons, end)
    sep = colons[np.searchsorted(colons, first)]
    return np.where(sep + 3 <= last, sep, -1)


def _find_slash(words: Words, begin: Ints, end: Ints) -> Ints:
    """Position of the first ``/`` within ``[begin, end)`` per row, ``end`` if none."""
    result = end.copy()
    rows = np.arange(len(begin))
    pos = begin
    while len(rows):  # 8 bytes further per step, for the rows not done yet
        hit = pos + _first_slash(words[pos])
        limit = end[rows]
        done = (hit < pos + 8) | (hit >= limit)
        result[rows[done]] = np.minimum(hit[done], limit[done])
        rows, pos = rows[~done], hit[~done]
    return result


class _Tally:
    """Accumulates the pieces of one ``count_domains`` call."""

    def __init__(self, only: bytes | None) -> None:
        self.result = DomainCounts()
        self.only = only
        self._keys: list[pa.Array] = []  # distinct 16-byte keys of each piece
        self._key_counts: list[npt.NDArray[np.int64]] = []

    def too_long(self) -> None:
        self.result.lines += 1
        self.result.malformed += 1

    def add(self, buffer: bytearray, begin: int, end: int, record_limit: int) -> None:
        """Count the lines in ``buffer[begin:end]``."""
        piece = _Piece(buffer, begin, end, record_limit)
        self.result.lines += piece.lines
        self.result.malformed += piece.malformed
        if self.only is None:
            self._count_all(piece)
        else:
            self._count_only(piece, self.only)

    def _count_only(self, piece: _Piece, only: bytes) -> None:
        if len(only) <= _KEY_MAX:
            target = np.frombuffer(only.ljust(15, b"\0") + bytes([len(only)]), dtype="<u8")
            keys = piece.keys()
            hits = int(np.count_nonzero((keys[:, 0] == target[0]) & (keys[:, 1] == target[1])))
        else:
            head = np.frombuffer(only[:8], dtype="<u8")[0]
            rows = np.flatnonzero(piece.good & (piece.length == len(only)) & (piece.first == head))
            match = piece.buffer.startswith
            hits = sum(match(only, s) for s in piece.start[rows].tolist())
        if hits:
            self.result.counts[only] = self.result.counts.get(only, 0) + hits

    def _count_all(self, piece: _Piece) -> None:
        encoded = pc.dictionary_encode(
            pa.Array.from_buffers(
                pa.binary(16), len(piece.start), [None, pa.py_buffer(piece.keys())]
            )
        )
        self._keys.append(encoded.dictionary)
        self._key_counts.append(
            np.bincount(encoded.indices.to_numpy(), minlength=len(encoded.dictionary))
        )
        rows = piece.long_rows()
        if len(rows) == 0:
            return
        start = piece.start[rows]
        length = piece.length[rows].astype(np.uint64)
        views = np.empty((len(rows), 2), dtype=np.uint64)  # binary_view layout for > 12 bytes:
        views[:, 0] = length | (piece.first[rows] << np.uint64(32))  # length, 4-byte prefix,
        views[:, 1] = start.astype(np.uint64) << np.uint64(32)  # buffer 0, offset
        array = pa.Array.from_buffers(
            pa.binary_view(), len(rows), [None, pa.py_buffer(views), pa.py_buffer(piece.buffer)]
        )
        encoded = pc.dictionary_encode(array)
        counts = self.result.counts
        hits = np.bincount(encoded.indices.to_numpy(), minlength=len(encoded.dictionary))
        for key, n in zip(encoded.dictionary.to_pylist(), hits.tolist(), strict=True):
            counts[key] = counts.get(key, 0) + n

    def finish(self) -> DomainCounts:
        """Merge the keys of all pieces and decode each distinct one once."""
        if self._keys:
            encoded = pc.dictionary_encode(pa.concat_arrays(self._keys))
            hits = np.bincount(
                encoded.indices.to_numpy(),
                weights=np.concatenate(self._key_counts),
                minlength=len(encoded.dictionary),
            ).astype(np.int64)
            raw = encoded.dictionary.buffers()[1]
            assert raw is not None
            keys = raw.to_pybytes()
            counts = self.result.counts
            for i, n in enumerate(hits.tolist()):
                size = keys[16 * i + 15]
                if size <= _KEY_MAX:
                    key = keys[16 * i : 16 * i + size]
                    counts[key] = counts.get(key, 0) + n
            self._keys.clear()
            self._key_counts.clear()
        return self.result


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


def _pieces(
    reader: _Reader, record_limit: int, chunk_size: int
) -> Iterator[tuple[bytearray, int, int] | None]:
    """Yield ``(buffer, begin, end)`` for each run of whole lines, ``None`` for a line over
    the limit that was skipped. ``buffer`` is reused: it holds the partial last line of the
    previous chunk (moved to the front), the next chunk, and room for 8-byte loads."""
    step = min(chunk_size, _FIRST_READ)  # small first reads keep tiny partitions cheap
    buffer = bytearray()
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
        if kept > record_limit:
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
    tally = _Tally(only)
    reader = _Reader(stream)
    for piece in _pieces(reader, record_limit, chunk_size):
        if piece is None:
            tally.too_long()
        else:
            tally.add(*piece, record_limit)
    result = tally.finish()
    result.bytes_read = reader.bytes_read
    return result
