"""Write canonical rows as a FHIR R4 Bulk Data export folder (the fhir-bulk reader's inverse).

One NDJSON file per resource type and a manifest.json with the Bulk Data `output` list. Every
column travels in a standard element: the medication as `Medication/<id>` (code, batch, ingredient
strength, amount), the order and its NPI as MedicationRequest -> Practitioner, the payer as
Coverage.type (Source of Payment Typology), diagnoses as reasonReference -> Condition, and the
charge columns as Claim items that name the administration through `informationSequence` ->
`supportingInfo.valueReference`. container_type and waste_mcg have no R4 element: they are written
as the project's extensions unless `standard_only` (then they are not written at all).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl

from b12pipeline.fhir_writer import _number, fhir_administration, fhir_context, medication_code, split_codes

NO_R4_ELEMENT = ("container_type", "waste_mcg")
UCUM_SYSTEM = "http://unitsofmeasure.org"
CHARGE = ("charge_hcpcs", "charge_units", "charge_modifiers", "charge_ndc_qty", "charge_ndc_unit")


class _Ids:
    """Stable ids for resources shared by several rows (one Medication per product, ...)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.ids: dict = {}

    def get(self, key) -> tuple[str, bool]:
        """(id, new)."""
        if key in self.ids:
            return self.ids[key], False
        self.ids[key] = f"{self.prefix}-{len(self.ids) + 1}"
        return self.ids[key], True


def _ucum(value, code: str) -> dict:
    return {"value": _number(value), "unit": code, "system": UCUM_SYSTEM, "code": code}


class _Output:
    """One resource type's NDJSON files: `<Type>.ndjson`, or `<Type>.001.ndjson`, `<Type>.002.ndjson`
    ... once it passes `per_file` resources (Bulk Data servers split large outputs; each file then
    stays under the input limit on file size)."""

    def __init__(self, folder: Path, kind: str, per_file: int):
        self.folder, self.kind, self.per_file = folder, kind, per_file
        self.files: list[tuple[Path, int]] = []  # (path, resources) of the closed files
        self.count = 0
        self.path = folder / f"{kind}.ndjson"
        self.fh = open(self.path, "wb")  # noqa: SIM115 (closed by close())

    def write(self, res: dict) -> None:
        if self.count and self.count % self.per_file == 0:
            self.fh.close()
            if not self.files:  # the first file gets its number too
                numbered = self.folder / f"{self.kind}.001.ndjson"
                self.path.rename(numbered)
                self.path = numbered
            self.files.append((self.path, self.per_file))
            self.path = self.folder / f"{self.kind}.{len(self.files) + 1:03d}.ndjson"
            self.fh = open(self.path, "wb")  # noqa: SIM115
        self.fh.write(orjson.dumps(res) + b"\n")
        self.count += 1

    def close(self) -> list[tuple[Path, int]]:
        """The files written, with their resource counts (an empty type writes none)."""
        self.fh.close()
        rest = self.count - sum(n for _, n in self.files)
        if rest:
            self.files.append((self.path, rest))
        else:
            self.path.unlink()
        return self.files


