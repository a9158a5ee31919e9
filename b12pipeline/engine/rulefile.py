"""Rule files: one YAML file per rule version, as data checked strictly.

A rule file is data, not code: a closed set of fields, and a condition checked against the
condition language before anything runs. Errors name the file and the field. Reading the files
from disk is b12pipeline/rulesets.py's job: the engine is handed their data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b12pipeline.engine.conditions import Condition, parse_condition
from b12pipeline.engine.settings import SiteConfig

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
    "message": "The finding's text; `{column}` shows a facts column's value for the row, `{config.key}` a "
    "site setting's value as it applied to the row.",
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
class Problem:
    """One problem of a rules folder: the file, the field (`when.all[2]`, `cases.fires[1]`), what is
    wrong, and where in the file (1-based line and column; 0 when not placed)."""

    file: str
    field: str
    message: str
    line: int = 0
    column: int = 0
    at: tuple = dataclasses.field(default=(), compare=False)  # keys and indexes into the file's data

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"

    @property
    def sort_key(self) -> tuple:
        return (self.file, self.line, self.column, self.field, self.message)


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
    when: Condition  # parsed once (engine/conditions.py)
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


# A template shows a facts column of the row (`{column}`) or a site setting's value as it applied to
# the row (`{config.key}`, per payer where a payer file overrides it); `{{` and `}}` are braces.
_PLACEHOLDER = re.compile(r"\{(config\.)?([a-zA-Z_][a-zA-Z0-9_]*)\}")
SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(SiteConfig))


def template_parts(template: str) -> list[tuple[bool, str]]:
    """(is a setting, name) of each placeholder, in order ("{charge_units} of {config.x}")."""
    if not template:
        return []
    return [(bool(cfg), name) for cfg, name in _PLACEHOLDER.findall(template.replace("{{", "").replace("}}", ""))]


def template_fields(template: str) -> list[str]:
    """The columns a message template names ("{charge_units} unit(s)" -> ["charge_units"])."""
    return [name for is_setting, name in template_parts(template) if not is_setting]


def template_settings(template: str) -> list[str]:
    """The settings a message template shows ("{config.duplicate_window_minutes}")."""
    return [name for is_setting, name in template_parts(template) if is_setting]


FILE_NAME = re.compile(r"^(?P<id>.+?)(?:\.v(?P<n>\d+))?\.yaml$")
ID_SHAPE = re.compile(r"^[A-Z]+-\d{3}$")
SHORTEST_CITATION = 10  # characters: a source, not a word
TEXT_FIELDS = ("message", "expected", "actual", "title", "id", "version", "description", "notes")


def check_rule(raw: Any, path: Path) -> tuple[Rule | None, list[Problem]]:
    """The one rule-file validator: the Rule, or None and every problem of the file's data (each
    naming its field and where it sits in the data; rulesets.py adds the line and column). The
    loader, `rules lint` and the tests all use it; lint adds the checks that need the whole folder
    or the facts schema."""
    file = str(path)
    out: list[Problem] = []

    def problem(name: str, message: str, at: tuple = ()) -> None:
        out.append(Problem(file, name, message, at=at or (name,)))

    if not isinstance(raw, dict):
        return None, [Problem(file, "file", "a rule file must be a mapping of fields")]
    allowed = REQUIRED_FIELDS + OPTIONAL_FIELDS
    for key in sorted(set(raw) - set(allowed), key=str):
        problem(str(key), f"unknown field; allowed: {', '.join(allowed)}", (key,))
    for key in REQUIRED_FIELDS:
        if raw.get(key) in (None, "", [], {}):
            problem(key, "required field is missing or empty", () if key not in raw else (key,))
    for key, choices in (("queue", QUEUES), ("severity", SEVERITIES), ("status", STATUSES)):
        if raw.get(key) not in (None, "") and raw[key] not in choices:
            problem(key, f"{raw[key]!r} is not one of {', '.join(choices)}")
    for key in TEXT_FIELDS:
        if raw.get(key) is not None and not isinstance(raw[key], (str, int, float)):
            problem(key, "must be text")
    citations = raw.get("citations")
    if citations not in (None, [], ""):
        items = [citations] if isinstance(citations, str) else citations
        if not isinstance(items, list) or not all(isinstance(c, str) and c.strip() for c in items):
            problem("citations", "must be a list of non-empty strings")
        elif any(len(c.strip()) < SHORTEST_CITATION for c in items):
            problem("citations", "cite a source (what it is and where), not a word")
    cases = raw.get("cases")
    if isinstance(cases, dict):
        for kind in sorted(set(cases) - set(CASE_KINDS), key=str):
            problem(f"cases.{kind}", f"unknown case kind; use {' and '.join(CASE_KINDS)}", ("cases", kind))
        for kind in CASE_KINDS:
            if not isinstance(cases.get(kind) or [], list):
                problem(f"cases.{kind}", "must be a list of records", ("cases", kind))
            elif not cases.get(kind):
                must = "must fire" if kind == "fires" else "must not fire"
                problem(f"cases.{kind}", f"needs at least one case ({kind}: a record that {must} the rule)", ("cases",))
    elif cases not in (None, "", [], {}):
        problem("cases", f"must be a mapping with keys {', '.join(CASE_KINDS)}")
    when = None
    if raw.get("when") not in (None, "", [], {}):
        when, found = parse_condition(raw["when"], "when")
        for p in found:
            out.append(Problem(file, p.where, p.message, at=("when", *p.at)))
    dates: dict[str, dt.date | None] = {}
    for key in ("effective_from", "effective_to"):
        try:
            dates[key] = _date(raw.get(key), path, key)
        except RuleFileError:
            problem(key, f"{raw.get(key)!r} is not a date (YYYY-MM-DD)")
    lo, hi = dates.get("effective_from"), dates.get("effective_to")
    if lo is not None and hi is not None and lo >= hi:
        problem("effective_from", f"{lo} is not before effective_to {hi}")
    if raw.get("id") is not None and isinstance(raw["id"], (str, int)):
        out += _name_problems(str(raw["id"]), str(raw.get("version")), path)
    for key in ("message", "expected", "actual"):
        if isinstance(raw.get(key), str):
            for name in template_settings(raw[key]):
                if name not in SETTING_NAMES:
                    problem(key, f"template names {{config.{name}}}, which is not a site setting")
    if out or when is None or not isinstance(cases, dict) or not isinstance(citations, (str, list)):
        return None, out
    rule = Rule(
        id=str(raw["id"]),
        title=str(raw["title"]),
        queue=raw["queue"],
        severity=raw["severity"],
        version=str(raw["version"]),
        status=raw["status"],
        citations=tuple([citations] if isinstance(citations, str) else citations),
        message=str(raw["message"]),
        when=when,
        cases=cases,
        path=path,
        effective_from=lo,
        effective_to=hi,
        expected=str(raw.get("expected") or ""),
        actual=str(raw.get("actual") or ""),
        description=str(raw.get("description") or ""),
        notes=str(raw.get("notes") or ""),
    )
    return rule, []


def _name_problems(rule_id: str, version: str, path: Path) -> list[Problem]:
    file = str(path)
    if not ID_SHAPE.match(rule_id):
        return [
            Problem(file, "id", f"{rule_id!r} is not an id like CODE-001 (capitals, a dash, three digits)", at=("id",))
        ]
    m = FILE_NAME.match(path.name)
    if not m or m.group("id") != rule_id:
        return [
            Problem(
                file, "id", f"file name must be {rule_id}.yaml or {rule_id}.v<N>.yaml (found {path.name})", at=("id",)
            )
        ]
    if m.group("n") is not None and m.group("n") != version:
        return [
            Problem(
                file, "version", f"version {version!r} does not match the file name's .v{m.group('n')}", at=("version",)
            )
        ]
    return []


def parse_rule(raw: Any, path: Path) -> Rule:
    """The Rule, or RuleFileError naming the first problem (and how many more there are)."""
    rule, problems = check_rule(raw, path)
    if rule is None:
        raise rule_file_error(problems)
    return rule


def rule_file_error(problems: list[Problem]) -> RuleFileError:
    """One line for a file's problems: the first, placed, and how many more `rules lint` lists."""
    first = min(problems, key=lambda p: p.sort_key)
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return RuleFileError(f"{first}{more}", field=first.field)
