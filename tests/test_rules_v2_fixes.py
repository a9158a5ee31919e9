"""Fixes from a differential review of the catalog, and the NDC forms peer libraries accept.

Each test here failed before its fix: a zero concentration made the mL dose infinite; enumerated
values were case-sensitive (and "-0" negative); antidote hydroxocobalamin was a deficiency dose in
an unknown unit; MOD-002 fired for every payer; real-world NDC forms were "malformed".
"""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from b12pipeline import normalize
from b12pipeline.crossrow import add_cross_row_facts
from b12pipeline.engine.evaluate import evaluate
from b12pipeline.pipeline import Rules
from b12pipeline.rulecases import case_defaults, case_frame
from b12pipeline.validate import validate

CYANOKIT = {
    "ndc": "50633-310-11",
    "medication_name": "hydroxocobalamin for injection (Cyanokit) 5 g",
    "rxnorm_code": None,
    "dose_value": "5",
    "dose_unit": "g",
    "route": "IV",
    "charge_hcpcs": "J3490",
    "charge_ndc_qty": None,
    "charge_ndc_unit": None,
    "admin_cpt": "96365",
    "diagnosis_codes": "T65.0X1A",
}


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


def records(loaded: Rules, *changes: dict) -> pl.DataFrame:
    defaults = case_defaults(loaded.ruleset.directory)
    return case_frame([{**defaults, "admin_id": f"T-{i}", "patient_id": f"P-{i}", **c} for i, c in enumerate(changes)])


def facts_of(loaded: Rules, *changes: dict, cfg=None) -> pl.DataFrame:
    cfg = cfg or loaded.config
    return add_cross_row_facts(normalize.facts(records(loaded, *changes), loaded.reference, cfg), cfg)


def fired(loaded: Rules, *changes: dict, cfg=None) -> list[set[str]]:
    """The rule ids each record fires, in record order."""
    cfg = cfg or loaded.config
    found = evaluate(facts_of(loaded, *changes, cfg=cfg), loaded.ruleset, cfg, run_id="t")
    return [set(found.filter(pl.col("admin_id") == f"T-{i}")["rule_id"]) for i in range(len(changes))]


# --- concentration 0 is unknown ----------------------------------------------------------------


def test_zero_concentration_is_unknown_not_an_infinite_ml_dose(loaded):
    f = facts_of(loaded, {"ndc": None, "concentration_mcg_per_ml": "0", "container_type": "single_dose"})
    row = f.row(0, named=True)
    assert row["concentration"] is None and row["dose_ml"] is None
    assert row["dose_mcg"] == 1000.0  # a dose in mcg does not need the concentration


def test_zero_concentration_fires_no_quantity_or_waste_finding(loaded):
    (ids,) = fired(
        loaded,
        {"ndc": None, "concentration_mcg_per_ml": "0", "container_type": "single_dose", "charge_modifiers": "JZ"},
    )
    assert "NDC-005" not in ids and "DOC-007" not in ids


def test_zero_concentration_with_an_ml_dose_is_an_unconvertible_dose(loaded):
    (ids,) = fired(loaded, {"ndc": None, "concentration_mcg_per_ml": "0", "dose_value": "1", "dose_unit": "mL"})
    assert "UNITS-002" in ids


def test_zero_concentration_falls_back_to_the_reference(loaded):
    f = facts_of(loaded, {"concentration_mcg_per_ml": "0", "dose_value": "1", "dose_unit": "mL"})
    assert f["concentration"].to_list() == [1000.0] and f["dose_mcg"].to_list() == [1000.0]


# --- enumerated values: case and whitespace do not matter ---------------------------------------


def test_enumerated_values_in_any_case_pass_validation(loaded):
    frame = records(
        loaded,
        {"claim_type": "Professional"},
        {"claim_type": " INSTITUTIONAL "},
        {"container_type": "Single_Dose"},
        {"container_type": " multi_dose "},
        {"waste_mcg": "-0", "charge_units": "-0", "charge_ndc_qty": "-0.0"},
    )
    outcome = validate(frame)
    assert outcome.quarantine.height == 0, outcome.quarantine["failure_reasons"].to_list()
    assert outcome.valid.height == 5


def test_a_real_enumeration_error_is_still_quarantined(loaded):
    outcome = validate(records(loaded, {"claim_type": "dental"}, {"container_type": "ampoule"}, {"waste_mcg": "-5"}))
    assert outcome.quarantine.height == 3


def test_enumerated_values_are_read_case_and_whitespace_insensitively(loaded):
    f = facts_of(
        loaded,
        {"claim_type": " Institutional ", "payer_type": "  Medicare ", "container_type": "SINGLE_DOSE "},
        {"mar_action": "  GIVEN  ", "route": " Intra muscular", "dose_unit": " MCG ", "charge_ndc_unit": " ml"},
        {"mar_action": "New  Bag"},
    )
    assert f["claim_type"].to_list()[0] == "institutional"
    assert f["payer_type"].to_list()[0] == "medicare"
    assert f["container"].to_list()[0] == "single_dose"
    assert f["given"].to_list() == [True, True, True]
    assert f["dose_mcg"].to_list()[1] == 1000.0
    assert f["charge_ndc_unit"].to_list()[1] == "ML"


def test_minus_zero_is_zero(loaded):
    f = facts_of(loaded, {"waste_mcg": "-0", "charge_units": "-0"})
    assert f["waste_mcg"].to_list() == [0.0] and str(f["waste_mcg"][0]) == "0.0"
    assert f["charge_units"].to_list() == [0]