def write_fhir_bulk(
    frame: pl.DataFrame,
    folder: Path,
    standard_only: bool = False,
    mapping_name: str = "fhir",
    per_file: int = 250_000,
) -> Path:
    ctx = fhir_context(mapping_name)
    systems = ctx["systems"]
    payer_code: dict[str, str] = {}
    for code, name in ctx["mapping"].values["payer_type"].map.items():
        if "|" not in code:
            payer_code.setdefault(name, code)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = (
        "MedicationAdministration",
        "Medication",
        "MedicationRequest",
        "Practitioner",
        "Patient",
        "Encounter",
        "Condition",
        "Coverage",
        "Claim",
    )
    out = {k: _Output(folder, k, per_file) for k in kinds}
    ids = {k: _Ids(p) for k, p in (("med", "med"), ("mr", "mr"), ("pr", "pr"), ("cov", "cov"), ("cond", "cond"))}
    seen_patients: set[str] = set()
    seen_encounters: set[str] = set()
    orders: dict[str, tuple] = {}

    def emit(kind: str, res: dict) -> None:
        out[kind].write(res)

    try:
        for n, r in enumerate(frame.iter_rows(named=True), start=1):
            extensions = () if standard_only else NO_R4_ELEMENT
            res = fhir_administration(r, ctx, extension_columns=extensions, medication=False)
            patient = {"reference": f"Patient/{r['patient_id']}"} if r["patient_id"] else None
            if r["patient_id"] and r["patient_id"] not in seen_patients:
                seen_patients.add(r["patient_id"])
                emit("Patient", {"resourceType": "Patient", "id": r["patient_id"]})
            if r["encounter_id"] and r["encounter_id"] not in seen_encounters:
                seen_encounters.add(r["encounter_id"])
                encounter = {
                    "resourceType": "Encounter",
                    "id": r["encounter_id"],
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                }
                emit("Encounter", {**encounter, **({"subject": patient} if patient else {})})
            res["medicationReference"] = {"reference": f"Medication/{_medication(r, ids['med'], systems, emit)}"}
            coverage = _coverage(r, ids["cov"], systems, payer_code, patient, emit)
            request = _request(r, ids, orders, coverage, patient, emit)
            if request:
                res["request"] = {"reference": f"MedicationRequest/{request}"}
            else:
                res.pop("request", None)
            reasons = []
            for code in split_codes(r["diagnosis_codes"] or ""):
                cond, new = ids["cond"].get((r["patient_id"], code))
                if new:
                    condition: dict = {"resourceType": "Condition", "id": cond}
                    condition["code"] = {"coding": [{"system": ctx["icd"], "code": code}]}
                    emit("Condition", {**condition, **({"subject": patient} if patient else {})})
                reasons.append({"reference": f"Condition/{cond}"})
            if reasons:
                res["reasonReference"] = reasons
            emit("MedicationAdministration", res)
            claim = _claim(r, n, systems, coverage, patient)
            if claim:
                emit("Claim", claim)
    finally:
        written = {k: o.close() for k, o in out.items()}
    last = frame["admin_time"].drop_nulls().max() if frame.height else None
    manifest = {
        "transactionTime": f"{str(last)[:10] if last else '1970-01-01'}T23:59:59Z",
        "request": "https://ehr.example.org/fhir/Group/b12-cohort/$export",
        "requiresAccessToken": True,
        "output": [{"type": k, "url": path.name, "count": n} for k in kinds for path, n in written[k]],
        "error": [],
    }
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return folder


def _medication(r: dict, ids: _Ids, systems: dict, emit) -> str:
    key = tuple(
        r[c]
        for c in (
            "medication_name",
            "rxnorm_code",
            "ndc",
            "lot_number",
            "expiration_date",
            "concentration_mcg_per_ml",
            "container_volume_ml",
        )
    )
    med_id, new = ids.get(key)
    if new:
        med: dict = {"resourceType": "Medication", "id": med_id, "code": medication_code(r, systems)}
        if r["concentration_mcg_per_ml"] is not None:
            med["ingredient"] = [
                {
                    "itemCodeableConcept": {"text": r["medication_name"] or "active ingredient"},
                    "strength": {
                        "numerator": _ucum(r["concentration_mcg_per_ml"], "ug"),
                        "denominator": _ucum("1", "mL"),
                    },
                }
            ]
        if r["container_volume_ml"] is not None:
            med["amount"] = {
                "numerator": _ucum(r["container_volume_ml"], "mL"),
                "denominator": {"value": 1, "unit": "vial"},
            }
        batch = {k: v for k, v in (("lotNumber", r["lot_number"]), ("expirationDate", r["expiration_date"])) if v}
        if batch:
            med["batch"] = batch
        emit("Medication", med)
    return med_id


def _coverage(r: dict, ids: _Ids, systems: dict, payer_code: dict, patient, emit) -> str | None:
    payer = r["payer_type"]
    if payer is None and r.get("payer_id") is None:
        return None
    payer_id = r.get("payer_id")
    cov, new = ids.get((r["patient_id"], payer, payer_id))
    if new:
        code = payer_code.get(payer)
        resource: dict = {"resourceType": "Coverage", "id": cov, "status": "active"}
        if payer is not None:
            resource["type"] = {"coding": [{"system": systems["sopt"], "code": code}]} if code else {"text": payer}
        payor: dict = {"display": "payer of record"}
        if payer_id:
            payor["identifier"] = {"value": payer_id}  # the site's code for the payer (plan)
        resource["payor"] = [payor]
        emit("Coverage", {**resource, **({"beneficiary": patient} if patient else {})})
    return cov


