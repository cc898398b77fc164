"""Per-partition computation: turn a partition's bytes into a partial domain count.

Every kernel has the same signature as :func:`tally.kernels.reference.count_domains`
and returns a :class:`DomainCounts`.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

DEFAULT_RECORD_LIMIT = 1 << 20  # 1 MiB: a longer line is malformed
DEFAULT_CHUNK_SIZE = 2 << 20  # bytes read at a time: as fast as 8 MiB, 35 MB less per worker
MAX_BINARY = (1 << 31) - 1  # bytes of an Arrow binary array (32-bit offsets)


def load_extension(name: str, abi: int) -> ModuleType | None:
    """The C extension ``tally.kernels.<name>``, or ``None`` when the extensions are switched
    off (``TALLY_NATIVE=0``), it was not built, or it was built from another version of the C
    file than the Python side that uses it expects (``abi``)."""
    if os.environ.get("TALLY_NATIVE", "1") == "0":
        return None
    try:
        module = importlib.import_module(f"tally.kernels.{name}")
    except ImportError:
        return None
    return module if getattr(module, "ABI", None) == abi else None


class DomainCounts:
    """A partial result: domain bytes -> number of lines, plus line accounting.

    ``lines`` counts non-blank lines (well-formed and malformed); ``malformed`` the
    skipped ones; ``bytes_read`` the partition bytes consumed.

    The counts are held in one of two forms, each made from the other when first asked for:
    ``counts``, a dict, or ``table``, the partial's Arrow table (``key`` binary, ``n`` int64,
    no row for a domain not seen; None when there is none). The fast kernel makes the table
    straight from its buffers, so a partition of a million distinct domains makes no Python
    object per domain on its way to the coordinator.
    """

    def __init__(
        self,
        counts: dict[bytes, int] | None = None,
        lines: int = 0,
        malformed: int = 0,
        bytes_read: int = 0,
        *,
        table: pa.Table | None = None,
    ) -> None:
        self._counts = counts if counts is not None or table is not None else {}
        self._table = table if counts is None else None
        self.lines = lines
        self.malformed = malformed
        self.bytes_read = bytes_read

    @property
    def counts(self) -> dict[bytes, int]:
        if self._counts is None:  # from the table, which the dict then replaces
            table = self._table
            keys = [] if table is None else table["key"].to_pylist()
            values = [] if table is None else table["n"].to_pylist()
            self._counts = dict(zip(keys, values, strict=True))
            self._table = None
        return self._counts

    @counts.setter
    def counts(self, value: dict[bytes, int]) -> None:
        self._counts, self._table = value, None

    @property
    def table(self) -> pa.Table | None:
        """The counts as the partial's table (built from the dict when that is their form)."""
        if self._counts is not None:
            return counts_table(self._counts)
        return self._table

    def merge(self, other: DomainCounts) -> None:
        """Add ``other`` into ``self`` (exact, associative, commutative)."""
        counts = self.counts
        for key, n in other.counts.items():
            counts[key] = counts.get(key, 0) + n
        self.lines += other.lines
        self.malformed += other.malformed
        self.bytes_read += other.bytes_read

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DomainCounts):
            return NotImplemented
        mine = (self.lines, self.malformed, self.bytes_read, self.counts)
        return mine == (other.lines, other.malformed, other.bytes_read, other.counts)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"DomainCounts(counts={self.counts!r}, lines={self.lines}, "
            f"malformed={self.malformed}, bytes_read={self.bytes_read})"
        )


def counts_table(counts: dict[bytes, int]) -> pa.Table | None:
    """The partial's table of ``counts``, built from buffers (``pa.array`` would load pandas
    when present); None when it is empty."""
    if not counts:
        return None
    import numpy as np

    size = len(counts)
    ends = np.zeros(size + 1, dtype=np.int64)
    np.cumsum([len(k) for k in counts], out=ends[1:])
    n = np.fromiter(counts.values(), np.int64, size)
    return arrow_table(b"".join(counts), ends, n)


def arrow_table(data: Any, offsets: Any, counts: Any) -> pa.Table | None:
    """The partial's table from the buffers of its columns: the domains' bytes one after
    another (any buffer), where each starts (int64, one more than the domains) and each one's
    count (int64), as NumPy arrays or buffers. Wrapped without a copy but for the offsets,
    made 32-bit; several chunks when the bytes pass what one binary array holds."""
    import numpy as np
    import pyarrow as pa

    ends = np.frombuffer(offsets, dtype=np.int64)
    n = np.frombuffer(counts, dtype=np.int64)
    size = len(n)
    if not size:
        return None
    bytes_buffer = pa.py_buffer(data)
    key_chunks, count_chunks = [], []
    row = 0
    while row < size:
        base = int(ends[row])
        stop = int(np.searchsorted(ends, base + MAX_BINARY, side="right")) - 1
        stop = min(max(stop, row + 1), size)  # a domain is never longer than a line
        chunk_offsets = (ends[row : stop + 1] - base).astype(np.int32)
        buffers = [None, pa.py_buffer(chunk_offsets), bytes_buffer.slice(base)]
        key_chunks.append(pa.Array.from_buffers(pa.binary(), stop - row, buffers))
        count_chunks.append(
            pa.Array.from_buffers(pa.int64(), stop - row, [None, pa.py_buffer(n[row:stop])])
        )
        row = stop
    return pa.table(
        [pa.chunked_array(key_chunks, pa.binary()), pa.chunked_array(count_chunks, pa.int64())],
        schema=pa.schema([("key", pa.binary(), False), ("n", pa.int64(), False)]),
    )


class CountingReader:
    """Wraps a binary stream and counts the bytes read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.bytes_read += len(data)
        return data
