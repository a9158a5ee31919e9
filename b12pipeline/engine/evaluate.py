"""Evaluate every active rule over the whole facts frame in one vectorised pass.

Each rule's condition is one Polars expression; all of them are computed in a single
`with_columns`, then each rule's hits are selected into the finding shape and concatenated. No
per-row Python except the finding-id digest (a stable SHA-256, which Polars' own hash is not).
"""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl

from b12pipeline.engine.conditions import Settings, compile_condition, config_used, fields_used
from b12pipeline.engine.payers import PAYER_COLUMN, PayerOverride, settings_read, with_payer_override
from b12pipeline.engine.rulefile import _PLACEHOLDER, Rule, Ruleset, template_fields, template_parts, template_settings

FINDING_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "finding_id": pl.String,
    "queue": pl.String,
    "rule_id": pl.String,
    "rule_version": pl.String,
    "ruleset_version": pl.String,
    "severity": pl.String,
    "message": pl.String,
    "expected": pl.String,
    "actual": pl.String,
    "admin_id": pl.String,
    "patient_id": pl.String,
    "encounter_id": pl.String,
    "service_date": pl.Date,
    "admin_time": pl.Datetime("us"),
    "medication_name": pl.String,
    "ndc11": pl.String,
    "dose_mcg": pl.Float64,
    "route": pl.String,
    "payer_type": pl.String,
    "payer_id": pl.String,
    "payer_override": pl.String,  # the rules/payers/ file that changed this finding's rule, if any
    "reference_versions": pl.String,  # "products <v>; asp_crosswalk <quarter-sha>": the tables it used
    "source_file": pl.String,
    "source_row": pl.Int64,
    "run_id": pl.String,
}


def _text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as coder-readable text: 2000.0 -> 2000, lists joined, empty -> (none)."""
    col = pl.col(name)
    if dtype.is_float():
        text = (
            pl.when(col == col.round(0))
            .then(col.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(col.round(2).cast(pl.String))
        )
    elif isinstance(dtype, pl.List):
        text = pl.when(col.list.len() > 0).then(col.list.join(",")).otherwise(None)
    elif dtype == pl.Boolean:
        text = pl.when(col).then(pl.lit("yes")).otherwise(pl.lit("no"))
    else:
        text = col.cast(pl.String)
    return text.fill_null("(none)")


def _setting_text(value: Any) -> str:
    """A setting's value as a coder reads it: 60, 2.5, yes/no, lists joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _setting(name: str, cfg: Settings, payers: tuple[PayerOverride, ...]) -> pl.Expr:
    """A setting's value as it applied to each row: the row's payer file's, else the site's."""
    expr = pl.lit(_setting_text(cfg.get(name)))
    for p in payers:
        if name in p.settings:
            own = pl.lit(_setting_text(p.config(cfg).get(name)))
            expr = pl.when(pl.col(PAYER_COLUMN) == p.id).then(own).otherwise(expr)
    return expr


def render(
    template: str, schema: pl.Schema, cfg: Settings | None = None, payers: tuple[PayerOverride, ...] = ()
) -> pl.Expr:
    """A message template ("{charge_units} unit(s) within {config.duplicate_window_minutes} minutes")
    as one vectorised string expression."""
    if not template:
        return pl.lit("")
    parts = template_parts(template)
    for is_setting, name in parts:
        if is_setting and cfg is None:
            raise ValueError(f"template {template!r} shows setting {name!r}: render it with the settings")
        if not is_setting and name not in schema:
            raise ValueError(f"template {template!r} names unknown column {name!r}")
    fmt = _PLACEHOLDER.sub("{}", template.replace("{{", "\0").replace("}}", "\1"))
    fmt = fmt.replace("\0", "{{").replace("\1", "}}")
    if not parts:
        return pl.lit(template)
    values = [
        _setting(name, cfg, payers) if is_setting and cfg is not None else _text(name, schema[name])
        for is_setting, name in parts
    ]
    return pl.format(fmt, *values)


def finding_ids(admin_ids: pl.Series, rule_ids: pl.Series) -> pl.Series:
    """Stable id of (admin_id, rule_id): the same finding keeps its id across runs and versions."""
    return pl.Series(
        "finding_id",
        [
            hashlib.sha256(f"{a}\x1f{r}".encode()).hexdigest()[:20]
            for a, r in zip(admin_ids.to_list(), rule_ids.to_list(), strict=True)
        ],
        dtype=pl.String,
    )


def rule_mask(rule: Rule, cfg: Settings, columns: set[str], payers: tuple[PayerOverride, ...] = ()) -> pl.Expr:
    """The rows a rule fires on. With payer files: rows of a file that overrides a setting the
    condition names are judged with that file's settings; rows of a file that turns it off never fire."""
    lo, hi = rule.window
    in_window = (pl.col("service_date") >= pl.lit(lo)) & (pl.col("service_date") < pl.lit(hi))
    cond = compile_condition(rule.when, cfg.get, columns)
    named = config_used(rule.when)
    for p in payers:
        if set(p.settings) & named:
            own = compile_condition(rule.when, p.config(cfg).get, columns)
            cond = pl.when(pl.col(PAYER_COLUMN) == p.id).then(own).otherwise(cond)
    off = [p.id for p in payers if p.disables(rule.id)]
    if off:
        cond = cond & ~pl.col(PAYER_COLUMN).is_in(off).fill_null(False)
    return in_window & cond.fill_null(False)


