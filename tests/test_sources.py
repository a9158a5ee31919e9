"""Source formats: Clarity-style CSV and FHIR R4 NDJSON read into the same canonical frame, and the
rows a reader cannot map go to quarantine with their reasons (docs/sources.md)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.mapping import MappingError, parse_mapping
from b12pipeline.ingest.read import read_extract
from b12pipeline.pipeline import apply_staged, stage_file
from b12pipeline.queues import read_queue
from b12pipeline.writers import write_extract

PROJECT = Path(__file__).resolve().parent.parent
SOURCES = PROJECT / "data" / "fixtures" / "sources"
BROKEN = PROJECT / "tests" / "data"
CANONICAL_CSV = PROJECT / "data" / "fixtures" / "emar_2024-03-01.csv"
CLARITY_CSV = SOURCES / "emar_2024-03-01.clarity.csv"
FHIR_NDJSON = SOURCES / "emar_2024-03-01.fhir.ndjson"
NIGHT = dt.date(2024, 3, 1)


def run_night(path: Path, out: Path, rules, source: str | None = None, night: dt.date = NIGHT):
    """One file through the library night: stage (ingest, validate, quarantine) then apply."""
    result = stage_file(path, out, "run-test", night, rules, source=source)
    assert result.status == "processed", result.error
    apply_staged([result.staged], out, rules, "run-test")
    quarantine = sorted((out / "quarantine").rglob("*.parquet"))
    held = pl.concat([pl.read_parquet(p) for p in quarantine]) if quarantine else None
    return result, read_queue(out / "queues"), held


# --- reading ------------------------------------------------------------------------------------


def test_formats_are_recognised_from_header_and_extension():
    assert read_extract(CLARITY_CSV).source_format == "clarity"  # .csv with ORDER_MED_ID + TAKEN_TIME
    assert read_extract(FHIR_NDJSON).source_format == "fhir"  # .ndjson
    assert read_extract(CANONICAL_CSV).source_format == "csv"


def test_fixture_sources_read_into_the_canonical_frame_of_the_canonical_csv():
    canonical = read_extract(CANONICAL_CSV).frame
    order_ids_differ = ["order_id", "source_file"]  # Clarity's order id is ORDER_MED_ID, from admin_id
    for path in (CLARITY_CSV, FHIR_NDJSON):
        frame = read_extract(path).frame
        assert frame.columns == canonical.columns
        assert frame["source_row"].to_list() == canonical["source_row"].to_list()
        left, right = frame.drop(order_ids_differ), canonical.drop(order_ids_differ)
        # Clarity's unit code 5 reads back as "units" where the canonical fixture wrote "unit" (heparin)
        left, right = (f.with_columns(pl.col("dose_unit").str.replace(r"s$", "")) for f in (left, right))
        if path == FHIR_NDJSON:  # FHIR dateTimes carry a zone; the wall-clock time is the same
            left = left.with_columns(pl.col("admin_time").str.replace(r"-05:00$", ""))
        for column in left.columns:
            assert left[column].to_list() == right[column].to_list(), f"{path.name}: {column}"


def test_clarity_codes_dates_and_admin_id_are_mapped(tmp_path):
    path = tmp_path / "mar.csv"
    path.write_text(
        "ORDER_MED_ID,LINE,PAT_MRN_ID,MAR_ENC_CSN,TAKEN_TIME,MAR_ACTION_C,MED_NAME,SIG,DOSE_UNIT_C,ROUTE_C,SITE_C,"
        "EXP_DATE,FIN_CLASS_C,BILLING_SYSTEM\n"
        "41230001,3,E100,9001,3/1/2024 08:05:00,105,cyanocobalamin 1000 mcg/mL inj,1000,3,18,99,11/2025,2,PB\n"
        "41230001,4,E100,9002,3/8/2024 8:05 AM,4,cyanocobalamin 1000 mcg/mL inj,,,6,1,2025-10-31,12,HB\n"
    )
    ex = read_extract(path)
    row = ex.frame.row(0, named=True)
    assert (row["admin_id"], row["order_id"], row["admin_time"], row["mar_action"]) == (
        "41230001-3",
        "41230001",
        "2024-03-01T08:05:00",
        "New Syringe/Cartridge",
    )
    assert (row["dose_value"], row["dose_unit"], row["route"], row["site"]) == ("1000", "mcg", "SC", "99")
    assert (row["expiration_date"], row["payer_type"], row["claim_type"]) == ("2025-11", "medicare", "professional")
    second = ex.frame.row(1, named=True)
    assert (second["admin_time"], second["mar_action"], second["route"], second["site"]) == (
        "2024-03-08T08:05:00",
        "Held",
        "IM",
        "left deltoid",
    )
    assert not ex.frame["has_charge_hcpcs"].any()  # no charge columns joined: absent, not empty


def test_clarity_file_missing_its_key_columns_is_rejected_naming_them(tmp_path):
    path = tmp_path / "mar.csv"
    path.write_text("ORDER_MED_ID,TAKEN_TIME,MAR_ACTION_C\n1,03/01/2024 08:00:00,1\n")
    with pytest.raises(FileRejected, match="not a clarity extract: missing required column.*LINE"):
        read_extract(path)


def test_mapping_files_are_checked_strictly(tmp_path):
    with pytest.raises(MappingError, match="not canonical contract columns"):
        parse_mapping({"name": "site", "columns": {"X": "no_such_column"}}, tmp_path / "site.yaml")
    with pytest.raises(MappingError, match="unknown must be quarantine or keep"):
        parse_mapping(
            {"name": "site", "values": {"route": {"map": {"1": "IM"}, "unknown": "guess"}}}, tmp_path / "site.yaml"
        )


def test_fhir_reader_takes_period_start_coded_route_and_plain_concept(tmp_path):
    resource = {
        "resourceType": "MedicationAdministration",
        "id": "ma-1",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/sid/ndc",
                    "code": "63323-044-44",
                    "display": "cyanocobalamin 1000 mcg/mL",
                }
            ]
        },
        "subject": {"reference": "Patient/p-1"},
        "context": {"reference": "Encounter/e-1"},
        "effectivePeriod": {"start": "2024-03-01T09:00:00-05:00", "end": "2024-03-01T09:01:00-05:00"},
        "dosage": {
            "route": {"coding": [{"system": "http://snomed.info/sct", "code": "78421000"}]},
            "dose": {"value": 1, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
        },
        "reasonCode": [
            {
                "coding": [
                    {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "D51.0"},
                    {"system": "http://snomed.info/sct", "code": "84027009"},
                ]
            }
        ],
    }
    path = tmp_path / "ma.ndjson"
    path.write_text(json.dumps(resource) + "\n")
    row = read_extract(path).frame.row(0, named=True)
    assert (row["admin_id"], row["patient_id"], row["encounter_id"]) == ("ma-1", "p-1", "e-1")
    assert (row["medication_name"], row["ndc"], row["admin_time"]) == (
        "cyanocobalamin 1000 mcg/mL",
        "63323-044-44",
        "2024-03-01T09:00:00-05:00",
    )
    assert (row["route"], row["dose_value"], row["dose_unit"], row["diagnosis_codes"]) == ("IM", "1", "mg", "D51.0")
    assert row["mar_action"] == "Given" and row["has_charge_hcpcs"] is False


def test_a_file_that_is_not_ndjson_is_rejected_not_quarantined(tmp_path):
    path = tmp_path / "x.ndjson"
    shutil.copy(CANONICAL_CSV, path)
    with pytest.raises(FileRejected, match="not an NDJSON file"):
        read_extract(path)


# --- malformed FHIR and unknown MAR codes are quarantined with reasons --------------


def test_malformed_fhir_resources_are_quarantined_with_reasons_and_counted(tmp_path, rules):
    result, findings, held = run_night(BROKEN / "fhir_malformed.ndjson", tmp_path / "out", rules)
    assert result.rows_read == 20  # every NDJSON line is one row read
    assert result.rows_read == result.in_scope + result.out_of_scope + result.quarantined
    reasons = dict(zip(held["source_row"].to_list(), held["failure_reasons"].to_list(), strict=True))
    assert reasons[3].startswith("line 3: not valid JSON")
    assert reasons[4] == "line 4: resourceType is not MedicationAdministration"
    assert reasons[11] == "line 11: status is missing (required)"
    assert reasons[12] == "line 12: dosage.dose.value must be a number, got str"
    assert result.quarantined == 6  # the 4 above + the fixture's 2 GX failures
    assert result.unexpected_counts["fhir_resource_is_valid"] == 4
    fixture = run_night(FHIR_NDJSON, tmp_path / "clean", rules)[1]
    assert findings.select("admin_id", "rule_id").equals(fixture.select("admin_id", "rule_id"))


def test_unknown_mar_action_code_is_quarantined_not_treated_as_not_given(tmp_path, rules):
    result, findings, held = run_night(BROKEN / "clarity_unknown_action.csv", tmp_path / "out", rules)
    row = held.filter(pl.col("admin_id") == "MAR-1002-1").row(0, named=True)
    assert row["failed_expectations"] == ["source_value_is_mapped(clarity)"]
    # the reason names the column and the map, never the code; the held row keeps the code itself
    assert row["failure_reasons"] == (
        "MAR_ACTION_C code is not in the clarity mapping (schemas/sources/clarity.yaml values.mar_action)"
    )
    assert row["mar_action"] == "9999"
    assert row["source_file"] == "clarity_unknown_action.csv" and row["source_row"] == 2
    assert "MAR-1002-1" not in findings["admin_id"].to_list()
    assert result.rows_read == 16 and result.quarantined == 3


# --- the same administrations in every format give identical findings --------------


@pytest.fixture(scope="module")
def synthetic_findings(tmp_path_factory):
    from b12pipeline import synth
    from b12pipeline.pipeline import Rules

    rules = Rules.load()
    night = synth.generate(3000, seed=11, defect_rate=0.3, b12_share=0.5, days=120)
    root = tmp_path_factory.mktemp("formats")
    found = {}
    for fmt, name in (
        ("csv", "night.csv"),
        ("parquet", "night.parquet"),
        ("clarity", "night.csv"),
        ("fhir", "night.ndjson"),
        ("fhir-bulk", "night"),  # a Bulk Data export folder
    ):
        path = write_extract(night.frame, fmt, root / fmt / name)
        # the night the last synthetic day arrives: later dates of service are quarantined
        result, findings, _ = run_night(path, root / fmt / "out", rules, night=synth.DEFAULT_START + dt.timedelta(120))
        assert result.source_format == fmt and result.rows_read == 3000
        found[fmt] = (result, findings.drop("source_file", "run_id"))
    return night, found


@pytest.mark.slow  # five nights of 3,000 rows, one per format
@pytest.mark.parametrize("fmt", ["parquet", "clarity", "fhir", "fhir-bulk"])
def test_same_administrations_in_every_format_give_identical_findings(synthetic_findings, fmt):
    night, found = synthetic_findings
    base_result, base = found["csv"]
    result, findings = found[fmt]
    assert base.height > 0
    assert (result.in_scope, result.out_of_scope, result.quarantined) == (
        base_result.in_scope,
        base_result.out_of_scope,
        base_result.quarantined,
    )
    assert findings.equals(base)


def test_not_done_keeps_the_emar_word_but_never_becomes_given(tmp_path):
    base = json.loads(FHIR_NDJSON.read_text().splitlines()[0])
    refused = {**base, "id": "a-1", "status": "not-done", "statusReason": [{"text": "Refused"}]}
    contradiction = {**base, "id": "a-2", "status": "not-done", "statusReason": [{"text": "Given by Other"}]}
    path = tmp_path / "ma.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in (refused, contradiction)) + "\n")
    ex = read_extract(path)
    assert ex.frame["mar_action"].to_list() == ["Refused"]
    assert ex.quarantine["failure_reasons"].to_list() == [
        "line 2: status is not-done but statusReason[0] reads as an administration"
    ]
