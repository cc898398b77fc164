"""What every query kind provides, and the Arrow form its partials travel in.

A query kind turns a task's bytes into a *partial* (an Arrow table of group keys and
aggregate columns, plus line accounting) on a worker, checks on the coordinator that a
partial is one an honest kernel could produce, combines partials exactly and in any order,
finalizes the combined table into a result, and formats that result.

Partials cross the wire as Arrow IPC streams and are read back as views into the received
frame (no copy); a partial with no rows travels as no table at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import pyarrow as pa  # type: ignore[import-untyped]

from tally.errors import ProtocolError

FORMATS = ("text", "json", "csv", "tsv")


def show(domain: bytes) -> str:
    """Bytes as UTF-8 text; invalid bytes appear as ``\\xff``, never dropped."""
    return domain.decode("utf-8", "backslashreplace")


@dataclass
class TaskOutput:
    """What one task computed: its partial table (None when empty) and its accounting."""

    table: pa.Table | None
    lines: int
    malformed: int
    bytes_read: int


def to_ipc(table: pa.Table | None) -> bytes | None:
    """A table as one Arrow IPC stream (None for no table or no rows)."""
    if table is None or table.num_rows == 0:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def from_ipc(data: memoryview | bytes | None) -> pa.Table | None:
    """A table read back from an IPC stream as views into ``data`` (copied once if ``data``
    is not 8-byte aligned); ProtocolError if it is not one."""
    if data is None:
        return None
    buffer = pa.py_buffer(data)
    if buffer.address % 8:  # a view into a frame lands anywhere: Arrow wants aligned columns
        buffer = pa.py_buffer(bytes(data))
    try:
        return pa.ipc.open_stream(buffer).read_all()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise ProtocolError(f"malformed partial: not an Arrow IPC stream ({exc})") from exc


@dataclass
class QueryResult:
    """A finalized answer: ``table`` holds the output rows in order, named columns."""

    plan: Any
    table: pa.Table
    lines: int
    malformed: int
    failed_partitions: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed_partitions

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The output rows as tuples of Python values, in order."""
        columns = [column.to_pylist() for column in self.table.columns]
        return list(zip(*columns, strict=True))


class Merger(Protocol):
    @property
    def lines(self) -> int: ...

    @property
    def malformed(self) -> int: ...

    def add(self, table: pa.Table | None, lines: int, malformed: int) -> None: ...

    def finalize(self, failed_partitions: list[str] | None = None) -> QueryResult: ...


class QueryKind(Protocol):
    """One kind of query: everything the worker and the coordinator need to run it."""

    def compute(
        self, plan: Any, stream: BinaryIO, record_limit: int, kernel: str, at_start: bool
    ) -> TaskOutput:
        """Worker side: a task's bytes to its partial (``at_start``: the stream begins at
        the partition's first byte, so a header line would be there)."""
        ...

    def check(self, plan: Any, table: pa.Table | None, lines: int, malformed: int) -> None:
        """Coordinator side: ProtocolError unless an honest kernel could produce this."""
        ...

    def merger(self, plan: Any) -> Merger: ...

    def format(self, result: QueryResult, fmt: str) -> str:
        """The text printed on stdout for ``fmt`` (text, json, csv or tsv)."""
        ...


def check_lines(lines: int, malformed: int) -> None:
    if not 0 <= malformed <= lines:
        raise ProtocolError("malformed partial: line counts out of range")