def _severity(rule: Rule, payers: tuple[PayerOverride, ...]) -> pl.Expr:
    expr = pl.lit(rule.severity)
    for p in payers:
        if p.severity(rule.id):
            expr = pl.when(pl.col(PAYER_COLUMN) == p.id).then(pl.lit(p.severity(rule.id))).otherwise(expr)
    return expr


# Facts columns derived from each CMS table (b12pipeline/normalize.cms_facts): a rule that reads one
# used that table. Every finding used the product reference (scope, ingredient, strength).
TABLE_COLUMNS = {
    "asp_crosswalk": {"xwalk_listed", "xwalk_hcpcs_ok", "xwalk_codes", "ndc_expected_units"},
    "noc_crosswalk": {"xwalk_listed", "xwalk_hcpcs_ok", "xwalk_codes"},
    "mue_practitioner": {"mue_value", "mue_mai", "mue_units", "mue_check", "mue_scope"},
    "mue_facility": {"mue_value", "mue_mai", "mue_units", "mue_check", "mue_scope"},
}


def reference_versions(rule: Rule, versions: dict[str, str]) -> str:
    """The versions of the reference tables a rule's condition and messages read, as one text."""
    read = fields_used(rule.when) | {
        name for t in (rule.message, rule.expected, rule.actual) for name in template_fields(t)
    }
    used = [name for name in versions if name == "products" or TABLE_COLUMNS.get(name, set()) & read]
    return "; ".join(f"{name} {versions[name]}" for name in sorted(used))


def _override_applied(rule: Rule, payers: tuple[PayerOverride, ...]) -> pl.Expr:
    """The payer file id on a finding when that file changed something this rule depends on."""
    reads = settings_read(rule.when, config_used) | {
        name for t in (rule.message, rule.expected, rule.actual) for name in template_settings(t)
    }
    ids = [p.id for p in payers if p.affects(rule.id, reads)]
    if not ids:
        return pl.lit(None, dtype=pl.String)
    return pl.when(pl.col(PAYER_COLUMN).is_in(ids)).then(pl.col(PAYER_COLUMN)).otherwise(None)


def empty_findings() -> pl.DataFrame:
    return pl.DataFrame(schema=FINDING_COLUMNS)


def evaluate(
    facts: pl.DataFrame, ruleset: Ruleset, cfg: Settings, run_id: str, rules: list[Rule] | None = None
) -> pl.DataFrame:
    """Findings of every active rule (or the given rules) on every row of `facts`."""
    rules = list(rules if rules is not None else ruleset.active)
    if facts.height == 0 or not rules:
        return empty_findings()
    payers = tuple(ruleset.payers)
    facts = with_payer_override(facts, payers)
    columns = set(facts.columns)
    flagged = facts.with_columns([rule_mask(r, cfg, columns, payers).alias(f"__hit{i}") for i, r in enumerate(rules)])
    return findings_from_hits(flagged, ruleset, rules, run_id, cfg)


def findings_from_hits(
    flagged: pl.DataFrame, ruleset: Ruleset, rules: list[Rule], run_id: str, cfg: Settings
) -> pl.DataFrame:
    """The findings of `rules` given facts with one boolean column `__hit<i>` per rule.

    Shared by every engine (engine/durable.py decides the hits its own way), so the finding shape,
    messages and ids cannot drift between engines.
    """
    if flagged.height == 0 or not rules:
        return empty_findings()
    # One chunk: polars 2.1 panics ("assertion failed: i < self.len()" in a string UDF) when the
    # filtered, formatted frame below is built from a multi-chunk frame with a materialised hit column.
    flagged = with_payer_override(flagged, tuple(ruleset.payers)).rechunk()
    schema = flagged.schema
    payers = tuple(ruleset.payers)
    parts = []
    for i, rule in enumerate(rules):
        parts.append(
            flagged.lazy()
            .filter(pl.col(f"__hit{i}"))
            .select(
                pl.lit(rule.queue).alias("queue"),
                pl.lit(rule.id).alias("rule_id"),
                pl.lit(rule.version).alias("rule_version"),
                pl.lit(ruleset.version).alias("ruleset_version"),
                _severity(rule, payers).alias("severity"),
                render(rule.message, schema, cfg, payers).alias("message"),
                render(rule.expected, schema, cfg, payers).alias("expected"),
                render(rule.actual, schema, cfg, payers).alias("actual"),
                "admin_id",
                "patient_id",
                "encounter_id",
                "service_date",
                "admin_time",
                "medication_name",
                "ndc11",
                "dose_mcg",
                "route",
                "payer_type",
                "payer_id",
                _override_applied(rule, payers).alias("payer_override"),
                pl.lit(reference_versions(rule, dict(ruleset.reference_versions))).alias("reference_versions"),
                "source_file",
                "source_row",
            )
        )
    found = pl.concat(parts).collect()
    found = found.with_columns(finding_ids(found["admin_id"], found["rule_id"]), pl.lit(run_id).alias("run_id"))
    return found.select([pl.col(c).cast(t) for c, t in FINDING_COLUMNS.items()]).sort(
        "service_date", "queue", "rule_id", "admin_id"
    )
