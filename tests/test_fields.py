"""The group-by kernel's C field parser (tally.kernels.fields): on any text, a task's partial
is the one PyArrow and DuckDB's TRY_CAST give without it, bad rows counted the same; it takes
the plain forms itself and hands every doubtful chunk to the general path."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groupby_helpers import tpch
from tally.kernels import delimited, fields
from tally.kernels.delimited import compute_partial
from tally.queries.plan import plan_from_flags

__all__ = ["tpch"]  # the session fixture, used by name
ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
needs_native = pytest.mark.skipif(fields._native is None, reason="_fields is not built here")

# columns: text, BIGINT, DECIMAL(15,2), DATE, DOUBLE, DECIMAL(38,3); a trailing delimiter
SCHEMA = "1:varchar,2:bigint,3:decimal(15,2),4:date,5:double,6:decimal(38,3)"
AGGS = ["count", "sum:2", "min:2", "sum:3", "max:4", "min:4", "sum:5", "sum:6", "count_distinct:1"]
# per column: plain values (read in C) and odd ones (each sends its chunk the general way)
PLAIN = [
    ["", "a", "b", "Zürich", "日本", "x y", "007", "a\x00b", '"q"'],
    ["", "0", "-0", "12", "-5", "123456789012345678"],
    ["", "1", "1.5", "1.25", "-0.01", "0000000000001.00", "9999999999999.99", "12.3"],
    ["", "1998-09-02", "2000-02-29", "0001-01-01", "9999-12-31", "1970-01-01"],
    ["", "1.5", "-0.0", "1e10", "1E-5", "0.1", "1.7976931348623157e308", "2.5e+3", "-7"],
    ["", "1.125", "-2", "123456789012345.678", "0.001"],
]
ODD = [
    ["\xff"],  # not UTF-8
    ["1234567890123456789", "+3", "1.0", "abc", " 4", "0x10", "-"],
    ["1.255", ".5", "5.", "1e2", "99999999999999.99", "-", "1,5"],
    ["1900-02-29", "1998-9-2", "1998-13-01", "19980902", "1998-09-02T00:00", "0000-01-01"],
    ["1e400", "inf", "1.", ".5", "12345678901234567890.123"],
    ["12345678901234567890.5", "0.0001"],
]


def plan_for(sample: bytes) -> object:
    return plan_from_flags(delimiter="|", group_by=["1"], aggs=AGGS, schema=SCHEMA, sample=sample)


SAMPLE = b"a|1|2.50|1998-01-02|0.5|1.000|\nb|2|3.25|1998-01-03|1.5|2.000|\n"


def partial(data: bytes, chunk_size: int, native: bool) -> tuple[list[dict[str, object]], ...]:
    """The partial's rows (sorted) and counts, with or without the C parser."""
    with mock.patch.object(fields, "_native", fields._native if native else None):
        p = compute_partial(plan_for(SAMPLE), io.BytesIO(data), 256, chunk_size=chunk_size)
    rows = sorted(p.table.to_pylist(), key=lambda r: (r["g0"] is None, r["g0"] or ""))
    for r in rows:
        if r.get("a8_d") is not None:
            r["a8_d"] = sorted(r["a8_d"])
    return rows, (p.lines, p.malformed, p.bytes_read)  # type: ignore[return-value]


def line(draw: st.DrawFn) -> bytes:
    width = draw(st.sampled_from([6, 6, 6, 6, 6, 6, 5, 7]))  # sometimes a field too few or many
    values = [
        draw(st.sampled_from(ODD[k % 6] if draw(st.integers(0, 49)) == 0 else PLAIN[k % 6]))
        for k in range(width)
    ]
    return ("|".join(values) + "|").encode().replace("\xff".encode(), b"\xff")  # not UTF-8


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    lines = [
        draw(st.sampled_from([b""])) if draw(st.integers(0, 19)) == 0 else line(draw)
        for _ in range(draw(st.integers(1, 40)))
    ]
    crlf = draw(st.booleans())  # CRLF throughout, or LF; either with a stray CR or CRLF
    endings = [b"\r\n" if crlf else b"\n"] * 30 + [b"\r\n", b"\n", b"\r"]
    text = b"".join(line + draw(st.sampled_from(endings)) for line in lines)
    return text if draw(st.booleans()) else text.rstrip(b"\r\n")


@needs_native
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts(), st.sampled_from([64, 300, 1 << 16]))
def test_the_partial_is_the_same_with_and_without_the_c_parser(data: bytes, chunk: int) -> None:
    assert partial(data, chunk, native=True) == partial(data, chunk, native=False)


def read(data: bytes, schema: pa.Schema, width: int) -> tuple[pa.Table, int] | None:
    reader = fields.FieldReader.for_schema(schema, "|", width)
    assert reader is not None
    return reader.read(data)


