"""Payer-specific overrides (rules/payers/): matching, effective dates, each override kind, the
finding's record of the file that applied, lint, cases, docs and the coder export."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest
from rules_support import FEW
from rules_support import rules_copy as copy_rules
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.facts import evaluation_facts
from b12pipeline.paths import rules_dir
from b12pipeline.pipeline import Rules, apply_staged, stage_file
from b12pipeline.rulecases import case_defaults, case_frame, run_payer_cases
from b12pipeline.rulelint import lint_rules
from b12pipeline.rulesets import ruleset_version

SINGLE = {"container_type": "single_dose", "admin_time": "2025-06-02T10:00:00"}
UHC_MD = {"payer_id": "87726", "payer_type": "medicaid"}

# A payer-type file exercising the kinds the shipped files do not: a rule turned off, and settings
# behind derived columns (covered diagnoses, the frequency window).
TEST_PAYER = """\
title: Test commercial group
match: {payer_type: commercial}
effective_from: 2024-01-01
citations: ["tests/test_payer_overrides.py (a test payer group)"]
rules:
  DX-001: {enabled: false}
  UNITS-003: {severity: warning}
settings:
  covered_dx_payers: [commercial]
  covered_dx_prefixes: [R53]
  frequency_payers: [commercial]
  frequency_window_days: 10
cases:
  fires:
    - {_rule: DX-003, _note: "commercial checked against its own list", payer_type: commercial, diagnosis_codes: D51.0}
    - {_rule: UNITS-003, _severity: warning, _note: "severity lowered", payer_type: commercial,
       dose_value: "2000", charge_units: "2", charge_ndc_qty: "2"}
    - _rule: FREQ-001
      _note: "previous dose 8 days before: inside the 10-day window"
      payer_type: commercial
      _history:
        - {admin_time: "2023-11-01T10:00:00", payer_type: commercial}
        - {admin_time: "2024-02-22T10:00:00", payer_type: commercial}
  passes:
    - {_rule: DX-001, _note: "turned off", payer_type: commercial, diagnosis_codes: null}
    - {_rule: DX-003, _note: "R53 is covered for this group", payer_type: commercial, diagnosis_codes: R53.83}
    - _rule: FREQ-001
      _note: "previous dose 15 days before: outside the 10-day window"
      payer_type: commercial
      _history:
        - {admin_time: "2023-11-01T10:00:00", payer_type: commercial}
        - {admin_time: "2024-02-15T10:00:00", payer_type: commercial}
    - {_rule: DX-001, _note: "a Medicare row with a diagnosis", payer_type: medicare, diagnosis_codes: D51.0}
