"""One cached partial as bytes on disk, and the checks that find a damaged one.

An entry is a fixed header, then the partial's Arrow IPC stream::

    magic "TALLYPC1" | format u32 | lines u64 | malformed u64 | table length i64 (-1: no
    table) | SHA-256 of (key, lines, malformed, table length, table) | table bytes

Reading checks the magic, the format, the exact length and the digest; the digest covers the
key the entry is filed under, so an entry under the wrong name is as damaged as a truncated
one. Any failure is a :class:`Damaged` with a one-line reason, never a wrong partial.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from tally.cache.keys import CACHE_FORMAT

MAGIC = b"TALLYPC1"
_HEADER = struct.Struct(">8sIQQq32s")
HEADER_SIZE = _HEADER.size


class Damaged(Exception):
    """An entry that cannot be trusted: truncated, overwritten, or not an entry at all."""


@dataclass(frozen=True)
class CachedPartial:
    """A task's partial as stored: its Arrow IPC stream (None: no rows) and line accounting."""

    table: memoryview | None
    lines: int
    malformed: int


def _digest(key: str, lines: int, malformed: int, length: int, table: bytes | memoryview) -> bytes:
    h = hashlib.sha256()
    h.update(key.encode("ascii"))
    h.update(struct.pack(">QQq", lines, malformed, length))
    h.update(table)
    return h.digest()


def encode_entry(key: str, table: bytes | memoryview | None, lines: int, malformed: int) -> bytes:
    """The bytes of the entry for ``key``."""
    body = b"" if table is None else table
    length = -1 if table is None else len(body)
    digest = _digest(key, lines, malformed, length, body)
    return _HEADER.pack(MAGIC, CACHE_FORMAT, lines, malformed, length, digest) + bytes(body)


def decode_entry(key: str, data: bytes) -> CachedPartial:
    """The partial stored in ``data`` under ``key`` (views into ``data``); Damaged if any
    check fails."""
    if len(data) < HEADER_SIZE:
        raise Damaged(f"{len(data)} bytes, shorter than a header")
    magic, fmt, lines, malformed, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Damaged("not a cache entry")
    if fmt != CACHE_FORMAT:
        raise Damaged(f"entry format {fmt}, expected {CACHE_FORMAT}")
    expected = HEADER_SIZE + max(length, 0)
    if length < -1 or len(data) != expected:
        raise Damaged(f"{len(data)} bytes, expected {expected}")
    body = memoryview(data)[HEADER_SIZE:]
    if _digest(key, lines, malformed, length, body) != digest:
        raise Damaged("checksum mismatch")
    return CachedPartial(None if length < 0 else body, lines, malformed)
