"""Lint the rule files: every problem in every file, each naming the file and the field.

The loader (rulefile.py) refuses a bad file at the first problem, which is right at run time. Lint
is for the person editing rules: it reads every file, keeps going after a problem, and adds the
checks that need the whole folder (unique (id, version), overlapping effective windows) or the
facts schema (a condition or template naming a column the facts frame does not have).

The facts schema is computed, not listed: the clean record of rules/_case_defaults.yaml is
normalised exactly as a night's rows are (plus the cross-row facts), and its columns are the facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import polars as pl

from b12pipeline.config import load_site_config
from b12pipeline.contract import load_contract
from b12pipeline.engine.conditions import check_condition, compile_condition, config_used, fields_used
from b12pipeline.engine.evaluate import template_fields
from b12pipeline.engine.rulefile import (
    CASE_KEYS,
    CASE_KINDS,
    OPTIONAL_FIELDS,
    QUEUES,
    REQUIRED_FIELDS,
    SEVERITIES,
    STATUSES,
    Rule,
    RuleFileError,
    parse_rule,
)
from b12pipeline.engine.settings import ConfigError, SiteConfig
from b12pipeline.reference import load_reference
from b12pipeline.rulecases import case_defaults, case_facts
from b12pipeline.rulesets import read_yaml, rule_files

FILE_NAME = re.compile(r"^(?P<id>.+?)(?:\.v(?P<n>\d+))?\.yaml$")
ID_SHAPE = re.compile(r"^[A-Z]+-\d{3}$")
SHORTEST_CITATION = 10  # characters: a source, not a word


@dataclass(frozen=True, order=True)
class Problem:
    file: str  # path relative to the rules folder
    field: str  # the rule field (or "file", "yaml")
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


def facts_schema(directory: Path, config: SiteConfig) -> pl.DataFrame:
    """The facts frame of the clean case-defaults record: its schema is the set of usable columns."""
    facts, _ = case_facts({}, case_defaults(directory), load_reference(directory / "reference"), config)
    return facts


def _structure(raw: Any, rel: str) -> list[Problem]:
    """Field-level problems of one file's data, all of them (the loader stops at the first)."""
    if not isinstance(raw, dict):
        return [Problem(rel, "file", "a rule file must be a mapping of fields")]
    out = []
    allowed = REQUIRED_FIELDS + OPTIONAL_FIELDS
    for key in sorted(set(raw) - set(allowed), key=str):
        out.append(Problem(rel, str(key), f"unknown field; allowed: {', '.join(allowed)}"))
    for key in REQUIRED_FIELDS:
        if raw.get(key) in (None, "", [], {}):
            out.append(Problem(rel, key, "required field is missing or empty"))
    for key, choices in (("queue", QUEUES), ("severity", SEVERITIES), ("status", STATUSES)):
        if raw.get(key) not in (None, "") and raw[key] not in choices:
            out.append(Problem(rel, key, f"{raw[key]!r} is not one of {', '.join(choices)}"))
    citations = raw.get("citations")
    if citations not in (None, [], ""):
        items = [citations] if isinstance(citations, str) else citations
        if not isinstance(items, list) or not all(isinstance(c, str) and c.strip() for c in items):
            out.append(Problem(rel, "citations", "must be a list of non-empty strings"))
        elif any(len(c.strip()) < SHORTEST_CITATION for c in items):
            out.append(Problem(rel, "citations", "cite a source (what it is and where), not a word"))
    cases = raw.get("cases")
    if isinstance(cases, dict):
        for kind in sorted(set(cases) - set(CASE_KINDS), key=str):
            out.append(Problem(rel, f"cases.{kind}", f"unknown case kind; use {' and '.join(CASE_KINDS)}"))
        for kind in CASE_KINDS:
            if not isinstance(cases.get(kind) or [], list):
                out.append(Problem(rel, f"cases.{kind}", "must be a list of records"))
            elif not cases.get(kind):
                out.append(
                    Problem(
                        rel,
                        f"cases.{kind}",
                        f"needs at least one case ({kind}: a record that "
                        f"{'must fire' if kind == 'fires' else 'must not fire'} the rule)",
                    )
                )
    elif cases not in (None, "", [], {}):
        out.append(Problem(rel, "cases", f"must be a mapping with keys {', '.join(CASE_KINDS)}"))
    if raw.get("when") not in (None, "", [], {}):
        try:
            check_condition(raw["when"], "when")
        except ValueError as exc:
            out.append(Problem(rel, "when", str(exc)))
    return out


