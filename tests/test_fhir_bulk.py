"""FHIR R4 Bulk Data exports (one NDJSON file per resource type, standard resources only) read into
the canonical frame: references resolved across files, charge lines linked, broken references
quarantined by element and type (docs/sources.md, docs/decisions.md).

The exports are built here per the R4 specification, in the shapes of HL7's published examples
(effectivePeriod, reasonCode and performer.actor as in the MedicationAdministration examples;
Claim items with productOrService, modifier, quantity, detail, locationCodeableConcept)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import polars as pl
import pytest

from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.read import read_extract
from b12pipeline.pipeline import Rules, apply_staged, stage_file
from b12pipeline.queues import read_queue

NDC = "http://hl7.org/fhir/sid/ndc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
CPT = "http://www.ama-assn.org/go/cpt"
POS = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
B12_NAME = "cyanocobalamin 1,000 mcg/mL injection solution"
B12_NDC = "63323-044-44"


def ref(target: str) -> dict:
    return {"reference": target}


def medication(ident: str, name: str, ndc: str | None = None, rxnorm: str | None = None, **extra) -> dict:
    coding = [c for c in ({"system": RXNORM, "code": rxnorm}, {"system": NDC, "code": ndc}) if c["code"]]
    return {"resourceType": "Medication", "id": ident, "code": {"coding": coding, "text": name}, **extra}


def administration(ident: str, med: str, encounter: str, start: str, **extra) -> dict:
    """A completed IM administration shaped like HL7's R4 examples."""
    res = {
        "resourceType": "MedicationAdministration",
        "id": ident,
        "status": "completed",
        "medicationReference": ref(med),
        "subject": ref("Patient/pat-1"),
        "context": ref(encounter),
        "effectivePeriod": {"start": start, "end": start[:-9] + "05:00-05:00"},
        "performer": [{"actor": ref("Practitioner/nurse-7")}],
        "request": ref("MedicationRequest/mr-1"),
        "dosage": {
            "site": {"coding": [{"system": SNOMED, "code": "368208006", "display": "left deltoid"}]},
            "route": {"coding": [{"system": SNOMED, "code": "78421000", "display": "Intramuscular route"}]},
            "dose": {"value": 1000, "unit": "mcg", "system": UCUM, "code": "ug"},
        },
    }
    return {**res, **extra}


def drug_item(sequence: int, encounter: str, day: str, ndc: str = B12_NDC, **extra) -> dict:
    return {
        "sequence": sequence,
        "productOrService": {"coding": [{"system": HCPCS, "code": "J3420"}]},
        "servicedDate": day,
        "locationCodeableConcept": {"coding": [{"system": POS, "code": "11"}]},
        "quantity": {"value": 1},
        "encounter": [ref(encounter)],
        "detail": [
            {
                "sequence": 1,
                "productOrService": {"coding": [{"system": NDC, "code": ndc}]},
                "quantity": {"value": 1, "unit": "ML"},
            }
        ],
        **extra,
    }


def claim(ident: str, items: list[dict], supporting: list[str] = ()) -> dict:
    res = {
        "resourceType": "Claim",
        "id": ident,
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim",
        "patient": ref("Patient/pat-1"),
        "created": "2024-03-01",
        "provider": {"display": "clinic"},
        "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": ref("Coverage/cov-1")}],
        "item": items,
    }
    if supporting:
        res["supportingInfo"] = [
            {"sequence": i, "category": {"coding": [{"code": "info"}]}, "valueReference": ref(t)}
            for i, t in enumerate(supporting, start=1)
        ]
    return res


