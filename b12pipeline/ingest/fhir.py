"""FHIR R4 MedicationAdministration (Bulk Data NDJSON) -> the canonical frame.

A strict parser of exactly the elements the contract needs (docs/decisions.md explains why not a
full FHIR model library). Every line is one row read; a line that is not JSON, not a
MedicationAdministration, lacks a required element or carries a wrong type is quarantined with a
reason naming the line and the element ("line 7: dosage.dose.value must be a number").

Element -> column:
  id -> admin_id; request -> order_id; subject -> patient_id; context -> encounter_id;
  effectiveDateTime | effectivePeriod.start -> admin_time; status -> mar_action (mapped; for
  not-done, the statusReason text when there is one: "Refused", "Missed");
  medicationCodeableConcept, or a contained Medication via medicationReference "#id":
  text / display -> medication_name, RxNorm coding -> rxnorm_code, NDC coding -> ndc,
  Medication.batch.lotNumber / expirationDate -> lot_number / expiration_date;
  dosage.dose value / code -> dose_value / dose_unit; dosage.route -> route; dosage.site -> site;
  performer[0].actor -> administered_by; reasonCode ICD-10-CM codings -> diagnosis_codes;
  billing columns -> extensions named in schemas/sources/fhir.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from b12pipeline.ingest import Extract, FileRejected, canonicalise, split_quarantine
from b12pipeline.ingest.mapping import SourceMapping, load_mapping

_JSONError: type[ValueError]
_loads: Callable[[bytes | str], Any]
try:  # orjson is a Prefect dependency; fall back to the standard library
    from orjson import JSONDecodeError as _JSONError
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import JSONDecodeError as _JSONError
    from json import loads as _loads

CHECK = "fhir_resource_is_valid"
CORE_COLUMNS = (
    "admin_id",
    "order_id",
    "patient_id",
    "encounter_id",
    "admin_time",
    "mar_action",
    "medication_name",
    "rxnorm_code",
    "ndc",
    "dose_value",
    "dose_unit",
    "route",
    "site",
    "lot_number",
    "expiration_date",
    "administered_by",
    "diagnosis_codes",
)


# Read from a Medication's ingredient strength and amount; also carried by extensions.
MEDICATION_COLUMNS = ("concentration_mcg_per_ml", "container_volume_ml")


class Invalid(ValueError):
    """One resource breaks the reader's rules; str() is the quarantine reason (no values of identifiers)."""


@lru_cache(maxsize=4)
def _config(name: str = "fhir") -> dict:
    m: SourceMapping = load_mapping(name)
    fh = m.raw.get("fhir") or {}
    base = fh.get("extension_base", "")
    systems = fh.get("systems") or {}
    icd = systems.get("icd10") or []
    return {
        "status": m.values["mar_action"].map,
        "unit": m.values["dose_unit"].map,
        "route": m.values["route"].map,
        "rxnorm": systems.get("rxnorm"),
        "ndc": systems.get("ndc"),
        "icd10": set(icd if isinstance(icd, list) else [icd]),
        "snomed": systems.get("snomed"),
        "extensions": {base + k: v for k, v in (fh.get("extensions") or {}).items()},
    }


# --- typed getters: each raises Invalid naming the element path -----------------------------------


def _get(obj: dict, key: str, kind: type | tuple, path: str, required: bool = False):
    value = obj.get(key)
    if value is None:
        if key in obj:
            raise Invalid(f"{path}{key} is null (FHIR JSON does not allow null)")
        if required:
            raise Invalid(f"{path}{key} is missing (required)")
        return None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"{path}{key} must be a number, got {type(value).__name__}")
        return value
    if not isinstance(value, kind):
        wants: dict[type | tuple, str] = {dict: "an object", list: "an array", str: "a string"}
        raise Invalid(f"{path}{key} must be {wants.get(kind, str(kind))}, got {type(value).__name__}")
    if kind is str and isinstance(value, str) and not value.strip():
        raise Invalid(f"{path}{key} is an empty string")
    return value


def _num_text(value: float | int) -> str:
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return repr(value)


def _ref_id(ref: dict, path: str) -> str | None:
    """'Patient/123' -> '123'; an identifier.value when the reference is absent."""
    text = _get(ref, "reference", str, path)
    if text is not None:
        return text.rsplit("/", 1)[-1]
    ident = _get(ref, "identifier", dict, path)
    if ident is not None:
        return _get(ident, "value", str, path + "identifier.")
    return _get(ref, "display", str, path)


