"""``tally sql``: one SELECT over one source, parsed with sqlglot into a group-by plan.

The subset: ``SELECT`` group keys and aggregates (``count(*)``, ``count(x)``,
``count(DISTINCT x)``, ``sum``, ``min``, ``max``, ``avg`` over columns or arithmetic), with
aliases, ``FROM 'SOURCE'``, ``WHERE``, ``GROUP BY`` (columns, aliases or positions),
``ORDER BY`` (output columns by name, alias, position or the same expression) and ``LIMIT``.
Constant date arithmetic (``date '1998-12-01' - interval '90' day``) is folded. Anything else
is a ConfigError that names the construct.
"""

from __future__ import annotations

import os

import msgspec
import sqlglot
from sqlglot import exp

from tally.errors import ConfigError
from tally.queries.expr import Col
from tally.queries.expr_sql import from_sqlglot
from tally.queries.plan import (
    Aggregate,
    OrderKey,
    Plan,
    check_delimiter,
    name_outputs,
    parse_schema,
    resolve_names,
)

_AGGREGATES: dict[type[exp.Expression], str] = {
    exp.Sum: "sum", exp.Min: "min", exp.Max: "max", exp.Avg: "avg", exp.Count: "count",
}  # fmt: skip
_UNSUPPORTED_CLAUSES = {
    "joins": "a join", "laterals": "LATERAL", "having": "HAVING", "qualify": "QUALIFY",
    "windows": "a window function", "distinct": "SELECT DISTINCT", "offset": "OFFSET",
    "with": "WITH (a common table expression)", "with_": "WITH (a common table expression)",
    "pivots": "PIVOT", "sample": "SAMPLE", "into": "SELECT INTO", "prewhere": "PREWHERE",
    "connect": "CONNECT BY", "cluster": "CLUSTER BY", "distribute": "DISTRIBUTE BY",
    "sort": "SORT BY", "settings": "SETTINGS", "match": "MATCH_RECOGNIZE", "locks": "FOR UPDATE",
}  # fmt: skip
_DELIMITERS = {".tbl": "|", ".tsv": "\t", ".tab": "\t", ".psv": "|"}


def parse_sql(
    text: str,
    *,
    delimiter: str | None = None,
    header: bool = False,
    columns: list[str] | str | None = None,
    schema: dict[str, str] | str | None = None,
) -> tuple[str, Plan]:
    """``(source, plan)`` for a query in the subset; the plan is bound later to the data.

    ``delimiter`` defaults by the source's extension: ``|`` for .tbl, tab for .tsv, else comma.
    """
    try:
        statements = sqlglot.parse(text, read="duckdb")
    except sqlglot.errors.SqlglotError as e:
        raise ConfigError(f"cannot parse SQL: {_first_line(e)}") from None
    statements = [s for s in statements if s is not None]
    if len(statements) != 1:
        raise ConfigError(f"give exactly one SELECT statement, not {len(statements)}")
    select = statements[0]
    if isinstance(select, exp.Union | exp.Intersect | exp.Except):
        raise ConfigError(f"{type(select).__name__.upper()} is not supported: one SELECT only")
    if not isinstance(select, exp.Select):
        raise ConfigError(f"only SELECT is supported, not {type(select).__name__.upper()}")
    for key, construct in _UNSUPPORTED_CLAUSES.items():
        if select.args.get(key):
            raise ConfigError(f"{construct} is not supported")
    source, alias = _source(select)
    names = _names(columns)
    plan = Plan(
        delimiter=check_delimiter(delimiter or _DELIMITERS.get(_extension(source), ",")),
        header=header,
        names=names,
        schema=parse_schema(schema),
    )
    return source, _build(select, plan, alias)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _extension(source: str) -> str:
    path = source.split("?", 1)[0].rstrip("/")
    return os.path.splitext(path)[1].lower()


def _names(columns: list[str] | str | None) -> tuple[str, ...] | None:
    if columns is None:
        return None
    names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError("--columns needs distinct, non-empty names")
    return tuple(names)


