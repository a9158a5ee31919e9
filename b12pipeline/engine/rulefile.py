"""Rule files: one YAML file per rule version, loaded safely and strictly.

A rule file is data, not code: yaml.safe_load (no tags), a closed set of fields, and a condition
checked against the condition language before anything runs. Errors name the file and the field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from b12pipeline.paths import rules_dir

QUEUES = ("coding", "medical_necessity", "documentation")
SEVERITIES = ("error", "warning", "info")
STATUSES = ("active", "retired")
REQUIRED_FIELDS = ("id", "title", "queue", "severity", "version", "status", "citations", "message", "when", "cases")
OPTIONAL_FIELDS = ("effective_from", "effective_to", "expected", "actual", "description", "notes")
CASE_KINDS = ("fires", "passes")
FAR_FUTURE = dt.date(9999, 12, 31)
FAR_PAST = dt.date(1900, 1, 1)


# libyaml's safe loader: the same safe constructors, about 10x faster than the pure-Python parser
# (35 rule files with their cases took 0.5 s, paid by every run before anything else).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RuleFileError(ValueError):
    """A rule file is malformed. str() names the file and the field, and the line and column
    (`path:line:column: ...`, as compilers print) when the loader can place it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field  # the top-level key at fault, so the loader can find its line


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    queue: str
    severity: str
    version: str
    status: str
    citations: tuple[str, ...]
    message: str
    when: dict
    cases: dict
    path: Path
    effective_from: dt.date | None = None  # first date of service the rule applies to (inclusive)
    effective_to: dt.date | None = None  # first date of service it no longer applies to (exclusive)
    expected: str = ""
    actual: str = ""
    description: str = ""
    notes: str = ""

    @property
    def window(self) -> tuple[dt.date, dt.date]:
        return (self.effective_from or FAR_PAST, self.effective_to or FAR_FUTURE)


@dataclass(frozen=True)
class Ruleset:
    rules: tuple[Rule, ...]
    version: str  # content hash of the rule files, reference tables, site config
    directory: Path
    files: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def active(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.status == "active")

    def by_id(self, rule_id: str) -> list[Rule]:
        return [r for r in self.rules if r.id == rule_id]


def _date(value: Any, path: Path, key: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise RuleFileError(f"{path}: {key} {value!r} is not a date (YYYY-MM-DD)", field=key) from None


def parse_rule(raw: Any, path: Path) -> Rule:
    from b12pipeline.engine.conditions import check_condition

    if not isinstance(raw, dict):
        raise RuleFileError(f"{path}: a rule file must be a mapping of fields")
    unknown = sorted(set(raw) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise RuleFileError(
            f"{path}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}",
            field=unknown[0],
        )
    missing = [k for k in REQUIRED_FIELDS if raw.get(k) in (None, "", [], {})]
    if missing:
        raise RuleFileError(f"{path}: missing required field(s) {', '.join(missing)}")
    for key, allowed in (("queue", QUEUES), ("severity", SEVERITIES), ("status", STATUSES)):
        if raw[key] not in allowed:
            raise RuleFileError(f"{path}: {key} {raw[key]!r} is not one of {', '.join(allowed)}", field=key)
    citations = raw["citations"]
    if isinstance(citations, str):
        citations = [citations]
    if not isinstance(citations, list) or not all(isinstance(c, str) and c.strip() for c in citations):
        raise RuleFileError(f"{path}: citations must be a list of non-empty strings", field="citations")
    cases = raw["cases"]
    if not isinstance(cases, dict) or set(cases) - set(CASE_KINDS):
        raise RuleFileError(f"{path}: cases must be a mapping with keys {', '.join(CASE_KINDS)}", field="cases")
    for kind in CASE_KINDS:
        if not isinstance(cases.get(kind, []), list):
            raise RuleFileError(f"{path}: cases.{kind} must be a list of records", field="cases")
    try:
        check_condition(raw["when"])
    except ValueError as exc:
        raise RuleFileError(f"{path}: when: {exc}", field="when") from None
    for key in ("message", "expected", "actual", "title", "id", "version"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], (str, int, float)):
            raise RuleFileError(f"{path}: {key} must be text", field=key)
    rule = Rule(
        id=str(raw["id"]),
        title=str(raw["title"]),
        queue=raw["queue"],
        severity=raw["severity"],
        version=str(raw["version"]),
        status=raw["status"],
        citations=tuple(citations),
        message=str(raw["message"]),
        when=raw["when"],
        cases=cases,
        path=path,
        effective_from=_date(raw.get("effective_from"), path, "effective_from"),
        effective_to=_date(raw.get("effective_to"), path, "effective_to"),
        expected=str(raw.get("expected") or ""),
        actual=str(raw.get("actual") or ""),
        description=str(raw.get("description") or ""),
        notes=str(raw.get("notes") or ""),
    )
    lo, hi = rule.window
    if lo >= hi:
        raise RuleFileError(f"{path}: effective_from {lo} is not before effective_to {hi}", field="effective_from")
    return rule


def load_rule_file(path: Path) -> Rule:
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RuleFileError(f"{_at(path, mark)}: not valid (safe) YAML: {problem}") from None
    except ValueError as exc:  # not UTF-8, or an impossible date like 2024-13-45
        raise RuleFileError(f"{path}: not valid (safe) YAML: {str(exc).splitlines()[0]}") from None
    try:
        return parse_rule(raw, path)
    except RuleFileError as exc:
        mark = _key_mark(text, exc.field) if exc.field else None
        if mark is None:
            raise
        raise RuleFileError(str(exc).replace(f"{path}: ", f"{_at(path, mark)}: ", 1), field=exc.field) from None


def _at(path: Path, mark) -> str:
    """`path:line:column` (1-based, as editors and compilers count) or just the path."""
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def _key_mark(text: str, key: str):
    """Where a top-level key's value starts in the file (only on the error path: composing costs a parse)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == key:
            return value_node.start_mark
    return None


def rule_files(directory: Path) -> list[Path]:
    """Rule files: every *.yaml under rules/ except the site configuration and reference tables."""
    return sorted(
        p
        for p in directory.rglob("*.yaml")
        if p.name != "site.yaml" and not p.name.startswith("_") and "reference" not in p.relative_to(directory).parts
    )


def ruleset_version(directory: Path) -> str:
    """Content hash of everything that decides a finding: rule files, reference tables, site config."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix in (".yaml", ".csv") and "sources" not in p.parts
    )
    for p in files:
        digest.update(p.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(p.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def load_ruleset(directory: Path | None = None) -> Ruleset:
    directory = Path(directory) if directory else rules_dir()
    if not directory.is_dir():
        raise RuleFileError(f"{directory}: rules folder not found")
    files = rule_files(directory)
    rules = tuple(load_rule_file(p) for p in files)
    if not rules:
        raise RuleFileError(f"{directory}: no rule files found")
    return Ruleset(rules=rules, version=ruleset_version(directory), directory=directory, files=tuple(files))
