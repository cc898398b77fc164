"""The fast kernel's fallback: the domain rule (docs/domain-rule.md), vectorised with NumPy
and Arrow, for when the C extension (``tally.kernels._native``) was not built.

:mod:`tally.kernels.fast` frames the stream into *pieces* of whole lines; :class:`Tally`
counts each piece with a fixed number of NumPy and Arrow calls, never a Python loop over its
lines:

1. Lines and columns: one comparison marks every byte ``<= 0x0a``; the marks are packed into
   bits, and their positions read from the set bits of each 16-bit word. In order, they are
   the ``\\t`` and ``\\n`` of the piece, so a line's first tab is the mark after the previous
   line's end (unless that mark is its own end) and its URL ends at the next mark.
2. Scheme: a URL starting with ``http://`` or ``https://`` is recognised from one unaligned
   8-byte load at its start (no earlier ``://`` can exist there). The other URLs are searched
   for ``://`` in all their 8-byte words at once: three loads one byte apart and the SWAR
   zero-byte test mark each ``:`` followed by ``//``. When such URLs hold a large share of the
   piece, the ``:`` of the whole piece are found as in step 1 instead.
3. Domain end: one 16-byte load at the domain start finds most first ``/``; the few longer
   domains are searched the same way in windows of 16, 32, 64... bytes.
4. Counting: a domain of at most 15 bytes becomes an exact 16-byte key (its bytes, zero
   padded, and its length in the last byte), taken from the same load. Longer domains form an
   Arrow ``binary_view`` array pointing into the piece. Arrow's hash table dictionary-encodes
   both (copying the distinct values out of the buffer) and ``bincount`` counts the codes.
   The distinct values of the pieces are merged in Arrow when they add up and at the end, so
   each distinct domain becomes ``bytes`` once. With ``only=D`` the keys (or, for a long D,
   the lines with a domain of D's length and first 8 bytes) are compared with D instead.

Memory: the per-piece arrays add a mask over the piece and a few integers per line (about as
much again as the piece for lines of typical length). Arrow views use 32-bit offsets, so a
piece stays below 2 GiB.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from tally.kernels import DomainCounts

Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]

_KEY_MAX = 15  # longest domain held in a 16-byte key
_SCAN_SHARE = 8  # scan the piece for "://" when the URLs to search hold 1/8 of its bytes
_DENSE_SHARE = 8  # np.flatnonzero is faster when more than 1 byte in 8 is marked
_MERGE_AT = 1 << 16  # distinct values kept unmerged, at least
_POOL = pa.system_memory_pool()  # the default pool keeps freed memory (15 MB more RSS)

_HTTP = np.uint64(int.from_bytes(b"http://", "little"))
_HTTPS = np.uint64(int.from_bytes(b"https://", "little"))
_LOW7 = np.uint64((1 << 56) - 1)
_COLONS = np.uint64(0x3A3A3A3A3A3A3A3A)
_SLASHES = np.uint64(0x2F2F2F2F2F2F2F2F)
_LOW7S = np.uint64(0x7F7F7F7F7F7F7F7F)
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # k low bytes
_32 = np.uint64(32)
_56 = np.uint64(56)


def _zero_bytes(x: Words) -> Words:
    """The high bit of each zero byte of ``x``, nothing else (exact, no carries)."""
    return ~(((x & _LOW7S) + _LOW7S) | x | _LOW7S)


def _lowest_byte(bits: Words) -> Ints:
    """Index (0-7) of the lowest nonzero byte of each word, 8 if there is none."""
    below: Words = (bits - np.uint64(1)) & ~bits  # the bits below the lowest set one
    return (np.bitwise_count(below) >> 3).astype(np.int64)


def _nonzero(mask: npt.NDArray[np.bool_]) -> Ints:
    """``np.flatnonzero(mask)``, about twice as fast for a sparse mask: the mask is packed
    into 16-bit words, and each round takes the lowest set bit of the words that have one."""
    bits = np.packbits(mask, bitorder="little")
    if len(bits) % 2:
        bits = np.append(bits, np.uint8(0))
    words = bits.view("<u2")
    where = np.flatnonzero(words != 0)
    rest = words[where]
    count = np.bitwise_count(rest)
    slot = np.cumsum(count, dtype=np.int64)  # each word's set bits go to out[slot - count:slot]
    total = int(slot[-1]) if len(slot) else 0
    if total * _DENSE_SHARE > len(mask):
        return np.flatnonzero(mask)
    slot -= count
    out = np.empty(total, dtype=np.int64)
    base = where * 16
    while len(rest):
        low = rest & (~rest + 1)
        out[slot] = base + np.bitwise_count(low - 1)
        rest ^= low
        left = np.flatnonzero(rest != 0)
        rest, base, slot = rest[left], base[left], slot[left] + 1
    return out


class _Piece:
    """The lines in ``buffer[begin:end]`` (whole lines, the last one ending in ``\\n``)."""

    def __init__(self, buffer: bytearray, begin: int, end: int, record_limit: int) -> None:
        buf = np.frombuffer(buffer, dtype=np.uint8)
        # Unaligned little-endian 64-bit loads: ``words[i]`` is ``buffer[i : i + 8]``.
        words = np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
        special = _nonzero(buf[begin:end] <= 10)
        special += begin
        kind = buf[special]
        if len(kind) and kind.min() < 9:  # other control bytes, rare in text
            special = special[kind >= 9]
            kind = buf[special]
        newline = np.flatnonzero(kind == 10)  # index in ``special`` of each line's end
        tab = np.concatenate(([0], newline[:-1] + 1))  # ... of its first tab, or its end if none
        ends = special[newline]
        starts = np.concatenate(([begin], ends[:-1] + 1))
        stop = ends - ((buf[ends - 1] == 13) & (ends > starts))
        too_long = stop - starts > record_limit  # a \r\n ending is not part of the line
        blank = (stop == starts) & ~too_long

        # The URL: from the first tab to the next tab or the end of the line (a line without
        # a tab gets an empty URL at its end, so it is malformed).
        url_start = np.minimum(special[tab] + 1, stop)
        url_end = np.minimum(special[np.minimum(tab + 1, newline)], stop)

        # The domain start: after the first "://", or the URL start without one.
        head = words[url_start]
        http = (head & _LOW7) == _HTTP
        https = head == _HTTPS
        start = url_start + 7 * http + 8 * https
        has_sep = http | https
        other = np.flatnonzero(~has_sep & (url_end - url_start >= 3))
        if len(other):
            sep = _find_separator(buf, words, begin, end, url_start[other], url_end[other])
            found = sep >= 0
            start[other[found]] = sep[found] + 3
            has_sep[other[found]] = True

        # The domain end: the first '/' after the start, or the URL end.
        pairs = np.ndarray((len(buffer) - 15,), dtype="V16", buffer=buffer, strides=(1,))
        head16 = pairs[start].view("<u8").reshape(-1, 2)  # one 16-byte load per row
        self.first, self.second = head16[:, 0], head16[:, 1]
        slashes = _zero_bytes(head16 ^ _SLASHES)
        offset = _lowest_byte(slashes[:, 0])
        offset += (offset == 8) * _lowest_byte(slashes[:, 1])
        stop = np.where(has_sep, np.minimum(start + offset, url_end), url_end)
        more = np.flatnonzero(has_sep & (offset == 16) & (url_end > start + 16))
        if len(more):
            stop[more] = _find_slash(words, start[more] + 16, url_end[more])

        self.buffer = buffer
        self.start = start
        self.length = stop - start
        self.good = ~too_long & (self.length > 0)
        self.lines = len(ends) - int(np.count_nonzero(blank))
        self.malformed = self.lines - int(np.count_nonzero(self.good))

    def keys(self) -> Words:
        """16-byte keys (two words per row) of the good rows with a domain of <= 15 bytes."""
        rows = np.flatnonzero(self.good & (self.length <= _KEY_MAX))
        size = self.length[rows]
        keys = np.empty((len(rows), 2), dtype=np.uint64)
        keys[:, 0] = self.first[rows] & _BYTE_MASKS[np.minimum(size, 8)]
        keys[:, 1] = self.second[rows] & _BYTE_MASKS[np.maximum(size - 8, 0)]
        keys[:, 1] |= size.astype(np.uint64) << _56
        return keys

    def long_domains(self) -> pa.Array:
        """The domains of over 15 bytes, as views into the buffer."""
        rows = np.flatnonzero(self.good & (self.length > _KEY_MAX))
        views = np.empty((len(rows), 2), dtype=np.uint64)  # binary_view layout for > 12 bytes:
        views[:, 0] = self.length[rows].astype(np.uint64) | (self.first[rows] << _32)  # length,
        views[:, 1] = self.start[rows].astype(np.uint64) << _32  # 4-byte prefix, buffer 0, offset
        buffers = [None, pa.py_buffer(views), pa.py_buffer(self.buffer)]
        return pa.Array.from_buffers(pa.binary_view(), len(rows), buffers)


def _find_separator(
    buf: npt.NDArray[np.uint8], words: Words, begin: int, end: int, first: Ints, last: Ints
) -> Ints:
    """Position of the first ``://`` within ``[first, last)`` per row, ``-1`` if none (every
    row at least 3 bytes long)."""
    if int((last - first).sum()) * _SCAN_SHARE > end - begin:  # many rows: scan the piece
        colons = _nonzero(buf[begin:end] == 58)
        colons += begin
        colons = colons[(buf[colons + 1] == 47) & (buf[colons + 2] == 47)]
        colons = np.append(colons, end)
        sep = colons[np.searchsorted(colons, first)]
        return np.where(sep + 3 <= last, sep, -1)

    # The 8-byte words of all rows, one after the other, covering positions first .. last - 3.
    steps = (last - first + 5) // 8
    ends = np.cumsum(steps)
    pos = np.repeat(first - 8 * (ends - steps), steps) + 8 * np.arange(int(ends[-1]))
    found = _zero_bytes(words[pos] ^ _COLONS)
    found &= _zero_bytes(words[pos + 1] ^ _SLASHES)
    found &= _zero_bytes(words[pos + 2] ^ _SLASHES)
    hit = np.flatnonzero(found != 0)
    row = np.searchsorted(ends, hit, side="right")
    leading = np.flatnonzero(np.diff(row, prepend=-1))  # the first hit of each row
    row, hit = row[leading], hit[leading]
    at = pos[hit] + _lowest_byte(found[hit])
    inside = at + 3 <= last[row]
    result = np.full(len(first), -1, dtype=np.int64)
    result[row[inside]] = at[inside]
    return result


def _find_slash(words: Words, begin: Ints, end: Ints) -> Ints:
    """Position of the first ``/`` within ``[begin, end)`` per row, ``end`` if none."""
    result = end.copy()
    rows = np.arange(len(begin))
    width = 2  # words per row: 16, 32, 64... bytes further each round, for the rows not done
    while len(rows):
        pos = np.minimum(begin[:, None] + 8 * np.arange(width), len(words) - 1)
        found = _zero_bytes(words[pos] ^ _SLASHES)
        column = np.argmax(found != 0, axis=1)  # the first word with a '/' (0 if none)
        bits = found[np.arange(len(rows)), column]
        hit = np.minimum(begin + 8 * column + _lowest_byte(bits), end)
        done = (bits != 0) | (begin + 8 * width >= end)
        result[rows[done]] = np.where(bits != 0, hit, end)[done]
        left = np.flatnonzero(~done)
        rows, begin, end, width = rows[left], begin[left] + 8 * width, end[left], 2 * width
    return result


class _Distinct:
    """Distinct values and their counts, gathered from one Arrow array per piece and merged
    in Arrow when they add up (so merging stays linear overall) and at the end."""

    def __init__(self) -> None:
        self._parts: list[tuple[pa.Array, Ints]] = []
        self._size = 0
        self._limit = _MERGE_AT

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, array: pa.Array) -> None:
        encoded = pc.dictionary_encode(array, memory_pool=_POOL)
        counts = np.bincount(_indices(encoded), minlength=len(encoded.dictionary))
        self._parts.append((encoded.dictionary, counts))
        self._size += len(counts)
        if self._size > self._limit:
            self._parts = [self.merged()]
            self._size = len(self._parts[0][1])
            self._limit = max(_MERGE_AT, 2 * self._size)

    def merged(self) -> tuple[pa.Array, Ints]:
        """Every distinct value once, with its total count."""
        if len(self._parts) == 1:
            return self._parts[0]
        values = pa.concat_arrays([values for values, _ in self._parts], memory_pool=_POOL)
        encoded = pc.dictionary_encode(values, memory_pool=_POOL)
        counts = np.bincount(  # exact: float64 holds any count below 2**53
            _indices(encoded),
            weights=np.concatenate([counts for _, counts in self._parts]),
            minlength=len(encoded.dictionary),
        )
        return encoded.dictionary, counts.astype(np.int64)


def _indices(encoded: pa.DictionaryArray) -> Ints:
    """A dictionary array's indices as a NumPy view (``to_numpy`` would load pandas when it
    is installed: 0.15 s on a worker's first task)."""
    indices = encoded.indices
    dtype = np.dtype(indices.type.to_pandas_dtype())
    return np.frombuffer(indices.buffers()[1], dtype=dtype, count=len(indices) + indices.offset)[
        indices.offset :
    ]


