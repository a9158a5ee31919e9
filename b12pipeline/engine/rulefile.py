"""Rule files: one YAML file per rule version, as data checked strictly.

A rule file is data, not code: a closed set of fields, and a condition checked against the
condition language before anything runs. Errors name the file and the field. Reading the files
from disk is b12pipeline/rulesets.py's job: the engine is handed their data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b12pipeline.engine.conditions import check_condition

QUEUES = ("coding", "medical_necessity", "documentation")
SEVERITIES = ("error", "warning", "info")
STATUSES = ("active", "retired")
REQUIRED_FIELDS = ("id", "title", "queue", "severity", "version", "status", "citations", "message", "when", "cases")
OPTIONAL_FIELDS = ("effective_from", "effective_to", "expected", "actual", "description", "notes")
CASE_KINDS = ("fires", "passes")
# What each field of a rule file holds (docs/writing-rules.md is generated from this and the
# operator table; a test keeps both in step with the checks).
FIELD_DOCS = {
    "id": "Rule id like `CODE-001`; the file is `<id>.yaml` or `<id>.v<N>.yaml`.",
    "title": "One line a coder reads in the queue.",
    "queue": f"The work queue its findings go to: {', '.join(QUEUES)}; the file sits in `rules/<queue>/`.",
    "severity": f"One of {', '.join(SEVERITIES)}.",
    "version": "Text; with the id, unique across the folder. A finding carries the version that raised it.",
    "status": f"One of {', '.join(STATUSES)}; a retired file never runs and keeps its history readable.",
    "citations": "List of sources: CMS, FDA, HHS, a payer or MAC policy, or a file in this repository.",
    "message": "The finding's text; `{column}` shows a facts column's value for the row.",
    "when": "The condition (see the operators below); the rule fires where it is true.",
    "cases": "`fires:` records that must fire the rule and `passes:` near misses that must not.",
    "effective_from": "First date of service it applies to (YYYY-MM-DD, inclusive); empty: always.",
    "effective_to": "First date of service it no longer applies to (exclusive); empty: no end.",
    "expected": "What the record should show (a template like `message`).",
    "actual": "What it shows instead (a template like `message`).",
    "description": "What the rule checks and why, in a few sentences (the rule catalog shows it).",
    "notes": "Anything a reviewer of the rule should know (judgement calls, limits).",
}
# Keys of a case that are not extract columns.
CASE_KEY_DOCS = {
    "_note": "What the case shows (docs and failure messages).",
    "_history": "Earlier administrations of the same patient, each a mapping of field changes, for "
    "cross-row rules; they get admin_ids HIST-1, HIST-2, ...",
    "_absent_columns": "Columns the extract does not carry at all (an optional column left out).",
    "_reference": "CMS table rows the case assumes, by table (asp_crosswalk, noc_crosswalk, "
    "mue_practitioner, mue_facility, hcpcs): they replace that table for the case.",
}
CASE_KEYS = tuple(CASE_KEY_DOCS)
FAR_FUTURE = dt.date(9999, 12, 31)
FAR_PAST = dt.date(1900, 1, 1)


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
    payers: tuple = field(default_factory=tuple)  # PayerOverride files (engine/payers.py)
    reference_versions: dict = field(default_factory=dict)  # table -> version (Reference.versions)

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
