"""Payer-specific overrides: one YAML file per payer or payer group under rules/payers/.

A payer file matches rows by payer id (a list; optionally narrowed to one payer type) or by payer
type alone, from its effective_from to its effective_to (exclusive) by date of service. For the rows
it matches it can turn rules off (`enabled: false`), change a rule's severity, or override site
settings (payer lists, windows, covered diagnoses, ...). Each row gets at most one file: the most
specific match effective on its date of service (payer id, then payer type); a row no file matches
gets the site's defaults. Files are not layered: a payer-id file replaces its payer type's file.

    title: UnitedHealthcare Community Plan of Maryland (Medicaid)
    match: {payer_id: ["87726"], payer_type: medicaid}
    effective_from: 2025-05-01
    citations: ["..."]
    rules: {MOD-002: {severity: error}, DX-003: {enabled: false}}
    settings: {jwjz_payers: [medicaid]}
    cases: {fires: [{_rule: MOD-002, payer_id: "87726", ...}], passes: [...]}

The evaluation writes the file's id (its name without .yaml) into `payer_override` on the row and,
when the file changed something the rule reads, on the finding.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loading payer files needs no Polars: the CLI checks rules before importing it
    import polars as pl

from b12pipeline.engine.rulefile import FAR_FUTURE, FAR_PAST, SEVERITIES, RuleFileError, _date
from b12pipeline.engine.settings import ConfigError, SiteConfig, coerce_setting

PAYER_FOLDER = "payers"
PAYER_COLUMN = "payer_override"
REQUIRED_FIELDS = ("title", "match", "citations")
OPTIONAL_FIELDS = ("effective_from", "effective_to", "description", "rules", "settings", "cases")
RULE_OVERRIDE_KEYS = ("enabled", "severity")
CASE_KEYS = ("_note", "_rule", "_severity", "_history")
# Settings that decide what a row is (or how a file is validated), not how a payer is billed.
NOT_PER_PAYER = (
    "given_actions",
    "max_quarantine_share",
    "antidote_ndcs",
    "antidote_min_dose_mg",
    "reference_max_age_quarters",
    "time_zone",
    "earliest_service_date",
    "service_date_max_days_after_night",
)
# Settings read while deriving facts columns rather than in conditions: a payer file that overrides
# one has those columns recomputed for its rows (b12pipeline/facts.py).
DERIVED_SETTINGS: dict[str, tuple[str, ...]] = {
    "covered_dx_prefixes": ("dx_covered",),
    "code_for_ingredient": ("expected_code",),
    "frequency_window_days": ("prior_injection_within_window",),
    "frequency_lookback_days": ("days_since_first_injection",),
    "duplicate_window_minutes": ("duplicate_of_prior",),
}


class PayerFileError(RuleFileError):
    """A payer file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class PayerOverride:
    id: str  # the file name without .yaml
    title: str
    path: Path
    payer_ids: tuple[str, ...]  # upper-cased, trimmed; () = matches by payer type only
    payer_type: str | None  # enum_text form (lower case)
    citations: tuple[str, ...]
    rules: dict[str, dict] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    cases: dict = field(default_factory=dict)
    description: str = ""
    effective_from: dt.date | None = None
    effective_to: dt.date | None = None

    @property
    def window(self) -> tuple[dt.date, dt.date]:
        return (self.effective_from or FAR_PAST, self.effective_to or FAR_FUTURE)

    @property
    def specificity(self) -> int:
        """0 = payer id (most specific), 1 = payer type."""
        return 0 if self.payer_ids else 1

    def config(self, base: Any) -> Any:
        """The site settings (a SiteConfig) with this file's settings in place."""
        return dataclasses.replace(base, **self.settings) if self.settings else base

    def disables(self, rule_id: str) -> bool:
        return self.rules.get(rule_id, {}).get("enabled") is False

    def severity(self, rule_id: str) -> str | None:
        return self.rules.get(rule_id, {}).get("severity")

    def affects(self, rule_id: str, settings_read: set[str]) -> bool:
        """Does this file change anything about the rule (its switch, severity, or a setting it reads)?"""
        return rule_id in self.rules or bool(set(self.settings) & settings_read)

    def match_text(self) -> str:
        parts = []
        if self.payer_ids:
            parts.append("payer id " + ", ".join(f"`{p}`" for p in self.payer_ids))
        if self.payer_type:
            parts.append(f"payer type `{self.payer_type}`")
        return " and ".join(parts)