def base_export() -> dict[str, list[dict]]:
    b12 = medication(
        "med-b12",
        B12_NAME,
        ndc=B12_NDC,
        rxnorm="309594",
        ingredient=[
            {
                "itemCodeableConcept": {"text": "cyanocobalamin"},
                "strength": {
                    "numerator": {"value": 1, "unit": "mg", "system": UCUM, "code": "mg"},
                    "denominator": {"value": 1, "unit": "mL", "system": UCUM, "code": "mL"},
                },
            }
        ],
        amount={"numerator": {"value": 1, "system": UCUM, "code": "mL"}, "denominator": {"value": 1}},
        batch={"lotNumber": "AR24117", "expirationDate": "2025-06-30"},
    )
    return {
        "Medication": [b12, medication("med-ondansetron", "ondansetron 2 mg/mL injection", rxnorm="312086")],
        "Practitioner": [
            {
                "resourceType": "Practitioner",
                "id": "prescriber-1",
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
            }
        ],
        "MedicationRequest": [
            {
                "resourceType": "MedicationRequest",
                "id": "mr-1",
                "status": "active",
                "intent": "order",
                "medicationReference": ref("Medication/med-b12"),
                "subject": ref("Patient/pat-1"),
                "requester": ref("Practitioner/prescriber-1"),
                "insurance": [ref("Coverage/cov-1")],
            }
        ],
        "Coverage": [
            {
                "resourceType": "Coverage",
                "id": "cov-1",
                "status": "active",
                "type": {"coding": [{"system": "https://nahdo.org/sopt", "code": "121", "display": "Medicare FFS"}]},
                "beneficiary": ref("Patient/pat-1"),
                "payor": [{"identifier": {"value": "MCR-B"}, "display": "Medicare"}],
            }
        ],
        "Encounter": [
            {
                "resourceType": "Encounter",
                "id": enc,
                "status": "finished",
                "class": {"code": "AMB"},
                "diagnosis": [{"condition": ref("Condition/cond-1")}],
            }
            for enc in ("enc-1", "enc-2", "enc-3", "enc-4")
        ],
        "Condition": [
            {"resourceType": "Condition", "id": "cond-1", "code": {"coding": [{"system": ICD, "code": "D51.0"}]}}
        ],
        "MedicationAdministration": [],
    }


