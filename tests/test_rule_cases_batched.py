"""The case runner evaluates every case in one frame (rulecases.run_cases): its results must be
exactly those of running each case alone, on its own facts frame, as the runner did before; and
no case may see another's rows (each case's ids are its own).

`one_at_a_time` below is that earlier runner, kept here as the reference.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import polars as pl
import pytest

from b12pipeline.engine.evaluate import evaluate
from b12pipeline.facts import evaluation_facts
from b12pipeline.paths import rules_dir
from b12pipeline.pipeline import Rules
from b12pipeline.rulecases import (
    CASE_ID_COLUMNS,
    CaseResult,
    case_defaults,
    case_facts,
    case_frame,
    facts_by_case,
    run_cases,
    with_case_tables,
)


def one_at_a_time(rules_to_test, payers_to_test, rules: Rules) -> list[CaseResult]:
    """Each case alone: its own frame, its own facts, its own evaluation (the runner before batching)."""
    defaults = case_defaults(rules.ruleset.directory)
    results = []
    for rule in rules_to_test:
        for kind in ("fires", "passes"):
            for i, case in enumerate(rule.cases.get(kind, []) or [], start=1):
                note = str(case.get("_note", ""))
                try:
                    facts, admin_id = case_facts(case, defaults, rules.reference, rules.config, rules.ruleset.payers)
                    found = evaluate(facts, rules.ruleset, rules.config, run_id="rule-case", rules=[rule])
                    fired = bool(found.filter(pl.col("admin_id") == admin_id).height)
                except Exception as exc:
                    results.append(CaseResult(rule.id, kind, i, note, False, f"{type(exc).__name__}: {exc}"))
                    continue
                ok = fired if kind == "fires" else not fired
                results.append(
                    CaseResult(
                        rule.id, kind, i, note, ok, "" if ok else ("did not fire" if kind == "fires" else "fired")
                    )
                )
    for payer in payers_to_test:
        for kind in ("fires", "passes"):
            for i, case in enumerate(payer.cases.get(kind, []) or [], start=1):
                rule_id = str(case["_rule"])
                try:
                    ok, detail = _payer_case_alone(payer, rule_id, kind, case, defaults, rules)
                except Exception as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                label = f"payers/{payer.path.name}: {rule_id}"
                results.append(CaseResult(label, kind, i, str(case.get("_note", "")), ok, detail))
    return results


def _payer_case_alone(payer, rule_id: str, kind: str, case: dict, defaults: dict, rules) -> tuple[bool, str]:
    selected = [r for r in rules.ruleset.active if r.id == rule_id]
    if not selected:
        return False, f"no active rule {rule_id}"
    record = {k: v for k, v in case.items() if k not in ("_rule", "_severity")}
    facts, admin_id = case_facts(record, defaults, rules.reference, rules.config, rules.ruleset.payers)
    applied = facts.filter(pl.col("admin_id") == admin_id)["payer_override"].to_list()
    if kind == "fires" and applied != [payer.id]:
        return False, f"the record falls under {applied[0] or 'no payer file'}, not {payer.id}: name the payer"
    found = evaluate(facts, rules.ruleset, rules.config, run_id="payer-case", rules=selected)
    own = found.filter(pl.col("admin_id") == admin_id)
    if kind == "passes":
        return (own.height == 0, "" if own.height == 0 else "fired")
    if own.height == 0:
        return False, "did not fire"
    wanted = case.get("_severity")
    if wanted and own["severity"].to_list() != [wanted]:
        return False, f"severity {own['severity'].to_list()} instead of {wanted}"
    if wanted and own["payer_override"].to_list() != [payer.id]:
        return False, f"the finding records payer_override {own['payer_override'].to_list()}, not {payer.id}"
    return True, ""


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


@pytest.mark.slow
def test_shipped_cases_batched_equal_one_at_a_time(loaded: Rules) -> None:
    rules, payers = loaded.ruleset.rules, loaded.ruleset.payers
    batched = run_cases(rules, payers, loaded)
    assert len(batched) > 300
    assert batched == one_at_a_time(rules, payers, loaded)


@pytest.mark.slow
def test_shipped_case_facts_together_equal_alone(loaded: Rules) -> None:
    """Every shipped case's facts, derived in the shared frames, are its facts derived alone: every
    column, every row, but for the ids each case has made its own."""
    defaults = case_defaults(loaded.ruleset.directory)
    cases = [c for r in loaded.ruleset.rules for kind in ("fires", "passes") for c in r.cases.get(kind) or []]
    cases += [
        {k: v for k, v in c.items() if k not in ("_rule", "_severity")}
        for p in loaded.ruleset.payers
        for kind in ("fires", "passes")
        for c in p.cases.get(kind) or []
    ]
    together = facts_by_case(cases, defaults, loaded)
    assert all(f is not None for f in together)
    for n, (case, facts) in enumerate(zip(cases, together, strict=True)):
        alone, _ = case_facts(case, defaults, loaded.reference, loaded.config, loaded.ruleset.payers)
        assert facts is not None
        ids = facts.select(CASE_ID_COLUMNS)
        assert ids.equals(alone.select((f"{n}:" + pl.col(c)).alias(c) for c in CASE_ID_COLUMNS)), case
        assert facts.drop(CASE_ID_COLUMNS).equals(alone.drop(CASE_ID_COLUMNS)), case


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name}: {old!r}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Rules:
    """A copy of the shipped rules with a few decisions changed, so some cases fail (fires that no
    longer fire, passes that now fire, a wrong payer severity), and a few cases that cannot run."""
    folder = tmp_path_factory.mktemp("broken") / "rules"
    shutil.copytree(rules_dir(), folder)
    _edit(
        folder / "coding/MUE-001.yaml",
        "{field: mue_units, gt: {field: mue_value}}",
        "{field: mue_units, ge: {field: mue_value}}",
    )
    _edit(
        folder / "coding/DUP-001.yaml",
        "{field: duplicate_of_prior, eq: true}",
        "{field: duplicate_of_prior, eq: false}",
    )
    _edit(
        folder / "coding/UNITS-001.yaml",
        "{field: charge_units, ne: {field: expected_units}}",
        "{field: charge_units, gt: {field: expected_units}}",
    )
    _edit(folder / "payers/aetna.yaml", "FREQ-001: {severity: warning}", "FREQ-001: {severity: info}")
    # Cases that cannot run, and cases the shared frame cannot take (an empty id), among good ones.
    _edit(
        folder / "coding/UNITS-001.yaml",
        "cases:\n  fires:\n",
        "cases:\n  fires:\n"
        "    - {_note: an unknown column, no_such_column: x}\n"
        "    - {_note: an unknown table, _reference: {no_such_table: [{a: b}]}}\n"
        '    - {_note: an empty patient id, patient_id: "", charge_units: "3"}\n'
        '    - {_note: an empty admin id, admin_id: " ", charge_units: "3"}\n'
        '    - {_note: a number as admin id, admin_id: 7, charge_units: "3"}\n',
    )
    return Rules.load(folder)


@pytest.mark.slow
def test_broken_cases_batched_equal_one_at_a_time(broken: Rules) -> None:
    rules, payers = broken.ruleset.rules, broken.ruleset.payers
    batched = run_cases(rules, payers, broken)
    failed = {(r.rule_id, r.detail) for r in batched if not r.ok}
    assert {
        ("MUE-001", "fired"),
        ("DUP-001", "did not fire"),
        ("DUP-001", "fired"),
        ("UNITS-001", "did not fire"),
    } <= failed
    assert any(d.startswith("severity ['info'] instead of warning") for _, d in failed)
    assert any(d.startswith("ValueError: unknown column(s) in case: no_such_column") for _, d in failed)
    assert any(d.startswith("ValueError: _reference: unknown table(s) no_such_table") for _, d in failed)
    assert batched == one_at_a_time(rules, payers, broken)


def _with_cases(rule, *cases: dict):
    """`rule` carrying only these passes cases."""
    return dataclasses.replace(rule, cases={"fires": [], "passes": list(cases)})


def _fires_when_sharing(rule, cases: list[dict], rules: Rules) -> bool:
    """Does `rule` fire on the last case's record when the cases' rows share one frame with their
    ids as written (the frame the runner must not build)?"""
    defaults = case_defaults(rules.ruleset.directory)
    records = [{**defaults, **{k: v for k, v in c.items() if not k.startswith("_")}} for c in cases]
    reference = rules.reference
    if cases[0].get("_reference"):
        reference = with_case_tables(reference, cases[0]["_reference"])
    facts = evaluation_facts(case_frame(records), reference, rules.config, rules.ruleset.payers)
    found = evaluate(facts, rules.ruleset, rules.config, run_id="t", rules=[rule])
    return bool(found.filter(pl.col("admin_id") == records[-1]["admin_id"]).height)


MUE_DAY = {"mue_practitioner": [{"hcpcs": "J3420", "mue": "2", "mai": "3", "rationale": "stated for this test"}]}
ISOLATION = {
    # Two lines of the default patient, code and day: 1 + 2 units over an MUE of 2 for the day.
    "MUE-001": [
        {"_note": "one unit", "_reference": MUE_DAY},
        {
            "_note": "two units, later the same day",
            "admin_id": "CASE-0002",
            "admin_time": "2024-03-01T11:00:00",
            "dose_value": "2000",
            "charge_units": "2",
            "charge_ndc_qty": "2",
            "_reference": MUE_DAY,
        },
    ],
    # The same patient injected twice five minutes apart.
    "DUP-001": [
        {"_note": "at ten"},
        {"_note": "five minutes later", "admin_id": "ZZ-0002", "admin_time": "2024-03-01T10:05:00"},
    ],
}


@pytest.mark.parametrize("rule_id", sorted(ISOLATION))
def test_cases_of_one_patient_do_not_meet(rule_id: str, loaded: Rules) -> None:
    (rule,) = [r for r in loaded.ruleset.active if r.id == rule_id]
    cases = ISOLATION[rule_id]
    assert _fires_when_sharing(rule, cases, loaded), "the cases would meet in a frame with their ids as written"
    alone = [run_cases([_with_cases(rule, c)], [], loaded)[0] for c in cases]
    assert all(r.ok for r in alone)
    batched = run_cases([_with_cases(rule, *cases)], [], loaded)
    assert [(r.ok, r.detail) for r in batched] == [(r.ok, r.detail) for r in alone]


def test_frequency_case_beside_another_of_its_patient(loaded: Rules) -> None:
    """FREQ-001 (a cross-row rule): a case whose history makes it fire, next to cases of the same
    default patient on nearby days that must not be seen as its history (or see it)."""
    (rule,) = [r for r in loaded.ruleset.active if r.id == "FREQ-001"]
    fires = rule.cases["fires"]
    lone = [{"_note": f"a lone injection on day {d}", "admin_time": f"2024-03-{d:02d}T10:00:00"} for d in (1, 5, 20)]
    mixed = dataclasses.replace(rule, cases={"fires": list(fires), "passes": lone})
    batched = run_cases([mixed], [], loaded)
    assert all(r.ok for r in batched), [r for r in batched if not r.ok]
    assert batched == one_at_a_time([mixed], [], loaded)
