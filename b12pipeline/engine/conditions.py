"""The condition language: rule conditions as data, compiled to one Polars expression each.

    condition := {all: [condition, ...]} | {any: [condition, ...]} | {not: condition} | leaf
    leaf      := {field: <column>, <operator>: <operand>}
    operator  := eq | ne | lt | le | gt | ge          (operand: value | {field: col} | {config: key})
               | in | not_in                          (operand: [values] | {config: key})
               | is_null                              (operand: true | false)
               | contains                             (list column holds the value)
               | contains_any                         (list column holds any of [values] | {config: key})
               | matches                              (regular expression, Rust regex syntax)

Two-valued logic: a comparison that meets an empty (null) value is false, so `not` of it is true;
test emptiness explicitly with is_null. Columns are those of the facts frame (docs/columns.md).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # checking a rule file needs no Polars: the CLI checks rules before importing it
    import polars as pl

COMPARISONS = {"eq": "__eq__", "ne": "__ne__", "lt": "__lt__", "le": "__le__", "gt": "__gt__", "ge": "__ge__"}
SET_OPS = ("in", "not_in", "contains_any")
OTHER_OPS = ("is_null", "contains", "matches")
COMBINATORS = ("all", "any", "not")


@dataclass(frozen=True)
class Operator:
    """One operator of the language, as docs/writing-rules.md describes it (generated from this table)."""

    name: str
    operand: str  # what may follow the operator
    meaning: str
    on_empty: str  # the result when the field (or a compared field) is empty
    example: str  # a leaf in rule-file YAML


_VALUE = "a value, `{field: col}` or `{config: key}`"
_LIST = "a list of values or `{config: key}`"
_EMPTY_FALSE = "false"
OPERATOR_TABLE = (
    Operator("eq", _VALUE, "equals", _EMPTY_FALSE, "{field: charge_hcpcs, eq: J3420}"),
    Operator(
        "ne",
        _VALUE,
        "differs from",
        "false: an empty value is not 'different'; write `not: {field: f, eq: v}` to include empty values",
        "{field: charge_units, ne: {field: expected_units}}",
    ),
    Operator("lt", _VALUE, "is less than", _EMPTY_FALSE, "{field: dose_mcg, lt: 100}"),
    Operator("le", _VALUE, "is at most", _EMPTY_FALSE, "{field: days_since_first_injection, le: 56}"),
    Operator("gt", _VALUE, "is greater than", _EMPTY_FALSE, "{field: dose_mcg, gt: 1000}"),
    Operator("ge", _VALUE, "is at least", _EMPTY_FALSE, "{field: charge_units, ge: 2}"),
    Operator("in", _LIST, "is one of", _EMPTY_FALSE, "{field: payer_type, in: {config: ndc_required_payers}}"),
    Operator(
        "not_in",
        _LIST,
        "is present and none of",
        "false: write `not: {field: f, in: [...]}` to include empty values",
        "{field: route_class, not_in: [injectable]}",
    ),
    Operator(
        "contains_any",
        _LIST,
        "(a list column) holds any of",
        _EMPTY_FALSE,
        "{field: modifiers, contains_any: [JW, JZ]}",
    ),
    Operator(
        "is_null",
        "`true` or `false`",
        "is empty (true) or present (false)",
        "decides on emptiness itself",
        "{field: lot_number, is_null: true}",
    ),
    Operator("contains", "a value", "(a list column) holds", _EMPTY_FALSE, "{field: modifiers, contains: JW}"),
    Operator(
        "matches",
        "a regular expression (Rust regex syntax)",
        "(text) matches the pattern anywhere",
        _EMPTY_FALSE,
        "{field: ndc, matches: '^[0-9]{11}$'}",
    ),
)
OPERATORS = tuple(o.name for o in OPERATOR_TABLE)
assert set(OPERATORS) == set(COMPARISONS) | set(SET_OPS) | set(OTHER_OPS), "the operator table is the language"


class Settings(Protocol):
    """What the engine needs of the site configuration: a setting by name ({config: key})."""

    def get(self, name: str) -> Any: ...


def _is_ref(value: Any, kind: str) -> bool:
    return isinstance(value, dict) and set(value) == {kind}


MAX_DEPTH = 32  # nested all/any/not: the shipped rules use 4; deeper is a mistake or an attack


def check_condition(cond: Any, where: str = "", depth: int = 0) -> None:
    """Raise ValueError naming the place if `cond` is not a well-formed condition: bounded nesting,
    and every `matches` pattern compiled here (Rust regex, as Polars runs it), not at the night."""
    here = where or "condition"
    if depth > MAX_DEPTH:
        raise ValueError(f"{here}: conditions nested deeper than {MAX_DEPTH} levels")
    if not isinstance(cond, dict) or not cond:
        raise ValueError(f"{here}: expected a mapping, got {type(cond).__name__}")
    keys = set(cond)
    if keys & set(COMBINATORS):
        if len(keys) != 1:
            raise ValueError(f"{here}: a combinator ({', '.join(sorted(keys))}) must stand alone")
        (key,) = keys
        if key == "not":
            return check_condition(cond["not"], f"{here}.not", depth + 1)
        items = cond[key]
        if not isinstance(items, list) or not items:
            raise ValueError(f"{here}.{key}: expected a non-empty list of conditions")
        for i, item in enumerate(items):
            check_condition(item, f"{here}.{key}[{i}]", depth + 1)
        return
    if "field" not in cond or not isinstance(cond["field"], str):
        raise ValueError(f"{here}: a leaf needs 'field' (a column name); got keys {', '.join(sorted(keys))}")
    ops = keys - {"field"}
    if len(ops) != 1:
        raise ValueError(
            f"{here}: a leaf needs exactly one operator of {', '.join(OPERATORS)}; "
            f"got {', '.join(sorted(ops)) or 'none'}"
        )
    (op,) = ops
    if op not in OPERATORS:
        raise ValueError(f"{here}: unknown operator {op!r}; known: {', '.join(OPERATORS)}")
    value = cond[op]
    if op in SET_OPS and not (isinstance(value, list) or _is_ref(value, "config")):
        raise ValueError(f"{here}: {op} needs a list or {{config: key}}")
    if op == "is_null" and not isinstance(value, bool):
        raise ValueError(f"{here}: is_null needs true or false")
    if isinstance(value, dict) and not (_is_ref(value, "field") or _is_ref(value, "config")):
        raise ValueError(f"{here}: {op} operand must be a value, {{field: col}} or {{config: key}}")
    if op == "matches":
        _check_pattern(value, here)


def _check_pattern(value: Any, here: str) -> None:
    import polars as pl

    if not isinstance(value, str):
        raise ValueError(f"{here}: matches needs a regular expression (text)")
    try:
        pl.select(pl.lit("").str.contains(value))
    except pl.exceptions.PolarsError:
        raise ValueError(f"{here}: matches is not a valid regular expression (Rust regex syntax)") from None


def fields_used(cond: dict) -> set[str]:
    """Every column a condition reads (for lint and for documentation)."""
    if "all" in cond or "any" in cond:
        return set().union(*(fields_used(c) for c in cond.get("all") or cond["any"]))
    if "not" in cond:
        return fields_used(cond["not"])
    used = {cond["field"]}
    for key, value in cond.items():
        if key != "field" and _is_ref(value, "field"):
            used.add(value["field"])
    return used


def config_used(cond: dict) -> set[str]:
    if "all" in cond or "any" in cond:
        return set().union(*(config_used(c) for c in cond.get("all") or cond["any"]))
    if "not" in cond:
        return config_used(cond["not"])
    return {v["config"] for k, v in cond.items() if k != "field" and _is_ref(v, "config")}


def compile_condition(cond: dict, config: Callable[[str], Any], columns: set[str] | None = None) -> pl.Expr:
    """One boolean Polars expression, never null (see the module doc for the semantics)."""
    import polars as pl

    if "all" in cond:
        return pl.all_horizontal([compile_condition(c, config, columns) for c in cond["all"]])
    if "any" in cond:
        return pl.any_horizontal([compile_condition(c, config, columns) for c in cond["any"]])
    if "not" in cond:
        return ~compile_condition(cond["not"], config, columns)
    name = cond["field"]
    if columns is not None and name not in columns:
        raise ValueError(f"unknown field {name!r}")
    (op,) = set(cond) - {"field"}
    col = pl.col(name)

    def operand(value: Any) -> Any:
        if _is_ref(value, "field"):
            if columns is not None and value["field"] not in columns:
                raise ValueError(f"unknown field {value['field']!r}")
            return pl.col(value["field"])
        if _is_ref(value, "config"):
            value = config(value["config"])
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, dt.date) or isinstance(value, (str, int, float, bool)):
            return pl.lit(value)
        return value

    value = cond[op]
    if op in COMPARISONS:
        expr = getattr(col, COMPARISONS[op])(operand(value))
    elif op == "in":
        expr = col.is_in(list(operand(value)))
    elif op == "not_in":
        expr = col.is_not_null() & ~col.is_in(list(operand(value)))
    elif op == "contains_any":
        wanted = list(operand(value))
        expr = col.list.eval(pl.element().is_in(wanted)).list.any()
    elif op == "contains":
        expr = col.list.contains(operand(value))
    elif op == "matches":
        expr = col.str.contains(str(value))
    elif op == "is_null":
        expr = col.is_null() if value else col.is_not_null()
    else:  # pragma: no cover - check_condition refuses it first
        raise ValueError(f"unknown operator {op!r}")
    return expr.fill_null(False)