def _request(r: dict, ids: dict, orders: dict, coverage: str | None, patient, emit) -> str | None:
    """One MedicationRequest per order; an order whose rows disagree on NPI or payer gets one per variant."""
    npi = r["ordering_provider_npi"]
    if r["order_id"] is None and npi is None and coverage is None:
        return None
    variant = (npi, coverage)
    key = r["order_id"]
    if key is not None and orders.get(key, variant) == variant:
        request, new = key, key not in orders
        orders[key] = variant
    else:
        request, new = ids["mr"].get((key, variant))
    if new:
        res: dict = {"resourceType": "MedicationRequest", "id": request, "status": "completed", "intent": "order"}
        res["medicationCodeableConcept"] = {"text": r["medication_name"] or "medication"}
        if patient:
            res["subject"] = patient
        if npi is not None:
            practitioner, fresh = ids["pr"].get(npi)
            if fresh:
                ident = [{"system": "http://hl7.org/fhir/sid/us-npi", "value": npi}]
                emit("Practitioner", {"resourceType": "Practitioner", "id": practitioner, "identifier": ident})
            res["requester"] = {"reference": f"Practitioner/{practitioner}"}
        if coverage is not None:
            res["insurance"] = [{"reference": f"Coverage/{coverage}"}]
        emit("MedicationRequest", res)
    return request


def _claim(r: dict, n: int, systems: dict, coverage: str | None, patient) -> dict | None:
    """A claim whose items name the administration (informationSequence -> supportingInfo)."""
    common: dict = {"informationSequence": [1]}
    if r["admin_time"]:
        common["servicedDate"] = r["admin_time"][:10]
    if r["place_of_service"]:
        common["locationCodeableConcept"] = {"coding": [{"system": systems["pos"], "code": r["place_of_service"]}]}
    if r["encounter_id"]:
        common["encounter"] = [{"reference": f"Encounter/{r['encounter_id']}"}]
    items = []
    if any(r[c] is not None for c in CHARGE):
        product = (
            {"coding": [{"system": systems["hcpcs"], "code": r["charge_hcpcs"]}]}
            if r["charge_hcpcs"]
            else {"text": "drug charge, not coded"}
        )
        item: dict = {"productOrService": product, **common}
        if r["charge_modifiers"]:
            item["modifier"] = [
                {"coding": [{"system": systems["hcpcs"], "code": m}]} for m in split_codes(r["charge_modifiers"])
            ]
        if r["charge_units"] is not None:
            item["quantity"] = {"value": _number(r["charge_units"])}
        if r["ndc"] or r["charge_ndc_qty"] is not None or r["charge_ndc_unit"]:
            ndc = {"coding": [{"system": systems["ndc"], "code": r["ndc"]}]} if r["ndc"] else {"text": "no NDC"}
            detail: dict = {"sequence": 1, "productOrService": ndc}
            quantity = {}
            if r["charge_ndc_qty"] is not None:
                quantity["value"] = _number(r["charge_ndc_qty"])
            if r["charge_ndc_unit"]:
                quantity["unit"] = r["charge_ndc_unit"]
            if quantity:
                detail["quantity"] = quantity
            item["detail"] = [detail]
        items.append(item)
    if r["admin_cpt"]:
        items.append({"productOrService": {"coding": [{"system": systems["cpt"], "code": r["admin_cpt"]}]}, **common})
    for em in split_codes(r["same_day_em_codes"] or ""):
        code, *modifiers = em.split("-")
        item = {"productOrService": {"coding": [{"system": systems["cpt"], "code": code}]}, **common}
        if modifiers:
            item["modifier"] = [{"coding": [{"system": systems["cpt"], "code": m}]} for m in modifiers]
        items.append(item)
    if not items:
        return None
    claim_type = r["claim_type"]
    claim: dict = {
        "resourceType": "Claim",
        "id": f"clm-{n}",
        "status": "active",
        "type": {"coding": [{"system": systems["claim_type"], "code": claim_type}]}
        if claim_type
        else {"text": "not stated"},
        "use": "claim",
        "patient": patient or {"display": "unknown"},
        "created": r["admin_time"][:10] if r["admin_time"] else "1970-01-01",
        "provider": {"display": "billing provider"},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]},
        "supportingInfo": [
            {
                "sequence": 1,
                "category": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/claiminformationcategory", "code": "info"}
                    ]
                },
                "valueReference": {"reference": f"MedicationAdministration/{r['admin_id']}"},
            }
        ],
        "item": [{"sequence": i, **item} for i, item in enumerate(items, start=1)],
    }
    if coverage:
        claim["insurance"] = [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/{coverage}"}}]
    return claim
