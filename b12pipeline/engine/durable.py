"""The optional second engine: the same rule files compiled to durable_rules JSON rulesets.

Why a second engine at all: the differential test (tests/test_engine_differential.py) runs every
rule through both engines and demands identical findings, so a bug in the Polars compiler
(conditions.py) or here shows up as a difference. Polars stays the default and the production path;
durable-rules is unmaintained and slow (docs/durable-rules.md).

Translation (condition language -> durable JSON, one fact per facts row):
  all / any            -> $and / $or
  not                  -> pushed down to the leaves (De Morgan); durable has no $not
  eq ne lt le gt ge    -> {f: v} $neq $lt $lte $gt $gte; a {field: g} operand -> {"$m": g}
  in / not_in          -> $or of equalities / $and of inequalities
  is_null              -> $nex / $ex  (null values are left out of the fact, see below)
  window               -> service_date $gte / $lt effective dates (ISO text compares as dates)
  {config: key}        -> true or false, decided when compiling (each payer's rows are compiled
                          with that payer's settings)
Two-valued logic as in conditions.py: every positive comparison also requires its field(s) present
($ex), every negated one is true when a field is absent ($nex), so `not` over an empty value is true.

Precomputed leaves (durable cannot express them; documented in docs/durable-rules.md): `contains`,
`contains_any` (list columns), `matches` (the catalog's regexes are Rust-regex syntax; durable's $mt
is its own dialect), and any leaf on a list column. Each such leaf is computed in plain Python from
the row (not by Polars, so the check stays independent) and sent as a boolean field __leaf<N>; the
durable condition tests that field.

Guard-rails (notes/stack.md section 1.8): a QuietHost with the background dispatch threads disabled;
one fact per row, asserted then retracted (working memory holds one fact); a `_seen` catch-all so no
fact is "unhandled"; None keys stripped and dates sent as ISO text; rule dicts built fresh for every
call (set_rulesets mutates them); a unique ruleset name per call; every rule starts with
$ex __row so none is negation-only (those loop on the session state); one thread at a time (a lock).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl

from b12pipeline.engine.conditions import (
    COMPARISONS,
    All,
    AnyOf,
    Condition,
    ConfigRef,
    FieldRef,
    Leaf,
    Not,
    SettingIs,
    Settings,
    setting_flag,
)
from b12pipeline.engine.evaluate import empty_findings, findings_from_hits
from b12pipeline.engine.payers import PAYER_COLUMN, with_payer_override
from b12pipeline.engine.rulefile import Rule, Ruleset

INSTALL_HINT = "pip install '.[durable]'  (durable-rules 2.0.28 builds from source with gcc; Python 3.10-3.12)"
PRECOMPUTED_OPS = ("contains", "contains_any", "matches")
ROW = "__row"
RESERVED = {"id", "sid"}  # durable's own keys on a message
MAX_PROPERTIES = 255  # MAX_OBJECT_PROPERTIES in durable's C code

_NATIVE = {"eq": None, "ne": "$neq", "lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}
_NEGATE = {"eq": "ne", "ne": "eq", "lt": "ge", "ge": "lt", "le": "gt", "gt": "le"}
_PY_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}
TRUE = {"$ex": {ROW: 1}}
FALSE = {"$nex": {ROW: 1}}

_lock = threading.Lock()
_names = itertools.count(1)


class DurableUnavailable(RuntimeError):
    """durable-rules is not installed (it is an optional extra)."""


def durable_engine() -> Any:
    """The durable engine module, imported only when asked for."""
    try:
        from durable import engine
    except ImportError as exc:
        raise DurableUnavailable(
            f"the durable engine needs the durable-rules package: {INSTALL_HINT} ({type(exc).__name__}: {exc})"
        ) from None
    return engine


def available() -> bool:
    try:
        durable_engine()
    except DurableUnavailable:
        return False
    return True


# --- values -------------------------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
    """A facts value as durable receives it: dates as ISO text (fixed width, so text order = time order)."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def _literal(value: Any, dtype: pl.DataType | None) -> Any:
    """An operand literal serialised the way the column it is compared with is serialised."""
    if dtype == pl.Datetime or isinstance(dtype, pl.Datetime):
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value, dt.time())
    return to_json_value(value)


def _scalar(dtype: pl.DataType | None) -> bool:
    return dtype is not None and not isinstance(dtype, (pl.List, pl.Array, pl.Struct, pl.Object))


# --- compile ------------------------------------------------------------------------------------


@dataclass
class Compiled:
    """One rule set compiled for durable: conditions per rule, the fields to send, precomputed leaves."""

    conditions: list[dict]  # per rule, its durable condition on `m`
    fields: set[str] = field(default_factory=set)  # facts columns sent as they are
    leaves: dict[str, Leaf] = field(default_factory=dict)  # __leafN -> the leaf computed in Python