@needs_native
def test_plain_values_are_read_in_c_with_their_exact_values() -> None:
    schema = pa.schema(
        [
            ("f0", pa.string()),
            ("f1", pa.int64()),
            ("f2", pa.decimal128(15, 2)),
            ("f3", pa.date32()),
            ("f4", pa.float64()),
        ]
    )
    data = (
        b"a|-12|-0.5|2000-02-29|2.5e-3|\n"
        b"\n"  # an empty line is no row
        b"x|1|1|1970-01-02|1|extra|\n"  # a field too many: skipped, counted
        b"|||||\n"  # every field empty: NULLs (nothing left of the skipped line)
        b"too|few\n"  # skipped, counted
        b"\xc3\xa9|9|1|1970-01-01|-0|"  # no final newline
    )
    got = read(data, schema, 6)
    assert got is not None
    table, invalid = got
    assert invalid == 2
    assert table.to_pydict() == {
        "f0": ["a", None, "é"],
        "f1": [-12, None, 9],
        "f2": [Decimal("-0.50"), None, Decimal("1.00")],
        "f3": [date(2000, 2, 29), None, date(1970, 1, 1)],
        "f4": [0.0025, None, -0.0],
    }
    table.validate(full=True)


@needs_native
def test_crlf_lines_are_read_in_c() -> None:
    schema = pa.schema([("f0", pa.string()), ("f1", pa.int64())])
    got = read(b"a|1|\r\n\r\nb||\r\nc|3|", schema, 3)
    assert got is not None
    table, invalid = got
    assert (table.to_pydict(), invalid) == ({"f0": ["a", "b", "c"], "f1": [1, None, 3]}, 0)
    assert read(b"a|1|\r\nb|2|\r", schema, 3) is None  # a CR at the very end: no LF after it
    assert read(b"a|1|\r\r\n", schema, 3) is None


@needs_native
@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (pa.int64(), b"+1"),
        (pa.int64(), b"1234567890123456789"),
        (pa.decimal128(15, 2), b"1.234"),
        (pa.decimal128(4, 2), b"123.5"),
        (pa.decimal128(15, 2), b"1e2"),
        (pa.date32(), b"1900-02-29"),
        (pa.date32(), b"0000-01-01"),
        (pa.float64(), b"nan"),
        (pa.float64(), b"1e999"),
        (pa.string(), b"\xed\xa0\x80"),  # a UTF-16 surrogate in UTF-8 clothing
        (pa.string(), b"a\rb"),
    ],
)
def test_a_doubtful_value_sends_the_chunk_the_general_way(kind: pa.DataType, value: bytes) -> None:
    schema = pa.schema([("f0", kind)])
    assert read(b"" + value + b"|\n", schema, 2) is None


@needs_native
def test_tpch_lineitem_takes_the_c_path(tpch: Path) -> None:
    """TPC-H text is read in C, none of it the general way."""
    lineitem = (tpch / "lineitem.tbl").read_bytes()
    plan = plan_from_flags(
        delimiter="|", group_by=["9,10"], aggs=["sum:5", "sum:6", "max:11"], sample=lineitem
    )
    layout = delimited.layout_of(plan)
    reader = fields.FieldReader.for_schema(layout.schema, "|", plan.width + plan.trailing_delimiter)
    assert reader is not None and reader.read(lineitem) is not None


def test_the_extension_is_built_where_a_compiler_is() -> None:
    if COMPILER is None:
        pytest.skip("no C compiler here")
    assert fields._native is not None, "tally.kernels._fields is missing or stale: pip install -e ."
    kernels = ROOT / "src/tally/kernels"
    source = b"".join((kernels / name).read_bytes() for name in ("_fields.c", "_fields_values.h"))
    assert hashlib.sha256(source).hexdigest()[:16] == fields._native.SOURCE, "pip install -e ."
    if os.environ.get("TALLY_NATIVE") != "0":
        assert fields.IMPLEMENTATION == "native"


def test_without_the_extension_no_reader_is_made() -> None:
    schema = pa.schema([("f0", pa.string())])
    with mock.patch.object(fields, "_native", None):
        assert fields.FieldReader.for_schema(schema, "|", 2) is None
    if fields._native is not None:
        assert fields.FieldReader.for_schema(schema, "§", 2) is None  # not one byte
        assert fields.FieldReader.for_schema(pa.schema([("f0", pa.binary())]), "|", 2) is None


def test_load_native_is_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_NATIVE", "0")
    assert fields.load_native() is None
    monkeypatch.delenv("TALLY_NATIVE")
    with mock.patch("importlib.import_module", return_value=mock.Mock(ABI=0)):
        assert fields.load_native() is None  # built from another version of the C file
    with mock.patch("importlib.import_module", side_effect=ImportError("no")):
        assert fields.load_native() is None
