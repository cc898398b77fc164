"""Scalar expressions of a group-by plan: a small typed tree, built from SQL text with sqlglot
and rendered back to DuckDB SQL by the kernel.

The tree is data (msgspec structs), never SQL text, so a plan that crosses the wire cannot
smuggle SQL into a worker: identifiers are generated and literals are quoted when rendered.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import cast

import msgspec
import sqlglot
from sqlglot import exp

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

_SQLGLOT_BINARY: dict[type[exp.Expression], str] = {
    exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%",
    exp.EQ: "=", exp.NEQ: "!=", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=",
    exp.And: "and", exp.Or: "or", exp.Like: "like",
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


# ---------------------------------------------------------------- building from sqlglot


def parse_expression(text: str) -> Expr:
    """A scalar SQL expression (as given to ``--where``) -> Expr; ConfigError if unsupported."""
    try:
        node = cast(exp.Expression, sqlglot.parse_one(text, read="duckdb"))
    except sqlglot.errors.ParseError as e:
        raise ConfigError(f"cannot parse expression {text!r}: {_first_line(e)}") from None
    return from_sqlglot(node)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def from_sqlglot(node: exp.Expression) -> Expr:
    """A sqlglot scalar expression -> Expr, folding constant date arithmetic."""
    if node.args.get("negate"):  # sqlglot's NOT LIKE, NOT IN, NOT BETWEEN, IS NOT
        positive = node.copy()
        positive.set("negate", None)
        return _negate(from_sqlglot(positive))
    if isinstance(node, exp.Paren):
        return from_sqlglot(node.this)
    if isinstance(node, exp.Column):
        if node.table:
            raise ConfigError(f"qualified column {node.sql()!r} is not supported")
        return Col(name=node.name)
    if isinstance(node, exp.Literal | exp.Boolean | exp.Null):
        return _literal(node)
    if isinstance(node, exp.Neg):
        negated = from_sqlglot(node.this)
        if isinstance(negated, Lit) and negated.kind in ("BIGINT", "DECIMAL", "DOUBLE"):
            text = negated.text
            return Lit(negated.kind, text[1:] if text.startswith("-") else "-" + text)
        return Unary("neg", negated)
    if isinstance(node, exp.Not):
        return _negate(from_sqlglot(node.this))
    if isinstance(node, exp.Is):
        if not isinstance(node.expression, exp.Null):
            raise ConfigError(f"only IS [NOT] NULL is supported, not {node.sql()!r}")
        return IsNull(from_sqlglot(node.this))
    if isinstance(node, exp.In):
        return _in_list(node, negated=False)
    if isinstance(node, exp.Between):
        return _between(node, negated=False)
    if isinstance(node, exp.Cast | exp.TryCast):
        if isinstance(node, exp.TryCast):
            raise ConfigError("TRY_CAST is not supported; a value that does not parse is a bad row")
        to = node.to.sql(dialect="duckdb")
        value = from_sqlglot(node.this)
        if isinstance(value, Lit) and normalize_type(to) == "DATE" and value.kind == "VARCHAR":
            return Lit("DATE", _iso_date(value.text))
        return Cast(value, normalize_type(to))
    op = _SQLGLOT_BINARY.get(type(node))
    if op is not None:
        if op in ("+", "-"):
            folded = _fold_date(op, node)
            if folded is not None:
                return folded
        return Binary(op, *_operands(node))
    raise ConfigError(f"{_construct(node)} is not supported in an expression: {node.sql()!r}")


def _negate(expr: Expr) -> Expr:
    if isinstance(expr, IsNull | InList | Between):
        return msgspec.structs.replace(expr, negated=not expr.negated)
    if isinstance(expr, Binary) and expr.op in ("like", "not like"):
        return Binary("not like" if expr.op == "like" else "like", expr.left, expr.right)
    return Unary("not", expr)


def _operands(node: exp.Expression) -> tuple[Expr, Expr]:
    return from_sqlglot(node.this), from_sqlglot(node.expression)


def _in_list(node: exp.In, *, negated: bool) -> InList:
    if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
        raise ConfigError(f"a subquery is not supported: {node.sql()!r}")
    return InList(
        from_sqlglot(node.this), tuple(from_sqlglot(e) for e in node.expressions), negated
    )


def _between(node: exp.Between, *, negated: bool) -> Between:
    low, high = node.args["low"], node.args["high"]
    return Between(from_sqlglot(node.this), from_sqlglot(low), from_sqlglot(high), negated)


def _construct(node: exp.Expression) -> str:
    if isinstance(node, exp.Subquery | exp.Select):
        return "a subquery"
    if isinstance(node, exp.Window):
        return "a window function"
    if isinstance(node, exp.AggFunc):
        return f"the aggregate {node.sql_name()}"
    if isinstance(node, exp.Func):
        return f"the function {node.sql_name()}"
    return type(node).__name__


def _literal(node: exp.Expression) -> Lit:
    if isinstance(node, exp.Null):
        return Lit("NULL")
    if isinstance(node, exp.Boolean):
        return Lit("BOOLEAN", "true" if node.this else "false")
    text = str(node.this)
    if node.is_string:
        return Lit("VARCHAR", text)
    if re.fullmatch(r"\d+", text):
        return Lit("BIGINT", text) if int(text) < 1 << 63 else Lit("DECIMAL", text)
    try:
        Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"bad number {text!r}") from None
    return Lit("DOUBLE" if "e" in text.lower() else "DECIMAL", text)


def _iso_date(text: str) -> str:
    try:
        return datetime.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise ConfigError(f"bad date {text!r} (use YYYY-MM-DD)") from None


def _fold_date(op: str, node: exp.Expression) -> Lit | None:
    """``DATE 'x' +/- INTERVAL 'n' unit`` -> a date literal; None if not that shape."""
    if not isinstance(node.expression, exp.Interval):
        return None
    base = from_sqlglot(node.this)
    if not (isinstance(base, Lit) and base.kind == "DATE"):
        raise ConfigError(f"interval arithmetic is only supported on date literals: {node.sql()!r}")
    interval = node.expression
    amount_text = interval.this.name if interval.this is not None else ""
    unit = (interval.unit.name if interval.unit is not None else "").lower().rstrip("s")
    parts = amount_text.split()
    if len(parts) == 2 and not unit:
        amount_text, unit = parts[0], parts[1].lower().rstrip("s")
    try:
        amount = int(amount_text)
    except ValueError:
        raise ConfigError(f"bad interval {interval.sql()!r}") from None
    amount = -amount if op == "-" else amount
    day = datetime.date.fromisoformat(base.text)
    if unit == "day":
        day = day + datetime.timedelta(days=amount)
    elif unit in ("month", "year"):
        months = day.year * 12 + day.month - 1 + (amount if unit == "month" else 12 * amount)
        year, month = divmod(months, 12)
        last = [31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month]
        day = datetime.date(year, month + 1, min(day.day, last))
    else:
        raise ConfigError(f"interval unit {unit!r} is not supported (day, month or year)")
    return Lit("DATE", day.isoformat())


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