def _key_domains(keys: pa.Array) -> list[bytes]:
    """The domains held in 16-byte keys."""
    raw, first = keys.buffers()[1], keys.offset
    words = np.frombuffer(raw, dtype="<u8", count=2 * (first + len(keys))).reshape(-1, 2)[first:]
    size = words[:, 1] >> _56
    offset = np.arange(first, first + len(keys), dtype=np.uint64) * np.uint64(16)
    views = np.empty_like(words)  # binary_view: length, then 12 bytes inline or 4 and offset
    views[:, 0] = size | (words[:, 0] << _32)
    inline = (words[:, 0] >> _32) | (words[:, 1] << _32)
    views[:, 1] = np.where(size <= 12, inline, offset << _32)
    buffers = [None, pa.py_buffer(views), raw]
    domains: list[bytes] = pa.Array.from_buffers(pa.binary_view(), len(keys), buffers).to_pylist()
    return domains


class Tally:
    """Accumulates the pieces of one ``count_domains`` call."""

    def __init__(self, only: bytes | None) -> None:
        self.result = DomainCounts()
        self.only = only
        self._keys = _Distinct()  # domains of up to 15 bytes, as 16-byte keys
        self._long = _Distinct()  # longer domains

    def add(self, lines: tuple[bytearray, int, int] | None, record_limit: int) -> None:
        """Count the lines in ``buffer[begin:end]``, or one line over the limit (``None``)."""
        if lines is None:
            self.result.lines += 1
            self.result.malformed += 1
            return
        piece = _Piece(*lines, record_limit)
        self.result.lines += piece.lines
        self.result.malformed += piece.malformed
        if self.only is None:
            keys = piece.keys()
            self._keys.add(
                pa.Array.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(keys)])
            )
            self._long.add(piece.long_domains())
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

    def finish(self) -> DomainCounts:
        """Merge the pieces and turn each distinct domain into ``bytes`` once."""
        counts = self.result.counts
        if self._keys:
            keys, hits = self._keys.merged()
            counts.update(zip(_key_domains(keys), hits.tolist(), strict=True))
        if self._long:
            domains, hits = self._long.merged()
            counts.update(zip(domains.to_pylist(), hits.tolist(), strict=True))
        return self.result
