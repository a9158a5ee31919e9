"""Unit tests of the normalisation and of every derived facts column (docs/columns.md)."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pytest

from b12pipeline import normalize
from b12pipeline.pipeline import Rules
from b12pipeline.rulecases import case_defaults, case_frame


@pytest.fixture(scope="module")
def loaded() -> Rules:
    return Rules.load()


@pytest.fixture(scope="module")
def defaults(loaded: Rules) -> dict:
    return case_defaults(loaded.ruleset.directory)


def facts_of(loaded: Rules, defaults: dict, *changes: dict, cfg=None) -> pl.DataFrame:
    """Facts of one row per `changes` (each the clean case record with those fields changed)."""
    records = [{**defaults, "admin_id": f"T-{i}", **c} for i, c in enumerate(changes)]
    return normalize.facts(case_frame(records), loaded.reference, cfg or loaded.config)


def column(frame_of_text: dict[str, list], expr: pl.Expr) -> list:
    return (
        pl.DataFrame(frame_of_text, schema={k: pl.String for k in frame_of_text}).select(expr.alias("x"))["x"].to_list()
    )


# --- NDC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, ndc11, status",
    [
        ("0517-0031-25", "00517003125", "valid"),  # 4-4-2: pad the labeler
        ("63323-044-44", "63323004444", "valid"),  # 5-3-2: pad the product
        ("70710-1663-7", "70710166307", "valid"),  # 5-4-1: pad the package
        ("00517-0031-25", "00517003125", "valid"),  # already 5-4-2
        ("00517003125", "00517003125", "valid"),  # eleven bare digits
        (" 0517-0031-25 ", "00517003125", "valid"),  # spaces stripped
        ("0517003125", None, "ambiguous"),  # ten bare digits: which segment is short?
        ("0517-31-25", None, "malformed"),
        ("NDC", None, "malformed"),
        (None, None, "empty"),
    ],
)
def test_ndc_parts(raw, ndc11, status):
    n11, st = normalize.ndc_parts()
    out = pl.DataFrame({"ndc": [raw]}, schema={"ndc": pl.String}).select(n11.alias("n"), st.alias("s"))
    assert out.row(0) == (ndc11, status)


# --- units and dose ------------------------------------------------------------------------------


@pytest.mark.parametrize("mcg, units", [(100, 1), (500, 1), (1000, 1), (1001, 2), (1500, 2), (2000, 2), (5000, 5)])
def test_expected_units_reference_and_column(mcg, units, loaded, defaults):
    assert normalize.expected_units(mcg) == units
    f = facts_of(loaded, defaults, {"dose_value": str(mcg)})
    assert f["expected_units"].to_list() == [units]


@pytest.mark.parametrize(
    "value, unit, extra, mcg",
    [
        ("1000", "mcg", {}, 1000.0),
        ("500", "µg", {}, 500.0),
        ("750", "micrograms", {}, 750.0),
        ("1,000", "mcg", {}, 1000.0),
        ("1", "mg", {}, 1000.0),
        ("2", "MG", {}, 2000.0),
        ("0.5", "mL", {}, 500.0),  # 1000 mcg/mL from the NDC reference
        ("1", "mL", {"ndc": "85551-120-30"}, 2000.0),  # the 2 mg/mL vial
        ("1", "mL", {"ndc": None, "concentration_mcg_per_ml": "1000"}, 1000.0),  # extract column
        ("1", "mL", {"ndc": None}, None),  # no concentration anywhere
        ("1", "spray", {}, None),  # unit not convertible
        ("0", "mcg", {}, None),  # non-positive is unknown
        (None, None, {}, None),
    ],
)
def test_dose_mcg_conversions(value, unit, extra, mcg, loaded, defaults):
    f = facts_of(loaded, defaults, {"dose_value": value, "dose_unit": unit, **extra})
    assert f["dose_mcg"].to_list() == [mcg]


def test_dose_ml_is_dose_over_concentration(loaded, defaults):
    f = facts_of(loaded, defaults, {"dose_value": "500"}, {"dose_value": "2000", "ndc": "85551-120-30"})
    assert f["dose_ml"].to_list() == [0.5, 1.0]


# --- route, given, ingredient ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "route, klass",
    [
        ("IM", "injectable"),
        ("intramuscular", "injectable"),
        ("SC", "injectable"),
        ("SQ", "injectable"),
        ("Deep  SC", "injectable"),
        ("subcut", "injectable"),
        ("IV", "intravenous"),
        ("IV push", "intravenous"),
        ("Intravenous", "intravenous"),
        ("intranasal", "self_administered"),
        ("PO", "self_administered"),
        ("sublingual", "self_administered"),
        ("topical", "unknown"),
        (None, "unknown"),
    ],
)
def test_route_class(route, klass):
    assert column({"route": [route]}, normalize.route_class()) == [klass]


@pytest.mark.parametrize(
    "name, ingredient",
    [
        ("cyanocobalamin 1,000 mcg/mL injection", "cyanocobalamin"),
        ("Hydroxocobalamin 1000 mcg/mL", "hydroxocobalamin"),
        ("methylcobalamin (compounded)", "methylcobalamin"),
        ("Vitamin B-12 injection", "cyanocobalamin"),
        ("ondansetron 4 mg", None),
    ],
)
def test_name_ingredient(name, ingredient):
    assert column({"medication_name": [name]}, normalize.name_ingredient()) == [ingredient]


def test_given_uses_the_site_given_set(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {"mar_action": " Given "},
        {"mar_action": "ADMINISTERED"},
        {"mar_action": "Held"},
        {"mar_action": "Not Given"},
    )
    assert f["given"].to_list() == [True, True, False, False]


# --- ICD-10-CM -----------------------------------------------------------------------------------


def test_icd10_dot_insertion():
    out = column({"diagnosis_codes": ["d510; E53.8,K900  Z9884"]}, normalize.icd10_dotted())
    assert out == [["D51.0", "E53.8", "K90.0", "Z98.84"]]


@pytest.mark.parametrize(
    "code, ok",
    [
        ("D51.0", True),
        ("E53.8", True),
        ("Z98.84", True),
        ("D51", False),
        ("E53", False),
        ("D51.00", False),
        ("XYZ", False),
    ],
)
def test_icd10_billable_leaf(code, ok):
    assert normalize.icd10_billable(code) is ok


def test_dx_facts(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {"diagnosis_codes": "D510"},
        {"diagnosis_codes": "R53.83;D51"},
        {"diagnosis_codes": None},
        {"diagnosis_codes": " ; "},
    )
    assert f["dx_codes"].to_list() == [["D51.0"], ["R53.83", "D51"], [], []]
    assert f["dx_count"].to_list() == [1, 2, 0, 0]
    assert f["dx_invalid"].to_list() == [None, "D51", None, None]
    assert f["dx_covered"].to_list() == [True, True, False, False]  # D51 is a covered prefix even unbillable


# --- NPI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "npi, ok",
    [
        ("1234567893", True),
        ("1245319599", True),
        ("1234567890", False),
        ("123456789", False),
        ("12345678AB", False),
        (None, False),
    ],
)
def test_npi_luhn(npi, ok):
    assert column({"ordering_provider_npi": [npi]}, normalize.npi_valid()) == [ok]


# --- time and expiry -------------------------------------------------------------------------------


def test_service_date_is_the_local_calendar_date(loaded, defaults):
    f = facts_of(loaded, defaults, {"admin_time": "2024-03-01T23:30:00-05:00"}, {"admin_time": "2024-03-02 00:10"})
    assert f["service_date"].to_list() == [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]


def test_timestamps_with_seconds_read_like_the_same_with_a_zero_fraction():
    """local_timestamp reads `...HH:MM:SS` (no fraction) by a shorter path than the general one; a
    `.0` fraction sends the same time through the general path: both must give the same answer,
    for valid and invalid dates and times alike."""
    rng = random.Random(3)
    parts = {
        "Y": ["2024", "2023", "0001", "9999"],
        "m": ["00", "01", "02", "12", "13"],
        "d": ["00", "01", "28", "29", "30", "31", "32"],
        "H": ["00", "23", "24", "99"],
        "M": ["00", "59", "60"],
        "S": ["00", "59", "60", "61"],
        "sep": ["T", " ", "t"],
        "after": ["", "Z", "+05:00", "-0330", " ", "x"],  # not a digit: it would extend the fraction
    }
    plain, fraction = [], []
    for _ in range(3000):
        c = {k: rng.choice(v) for k, v in parts.items()}
        head = f"{c['Y']}-{c['m']}-{c['d']}{c['sep']}{c['H']}:{c['M']}:{c['S']}"
        plain.append(head + c["after"])
        fraction.append(head + ".0" + c["after"])
    read = pl.DataFrame({"plain": plain, "fraction": fraction}).select(
        normalize.local_timestamp("plain"), normalize.local_timestamp("fraction").alias("general")
    )
    assert read["plain"].eq_missing(read["general"]).all()
    assert 0 < read["plain"].null_count() < read.height - 100  # valid and invalid times were both generated


def test_date_of_service_lines_match_the_window_definition():
    """The day's units and last line (MUE-001) as plain windows over every row; the function runs
    them only on groups of more than one line."""
    rng = random.Random(4)
    dos = normalize.DATE_OF_SERVICE
    schema = {
        "patient_id": pl.String,
        "service_date": pl.Date,
        "charge_hcpcs": pl.String,
        "admin_time": pl.Datetime("us"),
        "admin_id": pl.String,
        "charge_units": pl.Int64,
    }
    t0 = dt.datetime(2024, 3, 1, 8)
    for _ in range(200):
        rows = [
            {
                "patient_id": rng.choice([None, "P1", "P2"]),
                "service_date": rng.choice([None, t0.date(), t0.date() + dt.timedelta(days=1)]),
                "charge_hcpcs": rng.choice([None, "J3420"]),
                "admin_time": rng.choice([None, t0, t0 + dt.timedelta(hours=1)]),
                "admin_id": rng.choice([None, "A1", "A2", "A3"]),
                "charge_units": rng.choice([None, 1, 2]),
            }
            for _ in range(rng.randrange(0, 30))
        ]
        frame = pl.DataFrame(rows, schema=schema)
        want = frame.select(
            pl.col("charge_units").sum().over(dos).alias("day_units"),
            (pl.col("admin_id") == pl.col("admin_id").sort_by(["admin_time", "admin_id"]).last().over(dos)).alias(
                "last_line"
            ),
        )
        assert pl.DataFrame(list(normalize.date_of_service_lines(frame))).equals(want)


def test_month_year_expiry_is_the_month_end():
    out = column({"expiration_date": ["2024-02", "2024-03-15", None]}, normalize.expiry_date())
    assert out == [dt.date(2024, 2, 29), dt.date(2024, 3, 15), None]


# --- container facts -------------------------------------------------------------------------------


def test_container_extract_then_reference_then_unknown(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {},
        {"container_type": "single_dose"},
        {"ndc": "70756-635-10"},
        {"ndc": None},
        {"container_type": "unknown"},
    )
    assert f["container"].to_list() == ["multi_dose", "single_dose", "unknown", "unknown", "multi_dose"]
    assert f["container_ml"].to_list() == [1.0, 1.0, 1.0, None, 1.0]


# --- derivations added for the catalog -------------------------------------------------------------


def test_dose_plus_waste_counts_empty_waste_as_zero(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {"dose_value": "500", "waste_mcg": "500"},
        {"dose_value": "800"},
        {"dose_value": None, "waste_mcg": "100"},
    )
    assert f["dose_plus_waste_mcg"].to_list() == [1000.0, 800.0, None]


def test_unit_capacity_uses_charge_units_when_present(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {"charge_units": "2"},
        {"charge_units": None, "dose_value": "1500"},
        {"charge_units": None, "dose_value": None},
    )
    assert f["unit_capacity_mcg"].to_list() == [2000.0, 2000.0, None]


def test_ndc_qty_diff_ml(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {},
        {"dose_value": "500", "charge_ndc_qty": "0.51"},
        {"dose_value": "500", "charge_ndc_qty": "0.52"},
        {"charge_ndc_qty": None},
        {"dose_value": "2000", "ndc": "85551-120-30", "charge_ndc_qty": "2"},
    )
    assert f["ndc_qty_diff_ml"].to_list() == [0.0, 0.01, 0.02, None, 1.0]


def test_empty_claim_type_is_professional(loaded, defaults):
    changes = ({"claim_type": " Professional"}, {"claim_type": "INSTITUTIONAL"}, {"claim_type": None})
    assert facts_of(loaded, defaults, *changes)["claim_type"].to_list() == ["professional", "institutional"] + [
        "professional"
    ]


def test_em_flags(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {"same_day_em_codes": "99211"},
        {"same_day_em_codes": "99213-25"},
        {"same_day_em_codes": "99213"},
        {"same_day_em_codes": "99213-25;99214-GT"},
        {"same_day_em_codes": None},
    )
    assert f["em_has_99211"].to_list() == [True, False, False, False, False]
    assert f["em_without_25"].to_list() == [False, False, True, True, False]


def test_modifier_flags(loaded, defaults):
    f = facts_of(loaded, defaults, {"charge_modifiers": "jz"}, {"charge_modifiers": "GA; JW"}, {})
    assert f["modifiers"].to_list() == [["JZ"], ["GA", "JW"], []]
    assert f["has_jz"].to_list() == [True, False, False]
    assert f["has_jw"].to_list() == [False, True, False]


def test_codes_and_places_are_normalised(loaded, defaults):
    f = facts_of(
        loaded,
        defaults,
        {
            "charge_hcpcs": " j3420 ",
            "place_of_service": "9",
            "payer_type": " Medicaid ",
            "claim_type": None,
            "charge_ndc_unit": "ml",
        },
    )
    assert f.select("charge_hcpcs", "place_of_service", "payer_type", "claim_type", "charge_ndc_unit").row(0) == (
        "J3420",
        "09",
        "medicaid",
        "professional",
        "ML",
    )


def test_every_facts_column_is_documented(loaded, defaults):
    from pathlib import Path

    from b12pipeline.crossrow import add_cross_row_facts

    doc = (Path(__file__).resolve().parent.parent / "docs" / "columns.md").read_text()
    documented = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")}
    f = add_cross_row_facts(facts_of(loaded, defaults, {}), loaded.config)
    missing = sorted(set(f.columns) - documented)
    assert not missing, f"facts columns missing from docs/columns.md: {missing}"