def _source(select: exp.Select) -> tuple[str, str]:
    from_ = select.args.get("from") or select.args.get("from_")
    if from_ is None:
        raise ConfigError("FROM 'SOURCE' is missing")
    table = from_.this
    if isinstance(table, exp.Subquery | exp.Select):
        raise ConfigError("a subquery in FROM is not supported")
    if not isinstance(table, exp.Table) or table.args.get("db") or table.args.get("catalog"):
        raise ConfigError(f"FROM needs one source in quotes, not {table.sql()!r}")
    if isinstance(table.this, exp.Anonymous | exp.Func):
        raise ConfigError(f"a table function is not supported: FROM 'SOURCE', not {table.sql()!r}")
    identifier = table.this
    if not (isinstance(identifier, exp.Identifier) and identifier.quoted) or not identifier.name:
        raise ConfigError(f"FROM needs the source in quotes: FROM '{table.name}'")
    return identifier.name, table.alias


def _check_scalar(node: exp.Expression, where: str) -> None:
    """ConfigError if ``node`` holds a construct a scalar expression may not."""
    for sub in node.walk():
        if isinstance(sub, exp.Window):
            raise ConfigError(f"a window function is not supported ({where})")
        if isinstance(sub, exp.Subquery | exp.Select | exp.Exists):
            raise ConfigError(f"a subquery is not supported ({where})")
        if isinstance(sub, exp.AggFunc):
            raise ConfigError(f"an aggregate is not allowed {where}: {node.sql()!r}")


def _strip_alias(node: exp.Expression, alias: str) -> exp.Expression:
    def strip(sub: exp.Expression) -> exp.Expression:
        if isinstance(sub, exp.Column) and sub.table:
            if sub.table != alias or sub.args.get("db"):
                raise ConfigError(f"unknown table in column {sub.sql()!r}")
            return exp.column(sub.name, quoted=sub.this.quoted)
        return sub

    return node.transform(strip)


def _aggregate(node: exp.Expression, alias: str) -> Aggregate:
    func = _AGGREGATES.get(type(node))
    if func is None:
        raise ConfigError(f"the aggregate {node.key.upper()} is not supported")
    if node.args.get("filter") or node.args.get("order"):
        raise ConfigError(f"FILTER/ORDER BY inside {node.sql()!r} is not supported")
    arg = node.this
    if isinstance(arg, exp.Star):
        if func != "count":
            raise ConfigError(f"{func}(*) is not supported")
        return Aggregate("count", name=alias)
    if isinstance(arg, exp.Distinct):
        if func != "count" or len(arg.expressions) != 1:
            raise ConfigError(f"DISTINCT is only supported as count(DISTINCT x): {node.sql()!r}")
        func, arg = "count_distinct", arg.expressions[0]
    if arg is None or node.expressions:
        raise ConfigError(f"{node.sql()!r}: an aggregate takes one argument")
    _check_scalar(arg, f"inside {node.sql()!r}")
    return Aggregate(func, from_sqlglot(arg), name=alias)


def _build(select: exp.Select, plan: Plan, table_alias: str) -> Plan:
    items: list[tuple[str, Col | Aggregate, str]] = []  # (alias, key or aggregate, sql text)
    for item in select.expressions:
        alias = item.alias if isinstance(item, exp.Alias) else ""
        node = _strip_alias(item.this if isinstance(item, exp.Alias) else item, table_alias)
        if isinstance(node, exp.Star):
            raise ConfigError("SELECT * is not supported: name the group keys and aggregates")
        if isinstance(node, exp.Window) or any(isinstance(s, exp.Window) for s in node.walk()):
            raise ConfigError("a window function is not supported")
        if isinstance(node, exp.AggFunc):
            items.append((alias, _aggregate(node, alias), node.sql()))
            continue
        if any(isinstance(s, exp.AggFunc) for s in node.walk()):
            raise ConfigError(f"an expression over aggregates is not supported: {node.sql()!r}")
        _check_scalar(node, "in SELECT")
        key = from_sqlglot(node)
        if not isinstance(key, Col):
            raise ConfigError(f"only columns can be group keys, not {node.sql()!r}")
        items.append((alias, key, node.sql()))
    keys = _group_keys(select, items, table_alias)
    where = select.args.get("where")
    if where is not None:
        _check_scalar(where.this, "in WHERE")
        plan = msgspec.structs.replace(
            plan, where=from_sqlglot(_strip_alias(where.this, table_alias))
        )
    # no aggregate at all (SELECT k FROM t GROUP BY k) gives the distinct keys
    aggregates = [entry for _, entry, _ in items if isinstance(entry, Aggregate)]
    output = []  # output index of each select item
    for _, entry, _ in items:
        if isinstance(entry, Aggregate):
            output.append(len(keys) + aggregates.index(entry))
        else:
            position = next((i for i, k in enumerate(keys) if k.name == entry.name), None)
            if position is None:
                raise ConfigError(f"column {entry.name!r} must be in GROUP BY or in an aggregate")
            output.append(position)
    group_names = [
        next(
            (a for a, e, _ in items if not isinstance(e, Aggregate) and e.name == k.name and a),
            k.name,
        )
        for k in keys
    ]
    plan = msgspec.structs.replace(
        plan,
        group_by=tuple(keys),
        group_names=tuple(group_names),
        aggregates=tuple(aggregates),
        select=tuple(output) if output != list(range(len(keys) + len(aggregates))) else (),
    )
    plan = name_outputs(plan)
    plan = msgspec.structs.replace(
        plan, order_by=_order_by(select, plan, items, output), limit=_limit(select)
    )
    if plan.names is not None:
        plan = resolve_names(plan, len(plan.names))
    return plan