class _Compiler:
    def __init__(self, schema: pl.Schema, config: Callable[[str], Any]):
        self.schema, self.config = schema, config
        self.out = Compiled(conditions=[], fields={"service_date"})
        self._leaf_names: dict[Leaf, str] = {}

    def rule(self, rule: Rule) -> dict:
        lo, hi = rule.window
        return _and(
            [
                {"$ex": {ROW: 1}},
                {"$gte": {"service_date": lo.isoformat()}},
                {"$lt": {"service_date": hi.isoformat()}},
                self.cond(rule.when, negate=False),
            ]
        )

    def cond(self, cond: Condition, negate: bool) -> dict:
        if isinstance(cond, All):
            parts = [self.cond(c, negate) for c in cond.items]
            return _or(parts) if negate else _and(parts)
        if isinstance(cond, AnyOf):
            parts = [self.cond(c, negate) for c in cond.items]
            return _and(parts) if negate else _or(parts)
        if isinstance(cond, Not):
            return self.cond(cond.item, not negate)
        if isinstance(cond, SettingIs):  # known when compiling: the payer's or the site's value
            return TRUE if setting_flag(cond.key, self.config) != negate else FALSE
        return self.leaf(cond, negate)

    def _column(self, name: str) -> pl.DataType:
        if name not in self.schema:
            raise ValueError(f"unknown field {name!r}")
        if name in RESERVED or name.startswith(("$", "__")):
            raise ValueError(f"field {name!r} clashes with a durable_rules message key")
        return self.schema[name]

    def leaf(self, cond: Leaf, negate: bool) -> dict:
        name, op = cond.field, cond.op
        dtype = self._column(name)
        other = cond.operand.name if isinstance(cond.operand, FieldRef) else None
        value: Any = None if other is not None else operand_value(cond, self.config)
        if other is not None:
            self._column(other)
        native = op not in PRECOMPUTED_OPS and _scalar(dtype) and (other is None or _scalar(self.schema[other]))
        if not native:
            return self.precomputed(cond, negate)
        self.out.fields.add(name)
        if other is not None:
            self.out.fields.add(other)
        if op == "is_null":
            absent = bool(value) != negate
            return {"$nex" if absent else "$ex": {name: 1}}
        if op in ("in", "not_in"):
            wanted = [_literal(v, dtype) for v in value if v is not None]
            any_equal = _or([{name: v} for v in wanted]) if wanted else FALSE
            all_differ = _and([{"$neq": {name: v}} for v in wanted]) if wanted else TRUE
            # in = present and equal to one; not_in = present and equal to none; negations: absent or ...
            body = any_equal if (op == "in") != negate else all_differ
            return _or([{"$nex": {name: 1}}, body]) if negate else _and([{"$ex": {name: 1}}, body])
        if op not in COMPARISONS:  # pragma: no cover - parse_condition refuses unknown operators
            raise ValueError(f"unknown operator {op!r}")
        if other is None and value is None:  # comparing with null: false, and its negation true
            return TRUE if negate else FALSE
        operand = {"$m": other} if other is not None else _literal(value, dtype)
        present = [name] + ([other] if other is not None else [])
        use = _NEGATE[op] if negate else op
        test = {name: operand} if use == "eq" else {_NATIVE[use]: {name: operand}}
        if negate:
            return _or([{"$nex": {p: 1}} for p in present] + [test])
        return _and([{"$ex": {p: 1}} for p in present] + [test])

    def precomputed(self, cond: Leaf, negate: bool) -> dict:
        name = self._leaf_names.get(cond)
        if name is None:
            name = self._leaf_names[cond] = f"__leaf{len(self._leaf_names) + 1}"
            self.out.leaves[name] = cond
        return {name: not negate}


def operand_value(cond: Leaf, config: Callable[[str], Any]) -> Any:
    """A Leaf's literal or setting operand as a plain value (a list operand as a list)."""
    value: Any
    operand = cond.operand
    if isinstance(operand, ConfigRef):
        value = config(operand.key)
    elif isinstance(operand, FieldRef):  # pragma: no cover - the callers read the column instead
        raise ValueError("a {field: col} operand has no value of its own")
    else:
        value = operand.value
    return list(value) if isinstance(value, tuple) else value


def _and(parts: list[dict]) -> dict:
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _or(parts: list[dict]) -> dict:
    return parts[0] if len(parts) == 1 else {"$or": parts}


def compile_rules(rules: list[Rule], schema: pl.Schema, config: Callable[[str], Any]) -> Compiled:
    compiler = _Compiler(schema, config)
    for rule in rules:
        try:
            compiler.out.conditions.append(compiler.rule(rule))
        except ValueError as exc:
            raise ValueError(f"{rule.path}: when: {exc}") from None
    return compiler.out