def _file_name(rule: Rule, rel: str) -> list[Problem]:
    if not ID_SHAPE.match(rule.id):
        return [Problem(rel, "id", f"{rule.id!r} is not an id like CODE-001 (capitals, a dash, three digits)")]
    m = FILE_NAME.match(rule.path.name)
    if not m or m.group("id") != rule.id:
        return [Problem(rel, "id", f"file name must be {rule.id}.yaml or {rule.id}.v<N>.yaml (found {rule.path.name})")]
    if m.group("n") is not None and m.group("n") != rule.version:
        return [Problem(rel, "version", f"version {rule.version!r} does not match the file name's .v{m.group('n')}")]
    return []


def _against_schema(
    rule: Rule,
    rel: str,
    facts: pl.DataFrame,
    config: SiteConfig,
    contract_columns: set[str],
    case_keys: tuple[str, ...],
) -> list[Problem]:
    out = []
    columns = set(facts.columns)
    for name in sorted(fields_used(rule.when) - columns):
        out.append(Problem(rel, "when", f"field {name!r} is not a facts column (see docs/columns.md)"))
    settings = {f.name for f in fields(SiteConfig)}
    for key in sorted(config_used(rule.when) - settings):
        out.append(
            Problem(rel, "when", f"{{config: {key}}} is not a site setting; known: {', '.join(sorted(settings))}")
        )
    for tname in ("message", "expected", "actual"):
        for name in template_fields(getattr(rule, tname)):
            if name not in columns:
                out.append(Problem(rel, tname, f"template names {{{name}}}, which is not a facts column"))
    if not out:  # types: does the condition compile and run on the real facts schema?
        try:
            facts.select(compile_condition(rule.when, config.get, columns))
        except Exception as exc:  # polars raises several types for a type mismatch
            out.append(
                Problem(rel, "when", f"does not evaluate on the facts columns: {' '.join(str(exc).split())[:300]}")
            )
    for kind in CASE_KINDS:
        for i, case in enumerate(rule.cases.get(kind) or [], start=1):
            if not isinstance(case, dict):
                out.append(Problem(rel, f"cases.{kind}[{i}]", "a case is a mapping of fields"))
                continue
            unknown = sorted(
                k
                for k in map(str, case)
                if (k.startswith("_") and k not in case_keys) or (not k.startswith("_") and k not in contract_columns)
            )
            if unknown:
                out.append(
                    Problem(
                        rel,
                        f"cases.{kind}[{i}]",
                        f"unknown key(s) {', '.join(unknown)}: a case "
                        f"changes extract columns (and {', '.join(case_keys)})",
                    )
                )
    return out


def _overlaps(rules: list[Rule], rel: dict[Path, str]) -> list[Problem]:
    """Two active files of one id must not both apply to a date of service (retired ones never run)."""
    out = []
    active = sorted((r for r in rules if r.status == "active"), key=lambda r: (r.id, r.window))
    for i, a in enumerate(active):
        for b in active[i + 1 :]:
            if a.id == b.id and a.window[0] < b.window[1] and b.window[0] < a.window[1]:
                out.append(
                    Problem(
                        rel[b.path],
                        "effective_from",
                        f"effective window {_window(b)} overlaps {rel[a.path]} ({_window(a)}) for "
                        f"{a.id}: one active file per id and date of service",
                    )
                )
    return out


def _window(rule: Rule) -> str:
    return f"{rule.effective_from or '...'} to {rule.effective_to or '...'}"