def test_mixed_case_claim_type_reaches_mod002(loaded):
    (ids,) = fired(loaded, {"claim_type": "Professional", "container_type": "Single_Dose"})
    assert "MOD-002" in ids


# --- antidote-strength hydroxocobalamin ----------------------------------------------------------


def test_grams_are_a_dose_unit(loaded):
    f = facts_of(loaded, CYANOKIT)
    assert f["dose_mcg"].to_list() == [5_000_000.0]
    assert f["antidote_use"].to_list() == [True]


def test_cyanokit_gets_no_deficiency_findings(loaded):
    (ids,) = fired(loaded, CYANOKIT)
    assert not ids & {"UNITS-002", "UNITS-003", "DX-003", "FREQ-001", "ADMIN-002"}, ids


def test_antidote_dose_in_mg_without_ndc_is_recognised(loaded):
    (ids,) = fired(
        loaded,
        {**CYANOKIT, "ndc": None, "medication_name": "hydroxocobalamin", "dose_value": "5000", "dose_unit": "mg"},
    )
    assert "UNITS-003" not in ids


def test_cyanokit_has_its_own_coding_checks(loaded):
    wrong_admin, wrong_code = fired(loaded, {**CYANOKIT, "admin_cpt": "96372"}, {**CYANOKIT, "charge_hcpcs": "J3420"})
    assert "ADMIN-006" in wrong_admin
    assert "CODE-001" in wrong_code


def test_a_deficiency_dose_of_hydroxocobalamin_is_not_the_antidote(loaded):
    f = facts_of(
        loaded, {"ndc": "0591-2888-30", "medication_name": "hydroxocobalamin 1,000 mcg/mL", "rxnorm_code": "317106"}
    )
    assert f["antidote_use"].to_list() == [False]


def test_an_antidote_dose_is_not_counted_as_a_b12_injection_for_duplicates(loaded):
    first = {**CYANOKIT, "admin_time": "2024-03-01T09:30:00"}
    second = {**CYANOKIT, "admin_time": "2024-03-01T10:00:00"}
    f = facts_of(loaded, {**first, "patient_id": "P-1"}, {**second, "patient_id": "P-1"})
    assert f["duplicate_of_prior"].to_list() == [False, False]


# --- MOD-002 payers -----------------------------------------------------------------------------


def test_mod002_only_for_the_jwjz_payers(loaded):
    single = {"container_type": "single_dose"}
    medicare, commercial, self_pay, medicaid = fired(
        loaded,
        single,
        {**single, "payer_type": "commercial"},
        {**single, "payer_type": "self_pay"},
        {**single, "payer_type": "medicaid"},
    )
    assert "MOD-002" in medicare
    assert "MOD-002" not in commercial | self_pay | medicaid


def test_mod002_payers_are_a_site_setting(loaded):
    cfg = dataclasses.replace(loaded.config, jwjz_payers=("medicare", "medicaid"))
    (ids,) = fired(loaded, {"container_type": "single_dose", "payer_type": "Medicaid"}, cfg=cfg)
    assert "MOD-002" in ids


# --- NDC forms (test vectors: kdar/health util/ndc_test.go) --------------------------------------


@pytest.mark.parametrize(
    "raw, ndc11, form",
    [
        ("000406-0522-05", "00406052205", "6-4-2"),
        ("054868-5338-*3", "54868533803", "6-4-2 with *"),
        ("076564-7654-5", "76564765405", "6-4-1"),
        ("045983-295-86", "45983029586", "6-3-2"),
        ("059372-837-6", "59372083706", "6-3-1"),
        ("000406052201", "00406052201", "12 digits"),
        ("045803-1234-34", "45803123434", "6-4-2"),
        ("12345-6789-0", "12345678900", "5-4-1"),
        ("60951-700-85", "60951070085", "5-3-2"),
        ("0591-0933-01", "00591093301", "4-4-2"),
    ],
)
def test_real_world_ndc_forms_normalise_to_5_4_2(raw, ndc11, form):
    n11, status = normalize.ndc_parts()
    out = pl.DataFrame({"ndc": [raw]}).select(n11.alias("n"), status.alias("s"), normalize.ndc_form().alias("f"))
    assert out.row(0) == (ndc11, "valid", form)
    assert len(ndc11) == 11 and ndc11.isdigit()


@pytest.mark.parametrize(
    "raw, status, form",
    [
        ("0004060522", "ambiguous", "10 digits"),  # bare 10 digits: which segment is short?
        ("a000406052201", "malformed", "other"),
        ("100406-0522-05", "malformed", "6-4-2"),  # a 6-digit labeler must be zero-padded
        ("1000406052201", "malformed", "13 digits"),
    ],
)
def test_what_is_ambiguous_or_not_an_ndc_is_still_refused(raw, status, form):
    n11, st = normalize.ndc_parts()
    out = pl.DataFrame({"ndc": [raw]}).select(n11.alias("n"), st.alias("s"), normalize.ndc_form().alias("f"))
    assert out.row(0) == (None, status, form)


def test_the_ndc_finding_names_the_form_seen(loaded):
    f = facts_of(loaded, {"ndc": "0004060522"})
    found = evaluate(f, loaded.ruleset, loaded.config, run_id="t").filter(pl.col("rule_id") == "NDC-002")
    assert found["message"].to_list() == [
        "NDC '0004060522' cannot be read as an 11-digit NDC (ambiguous; written as 10 digits)"
    ]


def test_a_6_4_2_ndc_is_in_b12_scope_and_in_the_reference(loaded):
    f = facts_of(loaded, {"ndc": "000517-0031-25"})
    assert f["ndc11"].to_list() == ["00517003125"] and f["ndc_in_reference"].to_list() == [True]