def _codings(concept: dict, path: str) -> list[tuple[str | None, str | None, str | None]]:
    out = []
    for i, c in enumerate(_get(concept, "coding", list, path) or []):
        p = f"{path}coding[{i}]."
        if not isinstance(c, dict):
            raise Invalid(f"{p[:-1]} must be an object")
        out.append((_get(c, "system", str, p), _get(c, "code", str, p), _get(c, "display", str, p)))
    return out


def _concept_text(concept: dict, path: str) -> str | None:
    text = _get(concept, "text", str, path)
    if text is not None:
        return text
    return next((d for _, _, d in _codings(concept, path) if d), None)


# A Medication resolver for references that are not contained ('Medication/<id>' in a Bulk Data
# export): target -> (the Medication resource, the element path to name in reasons).
MedicationResolver = Callable[[str], tuple[dict, str]]

_MASS_TO_MCG = {"ug": 1.0, "mg": 1000.0, "g": 1_000_000.0}
_VOLUME_TO_ML = {"mL": 1.0, "ml": 1.0, "L": 1000.0}


def _ucum(quantity: dict, path: str) -> tuple[float, str | None]:
    value = _get(quantity, "value", float, path, required=True)
    return value, _get(quantity, "code", str, path) or _get(quantity, "unit", str, path)


def _medication_resource(med: dict, path: str, row: dict) -> None:
    """Lot, expiry, strength (mcg/mL) and package volume (mL) of a Medication (contained or referenced)."""
    batch = _get(med, "batch", dict, path)
    if batch is not None:
        row["lot_number"] = _get(batch, "lotNumber", str, path + "batch.")
        exp = _get(batch, "expirationDate", str, path + "batch.")
        row["expiration_date"] = exp[:10] if exp else None
    for i, ingredient in enumerate(_get(med, "ingredient", list, path) or []):
        p = f"{path}ingredient[{i}].strength."
        strength = _get(ingredient, "strength", dict, p[:-9]) if isinstance(ingredient, dict) else None
        if strength is None:
            continue
        num = _get(strength, "numerator", dict, p, required=True)
        den = _get(strength, "denominator", dict, p, required=True)
        (n, n_unit), (d, d_unit) = _ucum(num, p + "numerator."), _ucum(den, p + "denominator.")
        if n_unit not in _MASS_TO_MCG or d_unit not in _VOLUME_TO_ML or not d:
            raise Invalid(f"{p[:-1]} is not a UCUM mass per volume (ug, mg or g per mL or L)")
        row["concentration_mcg_per_ml"] = _num_text(n * _MASS_TO_MCG[n_unit] / (d * _VOLUME_TO_ML[d_unit]))
        break
    amount = _get(med, "amount", dict, path)
    if amount is not None:
        volume, unit = _ucum(
            _get(amount, "numerator", dict, path + "amount.", required=True), path + "amount.numerator."
        )
        if unit not in _VOLUME_TO_ML:
            raise Invalid(f"{path}amount.numerator is not a UCUM volume (mL or L)")
        row["container_volume_ml"] = _num_text(volume * _VOLUME_TO_ML[unit])


def _medication(res: dict, row: dict, cfg: dict, resolve: MedicationResolver | None = None) -> None:
    concept = _get(res, "medicationCodeableConcept", dict, "")
    ref = _get(res, "medicationReference", dict, "")
    if (concept is None) == (ref is None):
        raise Invalid("exactly one of medicationCodeableConcept or medicationReference is required")
    path = "medicationCodeableConcept."
    if ref is not None:
        target = _get(ref, "reference", str, "medicationReference.", required=True)
        med = None
        if not target.startswith("#"):
            if resolve is None:
                raise Invalid(
                    "medicationReference is not a contained Medication ('#id'); "
                    "this reader resolves contained Medications only (read a Bulk Data folder with --source fhir-bulk)"
                )
            med, path = resolve(target)
        else:
            for i, c in enumerate(_get(res, "contained", list, "") or []):
                if isinstance(c, dict) and c.get("id") == target[1:]:
                    med = c
                    path = f"contained[{i}]."
        if med is None or med.get("resourceType") != "Medication":
            raise Invalid("medicationReference names no contained Medication")
        concept = _get(med, "code", dict, path, required=True)
        _medication_resource(med, path, row)
        path += "code."
    row["medication_name"] = _concept_text(concept, path)
    for system, code, _ in _codings(concept, path):
        if system == cfg["rxnorm"] and code and row.get("rxnorm_code") is None:
            row["rxnorm_code"] = code
        elif system == cfg["ndc"] and code and row.get("ndc") is None:
            row["ndc"] = code


