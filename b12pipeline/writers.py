"""Write a canonical (all-text) frame as any supported source format: the readers' inverse.

Used by `b12pipeline synth` and by the fixture builder, so the same administrations exist as a
canonical CSV, typed Parquet, a Clarity-style CSV and FHIR NDJSON. Each writer refuses a value its
format cannot carry (e.g. a route the Clarity map has no code for) instead of writing a different one.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from b12pipeline.ingest.mapping import load_mapping

FORMATS = ("csv", "parquet", "clarity", "fhir", "fhir-bulk")
FHIR_OFFSET = "-05:00"  # FHIR requires a zone on a dateTime with a time; the reader keeps wall-clock time


def write_extract(frame: pl.DataFrame, fmt: str, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = frame.with_columns(
        pl.when(pl.col(pl.String).str.strip_chars() == "").then(None).otherwise(pl.col(pl.String)).name.keep()
    )  # "" = empty, as the readers say
    if fmt == "csv":
        frame.write_csv(path)
    elif fmt == "parquet":
        typed(frame).write_parquet(path)
    elif fmt == "clarity":
        to_clarity(frame).write_csv(path, separator=load_mapping("clarity").delimiter)
    elif fmt == "fhir":
        write_fhir(frame, path)
    elif fmt == "fhir-bulk":
        from b12pipeline.fhirbulk_writer import write_fhir_bulk

        write_fhir_bulk(frame, path)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return path


def typed(frame: pl.DataFrame) -> pl.DataFrame:
    """Parquet carries the contract's logical types (timestamps, dates, decimals, integers)."""
    num = {
        c: pl.col(c).str.replace_all(",", "").cast(pl.Float64, strict=False)
        for c in ("dose_value", "concentration_mcg_per_ml", "container_volume_ml", "waste_mcg", "charge_ndc_qty")
        if c in frame.columns
    }
    return frame.with_columns(
        pl.col("admin_time").str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False),
        pl.coalesce(
            pl.col("expiration_date").str.strptime(pl.Date, "%Y-%m-%d", strict=False),
            (pl.col("expiration_date") + "-01").str.strptime(pl.Date, "%Y-%m-%d", strict=False).dt.month_end(),
        ).alias("expiration_date"),  # YYYY-MM means its last day
        pl.col("charge_units").cast(pl.Int64, strict=False),
        *[e.alias(c) for c, e in num.items()],
    )


# --- Clarity-style ------------------------------------------------------------------------------


def _norm(value: pl.Expr) -> pl.Expr:
    return value.str.to_lowercase().str.strip_chars().str.replace(r"s$", "")


def to_clarity(frame: pl.DataFrame, mapping_name: str = "clarity") -> pl.DataFrame:
    """Canonical -> the mapping's source columns and codes. ORDER_MED_ID and LINE come from admin_id
    (ORDER_MED_ID-LINE), so order_id is not written separately."""
    mapping = load_mapping(mapping_name)
    parts = pl.col("admin_id").str.extract_groups(r"^(.*)-([^-]+)$")
    exprs: dict[str, pl.Expr] = {}
    derived = mapping.derived["admin_id"]["join"]
    exprs[derived[0]] = parts.struct.field("1")
    exprs[derived[1]] = parts.struct.field("2")
    for src, canon in mapping.columns.items():
        if src in exprs or canon not in frame.columns:
            continue
        value = pl.col(canon)
        if canon in mapping.values:
            inverse: dict[str, str] = {}
            for code, name in mapping.values[canon].map.items():
                inverse.setdefault(re.sub(r"s$", "", name.lower().strip()), code)
            coded = _norm(value).replace_strict(inverse, default=None, return_dtype=pl.String)
            if mapping.values[canon].unknown == "keep":  # the reader passes unlisted values through
                coded = pl.coalesce(coded, value)
            bad = frame.filter(value.is_not_null() & coded.is_null())
            if bad.height:
                raise ValueError(f"{canon} value {bad[canon][0]!r} has no code in {mapping.path.name} values.{canon}")
            value = coded
        if canon == "admin_time":
            value = pl.coalesce(
                value.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False).dt.strftime(
                    mapping.dates[canon]["formats"][0]
                ),
                value,
            )
        elif canon == "expiration_date":
            value = pl.coalesce(
                value.str.strptime(pl.Date, "%Y-%m-%d", strict=False).dt.strftime("%m/%d/%Y"),
                (value + "-01").str.strptime(pl.Date, "%Y-%m-%d", strict=False).dt.strftime("%m/%Y"),
                value,
            )
        exprs[src] = value
    return frame.select([e.alias(c) for c, e in exprs.items()])


# --- FHIR R4 NDJSON -----------------------------------------------------------------------------


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


def labels_path(path: Path | str) -> Path:
    """Where synth writes the expected findings: <PATH>.labels.parquet."""
    path = Path(path)
    return path.with_name(path.name + ".labels.parquet")
