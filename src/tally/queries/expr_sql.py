"""Building expressions (:mod:`tally.queries.expr`) from SQL text with sqlglot: kept apart, so
that a process that only runs plans (a worker) never loads the SQL parser."""

from __future__ import annotations

import datetime
import re
from decimal import Decimal, InvalidOperation
from typing import cast

import msgspec
import sqlglot
from sqlglot import exp

from tally.errors import ConfigError
from tally.queries.expr import (
    Between,
    Binary,
    Cast,
    Col,
    Expr,
    InList,
    IsNull,
    Lit,
    Unary,
    normalize_type,
)

_SQLGLOT_BINARY: dict[type[exp.Expression], str] = {
    exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%",
    exp.EQ: "=", exp.NEQ: "!=", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=",
    exp.And: "and", exp.Or: "or", exp.Like: "like",
}  # fmt: skip


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
