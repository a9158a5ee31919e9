"""Canonical rows as FHIR R4 MedicationAdministration resources (NDJSON, and the Bulk Data writer's parts)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from b12pipeline.ingest.mapping import load_mapping

FHIR_OFFSET = "-05:00"  # FHIR requires a zone on a dateTime with a time; the reader keeps wall-clock time


def _number(text: str | None):
    if text is None:
        return None
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return text  # not a number: written as a string, the reader will quarantine the resource
    return int(value) if value.is_integer() and "." not in text else value


def fhir_context(mapping_name: str = "fhir") -> dict:
    """What writing a MedicationAdministration needs from the fhir mapping (shared with fhir-bulk)."""
    mapping = load_mapping(mapping_name)
    cfg = mapping.raw["fhir"]
    systems = cfg["systems"]
    return {
        "systems": systems,
        "icd": systems["icd10"][0] if isinstance(systems["icd10"], list) else systems["icd10"],
        "status": {v: k for k, v in mapping.values["mar_action"].map.items()},
        "status_name": mapping.values["mar_action"].map,
        "route_codes": {v: k for k, v in mapping.values["route"].map.items()},
        "ext_of": {col: cfg["extension_base"] + name for name, col in cfg["extensions"].items()},
        "numeric": {"waste_mcg", "concentration_mcg_per_ml", "container_volume_ml", "charge_units", "charge_ndc_qty"},
        "mapping": mapping,
    }


UCUM = {"mcg": "ug", "mg": "mg", "ml": "mL", "g": "g"}


def fhir_administration(r: dict, ctx: dict, extension_columns=None, medication: bool = True) -> dict:
    """One canonical row -> a MedicationAdministration. `extension_columns`: the columns written as
    extensions (default: every column the mapping names); `medication=False` leaves the medication
    and the reason to the caller (a Bulk Data export references them)."""
    systems = ctx["systems"]
    action = r["mar_action"]
    code = ctx["status"].get(action, "completed" if action and action.lower() == "given" else "not-done")
    res: dict = {"resourceType": "MedicationAdministration", "id": r["admin_id"], "status": code}
    if code == "not-done" and action and action != ctx["status_name"]["not-done"]:
        res["statusReason"] = [{"text": action}]  # Refused, Missed, ... read back as the action
    if medication:
        med_code = medication_code(r, systems)
        if r["lot_number"] or r["expiration_date"]:
            batch = {k: v for k, v in (("lotNumber", r["lot_number"]), ("expirationDate", r["expiration_date"])) if v}
            res["contained"] = [{"resourceType": "Medication", "id": "med", "code": med_code, "batch": batch}]
            res["medicationReference"] = {"reference": "#med"}
        else:
            res["medicationCodeableConcept"] = med_code
    res["subject"] = {"reference": f"Patient/{r['patient_id']}"} if r["patient_id"] else None
    if r["encounter_id"]:
        res["context"] = {"reference": f"Encounter/{r['encounter_id']}"}
    when = r["admin_time"]
    if when and re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?", when):
        when += FHIR_OFFSET
    res["effectiveDateTime"] = when
    if r["administered_by"]:
        res["performer"] = [{"actor": {"reference": f"Practitioner/{r['administered_by']}"}}]
    if r["order_id"]:
        res["request"] = {"reference": f"MedicationRequest/{r['order_id']}"}
    if r["diagnosis_codes"] and medication:
        res["reasonCode"] = [{"coding": [{"system": ctx["icd"], "code": c}]} for c in split_codes(r["diagnosis_codes"])]
    dosage: dict = {}
    if r["site"]:
        dosage["site"] = {"text": r["site"]}
    if r["route"]:
        route = {"text": r["route"]}
        if r["route"] in ctx["route_codes"]:
            route["coding"] = [{"system": systems["snomed"], "code": ctx["route_codes"][r["route"]]}]
        dosage["route"] = route
    dose = {}
    if r["dose_value"] is not None:
        dose["value"] = _number(r["dose_value"])
    if r["dose_unit"]:
        dose["unit"] = r["dose_unit"]
        unit_code = UCUM.get(r["dose_unit"].lower())
        if unit_code:
            dose.update(system="http://unitsofmeasure.org", code=unit_code)
    if dose:
        dosage["dose"] = dose
    if dosage:
        res["dosage"] = dosage
    numeric = ctx["numeric"]
    ext = [
        {"url": url, _value_key(col, numeric): _number(r[col]) if col in numeric else r[col]}
        for col, url in ctx["ext_of"].items()
        if r.get(col) is not None and (extension_columns is None or col in extension_columns)
    ]
    if ext:
        res["extension"] = ext
    return {k: v for k, v in res.items() if v is not None}


def medication_code(r: dict, systems: dict) -> dict:
    codings = [
        c
        for c in (
            {"system": systems["rxnorm"], "code": r["rxnorm_code"]} if r["rxnorm_code"] else None,
            {"system": systems["ndc"], "code": r["ndc"]} if r["ndc"] else None,
        )
        if c
    ]
    med_code: dict = {"coding": codings} if codings else {}  # FHIR forbids empty arrays
    if r["medication_name"]:
        med_code["text"] = r["medication_name"]
    return med_code


def split_codes(text: str) -> list[str]:
    return [c.strip() for c in re.split(r"[;,]", text) if c.strip()]


def write_fhir(frame: pl.DataFrame, path: Path, mapping_name: str = "fhir") -> None:
    import orjson

    ctx = fhir_context(mapping_name)
    with open(path, "wb") as fh:
        for r in frame.iter_rows(named=True):
            fh.write(orjson.dumps(fhir_administration(r, ctx)) + b"\n")


def _value_key(column: str, numeric: set[str]) -> str:
    if column == "charge_units":
        return "valueInteger"
    return "valueDecimal" if column in numeric else "valueString"