"""


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


@pytest.fixture()
def rules_copy(tmp_path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(rules_dir(), folder)
    (folder / "payers" / "test-commercial.yaml").write_text(TEST_PAYER)
    return folder


def findings(rules: Rules, *changes: dict) -> pl.DataFrame:
    defaults = case_defaults(rules.ruleset.directory)
    records = [{**defaults, "admin_id": f"T-{i}", "patient_id": f"P-{i}", **c} for i, c in enumerate(changes)]
    facts = evaluation_facts(case_frame(records), rules.reference, rules.config, rules.ruleset.payers)
    return evaluate(facts, rules.ruleset, rules.config, run_id="t")


def of(found: pl.DataFrame, i: int, rule_id: str) -> list[dict]:
    return found.filter((pl.col("admin_id") == f"T-{i}") & (pl.col("rule_id") == rule_id)).to_dicts()


def test_a_payer_file_turns_mod002_on_for_one_medicaid_payer(loaded):
    found = findings(
        loaded,
        {**SINGLE, **UHC_MD},
        {**SINGLE, "payer_id": "12345", "payer_type": "medicaid"},  # another Medicaid payer
        {**SINGLE, **UHC_MD, "admin_time": "2025-04-30T10:00:00"},  # before the file's effective date
        {**SINGLE, "payer_id": "87726", "payer_type": "commercial"},  # the same payer id, commercial plan
    )
    (hit,) = of(found, 0, "MOD-002")
    assert hit["payer_override"] == "uhc-community-plan-md" and hit["payer_id"] == "87726"
    assert hit["payer_type"] == "medicaid" and hit["severity"] == "error"
    assert not of(found, 1, "MOD-002") and not of(found, 2, "MOD-002") and not of(found, 3, "MOD-002")


def test_a_medicare_finding_records_no_payer_file(loaded):
    (hit,) = of(findings(loaded, {**SINGLE}), 0, "MOD-002")
    assert hit["payer_override"] is None


def test_severity_override_is_on_the_finding(loaded):
    history = [{"admin_time": "2023-11-01T10:00:00"}, {"admin_time": "2024-02-15T10:00:00"}]
    aetna = {"payer_id": "60054", "payer_type": "commercial"}
    rows = [{**h, **aetna, "admin_id": f"H-{i}"} for i, h in enumerate(history)] + [aetna]
    defaults = case_defaults(loaded.ruleset.directory)
    frame = case_frame([{**defaults, "admin_id": r.pop("admin_id", "T-0"), **r} for r in rows])
    facts = evaluation_facts(frame, loaded.reference, loaded.config, loaded.ruleset.payers)
    found = evaluate(facts, loaded.ruleset, loaded.config, run_id="t").filter(pl.col("rule_id") == "FREQ-001")
    assert found.select("admin_id", "severity", "payer_override").rows() == [("T-0", "warning", "aetna")]


def test_each_override_kind_and_the_most_specific_match(rules_copy):
    rules = Rules.load(rules_copy)
    found = findings(
        rules,
        {"payer_type": "commercial", "diagnosis_codes": None},  # DX-001 turned off
        {"payer_type": "medicare", "diagnosis_codes": None},  # DX-001 on by default
        {"payer_type": "commercial", "diagnosis_codes": "D51.0"},  # DX-003 with the group's list
        {"payer_type": "commercial", "diagnosis_codes": "R53.83"},  # covered for the group
        {"payer_type": "commercial", "dose_value": "2000", "charge_units": "2", "charge_ndc_qty": "2"},
        {"payer_id": "60054", "payer_type": "commercial", "diagnosis_codes": None},  # Aetna file wins
    )
    assert not of(found, 0, "DX-001") and of(found, 1, "DX-001")
    assert of(found, 2, "DX-003")[0]["payer_override"] == "test-commercial"
    assert not of(found, 3, "DX-003")
    assert of(found, 4, "UNITS-003")[0]["severity"] == "warning"
    # the payer-id file is more specific than the payer-type file, and files are not layered
    (dx001,) = of(found, 5, "DX-001")
    assert dx001["payer_override"] is None  # aetna.yaml does not touch DX-001


def test_a_message_shows_the_setting_that_applied_to_the_row(rules_copy):
    """FREQ-001 shows the frequency window as a number: the test group's 10 days on its row, the
    site's 30 on a Medicare row (a template's {config.key} follows the row's payer file)."""
    rules = Rules.load(rules_copy)
    defaults = case_defaults(rules.ruleset.directory)
    rows = []
    for patient, payer, prior in (("P-C", "commercial", "2024-02-22"), ("P-M", "medicare", "2024-02-15")):
        for i, when in enumerate(("2023-11-01T10:00:00", f"{prior}T10:00:00")):
            rows.append({"admin_id": f"H-{patient}-{i}", "admin_time": when})
        rows.append({"admin_id": f"T-{patient}"})
        rows[-3:] = [{**defaults, **r, "patient_id": patient, "payer_type": payer} for r in rows[-3:]]
    facts = evaluation_facts(case_frame(rows), rules.reference, rules.config, rules.ruleset.payers)
    found = evaluate(facts, rules.ruleset, rules.config, run_id="t").filter(pl.col("rule_id") == "FREQ-001")
    shown = dict(found.select("admin_id", "actual").rows())
    assert shown == {
        "T-P-C": "another B12 injection within 10 days",
        "T-P-M": "another B12 injection within 30 days",
    }, shown
    assert "within 10 days; the first injection in the 365-day look-back" in found["message"][0]


INSTITUTIONAL_PAYER = """\
title: Test payer checking institutional claims
match: {payer_id: ["99999"]}
citations: ["tests/test_payer_overrides.py (a test payer)"]
settings:
  mod002_institutional: true
"""


def test_a_true_false_setting_is_a_condition_for_the_site_and_per_payer(rules_copy):
    """MOD-002 reads {config: mod002_institutional} itself (no facts column made for it): an
    institutional claim is checked where the site, or the row's payer file, turns the setting on;
    both engines agree."""
    from b12pipeline.engine import durable

    (rules_copy / "payers" / "test-institutional.yaml").write_text(INSTITUTIONAL_PAYER)
    rules = Rules.load(rules_copy)
    defaults = case_defaults(rules.ruleset.directory)
    rows = [
        {**defaults, **SINGLE, "admin_id": f"T-{i}", "patient_id": f"P-{i}", "claim_type": "institutional", **c}
        for i, c in enumerate(({"payer_id": "99999"}, {"payer_id": None}))
    ]
    facts = evaluation_facts(case_frame(rows), rules.reference, rules.config, rules.ruleset.payers)
    site_on = dataclasses.replace(rules.config, mod002_institutional=True)
    engines = [evaluate] + ([durable.evaluate] if durable.available() else [])
    for run in engines:
        by_payer = run(facts, rules.ruleset, rules.config, run_id="t").filter(pl.col("rule_id") == "MOD-002")
        assert by_payer.select("admin_id", "payer_override").rows() == [("T-0", "test-institutional")], run
        by_site = run(facts, rules.ruleset, site_on, run_id="t").filter(pl.col("rule_id") == "MOD-002")
        assert by_site["admin_id"].to_list() == ["T-0", "T-1"], run


