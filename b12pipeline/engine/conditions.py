"""The condition language: rule conditions as data, parsed once into condition objects.

    condition := {all: [condition, ...]} | {any: [condition, ...]} | {not: condition} | leaf
               | {config: key}                        (a true/false site setting, as it applies to the row)
    leaf      := {field: <column>, <operator>: <operand>}
    operator  := eq | ne | lt | le | gt | ge          (operand: value | {field: col} | {config: key})
               | in | not_in                          (operand: [values] | {config: key})
               | is_null                              (operand: true | false)
               | contains                             (list column holds the value)
               | contains_any                         (list column holds any of [values] | {config: key})
               | matches                              (regular expression, Rust regex syntax)

Two-valued logic: a comparison that meets an empty (null) value is false, so `not` of it is true;
test emptiness explicitly with is_null. Columns are those of the facts frame (docs/columns.md).

parse_condition turns a rule file's `when:` into frozen objects (All, AnyOf, Not, Leaf, SettingIs;
a Leaf's operand is a Value, FieldRef or ConfigRef) and lists every problem; the Polars compiler
here, the durable-rules translator (durable.py), lint and the docs (ruledocs.py) visit those objects.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Union

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


# --- the condition objects: a rule file's `when:` parsed once, then visited by every consumer -----


@dataclass(frozen=True)
class FieldRef:
    """Operand `{field: col}`: another column of the same row."""

    name: str


@dataclass(frozen=True)
class ConfigRef:
    """Operand `{config: key}`: a site setting (per payer where a payer file overrides it)."""

    key: str


@dataclass(frozen=True)
class Value:
    """A literal operand: a scalar, a date, empty (None), or a tuple of them (a YAML list)."""

    value: Any


Operand = Union[Value, FieldRef, ConfigRef]


@dataclass(frozen=True)
class Leaf:
    """`{field: <column>, <op>: <operand>}`."""

    field: str
    op: str
    operand: Operand


@dataclass(frozen=True)
class SettingIs:
    """`{config: key}` standing alone: true where the boolean site setting is on (for the row's payer)."""

    key: str


@dataclass(frozen=True)
class All:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Union[All, AnyOf, Not, Leaf, SettingIs]


@dataclass(frozen=True)
class ConditionProblem:
    where: str  # "when.all[2].not", as a rule author reads it
    at: tuple  # the same as keys and list indexes into the file's data (to find its line)
    message: str


def _is_ref(value: Any, kind: str) -> bool:
    return isinstance(value, dict) and set(value) == {kind}


MAX_DEPTH = 32  # nested all/any/not: the shipped rules use 4; deeper is a mistake or an attack
_SCALARS = (str, int, float, bool, dt.date, type(None))


def parse_condition(raw: Any, where: str = "when") -> tuple[Condition | None, list[ConditionProblem]]:
    """The condition objects of a `when:` and every problem found in it (None when there is one)."""
    problems: list[ConditionProblem] = []
    cond = _parse(raw, where, (), 0, problems)
    return (cond if not problems else None), problems


def to_condition(raw: Any, where: str = "condition") -> Condition:
    """The condition objects of `raw`, or ValueError naming the place of the first problem."""
    cond, problems = parse_condition(raw, where)
    if problems or cond is None:
        first = problems[0]
        raise ValueError(f"{first.where}: {first.message}")
    return cond


def _parse(raw: Any, root: str, at: tuple, depth: int, out: list[ConditionProblem]) -> Condition | None:
    def problem(message: str, place: tuple = at) -> None:
        out.append(ConditionProblem(where_text(place, root), place, message))

    if depth > MAX_DEPTH:
        problem(f"conditions nested deeper than {MAX_DEPTH} levels")
        return None
    if not isinstance(raw, dict) or not raw:
        problem(f"expected a mapping, got {type(raw).__name__}")
        return None
    keys = set(raw)
    if keys & set(COMBINATORS):
        if len(keys) != 1:
            problem(f"a combinator ({', '.join(sorted(map(str, keys)))}) must stand alone")
            return None
        (key,) = keys
        if key == "not":
            inner = _parse(raw["not"], root, (*at, "not"), depth + 1, out)
            return Not(inner) if inner is not None else None
        items = raw[key]
        if not isinstance(items, list) or not items:
            problem("expected a non-empty list of conditions", (*at, key))
            return None
        parsed = [_parse(item, root, (*at, key, i), depth + 1, out) for i, item in enumerate(items)]
        if any(p is None for p in parsed):
            return None
        return (All if key == "all" else AnyOf)(tuple(p for p in parsed if p is not None))
    if keys == {"config"}:  # a boolean setting as a condition
        message = _setting_problem(raw["config"], condition=True)
        if message:
            problem(message)
            return None
        return SettingIs(raw["config"])
    if "field" not in raw or not isinstance(raw["field"], str):
        problem(f"a leaf needs 'field' (a column name); got keys {', '.join(sorted(map(str, keys)))}")
        return None
    ops = keys - {"field"}
    if len(ops) != 1:
        got = ", ".join(sorted(map(str, ops))) or "none"
        problem(f"a leaf needs exactly one operator of {', '.join(OPERATORS)}; got {got}")
        return None
    (op,) = ops
    if op not in OPERATORS:
        problem(f"unknown operator {op!r}; known: {', '.join(OPERATORS)}")
        return None
    value = raw[op]
    if op in SET_OPS and not (isinstance(value, list) or _is_ref(value, "config")):
        problem(f"{op} needs a list or {{config: key}}")
        return None
    if op == "is_null" and not isinstance(value, bool):
        problem("is_null needs true or false")
        return None
    if isinstance(value, dict) and not (_is_ref(value, "field") or _is_ref(value, "config")):
        problem(f"{op} operand must be a value, {{field: col}} or {{config: key}}")
        return None
    if isinstance(value, list) and not all(isinstance(v, _SCALARS) for v in value):
        problem(f"{op} needs a list of plain values")
        return None
    if _is_ref(value, "field") and not isinstance(value["field"], str):
        problem(f"{op}: {{field: col}} needs a column name")
        return None
    if _is_ref(value, "config") and _setting_problem(value["config"], condition=False):
        problem(f"{op}: {_setting_problem(value['config'], condition=False)}")
        return None
    if op == "matches":
        message = _pattern_problem(value)
        if message:
            problem(message)
            return None
    return Leaf(raw["field"], op, _operand(value))


def _setting_problem(key: Any, condition: bool) -> str:
    """Settings are those of rules/site.yaml (engine/settings.py); one used as a condition is true/false."""
    from b12pipeline.engine.settings import SiteConfig

    defaults = {f.name: getattr(SiteConfig(), f.name) for f in dataclasses.fields(SiteConfig)}
    if not isinstance(key, str) or key not in defaults:
        return f"{{config: {key}}} is not a site setting; known: {', '.join(sorted(defaults))}"
    if condition and not isinstance(defaults[key], bool):
        return f"{{config: {key}}} as a condition needs a true/false setting; {key} is not one"
    return ""


def _operand(value: Any) -> Operand:
    if _is_ref(value, "field"):
        return FieldRef(value["field"])
    if _is_ref(value, "config"):
        return ConfigRef(value["config"])
    return Value(tuple(value) if isinstance(value, list) else value)


def _pattern_problem(value: Any) -> str:
    """Every `matches` pattern compiled here (Rust regex, as Polars runs it), not at the night."""
    import polars as pl

    if not isinstance(value, str):
        return "matches needs a regular expression (text)"
    try:
        pl.select(pl.lit("").str.contains(value))
    except pl.exceptions.PolarsError:
        return "matches is not a valid regular expression (Rust regex syntax)"
    return ""


def to_data(cond: Condition) -> Any:
    """The condition as rule-file data again (parse_condition(to_data(c)) == c)."""
    if isinstance(cond, All):
        return {"all": [to_data(c) for c in cond.items]}
    if isinstance(cond, AnyOf):
        return {"any": [to_data(c) for c in cond.items]}
    if isinstance(cond, Not):
        return {"not": to_data(cond.item)}
    if isinstance(cond, SettingIs):
        return {"config": cond.key}
    operand = cond.operand
    if isinstance(operand, FieldRef):
        value: Any = {"field": operand.name}
    elif isinstance(operand, ConfigRef):
        value = {"config": operand.key}
    else:
        value = list(operand.value) if isinstance(operand.value, tuple) else operand.value
    return {"field": cond.field, cond.op: value}


def leaves(cond: Condition) -> Iterator[Leaf | SettingIs]:
    """Every leaf of a condition, in file order."""
    for _, leaf in placed_leaves(cond):
        yield leaf


def placed_leaves(cond: Condition, at: tuple = ()) -> Iterator[tuple[tuple, Leaf | SettingIs]]:
    """Every leaf with where it sits in the data (("all", 2, "not") under `when:`), in file order."""
    if isinstance(cond, (All, AnyOf)):
        key = "all" if isinstance(cond, All) else "any"
        for i, item in enumerate(cond.items):
            yield from placed_leaves(item, (*at, key, i))
    elif isinstance(cond, Not):
        yield from placed_leaves(cond.item, (*at, "not"))
    else:
        yield at, cond


def where_text(at: tuple, root: str = "when") -> str:
    """("all", 2, "not") -> "when.all[2].not", as parse_condition names a place."""
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at)