def _norm_type(value: Any) -> str:
    return " ".join(str(value).split()).lower()


def _norm_id(value: Any) -> str:
    return " ".join(str(value).split()).upper()


def parse_payer(raw: Any, path: Path) -> PayerOverride:
    """A payer file's data as a PayerOverride, or PayerFileError naming the file and the field."""
    if not isinstance(raw, dict):
        raise PayerFileError(f"{path}: a payer file must be a mapping of fields")
    unknown = sorted(set(map(str, raw)) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise PayerFileError(
            f"{path}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}"
        )
    missing = [k for k in REQUIRED_FIELDS if raw.get(k) in (None, "", [], {})]
    if missing:
        raise PayerFileError(f"{path}: missing required field(s) {', '.join(missing)}")
    match = raw["match"]
    if not isinstance(match, dict) or not match or set(match) - {"payer_id", "payer_type"}:
        raise PayerFileError(f"{path}: match: give payer_id (a list), payer_type, or both")
    ids = match.get("payer_id") or []
    if isinstance(ids, (str, int)):
        ids = [ids]
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and str(i).strip() for i in ids):
        raise PayerFileError(f"{path}: match.payer_id must be a list of payer ids")
    payer_type = match.get("payer_type")
    if payer_type is not None and (not isinstance(payer_type, str) or not payer_type.strip()):
        raise PayerFileError(f"{path}: match.payer_type must be one payer type (e.g. medicaid)")
    if not ids and payer_type is None:
        raise PayerFileError(f"{path}: match: give payer_id (a list), payer_type, or both")
    citations = raw["citations"]
    if isinstance(citations, str):
        citations = [citations]
    if not isinstance(citations, list) or not all(isinstance(c, str) and c.strip() for c in citations):
        raise PayerFileError(f"{path}: citations must be a list of non-empty strings")
    rules = raw.get("rules") or {}
    if not isinstance(rules, dict):
        raise PayerFileError(f"{path}: rules must map rule ids to {{enabled: false}} or {{severity: ...}}")
    for rule_id, change in rules.items():
        where = f"{path}: rules.{rule_id}"
        if not isinstance(change, dict) or not change or set(change) - set(RULE_OVERRIDE_KEYS):
            raise PayerFileError(f"{where}: give enabled: false and/or severity ({', '.join(SEVERITIES)})")
        if "enabled" in change and change["enabled"] is not False:
            raise PayerFileError(f"{where}: enabled: only false is meaningful (rules are on unless turned off)")
        if "severity" in change and change["severity"] not in SEVERITIES:
            raise PayerFileError(f"{where}: severity {change['severity']!r} is not one of {', '.join(SEVERITIES)}")
    settings_raw = raw.get("settings") or {}
    if not isinstance(settings_raw, dict):
        raise PayerFileError(f"{path}: settings must be a mapping of site settings")
    known = {f.name for f in dataclasses.fields(SiteConfig)}
    settings = {}
    for key, value in settings_raw.items():
        if key not in known:
            raise PayerFileError(f"{path}: settings.{key} is not a site setting; known: {', '.join(sorted(known))}")
        if key in NOT_PER_PAYER:
            raise PayerFileError(f"{path}: settings.{key} is site-wide and cannot be set per payer")
        try:
            settings[key] = coerce_setting(key, value, f"{path}: settings")
        except ConfigError as exc:
            raise PayerFileError(str(exc)) from None
    cases = raw.get("cases") or {}
    if not isinstance(cases, dict) or set(cases) - {"fires", "passes"}:
        raise PayerFileError(f"{path}: cases must be a mapping with keys fires, passes")
    for kind, items in cases.items():
        if not isinstance(items, list) or not all(isinstance(c, dict) for c in items):
            raise PayerFileError(f"{path}: cases.{kind} must be a list of records")
        for i, case in enumerate(items, start=1):
            if not case.get("_rule"):
                raise PayerFileError(f"{path}: cases.{kind}[{i}]: _rule (the rule id the case checks) is required")
    override = PayerOverride(
        id=path.stem,
        title=str(raw["title"]),
        path=path,
        payer_ids=tuple(_norm_id(i) for i in ids),
        payer_type=_norm_type(payer_type) if payer_type is not None else None,
        citations=tuple(citations),
        rules={str(k): dict(v) for k, v in rules.items()},
        settings=settings,
        cases=cases,
        description=str(raw.get("description") or ""),
        effective_from=_date(raw.get("effective_from"), path, "effective_from"),
        effective_to=_date(raw.get("effective_to"), path, "effective_to"),
    )
    lo, hi = override.window
    if lo >= hi:
        raise PayerFileError(f"{path}: effective_from {lo} is not before effective_to {hi}")
    return override


