"""Typed Arrow columns from chunks of delimited text, in C (``_fields.c``).

The group-by kernel (:mod:`tally.kernels.delimited`) hands each chunk of whole lines to a
:class:`FieldReader` first. The C parser reads only the plan's columns, in one pass, and
takes only values whose reading is beyond doubt (plain integers, decimals, ISO dates and
numbers, valid UTF-8); a line with the wrong number of fields is skipped and counted. For any
other chunk it answers ``None`` and the kernel reads the chunk with PyArrow, then DuckDB's
``TRY_CAST``, as it would without the extension: the result never depends on which path a
chunk took (``tests/test_fields.py`` compares both on random text).

The extension is built by ``pip install`` when a C compiler is there; without it, or with
``TALLY_NATIVE=0``, or when it is from another version of this file, every chunk goes the
PyArrow way. :data:`IMPLEMENTATION` names the one in use.
"""

from __future__ import annotations

from types import ModuleType

import pyarrow as pa  # type: ignore[import-untyped]

from tally.kernels import load_extension

_ABI = 1  # the FIELDS_ABI of the _fields.c this file goes with
_TEXT, _INT, _DECIMAL, _DATE, _DOUBLE = range(5)
_MAX_DIGITS = 18  # decimals are read into 64 bits: at most 18 digits, else the general way


def load_native() -> ModuleType | None:
    """The C extension, or ``None`` when it is switched off, missing or of another version."""
    return load_extension("_fields", _ABI)


_native = load_native()
IMPLEMENTATION = "native" if _native is not None else "pyarrow"


def _kind(kind: pa.DataType) -> tuple[int, int, int] | None:
    """``(kind, precision, scale)`` of an Arrow type the C parser reads, else ``None``."""
    if pa.types.is_string(kind):
        return _TEXT, 0, 0
    if pa.types.is_int64(kind):
        return _INT, 0, 0
    if pa.types.is_date32(kind):
        return _DATE, 0, 0
    if pa.types.is_float64(kind):
        return _DOUBLE, 0, 0
    if pa.types.is_decimal128(kind) and 0 <= kind.scale <= _MAX_DIGITS:
        # wider decimals: values of up to 18 digits here, longer ones the general way
        return _DECIMAL, min(kind.precision, _MAX_DIGITS), kind.scale
    return None


class FieldReader:
    """Reads chunks of lines of ``width`` fields into ``schema``, whose column ``f<i>`` is
    field ``i``. Build it with :meth:`for_schema`."""

    def __init__(self, native: ModuleType, schema: pa.Schema, delimiter: int, width: int):
        self._native = native
        self._schema = schema
        self._delimiter = delimiter
        self._width = width
        spec = []
        for f in schema:
            kind = _kind(f.type)
            assert kind is not None
            spec.append((int(f.name[1:]), *kind))
        self._spec = tuple(spec)

    @classmethod
    def for_schema(cls, schema: pa.Schema, delimiter: str, width: int) -> FieldReader | None:
        """A reader, or ``None`` when the extension is not there or cannot read this layout
        (a column type it does not know, a delimiter that is not one byte)."""
        encoded = delimiter.encode()
        if _native is None or len(encoded) != 1 or encoded in b"\r\n" or width > 4096:
            return None
        if len(schema) > 64 or any(_kind(f.type) is None for f in schema):
            return None
        return cls(_native, schema, encoded[0], width)

    def read(self, chunk: bytes | bytearray | memoryview) -> tuple[pa.Table, int] | None:
        """``(table, lines skipped for their number of fields)``, or ``None``: read this chunk
        the general way."""
        got = self._native.parse(chunk, self._delimiter, self._width, self._spec)
        if got is None:
            return None
        rows, invalid, columns = got
        arrays = []
        for f, (valid, nulls, values, text) in zip(self._schema, columns, strict=True):
            buffers = [None if valid is None else pa.py_buffer(valid), pa.py_buffer(values)]
            if text is not None:
                buffers.append(pa.py_buffer(text))
            arrays.append(pa.Array.from_buffers(f.type, rows, buffers, null_count=nulls))
        return pa.Table.from_arrays(arrays, schema=self._schema), invalid