def fields_used(cond: Condition) -> set[str]:
    """Every column a condition reads (for lint and for documentation)."""
    used: set[str] = set()
    for leaf in leaves(cond):
        if isinstance(leaf, Leaf):
            used.add(leaf.field)
            if isinstance(leaf.operand, FieldRef):
                used.add(leaf.operand.name)
    return used


def config_used(cond: Condition) -> set[str]:
    """Every site setting a condition reads (as an operand or as a boolean condition)."""
    used: set[str] = set()
    for leaf in leaves(cond):
        if isinstance(leaf, SettingIs):
            used.add(leaf.key)
        elif isinstance(leaf.operand, ConfigRef):
            used.add(leaf.operand.key)
    return used


def setting_flag(key: str, config: Callable[[str], Any]) -> bool:
    """The value of a boolean setting used as a condition; ValueError when it is not a boolean."""
    value = config(key)
    if not isinstance(value, bool):
        raise ValueError(f"{{config: {key}}} as a condition needs a true/false setting; it is {type(value).__name__}")
    return value


def compile_condition(cond: Condition, config: Callable[[str], Any], columns: set[str] | None = None) -> pl.Expr:
    """One boolean Polars expression, never null (see the module doc for the semantics)."""
    import polars as pl

    if isinstance(cond, All):
        return pl.all_horizontal([compile_condition(c, config, columns) for c in cond.items])
    if isinstance(cond, AnyOf):
        return pl.any_horizontal([compile_condition(c, config, columns) for c in cond.items])
    if isinstance(cond, Not):
        return ~compile_condition(cond.item, config, columns)
    if isinstance(cond, SettingIs):
        return pl.lit(setting_flag(cond.key, config))
    name = cond.field
    if columns is not None and name not in columns:
        raise ValueError(f"unknown field {name!r}")
    op = cond.op
    col = pl.col(name)

    def operand(value: Operand) -> Any:
        if isinstance(value, FieldRef):
            if columns is not None and value.name not in columns:
                raise ValueError(f"unknown field {value.name!r}")
            return pl.col(value.name)
        raw = config(value.key) if isinstance(value, ConfigRef) else value.value
        if isinstance(raw, tuple):
            raw = list(raw)
        if isinstance(raw, dt.date) or isinstance(raw, (str, int, float, bool)):
            return pl.lit(raw)
        return raw

    value = cond.operand
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
        expr = col.str.contains(str(value.value if isinstance(value, Value) else value))
    elif op == "is_null":
        expr = col.is_null() if (isinstance(value, Value) and value.value) else col.is_not_null()
    else:  # pragma: no cover - parse_condition refuses it first
        raise ValueError(f"unknown operator {op!r}")
    return expr.fill_null(False)