def _group_keys(
    select: exp.Select, items: list[tuple[str, Col | Aggregate, str]], alias: str
) -> list[Col]:
    group = select.args.get("group")
    if group is None:
        if any(not isinstance(e, Aggregate) for _, e, _ in items):
            raise ConfigError("a column outside an aggregate needs GROUP BY")
        return []
    for clause in ("rollup", "cube", "grouping_sets"):
        if group.args.get(clause):
            raise ConfigError(f"GROUP BY {clause.upper().replace('_', ' ')} is not supported")
    if group.args.get("all"):
        return [e for _, e, _ in items if isinstance(e, Col)]
    keys: list[Col] = []
    for node in group.expressions:
        node = _strip_alias(node, alias)
        if isinstance(node, exp.Literal) and not node.is_string:
            position = int(node.this)
            if not 1 <= position <= len(items) or isinstance(items[position - 1][1], Aggregate):
                raise ConfigError(f"GROUP BY {position}: not a column of the select list")
            key = items[position - 1][1]
        elif isinstance(node, exp.Column) and any(a == node.name for a, _, _ in items):
            key = next(e for a, e, _ in items if a == node.name)
            if not isinstance(key, Col):
                raise ConfigError(f"GROUP BY {node.name}: cannot group by an aggregate")
        else:
            _check_scalar(node, "in GROUP BY")
            parsed = from_sqlglot(node)
            if not isinstance(parsed, Col):
                raise ConfigError(f"only columns can be group keys, not {node.sql()!r}")
            key = parsed
        if not isinstance(key, Col):
            raise ConfigError(f"only columns can be group keys, not {node.sql()!r}")
        if key not in keys:
            keys.append(key)
    return keys


def _order_by(
    select: exp.Select,
    plan: Plan,
    items: list[tuple[str, Col | Aggregate, str]],
    output: list[int],
) -> tuple[OrderKey, ...]:
    order = select.args.get("order")
    if order is None:
        return ()
    keys = []
    names = plan.output_names
    for ordered in order.expressions:
        if ordered.args.get("nulls_first"):
            raise ConfigError("NULLS FIRST is not supported (NULLs sort last)")
        node = ordered.this
        if isinstance(node, exp.Literal) and not node.is_string:
            position = int(node.this)
            if not 1 <= position <= len(output):
                raise ConfigError(f"ORDER BY {position}: there are {len(output)} output columns")
            column = output[position - 1]
        elif isinstance(node, exp.Column) and not node.table and node.name in names:
            column = names.index(node.name)
        else:
            text = node.sql()
            match = [output[i] for i, (_, _, sql) in enumerate(items) if sql == text]
            if not match:
                raise ConfigError(f"ORDER BY {text}: only output columns can be ordered by")
            column = match[0]
        keys.append(OrderKey(column, descending=bool(ordered.args.get("desc"))))
    return tuple(keys)


def _limit(select: exp.Select) -> int | None:
    limit = select.args.get("limit")
    if limit is None:
        return None
    value = limit.expression
    if not (isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit()):
        raise ConfigError(f"LIMIT needs a number, not {value.sql()!r}")
    return int(value.this)
