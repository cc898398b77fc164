"""Printing a group-by result: text (an aligned table), json, csv and tsv.

Exact values print exactly: DECIMAL sums with their scale (``56586554400.73``), integers in
full. Doubles print with 15 significant digits, the most a double always holds, so a value
that differs from another engine's only in its last bit prints the same.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from decimal import Decimal

import pyarrow as pa  # type: ignore[import-untyped]

from tally.queries.groupby import GroupResult

FORMATS = ("text", "json", "csv", "tsv")


def show_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(f"{x:.15g}"))


def show(value: object, *, null: str = "NULL") -> str:
    """One value as printed in text, csv and tsv."""
    if value is None:
        return null
    if isinstance(value, float):
        return show_float(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _json_value(value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "null"
    if isinstance(value, float | Decimal | int) and not isinstance(value, bool):
        return show(value)  # a JSON number, exact for decimals
    return json.dumps(show(value), ensure_ascii=False)


def _rows(table: pa.Table) -> list[tuple[object, ...]]:
    columns = [table[name].to_pylist() for name in table.schema.names]
    return list(zip(*columns, strict=True)) if columns else []


def format_group_result(result: GroupResult, fmt: str) -> str:
    """The text printed on stdout for ``result`` in ``fmt`` (ending with a newline)."""
    table = result.table
    names = table.schema.names
    rows = _rows(table)
    if fmt == "json":
        body = ",".join(
            "{"
            + ",".join(f"{json.dumps(n)}:{_json_value(v)}" for n, v in zip(names, row, strict=True))
            + "}"
            for row in rows
        )
        head = {
            "query": "groupby",
            "columns": names,
            "complete": result.complete,
            "lines": result.lines,
            "malformed_lines": result.malformed,
            "failed_partitions": result.failed_partitions,
        }
        return json.dumps(head, ensure_ascii=False)[:-1] + f',"rows":[{body}]}}' + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([show(v, null="") for v in row] for row in rows)
        return out.getvalue()
    if fmt == "tsv":
        lines = ["\t".join(_tsv(n) for n in names)]
        lines += ["\t".join(_tsv(show(v, null="")) for v in row) for row in rows]
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}")
    cells = [[show(v) for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    numeric = [
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        for t in table.schema.types
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "".join(line(r) + "\n" for r in [list(names), *cells])


def _tsv(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
