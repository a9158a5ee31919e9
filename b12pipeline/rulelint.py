"""Lint the rule files: every problem in every file, each naming the file, line and field.

The per-file checks are the loader's own (engine/rulefile.py `check_rule`, placed in the file by
rulesets.check_rule_file): the loader stops at a file's problems, lint lists them all and adds the
checks that need the whole folder (unique (id, version), overlapping effective windows, the folder
matching the queue) or the facts schema (a condition or template naming a column the facts frame
does not have, case keys that are not extract columns).

The facts schema is computed, not listed: the clean record of rules/_case_defaults.yaml is
normalised exactly as a night's rows are (plus the cross-row facts), and its columns are the facts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from b12pipeline.config import load_site_config
from b12pipeline.contract import load_contract
from b12pipeline.engine.conditions import FieldRef, Leaf, compile_condition, placed_leaves, where_text
from b12pipeline.engine.rulefile import CASE_KEYS, CASE_KINDS, Problem, Rule, RuleFileError, template_fields
from b12pipeline.engine.settings import ConfigError, SiteConfig
from b12pipeline.reference import load_reference
from b12pipeline.rulecases import case_defaults, case_facts
from b12pipeline.rulesets import check_rule_file, place, read_yaml, rule_files

__all__ = ["Problem", "facts_schema", "lint_rules", "lint_payers"]


def facts_schema(directory: Path, config: SiteConfig) -> pl.DataFrame:
    """The facts frame of the clean case-defaults record: its schema is the set of usable columns."""
    facts, _ = case_facts({}, case_defaults(directory), load_reference(directory / "reference"), config)
    return facts


def _against_schema(
    rule: Rule,
    rel: str,
    facts: pl.DataFrame,
    config: SiteConfig,
    contract_columns: set[str],
    case_keys: tuple[str, ...],
) -> list[Problem]:
    """Problems against the facts columns and the extract contract (`at` places them in the file)."""
    out = []
    columns = set(facts.columns)
    for at, leaf in placed_leaves(rule.when):
        if not isinstance(leaf, Leaf):
            continue
        for name in (leaf.field, leaf.operand.name if isinstance(leaf.operand, FieldRef) else None):
            if name is not None and name not in columns:
                message = f"field {name!r} is not a facts column (see docs/columns.md)"
                out.append(Problem(rel, where_text(at), message, at=("when", *at)))
    for tname in ("message", "expected", "actual"):
        for name in template_fields(getattr(rule, tname)):
            if name not in columns:
                out.append(Problem(rel, tname, f"template names {{{name}}}, which is not a facts column", at=(tname,)))
    if not out:  # types: does the condition compile and run on the real facts schema?
        try:
            facts.select(compile_condition(rule.when, config.get, columns))
        except Exception as exc:  # polars raises several types for a type mismatch
            out.append(
                Problem(
                    rel,
                    "when",
                    f"does not evaluate on the facts columns: {' '.join(str(exc).split())[:300]}",
                    at=("when",),
                )
            )
    for kind in CASE_KINDS:
        for i, case in enumerate(rule.cases.get(kind) or [], start=1):
            at = ("cases", kind, i - 1)
            if not isinstance(case, dict):
                out.append(Problem(rel, f"cases.{kind}[{i}]", "a case is a mapping of fields", at=at))
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
                        at=(*at, unknown[0]),
                    )
                )
    return sorted(set(out), key=lambda p: p.sort_key)


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


def _nodes(path: Path):
    """The file's YAML node tree (it loaded once already), to place schema problems."""
    import yaml

    return yaml.compose(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


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
        rule, found = check_rule_file(path)
        problems.extend(dataclasses.replace(p, file=name) for p in found)
        if rule is None:
            continue
        rules.append(rule)
        found = []
        if path.parent != directory and path.parent.name != rule.queue:
            found.append(
                Problem(name, "queue", f"file is in {path.parent.name}/ but its queue is {rule.queue}", at=("queue",))
            )
        if facts is not None:
            found += _against_schema(rule, name, facts, config, contract_columns, CASE_KEYS)
        if found:
            node = _nodes(path)
            problems.extend(place(p, node) for p in found)
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
    return sorted(problems, key=lambda p: p.sort_key)


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