def write_export(folder: Path, resources: dict[str, list[dict]], manifest: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, items in resources.items():
        (folder / f"{kind}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in items))
    if manifest:
        output = [{"type": k, "url": f"https://ehr.example.org/bulk/{k}.ndjson"} for k in resources]
        (folder / "manifest.json").write_text(json.dumps({"transactionTime": "2024-03-02T00:00:00Z", "output": output}))
        return folder / "manifest.json"
    return folder


# --- an R4 administration referencing Medication/<id> is in scope and evaluated -------------------


def test_medication_reference_across_files_is_resolved_in_scope_and_evaluated(tmp_path):
    export = base_export()
    export["MedicationAdministration"] = [
        administration(
            "ma-1",
            "Medication/med-b12",
            "Encounter/enc-1",
            "2024-03-01T09:00:00-05:00",
            reasonCode=[{"coding": [{"system": ICD, "code": "D51.0"}]}],
        ),
        administration("ma-2", "Medication/med-ondansetron", "Encounter/enc-2", "2024-03-01T09:30:00-05:00"),
    ]
    export["Claim"] = [
        claim(
            "clm-1",
            [
                drug_item(1, "Encounter/enc-1", "2024-03-01"),
                {
                    "sequence": 2,
                    "productOrService": {"coding": [{"system": CPT, "code": "96372"}]},
                    "servicedDate": "2024-03-01",
                    "encounter": [ref("Encounter/enc-1")],
                },
            ],
        )
    ]
    folder = write_export(tmp_path / "export", export)
    ex = read_extract(folder)  # recognised as a Bulk Data folder
    assert ex.source_format == "fhir-bulk" and ex.quarantine is None
    row = ex.frame.filter(pl.col("admin_id") == "ma-1").row(0, named=True)
    assert (row["medication_name"], row["ndc"], row["rxnorm_code"]) == (B12_NAME, B12_NDC, "309594")
    assert (row["lot_number"], row["expiration_date"], row["concentration_mcg_per_ml"]) == (
        "AR24117",
        "2025-06-30",
        "1000",
    )
    assert (row["container_volume_ml"], row["dose_value"], row["dose_unit"], row["route"]) == ("1", "1000", "mcg", "IM")
    assert (row["site"], row["administered_by"], row["admin_time"]) == (
        "left deltoid",
        "nurse-7",
        "2024-03-01T09:00:00-05:00",
    )
    assert (row["order_id"], row["ordering_provider_npi"]) == ("mr-1", "1234567893")
    assert (row["payer_type"], row["payer_id"]) == ("medicare", "MCR-B")
    assert (row["encounter_id"], row["diagnosis_codes"]) == ("enc-1", "D51.0")
    # linked by encounter + date of service + NDC: the only administration with that NDC that day
    charge = (row["charge_hcpcs"], row["charge_units"], row["charge_ndc_qty"], row["charge_ndc_unit"], row["admin_cpt"])
    assert charge == ("J3420", "1", "1", "ML", "96372")
    assert (row["place_of_service"], row["claim_type"], row["has_charge_hcpcs"]) == ("11", "professional", True)
    assert (row["source_file"], row["source_row"]) == ("MedicationAdministration.ndjson", 1)

    rules = Rules.load()
    out = tmp_path / "out"
    result = stage_file(folder, out, "run-test", dt.date(2024, 3, 1), rules)
    assert result.status == "processed", result.error
    assert (result.rows_read, result.in_scope, result.out_of_scope, result.quarantined) == (2, 1, 1, 0)
    apply_staged([result.staged], out, rules, "run-test")
    findings = read_queue(out / "queues")
    assert set(findings["admin_id"]) <= {"ma-1"}  # evaluated; the ondansetron dose is out of scope
    # the same administration without its diagnosis is evaluated and found (DX-001: no diagnosis)
    export["MedicationAdministration"][0].pop("reasonCode")
    export["Encounter"][0].pop("diagnosis")
    folder2 = write_export(tmp_path / "export2", export)
    result = stage_file(folder2, tmp_path / "out2", "run-test", dt.date(2024, 3, 1), rules)
    apply_staged([result.staged], tmp_path / "out2", rules, "run-test")
    found = read_queue(tmp_path / "out2" / "queues")
    assert "ma-1" in found["admin_id"].to_list()
    assert "DX-001" in found.filter(pl.col("admin_id") == "ma-1")["rule_id"].to_list()


def test_diagnoses_come_from_the_encounter_when_the_administration_names_none(tmp_path):
    export = base_export()
    export["MedicationAdministration"] = [
        administration("ma-1", "Medication/med-b12", "Encounter/enc-1", "2024-03-01T09:00:00-05:00")
    ]
    row = read_extract(write_export(tmp_path / "e", export)).frame.row(0, named=True)
    assert row["diagnosis_codes"] == "D51.0"
    assert row["has_charge_hcpcs"] is False  # no Claim, ExplanationOfBenefit or ChargeItem in the export


def test_a_manifest_names_the_files_and_reads_like_the_folder(tmp_path):
    export = base_export()
    export["MedicationAdministration"] = [
        administration("ma-1", "Medication/med-b12", "Encounter/enc-1", "2024-03-01T09:00:00-05:00")
    ]
    manifest = write_export(tmp_path / "e", export, manifest=True)
    by_manifest, by_folder = read_extract(manifest), read_extract(manifest.parent)
    assert by_manifest.source_format == "fhir-bulk"
    assert by_manifest.frame.equals(by_folder.frame)
    (manifest.parent / "Coverage.ndjson").unlink()
    with pytest.raises(FileRejected, match=r"output\[\d\] \(Coverage\): its file Coverage.ndjson is not beside"):
        read_extract(manifest)


# --- charge lines: ChargeItem.service, supportingInfo, encounter + DOS; ambiguity; unlinked --------


def test_charge_lines_link_by_service_reference_or_uniquely_by_day_and_the_rest_are_reported(tmp_path):
    export = base_export()
    day = "2024-03-01T{}:00-05:00"
    export["MedicationAdministration"] = [
        administration("ma-3", "Medication/med-b12", "Encounter/enc-3", day.format("08:00")),
        # two B12 doses in one encounter on one day: a claim line for "the" dose cannot be placed
        administration("ma-4", "Medication/med-b12", "Encounter/enc-4", day.format("08:00")),
        administration("ma-5", "Medication/med-b12", "Encounter/enc-4", day.format("08:30")),
        administration("ma-6", "Medication/med-b12", "Encounter/enc-1", day.format("10:00")),
    ]
    export["ChargeItem"] = [
        {
            "resourceType": "ChargeItem",
            "id": "ci-1",
            "status": "billable",
            "code": {"coding": [{"system": HCPCS, "code": "J3420"}]},
            "subject": ref("Patient/pat-1"),
            "context": ref("Encounter/enc-3"),
            "occurrenceDateTime": "2024-03-01",
            "quantity": {"value": 2},
            "service": [ref("MedicationAdministration/ma-3")],
        }
    ]
    export["Claim"] = [
        claim("clm-4", [drug_item(1, "Encounter/enc-4", "2024-03-01")]),
        claim(
            "clm-6",
            [
                drug_item(
                    1, "Encounter/enc-1", "2024-03-01", informationSequence=[1], modifier=[{"coding": [{"code": "JZ"}]}]
                )
            ],
            supporting=["MedicationAdministration/ma-6"],
        ),
        claim("clm-9", [drug_item(1, "Encounter/enc-2", "2024-03-01")]),  # no administration that day
    ]
    ex = read_extract(write_export(tmp_path / "e", export))
    rows = {r["admin_id"]: r for r in ex.frame.iter_rows(named=True)}
    assert (rows["ma-3"]["charge_hcpcs"], rows["ma-3"]["charge_units"]) == ("J3420", "2")  # ChargeItem.service
    assert (rows["ma-6"]["charge_hcpcs"], rows["ma-6"]["charge_modifiers"]) == ("J3420", "JZ")  # supportingInfo
    assert rows["ma-4"]["charge_hcpcs"] is None and rows["ma-5"]["charge_hcpcs"] is None  # ambiguous: neither
    assert all(r["has_charge_hcpcs"] for r in rows.values())  # the export carries charges: empty, not absent
    held = ex.quarantine.sort("source_file", "source_row")
    assert held["source_file"].to_list() == ["Claim.ndjson", "Claim.ndjson"]
    assert held["failure_reasons"].to_list() == [
        "Claim.ndjson line 1 item[0]: drug charge line that links to no administration "
        "(a charge without a documented dose)",
        "Claim.ndjson line 3 item[0]: drug charge line that links to no administration "
        "(a charge without a documented dose)",
    ]
    assert held["charge_hcpcs"].to_list() == ["J3420", "J3420"] and held["ndc"].to_list() == [B12_NDC, B12_NDC]


# --- broken references: quarantined, the reference named, no identifier ---------------------------


def test_broken_references_are_quarantined_naming_the_reference_never_an_identifier(tmp_path, rules):
    export = base_export()
    export["MedicationRequest"].append(
        {**export["MedicationRequest"][0], "id": "mr-orphan", "requester": ref("Practitioner/gone-9")}
    )
    export["Medication"].append(
        {
            "resourceType": "Medication",
            "id": "med-badstrength",
            "code": {"text": B12_NAME},
            "ingredient": [
                {
                    "itemCodeableConcept": {"text": "x"},
                    "strength": {
                        "numerator": {"value": 1000, "code": "[iU]"},
                        "denominator": {"value": 1, "code": "mL"},
                    },
                }
            ],
        }
    )
    t = "2024-03-01T09:00:00-05:00"
    broken = [
        administration("ma-11", "Medication/med-missing", "Encounter/enc-1", t),
        administration("ma-12", "Substance/sub-1", "Encounter/enc-1", t),
        administration("ma-13", "Medication/med-b12", "Encounter/enc-missing", t),
        administration(
            "ma-14", "Medication/med-b12", "Encounter/enc-1", t, request=ref("MedicationRequest/mr-missing")
        ),
        administration("ma-15", "Medication/med-b12", "Encounter/enc-1", t, request=ref("MedicationRequest/mr-orphan")),
        administration(
            "ma-16", "Medication/med-b12", "Encounter/enc-1", t, reasonReference=[ref("Condition/cond-missing")]
        ),
        administration("ma-17", "Medication/med-b12", "Encounter/enc-1", t, request=ref("Encounter/enc-1")),
        administration("ma-18", "Medication/med-badstrength", "Encounter/enc-1", t),
        administration("ma-19", "Medication/med-b12", "Encounter/enc-1", t),  # the one good row
    ]
    export["MedicationAdministration"] = broken
    folder = write_export(tmp_path / "e", export)
    ex = read_extract(folder)
    assert ex.frame["admin_id"].to_list() == ["ma-19"]
    reasons = ex.quarantine.sort("source_row")["failure_reasons"].to_list()
    assert reasons == [
        "line 1: medicationReference names a Medication that is not in the export",
        "line 2: medicationReference names a Substance, not a Medication",
        "line 3: context names an Encounter that is not in the export",
        "line 4: request names a MedicationRequest that is not in the export",
        "line 5: request -> MedicationRequest.requester names a Practitioner that is not in the export",
        "line 6: reasonReference[0] names a Condition that is not in the export",
        "line 7: request names an Encounter, not a MedicationRequest",
        "line 8: Medication.ndjson line 3: Medication.ingredient[0].strength is not a UCUM mass per volume "
        "(ug, mg or g per mL or L)",
    ]
    identifiers = re.compile(r"missing|sub-1|mr-orphan|gone-9|enc-1|pat-1|med-b12|badstrength|ma-1")
    assert not [r for r in reasons if identifiers.search(r)]
    # through the night the reader's reasons count like validation's: 8 of 9 B12 rows held is over
    # the site's max_quarantine_share, so this file is set aside whole
    result = stage_file(folder, tmp_path / "out", "run-test", dt.date(2024, 3, 1), rules)
    assert result.status == "rejected" and "8 of 9 B12 rows failed validation" in result.error


def test_a_reference_whose_type_part_is_not_a_resource_type_is_never_quoted(tmp_path):
    """The Type part of a reference is text from the file: an identifier written there stays out."""
    export = base_export()
    t = "2024-03-01T09:00:00-05:00"
    export["MedicationAdministration"] = [
        administration("ma-20", "Medication/med-b12", "CANARYMRN0042/enc-1", t),
        administration("ma-21", "Medication/med-b12", "Patient/pat-1", t),
    ]
    ex = read_extract(write_export(tmp_path / "e", export))
    reasons = ex.quarantine.sort("source_row")["failure_reasons"].to_list()
    assert reasons == [
        "line 1: context names a resource of another type, not an Encounter",
        "line 2: context names a Patient, not an Encounter",
    ]


def test_non_b12_administrations_are_out_of_scope_and_never_fail_the_file(tmp_path, rules):
    export = base_export()
    t = "2024-03-01T{:02d}:00:00-05:00"
    other = [
        administration(f"ma-o{i}", "Medication/med-ondansetron", "Encounter/enc-2", t.format(i)) for i in range(8, 20)
    ]
    other[0]["dosage"]["dose"] = {"value": 4, "unit": "mg", "system": UCUM, "code": "mg"}
    other[1].pop("request")
    export["MedicationAdministration"] = [
        *other,
        administration("ma-1", "Medication/med-b12", "Encounter/enc-1", t.format(9)),
    ]
    # another drug's charge line that no administration takes: reported, and out of B12 scope
    dexamethasone = {
        "sequence": 1,
        "productOrService": {"coding": [{"system": HCPCS, "code": "J1100", "display": "Injection, dexamethasone"}]},
        "servicedDate": "2024-03-01",
        "encounter": [ref("Encounter/enc-2")],
    }
    export["Claim"] = [claim("clm-2", [dexamethasone])]
    result = stage_file(write_export(tmp_path / "e", export), tmp_path / "out", "run-test", dt.date(2024, 3, 1), rules)
    assert result.status == "processed", result.error
    assert (result.rows_read, result.in_scope, result.out_of_scope, result.quarantined) == (14, 1, 13, 0)


def test_export_without_administrations_is_rejected(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "p"}\n')
    with pytest.raises(FileRejected, match="no MedicationAdministration file"):
        read_extract(folder, source="fhir-bulk")


# --- the CLI night takes the folder, checksums and archives it -----------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_run_reads_an_export_folder_and_archives_it_with_the_findings_of_the_csv(tmp_path, fixtures_dir):
    from typer.testing import CliRunner

    from b12pipeline.cli import app
    from b12pipeline.writers import write_extract

    csv = fixtures_dir / "emar_2024-03-01.csv"
    folder = write_extract(pl.read_csv(csv, infer_schema=False), "fhir-bulk", tmp_path / "export-2024-03-01")
    found = {}
    for name, extract in (("csv", csv), ("bulk", folder)):
        args = ["run", "-e", str(extract), "--out", str(tmp_path / name), "--night", "2024-03-01"]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        found[name] = read_queue(tmp_path / name / "queues").select("admin_id", "rule_id", "message", "source_row")
    assert found["bulk"].height > 0 and found["bulk"].equals(found["csv"])
    archived = [json.loads(line) for line in (tmp_path / "bulk" / "archive" / "index.jsonl").read_text().splitlines()]
    assert [a["file"] for a in archived] == ["export-2024-03-01"]
    copy = tmp_path / "bulk" / "archive" / archived[0]["path"]
    assert (copy / "MedicationAdministration.ndjson").read_bytes() == (
        folder / "MedicationAdministration.ndjson"
    ).read_bytes()


# --- standard resources only: the same findings as the canonical CSV -----------------------------


@pytest.mark.slow  # stages and evaluates the export and the canonical CSV
def test_an_export_of_standard_resources_only_gives_the_findings_of_the_canonical_csv(tmp_path, rules):
    from b12pipeline import synth
    from b12pipeline.fhirbulk_writer import NO_R4_ELEMENT, write_fhir_bulk
    from b12pipeline.writers import write_extract

    night = synth.generate(2000, seed=5, defect_rate=0.3, b12_share=0.5, days=90)
    # the two columns R4 has no element for are left out of both files
    frame = night.frame.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in NO_R4_ELEMENT)
    # a payer (plan) code on the commercial rows: it picks the rules/payers/ file
    frame = frame.with_columns(
        pl.when(pl.col("payer_type") == "commercial").then(pl.lit("60054")).otherwise(None).alias("payer_id")
    )
    csv = write_extract(frame, "csv", tmp_path / "night.csv")
    folder = write_fhir_bulk(frame, tmp_path / "export", standard_only=True)
    text = "".join(p.read_text() for p in folder.glob("*.ndjson"))
    assert '"extension"' not in text and "b12pipeline" not in text and '"contained"' not in text
    assert '"reference":"Medication/' in text
    found = {}
    for name, path in (("csv", csv), ("bulk", folder)):
        result = stage_file(path, tmp_path / name, "run-test", dt.date(2024, 5, 1), rules)
        assert result.status == "processed", result.error
        apply_staged([result.staged], tmp_path / name, rules, "run-test")
        counts = (result.rows_read, result.in_scope, result.out_of_scope, result.quarantined)
        found[name] = (counts, read_queue(tmp_path / name / "queues").drop("source_file", "run_id"))
    assert found["bulk"][1].height > 100
    assert found["bulk"][0] == found["csv"][0]
    assert found["bulk"][1].equals(found["csv"][1])


def test_synth_writes_a_bulk_data_folder_and_its_labels(tmp_path):
    from typer.testing import CliRunner

    from b12pipeline.cli import app

    out = tmp_path / "export"
    args = ["synth", "--rows", "500", "--seed", "3", "--format", "fhir-bulk", "--out", str(out), "--defect-rate", "0.2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = {o["type"]: o["count"] for o in manifest["output"]}
    assert kinds["MedicationAdministration"] == 500 and {"Medication", "MedicationRequest", "Claim"} <= set(kinds)
    assert pl.read_parquet(tmp_path / "export.labels.parquet").height > 0
    ex = read_extract(out / "manifest.json")
    assert ex.rows == 500 and ex.source_format == "fhir-bulk"


def test_each_file_of_the_export_is_held_to_the_input_limits(tmp_path, monkeypatch):
    export = base_export()
    export["MedicationAdministration"] = [
        administration("ma-1", "Medication/med-b12", "Encounter/enc-1", "2024-03-01T09:00:00-05:00")
    ]
    folder = write_export(tmp_path / "e", export)
    monkeypatch.setenv("B12_MAX_FILE_BYTES", "900")
    with pytest.raises(FileRejected, match=r": Medication.ndjson: the file is 929 bytes, over the limit of 900 bytes"):
        read_extract(folder)
    monkeypatch.delenv("B12_MAX_FILE_BYTES")
    (folder / "Medication.ndjson").write_bytes(b"\x1f\x8b\x08" + b"\0" * 20)
    with pytest.raises(FileRejected, match="Medication.ndjson: the file is gzip-compressed"):
        read_extract(folder)


def test_large_outputs_are_split_into_numbered_files_that_read_as_one_export(tmp_path):
    from b12pipeline import synth
    from b12pipeline.fhirbulk_writer import write_fhir_bulk

    frame = synth.generate(100, seed=4, defect_rate=0.2, b12_share=0.5, days=30).frame
    whole = read_extract(write_fhir_bulk(frame, tmp_path / "whole"))
    folder = write_fhir_bulk(frame, tmp_path / "split", per_file=40)
    manifest = json.loads((folder / "manifest.json").read_text())
    administrations = [o for o in manifest["output"] if o["type"] == "MedicationAdministration"]
    assert [(o["url"], o["count"]) for o in administrations] == [
        ("MedicationAdministration.001.ndjson", 40),
        ("MedicationAdministration.002.ndjson", 40),
        ("MedicationAdministration.003.ndjson", 20),
    ]
    split = read_extract(folder / "manifest.json")
    assert split.frame.drop("source_file", "source_row").equals(whole.frame.drop("source_file", "source_row"))
    last = split.frame.filter(pl.col("source_file") == "MedicationAdministration.003.ndjson")
    assert last.height == whole.frame.filter(pl.col("source_row") > 80).height
