"""Every rule's own cases: its `fires` records fire it and its near-miss `passes` records do not.

The clean default record (rules/_case_defaults.yaml) must fire no rule at all, so a firing case
fires because of what it changed.
"""

from __future__ import annotations

import polars as pl
import pytest

from b12pipeline.crossrow import add_cross_row_facts
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.pipeline import Rules
from b12pipeline.rulecases import case_defaults, case_frame, run_rule_cases
from b12pipeline.rulesets import load_ruleset

RULESET = load_ruleset()
RULE_IDS = sorted({r.id for r in RULESET.active})


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_cases(rule_id: str, loaded: Rules) -> None:
    (rule,) = [r for r in loaded.ruleset.active if r.id == rule_id]
    assert len(rule.cases.get("fires") or []) >= 2, f"{rule_id} needs several firing cases"
    assert len(rule.cases.get("passes") or []) >= 2, f"{rule_id} needs several near-miss cases"
    results = run_rule_cases(rule, loaded)
    failed = [f"{r.kind}[{r.index}] {r.note!r}: {r.detail}" for r in results if not r.ok]
    assert not failed, f"{rule_id}: " + "; ".join(failed)


def test_clean_default_record_fires_no_rule(loaded: Rules) -> None:
    defaults = case_defaults(loaded.ruleset.directory)
    facts = normalize_frame(case_frame([defaults]), loaded)
    found = evaluate(facts, loaded.ruleset, loaded.config, run_id="clean")
    assert found.height == 0, f"clean record fired {found['rule_id'].to_list()}"


def normalize_frame(frame: pl.DataFrame, loaded: Rules) -> pl.DataFrame:
    from b12pipeline import normalize

    return add_cross_row_facts(normalize.facts(frame, loaded.reference, loaded.config), loaded.config)
