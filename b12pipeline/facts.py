"""The facts frame a rule evaluation reads: normalised rows, cross-row facts, payer overrides.

One function for every caller (a night, history re-runs, rule cases, lint, the benchmark), so a
payer file that overrides a derived setting (covered diagnoses, windows, ...) changes those columns
for its rows everywhere the same way.
"""

from __future__ import annotations

import polars as pl

from b12pipeline import normalize
from b12pipeline.crossrow import CROSS_ROW_COLUMNS, add_cross_row_facts, cross_row_columns
from b12pipeline.engine.payers import DERIVED_SETTINGS, PAYER_COLUMN, PayerOverride, payer_override_expr
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.reference import Reference


def evaluation_facts(
    canonical: pl.DataFrame, reference: Reference, cfg: SiteConfig, payers: tuple[PayerOverride, ...] = ()
) -> pl.DataFrame:
    facts = normalize.facts(canonical, reference, cfg)
    facts = add_cross_row_facts(facts, cfg)
    return payer_facts(facts, cfg, payers)


def payer_facts(facts: pl.DataFrame, cfg: SiteConfig, payers: tuple[PayerOverride, ...]) -> pl.DataFrame:
    """Adds payer_override (the payer file each row falls under) and recomputes, for the rows of a
    file that overrides a derived setting, the columns that setting decides."""
    facts = facts.with_columns(payer_override_expr(payers))
    for p in payers:
        derived = set(p.settings) & set(DERIVED_SETTINGS)
        if not derived:
            continue
        own = p.config(cfg)
        mine = pl.col(PAYER_COLUMN) == p.id
        if "covered_dx_prefixes" in derived:
            table = normalize.dx_facts(own, facts).select("diagnosis_codes", "dx_covered")
            (covered,) = normalize.lookup(facts, "diagnosis_codes", table)
            facts = facts.with_columns(pl.when(mine).then(covered).otherwise(pl.col("dx_covered")).alias("dx_covered"))
        if "code_for_ingredient" in derived:
            code = pl.col("ingredient").replace_strict(own.code_for_ingredient, default=None, return_dtype=pl.String)
            facts = facts.with_columns(
                pl.when(mine).then(code).otherwise(pl.col("expected_code")).alias("expected_code")
            )
        # Only the columns the file's windows decide: the others come out the same as the site's.
        changed = tuple(c for c in CROSS_ROW_COLUMNS if any(c in DERIVED_SETTINGS[s] for s in derived))
        if changed:
            again = cross_row_columns(facts, own, changed, rows=mine)
            facts = facts.with_columns([pl.when(mine).then(again[c]).otherwise(pl.col(c)).alias(c) for c in changed])
    return facts
