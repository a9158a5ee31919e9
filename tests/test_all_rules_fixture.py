"""The all-rules fixture extract: through the real pipeline, every rule fires on exactly its rows.

data/fixtures/emar_all_rules.csv is built by data/fixtures/build_all_rules_fixture.py; the rows each
rule is meant to fire on are declared in that build script (ROWS), not in the extract.
"""

from __future__ import annotations

import datetime as dt

import fixture_scripts
import polars as pl
import pytest

from b12pipeline.paths import OutputLayout
from b12pipeline.pipeline import Rules, apply_staged, stage_file
from b12pipeline.queues import read_queue
from b12pipeline.rulesets import load_ruleset

# The module's fixture stages and evaluates the all-rules extract (GX, facts, every rule): slow.
pytestmark = pytest.mark.slow
EXTRACT = fixture_scripts.FIXTURES / "emar_all_rules.csv"
CROSS_ROW = {"FREQ-001", "DUP-001"}  # not exercised by this fixture (one row per patient)
# Need CMS crosswalk or MUE rows, which the shipped reference does not hold (no public rows to build
# them from: rules/reference/cms/); tests/test_cms_tables.py runs them on imported tables.
CMS_TABLE_RULES = {"NDC-006", "UNITS-004", "MUE-001"}


def build_script():
    return fixture_scripts.load("build_all_rules_fixture")


def expected_rows() -> dict[str, set[str]]:
    return build_script().expected()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    rules = Rules.load()
    out = tmp_path_factory.mktemp("all_rules_out")
    staged = stage_file(EXTRACT, out, run_id="test-all-rules", night=dt.date(2024, 2, 29), rules=rules)
    applied = apply_staged([staged.staged], out, rules, run_id="test-all-rules")
    return {"rules": rules, "staged": staged, "applied": applied, "findings": read_queue(OutputLayout(out).queues)}


def test_fixture_is_what_the_build_script_writes(tmp_path):
    module = build_script()
    module.EXTRACT = tmp_path / "x.csv"
    module.main()
    assert module.EXTRACT.read_bytes() == EXTRACT.read_bytes(), "re-run data/fixtures/build_all_rules_fixture.py"


def test_fixture_is_a_good_extract(run):
    staged = run["staged"]
    assert staged.status == "processed", staged.error
    assert staged.quarantined == 0
    assert staged.out_of_scope == 1
    assert staged.in_scope == staged.rows_read - 1


def test_every_owned_rule_is_meant_to_fire_somewhere(run):
    owned = {r.id for r in run["rules"].ruleset.active} - CROSS_ROW - CMS_TABLE_RULES
    assert owned - set(expected_rows()) == set(), "rules the fixture never fires"


@pytest.mark.parametrize("rule_id", sorted({r.id for r in load_ruleset().rules}))
def test_rule_fires_on_exactly_its_rows(run, rule_id):
    found = run["findings"].filter(pl.col("rule_id") == rule_id)
    assert set(found["admin_id"].to_list()) == expected_rows().get(rule_id, set())


def test_clean_rows_fire_nothing(run):
    frame = pl.read_csv(EXTRACT, infer_schema=False)
    meant = set().union(*expected_rows().values())
    clean = set(frame["admin_id"].to_list()) - meant
    assert len(clean) >= 10
    assert set(run["findings"]["admin_id"].to_list()) & clean == set()


def test_findings_carry_rendered_messages(run):
    found = run["findings"]
    assert found.height == sum(len(v) for v in expected_rows().values())
    assert found.filter(pl.col("message").str.contains(r"\{")).height == 0
    units = found.filter(pl.col("rule_id") == "UNITS-001").row(0, named=True)
    assert (units["expected"], units["actual"]) == ("J3420 x 2", "J3420 x 1")