def _dosage(res: dict, row: dict, cfg: dict) -> None:
    dosage = _get(res, "dosage", dict, "")
    if dosage is None:
        return
    dose = _get(dosage, "dose", dict, "dosage.")
    if dose is not None:
        value = _get(dose, "value", float, "dosage.dose.")
        row["dose_value"] = None if value is None else _num_text(value)
        code, unit = _get(dose, "code", str, "dosage.dose."), _get(dose, "unit", str, "dosage.dose.")
        row["dose_unit"] = cfg["unit"].get(code) if code in cfg["unit"] else (unit or code)
    route = _get(dosage, "route", dict, "dosage.")
    if route is not None:
        text = _get(route, "text", str, "dosage.route.")
        if text is None:
            codings = _codings(route, "dosage.route.")
            mapped = [cfg["route"][c] for s, c, _ in codings if s == cfg["snomed"] and c in cfg["route"]]
            display = next((d for _, _, d in codings if d), None)
            text = mapped[0] if mapped else display
            if text is None and codings:
                raise Invalid("dosage.route code is not in the fhir mapping (values.route)")
        row["route"] = text
    site = _get(dosage, "site", dict, "dosage.")
    if site is not None:
        row["site"] = _concept_text(site, "dosage.site.")


def _extensions(res: dict, row: dict, cfg: dict, seen: set[str]) -> None:
    for i, ext in enumerate(_get(res, "extension", list, "") or []):
        p = f"extension[{i}]."
        if not isinstance(ext, dict):
            raise Invalid(f"extension[{i}] must be an object")
        column = cfg["extensions"].get(_get(ext, "url", str, p, required=True))
        if column is None:
            continue
        values = [k for k in ext if k.startswith("value")]
        if len(values) != 1:
            raise Invalid(f"{p}value[x] is required (exactly one)")
        value = ext[values[0]]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            key = values[0] if _ELEMENT_NAME.fullmatch(values[0]) else "value[x]"  # a key is text from the file
            raise Invalid(f"{p}{key} must be a string or a number")
        row[column] = _num_text(value) if isinstance(value, (int, float)) else value
        seen.add(column)


def _not_done_reason(res: dict) -> str | None:
    """statusReason[0] text (else display) of a not-done resource. A reason that reads as an
    administration ("Given by Other", "Administered") contradicts not-done: the resource is refused
    rather than letting site configuration count it as given."""
    from b12pipeline.engine.settings import SiteConfig

    reasons = _get(res, "statusReason", list, "") or []
    if not reasons:
        return None
    if not isinstance(reasons[0], dict):
        raise Invalid("statusReason[0] must be an object")
    text = _concept_text(reasons[0], "statusReason[0].")
    if text is None:
        return None
    folded = text.strip().lower()
    if folded in SiteConfig().given_actions or (re.search(r"\bgiven\b", folded) and not re.search(r"\bnot\b", folded)):
        raise Invalid("status is not-done but statusReason[0] reads as an administration")
    return text


def parse_resource(
    res: object, cfg: dict, seen: set[str], row: dict, resolve: MedicationResolver | None = None
) -> None:
    """Fill `row` (canonical column -> text) from one resource; raise Invalid on the first problem.
    Fields read before the problem stay in `row`, so quarantine keeps what could be read."""
    if not isinstance(res, dict):
        raise Invalid(f"the line is JSON but not an object ({type(res).__name__})")
    kind = res.get("resourceType")
    if kind != "MedicationAdministration":
        raise Invalid("resourceType is not MedicationAdministration" if kind else "resourceType is missing")
    row["admin_id"] = _get(res, "id", str, "", required=True)
    _medication(res, row, cfg, resolve)
    status = _get(res, "status", str, "", required=True)
    if status not in cfg["status"]:
        raise Invalid("status is not a MedicationAdministration status in the fhir mapping")
    row["mar_action"] = cfg["status"][status]
    if status == "not-done":  # the eMAR's own word for it (Refused, Missed, ...) is in statusReason
        row["mar_action"] = _not_done_reason(res) or row["mar_action"]
    row["patient_id"] = _ref_id(_get(res, "subject", dict, "", required=True), "subject.")
    ctx = _get(res, "context", dict, "")
    row["encounter_id"] = _ref_id(ctx, "context.") if ctx is not None else None
    req = _get(res, "request", dict, "")
    row["order_id"] = _ref_id(req, "request.") if req is not None else None
    when = _get(res, "effectiveDateTime", str, "")
    period = _get(res, "effectivePeriod", dict, "")
    if (when is None) == (period is None):
        raise Invalid("exactly one of effectiveDateTime or effectivePeriod is required")
    row["admin_time"] = when if when is not None else _get(period, "start", str, "effectivePeriod.", required=True)
    for i, perf in enumerate(_get(res, "performer", list, "") or []):
        if not isinstance(perf, dict):
            raise Invalid(f"performer[{i}] must be an object")
        actor = _get(perf, "actor", dict, f"performer[{i}].", required=True)
        if i == 0:
            row["administered_by"] = _ref_id(actor, f"performer[{i}].actor.")
    dx = []
    for i, reason in enumerate(_get(res, "reasonCode", list, "") or []):
        if not isinstance(reason, dict):
            raise Invalid(f"reasonCode[{i}] must be an object")
        dx += [c for s, c, _ in _codings(reason, f"reasonCode[{i}].") if s in cfg["icd10"] and c]
    row["diagnosis_codes"] = ";".join(dx) if dx else None
    _dosage(res, row, cfg)
    _extensions(res, row, cfg, seen)


