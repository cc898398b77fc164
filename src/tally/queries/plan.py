"""The plan of a group-by job: what to read, how to group, what to aggregate, how to order.

A plan is a frozen msgspec struct, sent once per worker per job. It is built from command-line
flags (:func:`plan_from_flags`) or SQL (:mod:`tally.queries.sql`) and then *bound* to the data
(:func:`tally.queries.infer.bind`): column names resolved to positions, the number of columns,
a trailing delimiter and the types of the columns it reads fixed from a sample, so that every
task parses every partition the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from tally.errors import ConfigError
from tally.queries.expr import Col, Expr, columns_of, display, map_columns

FUNCS = ("count", "sum", "min", "max", "avg", "count_distinct")


class Aggregate(msgspec.Struct, frozen=True):
    """``func`` over ``arg`` (None only for ``count``: every row); ``name`` its output column."""

    func: str
    arg: Expr | None = None
    name: str = ""


class OrderKey(msgspec.Struct, frozen=True):
    """An output column (0-based over group keys then aggregates) and its direction."""

    column: int
    descending: bool = False


class Plan(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="plan", tag="groupby"
):
    delimiter: str = ","
    header: bool = False
    names: tuple[str, ...] | None = None  # every column's name, if known
    schema: dict[str, str] = {}  # column name (or c<N>) -> DuckDB type, given or inferred
    group_by: tuple[Col, ...] = ()
    group_names: tuple[str, ...] = ()  # output names of the group keys
    aggregates: tuple[Aggregate, ...] = ()
    where: Expr | None = None
    order_by: tuple[OrderKey, ...] = ()
    limit: int | None = None
    select: tuple[int, ...] = ()  # output columns (over keys then aggregates); () = all
    # fixed by binding to a sample of the data:
    width: int = 0  # number of columns (0 = not bound yet)
    trailing_delimiter: bool = False  # every line ends with the delimiter (TPC-H .tbl)

    @property
    def bound(self) -> bool:
        return self.width > 0

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the internal output columns: group keys, then aggregates."""
        return self.group_names + tuple(a.name for a in self.aggregates)

    def column_name(self, index: int) -> str:
        """The name of 0-based column ``index``: its header or given name, else ``c<index+1>``."""
        if self.names is not None and index < len(self.names):
            return self.names[index]
        return f"c{index + 1}"

    def type_of(self, index: int) -> str:
        return self.schema.get(self.column_name(index), "VARCHAR")

    def used_columns(self) -> list[int]:
        """The 0-based columns a task must read, ascending."""
        used: set[int] = {c.index for c in self.group_by}
        for agg in self.aggregates:
            if agg.arg is not None:
                used.update(c.index for c in columns_of(agg.arg))
        if self.where is not None:
            used.update(c.index for c in columns_of(self.where))
        return sorted(used)


def encode(plan: Plan) -> bytes:
    return msgspec.msgpack.encode(plan)


def decode(data: bytes) -> Plan:
    try:
        return msgspec.msgpack.decode(data, type=Plan)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"bad plan: {e}") from None


# ---------------------------------------------------------------- flags


def plan_from_flags(
    *,
    delimiter: str = ",",
    group_by: Sequence[str] = (),
    aggs: Sequence[str] = ("count",),
    where: str | None = None,
    order_by: Sequence[str] = (),
    limit: int | None = None,
    header: bool = False,
    columns: Sequence[str] | str | None = None,
    schema: dict[str, str] | str | None = None,
    sample: bytes | None = None,
) -> Plan:
    """The plan for ``--group-by``, ``--agg``, ``--where``, ``--order-by`` and ``--limit``.

    Columns are 1-based positions (``7``) or names (``c_mktsegment``, with ``header`` or
    ``columns``); ``group_by`` items may hold several comma-separated columns. ``aggs`` are
    ``FUNC[:COL]``; ``order_by`` items are ``COL[:asc|desc]`` naming an output column by
    1-based position or name. With ``sample`` (the first bytes of the data) the plan comes back
    bound. Raises ConfigError with a one-line reason for bad input.
    """
    names = _split_names(columns)
    keys = [_column_ref(ref) for item in group_by for ref in _split(item, "group-by column")]
    aggregates = [_aggregate(spec) for spec in aggs]
    if not aggregates:
        raise ConfigError("give at least one --agg")
    plan = Plan(
        delimiter=check_delimiter(delimiter),
        header=header,
        names=names,
        schema=parse_schema(schema),
        group_by=tuple(keys),
        aggregates=tuple(aggregates),
        where=_parse(where) if where else None,
        limit=check_limit(limit),
    )
    plan = name_outputs(plan)
    plan = msgspec.structs.replace(plan, order_by=tuple(_order_key(plan, s) for s in order_by))
    if names is not None:
        plan = resolve_names(plan, len(names))
    if sample is not None:
        from tally.queries.infer import bind

        plan = bind(plan, sample)
    return plan


