"""Binding a plan to its data: names from the header, the number of columns, a trailing
delimiter, and the types of the columns the plan reads, all from a sample of the first bytes.

Binding happens once per job, before any task runs, so every task parses every partition the
same way; a later value that does not fit its column's type makes its row malformed (counted),
never a different answer in another task.
"""

from __future__ import annotations

import re
from collections import Counter

import msgspec

from tally.errors import ConfigError
from tally.queries.plan import Plan, rename_defaults, resolve_names

SAMPLE_BYTES = 1 << 20  # how much of the first partition a caller should pass to bind()
SAMPLE_LINES = 20_000

_INT = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:(\d+)(?:\.(\d*))?|\.(\d+))")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)", re.I)


def sample_lines(sample: bytes, delimiter: str) -> list[list[str]]:
    """The sample's complete, non-blank lines split into fields (a cut-off last line dropped)."""
    text = sample.decode("utf-8", "replace")
    lines = text.split("\n")
    if len(lines) > 1:
        lines.pop()  # after the last newline: empty, or a line the sample cut off
    rows = []
    for line in lines[: SAMPLE_LINES + 1]:
        line = line.removesuffix("\r")
        if line:
            rows.append(line.split(delimiter))
    return rows


def bind(plan: Plan, sample: bytes) -> Plan:
    """``plan`` bound to data whose first bytes are ``sample``; ConfigError if they disagree."""
    rows = sample_lines(sample, plan.delimiter)
    names = plan.names
    if plan.header:
        if not rows:
            raise ConfigError("--header given but the data has no header line")
        header = rows.pop(0)
        if names is None:
            if header and header[-1] == "" and len(header) > 1:
                header = header[:-1]
            names = _header_names(header)
    trailing = bool(rows) and all(len(r) > 1 and r[-1] == "" for r in rows)
    if trailing and names is not None and len(names) in Counter(len(r) for r in rows):
        trailing = False  # the last column is named: it is empty in the sample, not a trailer
    counts = Counter(len(r) - trailing for r in rows)
    if names is not None:
        width = len(names)
        if counts and width not in counts:
            found = counts.most_common(1)[0][0]
            raise ConfigError(f"{width} column names given but the data has {found} columns")
    elif counts:
        width = counts.most_common(1)[0][0]
    else:
        raise ConfigError("cannot bind the query: the sample of the data has no lines")
    before = plan
    plan = msgspec.structs.replace(plan, names=names, width=width, trailing_delimiter=trailing)
    plan = rename_defaults(before, resolve_names(plan, width))
    schema = dict(plan.schema)
    for index in plan.used_columns():
        name = plan.column_name(index)
        if name not in schema:
            values = [r[index] for r in rows if len(r) - trailing == width]
            schema[name] = infer_type(values)
    return msgspec.structs.replace(plan, schema=schema)


def _header_names(header: list[str]) -> tuple[str, ...]:
    names: list[str] = []
    for i, raw in enumerate(header):
        base = raw.strip() or f"c{i + 1}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return tuple(names)


def infer_type(values: list[str]) -> str:
    """The narrowest type every non-empty value parses as: BIGINT, DECIMAL(p,s), DOUBLE, DATE,
    else VARCHAR. Numbers with a fixed number of decimals become DECIMAL: exact sums."""
    present = set(values)  # each distinct value once: samples repeat many
    present.discard("")
    if not present:
        return "VARCHAR"
    if all(_INT.fullmatch(v) for v in present) and all(
        len(v) < 19 or -(1 << 63) <= int(v) < 1 << 63 for v in present
    ):
        return "BIGINT"
    decimals = [_DECIMAL.fullmatch(v) for v in present]
    if all(decimals):
        whole = max(len((m.group(1) or "").lstrip("0")) for m in decimals if m)
        scale = max(len(m.group(2) or m.group(3) or "") for m in decimals if m)
        if whole + scale <= 14:  # room for later values four digits longer
            return f"DECIMAL(18,{scale})"
        if whole + scale <= 34:
            return f"DECIMAL(38,{scale})"
        return "DOUBLE"
    if all(_FLOAT.fullmatch(v) for v in present):
        return "DOUBLE"
    if all(_DATE.fullmatch(v) for v in present):
        return "DATE"
    return "VARCHAR"
