"""Every rule's own cases: its `fires` records fire it and its near-miss `passes` records do not.

The clean default record (rules/_case_defaults.yaml) must fire no rule at all, so a firing case
fires because of what it changed.
"""

from __future__ import annotations

import polars as pl
import pytest

from b12pipeline.crossrow import add_cross_row_facts
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.paths import rules_dir
from b12pipeline.pipeline import Rules
from b12pipeline.rulecases import case_defaults, case_frame, run_rule_cases
from b12pipeline.rulesets import rule_files

RULES = rules_dir()
FILES = rule_files(RULES)  # every rule file, retired versions too: their cases must still hold


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(RULES).as_posix())
def test_rule_cases(path, loaded: Rules) -> None:
    (rule,) = [r for r in loaded.ruleset.rules if r.path == path]
    rule_id = f"{rule.id} v{rule.version}"
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