def python_leaf(cond: Leaf, row: dict, config: Callable[[str], Any]) -> bool:
    """One leaf on one row in plain Python, with conditions.py's semantics (null -> false)."""
    op, value = cond.op, row.get(cond.field)
    operand: Any
    if isinstance(cond.operand, FieldRef):
        operand = row.get(cond.operand.name)
    else:
        operand = operand_value(cond, config)
    if op == "is_null":
        return (value is None) == bool(operand)
    if value is None:
        return False
    if op in _PY_COMPARE:
        return operand is not None and bool(_PY_COMPARE[op](value, operand))
    if op in ("in", "not_in"):
        hit = value in [v for v in operand if v is not None]
        return hit if op == "in" else not hit
    if op == "contains":
        return operand is not None and operand in value
    if op == "contains_any":
        wanted = {v for v in operand if v is not None}
        return any(e in wanted for e in value if e is not None)
    if op == "matches":
        return re.search(str(operand), str(value)) is not None
    raise ValueError(f"unknown operator {op!r}")  # pragma: no cover


# --- run ----------------------------------------------------------------------------------------


def _facts_rows(facts: pl.DataFrame, compiled: Compiled, config: Callable[[str], Any]) -> list[dict]:
    """One JSON-ready dict per row: only the fields the rules read, no None keys, dates as text."""
    leaf_columns = set()
    for leaf in compiled.leaves.values():
        leaf_columns.add(leaf.field)
        if isinstance(leaf.operand, FieldRef):
            leaf_columns.add(leaf.operand.name)
    columns = sorted(compiled.fields | leaf_columns)
    if len(compiled.fields) + len(compiled.leaves) + 1 > MAX_PROPERTIES:
        raise ValueError(f"durable engine: a fact would carry more than {MAX_PROPERTIES} properties")
    rows = []
    for i, raw in enumerate(facts.select(columns).iter_rows(named=True)):
        fact: dict[str, Any] = {ROW: i}
        for name in compiled.fields:
            v = raw[name]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            fact[name] = to_json_value(v)
        for name, leaf in compiled.leaves.items():
            fact[name] = python_leaf(leaf, raw, config)
        rows.append(fact)
    return rows


def rule_hits(facts: pl.DataFrame, rules: list[Rule], cfg: Settings) -> list[set[int]]:
    """For each rule, the row indexes of `facts` on which durable_rules fires it."""
    engine = durable_engine()
    compiled = compile_rules(rules, facts.schema, cfg.get)
    facts_rows = _facts_rows(facts, compiled, cfg.get)
    hits: list[set[int]] = [set() for _ in rules]

    def record(i: int) -> Callable:
        return lambda c: hits[i].add(c.m[ROW])

    with _lock:  # durable_rules has no locking of its own: one thread at a time
        host_class: Any = engine.Host

        class QuietHost(host_class):
            def _run(self) -> None:  # no background dispatch threads (they race with the caller)
                pass

        name = f"b12_{os.getpid()}_{next(_names)}"  # names cannot be re-registered in one process
        definition = {"_seen": {"all": [{"m": {"$ex": {ROW: 1}}}], "run": lambda c: None}}
        for i, condition in enumerate(compiled.conditions):
            definition[f"r{i}"] = {"all": [{"m": condition}], "run": record(i)}
        host = QuietHost()
        host.set_rulesets({name: definition})  # fresh dicts: set_rulesets deletes 'run'
        try:
            for fact in facts_rows:
                host.assert_fact(name, fact)
                host.retract_fact(name, fact)
        finally:
            _release(host, name)
    return hits


def _release(host: Any, name: str) -> None:
    """Free the ruleset's C handle (the handle table is global and capped)."""
    try:
        import durable_rules_engine

        durable_rules_engine.delete_ruleset(host.get_ruleset(name)._handle)
    except Exception:  # pragma: no cover - freeing is best effort; the ruleset is never used again
        pass


def evaluate(
    facts: pl.DataFrame, ruleset: Ruleset, cfg: Settings, run_id: str, rules: list[Rule] | None = None
) -> pl.DataFrame:
    """Same contract as engine.evaluate.evaluate, with the hits decided by durable_rules."""
    rules = list(rules if rules is not None else ruleset.active)
    if facts.height == 0 or not rules:
        return empty_findings()
    # Payer files: each payer's rows are decided with that payer's settings, and a rule a payer
    # file turns off has no hits on its rows (the same overrides engine/evaluate.py applies).
    payers = {p.id: p for p in ruleset.payers}
    facts = with_payer_override(facts, tuple(ruleset.payers))
    profile = facts[PAYER_COLUMN].to_list()
    hits: list[set[int]] = [set() for _ in rules]
    for pid in sorted(set(profile), key=lambda v: (v is not None, v or "")):
        rows = [i for i, v in enumerate(profile) if v == pid]
        payer = payers.get(pid)
        own = rule_hits(facts[rows], rules, payer.config(cfg) if payer else cfg)
        for r, found in enumerate(own):
            if payer is None or not payer.disables(rules[r].id):
                hits[r] |= {rows[j] for j in found}
    index = pl.int_range(0, pl.len(), dtype=pl.Int64)
    flagged = facts.with_columns([index.is_in(sorted(h)).alias(f"__hit{i}") for i, h in enumerate(hits)])
    return findings_from_hits(flagged, ruleset, rules, run_id, cfg)