def lint_rules(directory: Path) -> list[Problem]:
    """Every problem in the rules folder, sorted by file; [] when clean."""
    directory = Path(directory)
    if not directory.is_dir():
        return [Problem(str(directory), "folder", "rules folder not found")]
    problems: list[Problem] = []
    try:
        config = load_site_config(directory / "site.yaml")
    except (ConfigError, OSError) as exc:
        problems.append(Problem("site.yaml", "file", str(exc)))
        config = SiteConfig()
    facts = None
    try:
        facts = facts_schema(directory, config)
    except Exception as exc:  # no facts schema: the per-rule schema checks are skipped, and said so
        problems.append(
            Problem("_case_defaults.yaml", "file", f"cannot compute the facts schema from the case defaults: {exc}")
        )
    contract_columns = set(load_contract().names)
    files = rule_files(directory)
    if not files:
        problems.append(Problem(str(directory), "folder", "no rule files found"))
    rules: list[Rule] = []
    rel: dict[Path, str] = {}
    for path in files:
        name = path.relative_to(directory).as_posix()
        rel[path] = name
        try:
            raw = read_yaml(path)
        except RuleFileError as exc:
            problems.append(Problem(name, "yaml", str(exc)))
            continue
        found = _structure(raw, name)
        if found:
            problems.extend(found)
            continue
        try:
            rule = parse_rule(raw, path)
        except RuleFileError as exc:  # anything the loader checks that the field checks above did not
            problems.append(Problem(name, "file", str(exc).removeprefix(f"{path}: ")))
            continue
        rules.append(rule)
        problems.extend(_file_name(rule, name))
        if path.parent != directory and path.parent.name != rule.queue:
            problems.append(Problem(name, "queue", f"file is in {path.parent.name}/ but its queue is {rule.queue}"))
        if facts is not None:
            problems.extend(_against_schema(rule, name, facts, config, contract_columns, CASE_KEYS))
    seen: dict[tuple[str, str], str] = {}
    for rule in rules:
        key = (rule.id, rule.version)
        if key in seen:
            problems.append(
                Problem(rel[rule.path], "version", f"{rule.id} version {rule.version} is also defined in {seen[key]}")
            )
        seen.setdefault(key, rel[rule.path])
    problems.extend(_overlaps(rules, rel))
    problems.extend(lint_payers(directory, {r.id for r in rules}, contract_columns))
    return sorted(problems)


def lint_payers(directory: Path, rule_ids: set[str], contract_columns: set[str]) -> list[Problem]:
    """Every problem in rules/payers/: the file itself, unknown rule ids, case keys, at least one
    fires and one passes case, every overridden rule and setting exercised by a case, and no two
    files that could both be a row's most specific match on one date."""
    from b12pipeline.engine.payers import CASE_KEYS as PAYER_CASE_KEYS
    from b12pipeline.engine.payers import PayerFileError, overlap_problems, parse_payer
    from b12pipeline.rulesets import payer_files

    problems: list[Problem] = []
    parsed = []
    for path in payer_files(directory):
        name = path.relative_to(directory).as_posix()
        try:
            payer = parse_payer(read_yaml(path), path)
        except (RuleFileError, PayerFileError) as exc:
            problems.append(Problem(name, "file", str(exc).removeprefix(f"{path}: ")))
            continue
        parsed.append(payer)
        for rule_id in sorted(set(payer.rules) - rule_ids):
            problems.append(Problem(name, f"rules.{rule_id}", "no rule file has this id"))
        checked: set[str] = set()
        for kind in ("fires", "passes"):
            cases = payer.cases.get(kind) or []
            if not cases:
                problems.append(Problem(name, f"cases.{kind}", f"needs at least one {kind} case naming a payer"))
            for i, case in enumerate(cases, start=1):
                checked.add(str(case.get("_rule")))
                if str(case.get("_rule")) not in rule_ids:
                    problems.append(
                        Problem(name, f"cases.{kind}[{i}]", f"_rule {case.get('_rule')!r} is not a rule id")
                    )
                unknown = sorted(
                    k
                    for k in map(str, case)
                    if (k.startswith("_") and k not in PAYER_CASE_KEYS)
                    or (not k.startswith("_") and k not in contract_columns)
                )
                if unknown:
                    problems.append(Problem(name, f"cases.{kind}[{i}]", f"unknown key(s) {', '.join(unknown)}"))
                if not ({"payer_id", "payer_type"} & set(case)):
                    problems.append(
                        Problem(name, f"cases.{kind}[{i}]", "a payer case names its payer (payer_id or payer_type)")
                    )
        for rule_id in sorted(set(payer.rules) - checked):
            problems.append(Problem(name, f"rules.{rule_id}", "no case checks this override (add a case with _rule)"))
        if payer.settings and not checked:
            problems.append(Problem(name, "settings", "no case checks these settings (add a case with _rule)"))
    for payer, message in overlap_problems(parsed):
        problems.append(Problem(payer.path.relative_to(directory).as_posix(), "match", message))
    return problems
