"""The plain-Python reference kernel: the domain rule (docs/domain-rule.md), line by line.

It is the oracle the fast kernel is tested against, so it favours obviousness over speed.
Memory stays bounded by ``record_limit`` plus one chunk: a line longer than the limit is
skipped (counted malformed) while it streams past, never buffered whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

from tally.kernels import DEFAULT_CHUNK_SIZE, DEFAULT_RECORD_LIMIT, CountingReader, DomainCounts

TOO_LONG = None  # marker yielded by iter_lines for a line over the record limit


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def iter_lines(
    stream: Readable, record_limit: int = DEFAULT_RECORD_LIMIT, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes | None]:
    """Yield each line without its ``\\n`` (``None`` for a line longer than ``record_limit``).

    A last line without ``\\n`` is a line. Line length excludes the line ending (``\\n`` or
    ``\\r\\n``), so at most ``record_limit + 1`` bytes of a line are ever held.
    """
    carry = bytearray()  # the start of a line that continues in the next chunk
    skipping = False  # inside a line already known to be too long
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not skipping:
                    if len(carry) + len(chunk) - start > record_limit + 1:  # + a \r
                        carry.clear()  # too long already: never buffer more than the limit
                        skipping = True
                    else:
                        carry += memoryview(chunk)[start:]
                break
            if skipping:
                skipping = False
                yield TOO_LONG
            else:
                line = bytes(carry + chunk[start:nl]) if carry else chunk[start:nl]
                carry.clear()
                yield TOO_LONG if _too_long(line, record_limit) else line
            start = nl + 1
    if skipping:
        yield TOO_LONG
    elif carry:
        yield TOO_LONG if _too_long(carry, record_limit) else bytes(carry)


def _too_long(line: bytes | bytearray, record_limit: int) -> bool:
    """Over the limit, not counting a ``\\r`` that ends it (part of its line ending)."""
    return len(line) - line.endswith(b"\r") > record_limit


def domain_of(line: bytes) -> bytes | None:
    """The domain of a line without its ``\\n``: ``b""`` if blank, ``None`` if malformed."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        return b""
    columns = line.split(b"\t", 2)
    if len(columns) < 2:
        return None
    url = columns[1]
    sep = url.find(b"://")
    domain = url if sep < 0 else url[sep + 3 :].split(b"/", 1)[0]
    return domain or None


def count_domains(
    stream: BinaryIO,
    only: bytes | None = None,
    record_limit: int = DEFAULT_RECORD_LIMIT,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> DomainCounts:
    """Count lines per domain in ``stream`` (only domain ``only`` when given)."""
    result = DomainCounts()
    counts = result.counts
    reader = CountingReader(stream)
    for line in iter_lines(reader, record_limit, chunk_size):
        if line is TOO_LONG:
            result.lines += 1
            result.malformed += 1
            continue
        domain = domain_of(line)
        if domain == b"":
            continue
        result.lines += 1
        if domain is None:
            result.malformed += 1
        elif only is None or domain == only:
            counts[domain] = counts.get(domain, 0) + 1
    result.bytes_read = reader.bytes_read
    return result
