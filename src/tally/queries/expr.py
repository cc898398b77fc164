"""Scalar expressions of a group-by plan: a small typed tree, built from SQL text with sqlglot
and rendered back to DuckDB SQL by the kernel.

The tree is data (msgspec structs), never SQL text, so a plan that crosses the wire cannot
smuggle SQL into a worker: identifiers are generated and literals are quoted when rendered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import msgspec

from tally.errors import ConfigError


class Col(msgspec.Struct, frozen=True, tag="col"):
    """A column: by ``name`` until the plan is bound, then also by 0-based ``index``."""

    name: str = ""
    index: int = -1


class Lit(msgspec.Struct, frozen=True, tag="lit"):
    """A constant; ``kind`` is a DuckDB type name and ``text`` its canonical text."""

    kind: str  # BIGINT, DECIMAL, DOUBLE, VARCHAR, DATE, BOOLEAN or NULL
    text: str = ""


class Unary(msgspec.Struct, frozen=True, tag="unary"):
    op: str  # "not" or "neg"
    arg: Expr


class Binary(msgspec.Struct, frozen=True, tag="binary"):
    op: str  # one of BINARY_OPS
    left: Expr
    right: Expr


class IsNull(msgspec.Struct, frozen=True, tag="isnull"):
    arg: Expr
    negated: bool = False


class InList(msgspec.Struct, frozen=True, tag="in"):
    arg: Expr
    items: tuple[Expr, ...]
    negated: bool = False


class Between(msgspec.Struct, frozen=True, tag="between"):
    arg: Expr
    low: Expr
    high: Expr
    negated: bool = False


class Cast(msgspec.Struct, frozen=True, tag="cast"):
    arg: Expr
    to: str


Expr = Col | Lit | Unary | Binary | IsNull | InList | Between | Cast

BINARY_OPS = {
    "+": "+", "-": "-", "*": "*", "/": "/", "%": "%",
    "=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
    "and": "AND", "or": "OR", "like": "LIKE", "not like": "NOT LIKE",
}  # fmt: skip

_TYPE_ALIASES = {
    "int": "BIGINT", "integer": "BIGINT", "bigint": "BIGINT", "int64": "BIGINT",
    "smallint": "BIGINT", "tinyint": "BIGINT", "long": "BIGINT",
    "double": "DOUBLE", "float": "DOUBLE", "float64": "DOUBLE", "real": "DOUBLE",
    "string": "VARCHAR", "varchar": "VARCHAR", "text": "VARCHAR", "str": "VARCHAR",
    "date": "DATE",
}  # fmt: skip
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DECIMAL = re.compile(r"(?:decimal|numeric)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?$", re.I)


def normalize_type(name: str) -> str:
    """A user's type name -> the DuckDB type Tally uses; ConfigError for anything else."""
    text = name.strip()
    alias = _TYPE_ALIASES.get(text.lower())
    if alias:
        return alias
    m = _DECIMAL.match(text)
    if m:
        precision = int(m.group(1) or 18)
        scale = int(m.group(2) or 0) if m.group(1) else 3
        if not 1 <= precision <= 38 or scale > precision:
            raise ConfigError(f"bad decimal type {name!r}: precision 1..38, scale <= precision")
        return f"DECIMAL({precision},{scale})"
    raise ConfigError(f"unknown type {name!r} (use bigint, double, decimal(p,s), varchar or date)")


def columns_of(expr: Expr) -> Iterator[Col]:
    """Every column reference in ``expr``, depth first."""
    if isinstance(expr, Col):
        yield expr
    elif isinstance(expr, Unary | IsNull | Cast):
        yield from columns_of(expr.arg)
    elif isinstance(expr, Binary):
        yield from columns_of(expr.left)
        yield from columns_of(expr.right)
    elif isinstance(expr, InList):
        yield from columns_of(expr.arg)
        for item in expr.items:
            yield from columns_of(item)
    elif isinstance(expr, Between):
        for part in (expr.arg, expr.low, expr.high):
            yield from columns_of(part)


def map_columns(expr: Expr, fn: Callable[[Col], Col]) -> Expr:
    """``expr`` with every column reference replaced by ``fn(column)``."""
    if isinstance(expr, Col):
        return fn(expr)
    if isinstance(expr, Unary | IsNull | Cast):
        return msgspec.structs.replace(expr, arg=map_columns(expr.arg, fn))
    if isinstance(expr, Binary):
        return Binary(expr.op, map_columns(expr.left, fn), map_columns(expr.right, fn))
    if isinstance(expr, InList):
        items = tuple(map_columns(i, fn) for i in expr.items)
        return InList(map_columns(expr.arg, fn), items, expr.negated)
    if isinstance(expr, Between):
        arg, low, high = (map_columns(p, fn) for p in (expr.arg, expr.low, expr.high))
        return Between(arg, low, high, negated=expr.negated)
    return expr


# ---------------------------------------------------------------- rendering to DuckDB SQL


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def to_sql(expr: Expr, column: Callable[[Col], str]) -> str:
    """``expr`` as DuckDB SQL; ``column`` names the SQL identifier of each column."""
    if isinstance(expr, Col):
        return column(expr)
    if isinstance(expr, Lit):
        if expr.kind == "NULL":
            return "NULL"
        if expr.kind in ("BIGINT", "DECIMAL", "DOUBLE"):
            if not _NUMBER.fullmatch(expr.text):
                raise ConfigError(f"bad number literal {expr.text!r}")
            return f"({expr.text})" if expr.text.startswith("-") else expr.text
        if expr.kind == "BOOLEAN":
            return "TRUE" if expr.text == "true" else "FALSE"
        if expr.kind == "DATE":
            return f"DATE {quote_literal(expr.text)}"
        if expr.kind != "VARCHAR":
            raise ConfigError(f"bad literal type {expr.kind!r}")
        return quote_literal(expr.text)
    if isinstance(expr, Unary):
        if expr.op not in ("not", "neg"):
            raise ConfigError(f"bad operator {expr.op!r}")
        inner = to_sql(expr.arg, column)
        return f"(NOT {inner})" if expr.op == "not" else f"(- {inner})"
    if isinstance(expr, Binary):
        op = BINARY_OPS.get(expr.op)
        if op is None:
            raise ConfigError(f"bad operator {expr.op!r}")
        return f"({to_sql(expr.left, column)} {op} {to_sql(expr.right, column)})"
    if isinstance(expr, IsNull):
        return f"({to_sql(expr.arg, column)} IS {'NOT ' if expr.negated else ''}NULL)"
    if isinstance(expr, InList):
        items = ", ".join(to_sql(i, column) for i in expr.items)
        return f"({to_sql(expr.arg, column)} {'NOT ' if expr.negated else ''}IN ({items}))"
    if isinstance(expr, Between):
        arg, low, high = (to_sql(p, column) for p in (expr.arg, expr.low, expr.high))
        return f"({arg} {'NOT ' if expr.negated else ''}BETWEEN {low} AND {high})"
    return f"CAST({to_sql(expr.arg, column)} AS {normalize_type(expr.to)})"


def display(expr: Expr, name: Callable[[Col], str]) -> str:
    """Readable text for an output column name, e.g. ``l_extendedprice * (1 - l_discount)``."""
    text = to_sql(expr, name)
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text