_KEY_END = re.compile(rb'"\s*:')
_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")


def _key_count(value: object) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_key_count(v) for v in value.values())
    if isinstance(value, list):
        return sum(_key_count(v) for v in value)
    return 0


def _refuse_duplicate_keys(line: bytes, resource: object) -> None:
    """A JSON object with the same key twice (two `subject`s) is ambiguous: parsers keep the last,
    so one of two patients would be dropped unseen. Cheap test first (every key ends in `":`, so
    fewer of those than parsed keys is impossible, and as many means none was dropped); the exact
    check runs only on lines with more (a duplicate, or `":` inside a text value)."""
    if len(_KEY_END.findall(line)) <= _key_count(resource):
        return
    import json

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        repeated = next((k for k in keys if keys.count(k) > 1), None)
        if repeated is not None:
            name = repeated if _ELEMENT_NAME.fullmatch(repeated) else "an element"
            raise Invalid(f"duplicate key {name} in one JSON object (ambiguous: refused, not last-wins)")
        return dict(pairs)

    json.loads(line, object_pairs_hook=no_duplicates)


def read_fhir(path: Path, mapping: str = "fhir") -> Extract:
    cfg = _config(mapping)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileRejected(path, f"cannot read the file: {exc}") from None
    if not data.strip():
        raise FileRejected(path, "the file is empty (no resources)")
    lines = data.split(b"\n")
    if lines and lines[-1].strip() == b"":
        lines.pop()  # the newline that ends the last resource
    columns = list(CORE_COLUMNS) + sorted(set(cfg["extensions"].values()))
    rows: dict[str, list] = {c: [] for c in columns}
    reasons: list[str | None] = []
    seen: set[str] = set()
    json_lines = 0
    for number, line in enumerate(lines, start=1):
        row: dict = {}
        reason = None
        try:
            resource = _loads(line)
            json_lines += 1
            _refuse_duplicate_keys(line, resource)
            parse_resource(resource, cfg, seen, row)
        except _JSONError as exc:
            reason = (
                f"line {number}: not valid JSON ({str(exc).splitlines()[0][:120]})"
                if line.strip()
                else f"line {number}: empty line (NDJSON has one resource per line)"
            )
        except Invalid as exc:
            reason = f"line {number}: {exc}"
        reasons.append(reason)
        for c in columns:
            rows[c].append(row.get(c))
    if json_lines == 0:  # not NDJSON at all (a CSV named .ndjson, a binary file): reject, do not quarantine
        raise FileRejected(path, f"not an NDJSON file: no line is JSON ({reasons[0]})")
    # an extension seen on no resource = an absent column; so is a Medication element no row had
    seen |= {c for c in MEDICATION_COLUMNS if c in rows and any(v is not None for v in rows[c])}
    keep = list(CORE_COLUMNS) + sorted(seen)
    raw = pl.DataFrame({c: rows[c] for c in keep}, schema={c: pl.String for c in keep})
    frame, _ = canonicalise(raw, path)
    frame, held = split_quarantine(frame, pl.Series("r", reasons, dtype=pl.String), CHECK)
    return Extract(path=path, source_format="fhir", frame=frame, quarantine=held)