def check_delimiter(delimiter: str) -> str:
    if delimiter in ("\\t", "tab"):
        delimiter = "\t"
    if (
        len(delimiter) != 1
        or delimiter in '\r\n"'
        or (not delimiter.isprintable() and delimiter != "\t")
    ):
        raise ConfigError(f"bad delimiter {delimiter!r}: one character, not a quote or newline")
    return delimiter


def check_limit(limit: int | None) -> int | None:
    if limit is not None and limit < 0:
        raise ConfigError(f"bad limit {limit}: must be 0 or more")
    return limit


def parse_schema(schema: dict[str, str] | str | None) -> dict[str, str]:
    """``{"col": "decimal(15,2)"}`` or ``"col:decimal(15,2),n:bigint"`` -> name -> DuckDB type."""
    from tally.queries.expr import normalize_type

    if schema is None:
        return {}
    if isinstance(schema, str):
        pairs: dict[str, str] = {}
        for item in re.split(r",(?![^()]*\))", schema):
            name, sep, kind = item.partition(":")
            if not sep or not name.strip():
                raise ConfigError(f"bad schema entry {item!r}: use NAME:TYPE")
            pairs[name.strip()] = kind
        schema = pairs
    out = {}
    for name, kind in schema.items():
        key = f"c{name}" if name.isdigit() else name
        out[key] = normalize_type(kind)
    return out