def test_payer_file_cases_run_and_can_fail(rules_copy):
    rules = Rules.load(rules_copy)
    (payer,) = [p for p in rules.ruleset.payers if p.id == "test-commercial"]
    results = run_payer_cases(payer, rules)
    assert results and all(r.ok for r in results), [(r.rule_id, r.note, r.detail) for r in results if not r.ok]
    wrong = TEST_PAYER.replace("_severity: warning", "_severity: error")
    (rules_copy / "payers" / "test-commercial.yaml").write_text(wrong)
    rules = Rules.load(rules_copy)
    (payer,) = [p for p in rules.ruleset.payers if p.id == "test-commercial"]
    failed = [r for r in run_payer_cases(payer, rules) if not r.ok]
    assert [r.detail for r in failed] == ["severity ['warning'] instead of error"]


@pytest.mark.slow  # every case of the payer files and the rules they name, lint and docs
def test_rules_test_lint_and_docs_cover_payer_files(tmp_path):
    # The rules the payer files name, not the whole catalog: `rules test` runs every case it is given.
    rules_copy = copy_rules(tmp_path / "rules", only=(*FEW, "DX-001", "DX-003", "UNITS-003"))
    (rules_copy / "payers" / "test-commercial.yaml").write_text(TEST_PAYER)
    runner = CliRunner()
    tested = runner.invoke(app, ["rules", "test", "--rules", str(rules_copy)])
    assert tested.exit_code == 0, tested.output
    assert lint_rules(rules_copy) == []
    out = tmp_path / "rules.md"
    assert runner.invoke(app, ["rules", "docs", "--rules", str(rules_copy), "--out", str(out)]).exit_code == 0
    text = out.read_text()
    assert "### Payer file `test-commercial.yaml`" in text and "| DX-001 | turned off |" in text
    assert "### Payer file `uhc-community-plan-md.yaml`" in text


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"DX-001: {enabled: false}": "NOPE-1: {enabled: false}"}, "rules.NOPE-1", "no rule file has this id"),
        ({"UNITS-003: {severity: warning}": "UNITS-003: {severity: fatal}"}, "file", "severity 'fatal'"),
        ({"  frequency_window_days: 10": "  given_actions: [given]"}, "file", "site-wide"),
        ({"DX-001: {enabled: false}": "DOC-004: {enabled: false}"}, "rules.DOC-004", "no case"),
    ],
)
def test_lint_names_payer_file_problems(rules_copy, change, field, message):
    text = TEST_PAYER
    for a, b in change.items():
        assert a in text
        text = text.replace(a, b)
    (rules_copy / "payers" / "test-commercial.yaml").write_text(text)
    problems = [p for p in lint_rules(rules_copy) if p.file == "payers/test-commercial.yaml"]
    assert any(p.field == field and message in p.message for p in problems), problems


def test_two_files_for_the_same_payer_and_dates_are_refused(rules_copy):
    (rules_copy / "payers" / "test-commercial-2.yaml").write_text(TEST_PAYER)
    problems = [p for p in lint_rules(rules_copy) if p.field == "match"]
    assert problems and "overlapping dates" in problems[0].message
    runner = CliRunner()
    listed = runner.invoke(app, ["rules", "list", "--rules", str(rules_copy)])
    assert listed.exit_code == 2 and "overlapping dates" in listed.output


def test_payer_files_are_in_the_ruleset_version(rules_copy):
    before = ruleset_version(rules_copy)
    path = rules_copy / "payers" / "test-commercial.yaml"
    path.write_text(path.read_text().replace("frequency_window_days: 10", "frequency_window_days: 11"))
    assert ruleset_version(rules_copy) != before


@pytest.mark.slow
def test_the_coder_export_shows_the_payer(tmp_path):
    out = tmp_path / "out"
    extract = tmp_path / "emar_2025-06-02.csv"
    defaults = case_defaults(rules_dir())
    record = {**defaults, **SINGLE, **UHC_MD, "expiration_date": "2026-12-31"}
    pl.DataFrame([{k: (None if v is None else str(v)) for k, v in record.items()}]).write_csv(extract)
    rules = Rules.load()
    staged = stage_file(extract, out, "run-payer", dt.date(2025, 6, 2), rules).staged
    apply_staged([staged], out, rules, "run-payer")
    runner = CliRunner()
    target = tmp_path / "coding.csv"
    exported = runner.invoke(
        app, ["queue", "export", "coding", "--out", str(out), "--format", "csv", "--to", str(target)]
    )
    assert exported.exit_code == 0, exported.output
    rows = pl.read_csv(target, infer_schema=False).filter(pl.col("Rule") == "MOD-002").to_dicts()
    assert len(rows) == 1
    assert rows[0]["Payer id"] == "87726" and rows[0]["Payer"] == "medicaid"
    assert rows[0]["Payer rules file"] == "uhc-community-plan-md"


def test_payer_file_must_name_a_payer(tmp_path):
    from b12pipeline.engine.payers import PayerFileError, parse_payer

    raw = {"title": "x", "match": {}, "citations": ["c"]}
    with pytest.raises(PayerFileError, match="match"):
        parse_payer(raw, tmp_path / "x.yaml")