def overlap_problems(payers: list[PayerOverride]) -> list[tuple[PayerOverride, str]]:
    """Two files that could both be the most specific match for one row on one date."""
    out = []
    for i, a in enumerate(payers):
        for b in payers[i + 1 :]:
            same_key = a.specificity == b.specificity and (
                (a.payer_ids and set(a.payer_ids) & set(b.payer_ids) and a.payer_type == b.payer_type)
                or (not a.payer_ids and a.payer_type == b.payer_type)
            )
            if same_key and a.window[0] < b.window[1] and b.window[0] < a.window[1]:
                out.append(
                    (b, f"matches the same payer as {a.path.name} on overlapping dates: one file per payer and date")
                )
    return out


# --- evaluation ---------------------------------------------------------------------------------


def _matches(p: PayerOverride) -> pl.Expr:
    import polars as pl

    lo, hi = p.window
    cond = (pl.col("service_date") >= pl.lit(lo)) & (pl.col("service_date") < pl.lit(hi))
    if p.payer_ids:
        payer_id = pl.col("payer_id").str.replace_all(r"\s+", " ").str.strip_chars().str.to_uppercase()
        cond = cond & payer_id.is_in(list(p.payer_ids))
    if p.payer_type is not None:
        cond = cond & (pl.col("payer_type") == p.payer_type)
    return cond.fill_null(False)


def payer_override_expr(payers: tuple[PayerOverride, ...] | list[PayerOverride]) -> pl.Expr:
    """The id of the payer file that applies to each row (most specific first), or null."""
    import polars as pl

    ordered = sorted(payers, key=lambda p: (p.specificity, p.id))
    if not ordered:
        return pl.lit(None, dtype=pl.String).alias(PAYER_COLUMN)
    expr: Any = pl.when(_matches(ordered[0])).then(pl.lit(ordered[0].id))
    for p in ordered[1:]:
        expr = expr.when(_matches(p)).then(pl.lit(p.id))
    return expr.otherwise(pl.lit(None, dtype=pl.String)).alias(PAYER_COLUMN)


def with_payer_override(facts: pl.DataFrame, payers: tuple[PayerOverride, ...]) -> pl.DataFrame:
    """`facts` with the payer_override column (kept when already there, as b12pipeline/facts.py
    builds it together with the payer-specific derived columns)."""
    import polars as pl

    if PAYER_COLUMN in facts.columns:
        return facts
    needs = sorted({k for p in payers for k in p.settings if k in DERIVED_SETTINGS})
    if needs:
        raise ValueError(
            f"payer files override derived settings ({', '.join(needs)}): build the facts with "
            "b12pipeline.facts.evaluation_facts so those columns are recomputed per payer"
        )
    if "payer_id" not in facts.columns:
        facts = facts.with_columns(pl.lit(None, dtype=pl.String).alias("payer_id"))
    return facts.with_columns(payer_override_expr(payers))


def settings_read(rule_when: Any, config_used) -> set[str]:
    """Settings a rule depends on: those its condition names, and those behind derived columns it reads."""
    from b12pipeline.engine.conditions import fields_used

    used = set(config_used(rule_when))
    columns = fields_used(rule_when)
    used |= {key for key, cols in DERIVED_SETTINGS.items() if columns & set(cols)}
    return used