def _split_names(columns: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if columns is None:
        return None
    names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
    if not names or any(not n for n in names):
        raise ConfigError("--columns needs a comma-separated list of non-empty names")
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate column name in --columns: {', '.join(names)}")
    return tuple(names)


def _split(item: str, what: str) -> list[str]:
    refs = [r.strip() for r in item.split(",")]
    if any(not r for r in refs):
        raise ConfigError(f"empty {what} in {item!r}")
    return refs


def _column_ref(ref: str) -> Col:
    """``7`` (1-based) or a name -> Col."""
    if ref.isdigit():
        if int(ref) < 1:
            raise ConfigError(f"column positions start at 1, not {ref}")
        return Col(index=int(ref) - 1)
    return Col(name=ref)


def _aggregate(spec: str) -> Aggregate:
    func, sep, arg = spec.partition(":")
    func = func.strip().lower().replace("-", "_")
    if func not in FUNCS:
        raise ConfigError(
            f"unknown aggregate {func!r} in --agg {spec!r} (one of {', '.join(FUNCS)})"
        )
    if not sep:
        if func != "count":
            raise ConfigError(f"--agg {spec!r} needs a column: {func}:COL")
        return Aggregate("count")
    arg = arg.strip()
    if not arg:
        raise ConfigError(f"--agg {spec!r} needs a column after ':'")
    if arg.isdigit() or re.fullmatch(r"[A-Za-z_][\w]*", arg):
        return Aggregate(func, _column_ref(arg))
    return Aggregate(func, _parse(arg))  # an expression such as price*(1-discount)


def _default_labels(plan: Plan) -> list[str]:
    """The name each output column gets unless it is given one: a group key's column name,
    ``func`` or ``func(arg)`` for an aggregate."""

    def name(col: Col) -> str:
        return col.name or plan.column_name(col.index)

    labels = [name(c) for c in plan.group_by]
    for agg in plan.aggregates:
        arg = agg.arg
        labels.append(agg.func if arg is None else f"{agg.func}({display(arg, name)})")
    return labels


def _with_names(plan: Plan, names: list[str]) -> Plan:
    taken: set[str] = set()
    unique = []
    for base in names:
        out, n = base, 2
        while out in taken:
            out, n = f"{base}_{n}", n + 1
        taken.add(out)
        unique.append(out)
    keys = len(plan.group_by)
    aggregates = tuple(
        msgspec.structs.replace(a, name=n)
        for a, n in zip(plan.aggregates, unique[keys:], strict=True)
    )
    return msgspec.structs.replace(plan, group_names=tuple(unique[:keys]), aggregates=aggregates)


def name_outputs(plan: Plan) -> Plan:
    """Fill in the output names not given (see :func:`_default_labels`), all unique."""
    given = [*plan.group_names, *(None for _ in plan.group_by[len(plan.group_names) :])]
    given += [a.name or None for a in plan.aggregates]
    defaults = _default_labels(plan)
    return _with_names(plan, [g or d for g, d in zip(given, defaults, strict=True)])


def rename_defaults(before: Plan, after: Plan) -> Plan:
    """``after`` (``before`` with column names now known) with the output names that were
    defaults under ``before`` (``c7``, ``sum(c6)``) made from the real names."""
    old, new = _default_labels(before), _default_labels(after)
    if old == new:
        return after
    current = list(after.output_names)
    return _with_names(
        after, [n if c == o else c for c, o, n in zip(current, old, new, strict=True)]
    )


def _order_key(plan: Plan, spec: str) -> OrderKey:
    ref, _, direction = spec.rpartition(":") if ":" in spec else (spec, "", "asc")
    direction = direction.strip().lower()
    if direction not in ("asc", "desc"):
        raise ConfigError(f"bad --order-by {spec!r}: COL[:asc|desc]")
    return OrderKey(output_column(plan, ref.strip()), descending=direction == "desc")


def output_column(plan: Plan, ref: str) -> int:
    """An output column by 1-based position (over the printed columns) or name -> 0-based index."""
    printed = list(plan.select) if plan.select else list(range(len(plan.output_names)))
    if ref.isdigit():
        position = int(ref)
        if not 1 <= position <= len(printed):
            raise ConfigError(f"no output column {position}: there are {len(printed)}")
        return printed[position - 1]
    names = plan.output_names
    if ref in names:
        return names.index(ref)
    raise ConfigError(f"no output column named {ref!r} (columns: {', '.join(names)})")


def resolve_names(plan: Plan, width: int) -> Plan:
    """Every column reference resolved to a 0-based index < ``width``; ConfigError if unknown."""
    lookup = {plan.column_name(i): i for i in range(width)}

    def resolve(col: Col) -> Col:
        if col.name:
            if col.name not in lookup:
                known = ", ".join(list(lookup)[:20])
                raise ConfigError(f"no column named {col.name!r} (columns: {known})")
            return Col(name=col.name, index=lookup[col.name])
        if col.index >= width:
            raise ConfigError(f"no column {col.index + 1}: the data has {width} columns")
        return col

    def resolve_expr(expr: Expr | None) -> Expr | None:
        return None if expr is None else map_columns(expr, resolve)

    aggregates = tuple(msgspec.structs.replace(a, arg=resolve_expr(a.arg)) for a in plan.aggregates)
    schema = {}
    for key, kind in plan.schema.items():
        if key not in lookup and re.fullmatch(r"c[1-9]\d*", key) and int(key[1:]) <= width:
            key = plan.column_name(int(key[1:]) - 1)  # a position given for a named column
        if key not in lookup:
            raise ConfigError(f"--schema names an unknown column {key!r}")
        schema[key] = kind
    return msgspec.structs.replace(
        plan,
        schema=schema,
        group_by=tuple(resolve(c) for c in plan.group_by),
        aggregates=aggregates,
        where=resolve_expr(plan.where),
    )


def _parse(text: str) -> Expr:
    """A SQL expression -> Expr (the SQL parser loads only where plans are made)."""
    from tally.queries.expr_sql import parse_expression

    return parse_expression(text)
