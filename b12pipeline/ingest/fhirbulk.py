"""FHIR R4 Bulk Data export (`$export`: one NDJSON file per resource type) -> the canonical frame.

Standard resources only; docs/sources.md has the element -> column table. The export's supporting
resources (Medication, MedicationRequest, Practitioner, PractitionerRole, Encounter, Condition,
Coverage, Claim, ExplanationOfBenefit, ChargeItem) are indexed first, keeping only the few fields
the contract needs; then MedicationAdministration files stream in chunks, each administration
joined to what it references. Memory is the indexes (fields, not resources) plus one chunk.

Every MedicationAdministration line is one row read; `source_file`/`source_row` name its file and
line. A reference that names a resource missing from the export, or a resource of the wrong type,
quarantines the administration with the element and the resource type named, never an id. The
references followed form a fixed chain in which each step names a different resource type
(administration -> request -> requester -> practitioner), so a cycle cannot make the reader loop.
A resource type with no file in the export is not resolved: its id is taken from the reference,
as the single-file reader does (a `_type`-filtered export is legitimate).

Charge lines (Claim/ExplanationOfBenefit items, ChargeItems) link to an administration by, in
order: a ChargeItem's `service`, a Claim item's `informationSequence` naming a `supportingInfo`
whose `valueReference` is the administration, else encounter + date of service (+ NDC when the
line has one) when exactly one administration and one line of that kind share them
(docs/decisions.md). A drug line that links to no administration is quarantined as a charge
without a documented dose.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from b12pipeline.contract import load_contract
from b12pipeline.ingest import Extract, FileRejected, canonicalise, split_quarantine
from b12pipeline.ingest.fhir import (
    CHECK,
    Invalid,
    _codings,
    _concept_text,
    _config,
    _get,
    _JSONError,
    _loads,
    _num_text,
    parse_resource,
)
from b12pipeline.limits import current_limits, file_problem

FORMAT = "fhir-bulk"
ADMINISTRATION = "MedicationAdministration"
SUPPORTING = (
    "Medication",
    "MedicationRequest",
    "Practitioner",
    "PractitionerRole",
    "Encounter",
    "Condition",
    "Coverage",
    "Claim",
    "ExplanationOfBenefit",
    "ChargeItem",
)
CHARGE_TYPES = ("Claim", "ExplanationOfBenefit", "ChargeItem")
# Resource types a reason may name when a reference points at the wrong one. The Type part of a
# reference is text from the file (an identifier written where a type belongs would be quoted), so
# anything outside these FHIR R4 types is called "a resource of another type".
NAMEABLE_TYPES = frozenset(
    (ADMINISTRATION, *SUPPORTING, "EpisodeOfCare", "Patient", "Group", "Substance", "Organization", "Location")
    + ("Device", "RelatedPerson", "Procedure", "Observation", "ServiceRequest", "Immunization", "Specimen")
)
CHARGE_COLUMNS = (
    "place_of_service",
    "claim_type",
    "charge_hcpcs",
    "charge_units",
    "charge_modifiers",
    "charge_ndc_qty",
    "charge_ndc_unit",
    "admin_cpt",
    "same_day_em_codes",
)
CHUNK = 50_000  # administrations per chunk: bounds the Python objects held at once
_TYPE_IN_NAME = re.compile(r"^(?:\d+[._-])?([A-Z][A-Za-z]+)")


# --- finding the export's files ---------------------------------------------------------------


def recognise(path: Path) -> bool:
    """A folder holding MedicationAdministration NDJSON, or a Bulk Data manifest (JSON with `output`)."""
    if path.is_dir():
        return any(_type_of(p) == ADMINISTRATION for p in path.iterdir() if p.is_file())
    if path.suffix.lower() == ".json" and path.is_file() and path.stat().st_size < (1 << 20):
        try:
            manifest = _loads(path.read_bytes())
        except (_JSONError, OSError):
            return False
        return isinstance(manifest, dict) and isinstance(manifest.get("output"), list)
    return False


def _type_of(path: Path) -> str | None:
    """Bulk Data servers name files after the resource type (`MedicationAdministration.ndjson`,
    `1.Claim.ndjson`, `Claim_2.ndjson`)."""
    if path.suffix.lower() not in (".ndjson", ".jsonl") or path.name.startswith("."):
        return None
    match = _TYPE_IN_NAME.match(path.name)
    return match.group(1) if match else None


def export_files(path: Path) -> dict[str, list[Path]]:
    """Resource type -> its NDJSON files, from a folder or from a manifest's `output` list."""
    files: dict[str, list[Path]] = defaultdict(list)
    if path.is_dir():
        for p in sorted(path.iterdir()):
            kind = _type_of(p) if p.is_file() else None
            if kind:
                files[kind].append(p)
    else:
        try:
            manifest = _loads(path.read_bytes())
        except (_JSONError, OSError):
            raise FileRejected(path, "the Bulk Data manifest is not JSON") from None
        output = manifest.get("output") if isinstance(manifest, dict) else None
        if not isinstance(output, list):
            raise FileRejected(path, "the Bulk Data manifest has no output list")
        for i, entry in enumerate(output):
            kind = entry.get("type") if isinstance(entry, dict) else None
            url = entry.get("url") if isinstance(entry, dict) else None
            if not isinstance(kind, str) or not isinstance(url, str) or not url.strip():
                raise FileRejected(path, f"output[{i}] needs a type and a url")
            local = path.parent / url.rstrip("/").rsplit("/", 1)[-1]  # the downloaded copy beside the manifest
            if not local.is_file():
                raise FileRejected(path, f"output[{i}] ({kind}): its file {local.name} is not beside the manifest")
            files[kind].append(local)
    if not files.get(ADMINISTRATION):
        raise FileRejected(path, "the export has no MedicationAdministration file")
    limits = current_limits()
    for paths in files.values():
        for p in paths:
            problem = file_problem(p, "fhir", limits)
            if problem:
                raise FileRejected(path, f"{p.name}: {problem}")
    return dict(files)


def _lines(path: Path, offsets: bool = False):
    """(line number, parsed JSON or None, problem or None[, byte offset]) for each line, one line at a time."""
    with open(path, "rb") as fh:
        number, offset = 0, 0
        for line in iter(fh.readline, b""):
            number += 1
            start, offset = offset, offset + len(line)
            item: tuple[int, Any, str | None]
            if not line.strip():
                item = (number, None, "empty line (NDJSON has one resource per line)")
            else:
                try:
                    item = (number, _loads(line), None)
                except _JSONError:
                    item = (number, None, "not valid JSON")
            yield (*item, start) if offsets else item


def _read_at(handles: dict, path: Path, offset: int) -> dict:
    """The resource on the line starting at `offset` (handles: path -> open file, kept for the read)."""
    fh = handles.get(path) or handles.setdefault(path, open(path, "rb"))  # noqa: SIM115 (closed by the reader)
    fh.seek(offset)
    return _loads(fh.readline())


# --- the index of supporting resources --------------------------------------------------------


@dataclass(slots=True)
class ChargeLine:
    """One Claim/ExplanationOfBenefit item or ChargeItem: the fields the contract takes from it."""

    where: str  # "Claim.ndjson line 4 item[1]": names the line, never an id
    kind: str  # drug | admin | em
    code: str | None
    modifiers: list[str]
    units: str | None
    ndc: str | None
    ndc_qty: str | None
    ndc_unit: str | None
    pos: str | None
    claim_type: str | None
    coverage: str | None  # Coverage id of the claim's focal insurance
    encounter: str | None
    dos: str | None
    patient: str | None
    claim_key: str = ""  # lines of one claim share it
    description: str | None = None  # the line's text or display ("Injection, cyanocobalamin, ...")


@dataclass
class Index:
    types: set[str]  # resource types that have a file in the export
    medications: dict[str, tuple] = field(default_factory=dict)  # id -> (resource, path)
    requests: dict[str, tuple] = field(default_factory=dict)  # id -> (requester ref, coverage ref)
    practitioners: dict[str, str | None] = field(default_factory=dict)  # id -> NPI
    roles: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # role id -> practitioner ref
    encounters: dict[str, tuple] = field(default_factory=dict)  # id -> Condition refs of diagnosis
    conditions: dict[str, tuple] = field(default_factory=dict)  # id -> ICD-10-CM codes
    coverages: dict[str, tuple] = field(default_factory=dict)  # id -> (payer_type, payer_id)
    linked: dict[str, list[ChargeLine]] = field(default_factory=lambda: defaultdict(list))  # admin id -> lines
    by_day: dict[tuple, list[ChargeLine]] = field(default_factory=lambda: defaultdict(list))  # (enc, dos) -> lines
    problems: dict[tuple, str] = field(default_factory=dict)  # (type, id) -> why the resource is unusable
    charge_problems: dict[str, str] = field(default_factory=dict)  # admin id -> why its charge line is unusable
    deferred: dict[str, tuple] = field(default_factory=dict)  # admin id -> ((file, offset, line), ...)
    handles: dict = field(default_factory=dict)  # open claim files while administrations are read


def _split_ref(ref: object, element: str) -> tuple[str | None, str | None]:
    """{'reference': 'Type/id'} -> (Type, id); (None, None) when the element is absent."""
    if ref is None:
        return None, None
    if not isinstance(ref, dict):
        raise Invalid(f"{element} must be an object")
    text = _get(ref, "reference", str, element + ".")
    if text is None:
        return None, None
    parts = text.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] != "_history":
        return parts[-2], parts[-1]
    if len(parts) >= 4 and parts[-2] == "_history":  # Type/id/_history/version
        return parts[-4], parts[-3]
    raise Invalid(f"{element}.reference is not a relative reference (Type/id)")


def _expect(kind: str | None, wanted: tuple[str, ...], element: str) -> None:
    if kind is not None and kind not in wanted:
        named = _a(kind) if kind in NAMEABLE_TYPES else "a resource of another type"
        raise Invalid(f"{element} names {named}, not {' or '.join(_a(w) for w in wanted)}")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOU" else f"a {kind}"


def _first_code(concept: dict | None, path: str, systems: set[str] | None = None) -> tuple[str | None, str | None]:
    """(system, code) of the first coding (of one of `systems`) in a CodeableConcept."""
    if concept is None:
        return None, None
    for system, code, _ in _codings(concept, path):
        if code and (systems is None or system in systems):
            return system, code
    return None, None


def _payer_type(coverage: dict, cfg: dict) -> str | None:
    """Coverage.type -> payer_type: a Source of Payment Typology code by its longest listed prefix
    (SOPT is hierarchical: 1 Medicare, 121 Medicare FFS), else a site-mapped system|code, else the text."""
    concept = _get(coverage, "type", dict, "type.")
    if concept is None:
        return None
    payer = cfg["payer"]
    for system, code, _ in _codings(concept, "type."):
        if not code:
            continue
        if system == cfg["sopt"]:
            for n in range(len(code), 0, -1):
                if code[:n] in payer:
                    return payer[code[:n]]
        if f"{system}|{code}" in payer:
            return payer[f"{system}|{code}"]
    return _get(concept, "text", str, "type.")


def _payer_id(coverage: dict) -> str | None:
    """The site's code for the payer (plan): the identifier on `Coverage.payor[0]`, else the value of
    the `Coverage.class` whose type is `plan`."""
    payors = _get(coverage, "payor", list, "") or []
    if payors and isinstance(payors[0], dict):
        ident = _get(payors[0], "identifier", dict, "payor[0].")
        value = _get(ident, "value", str, "payor[0].identifier.") if ident else None
        if value:
            return value
    for i, cls in enumerate(_get(coverage, "class", list, "") or []):
        if (
            isinstance(cls, dict)
            and _first_code(_get(cls, "type", dict, f"class[{i}]."), f"class[{i}].type.")[1] == "plan"
        ):
            return _get(cls, "value", str, f"class[{i}].")
    return None


def _quantity_text(quantity: dict | None, path: str) -> tuple[str | None, str | None]:
    if quantity is None:
        return None, None
    value = _get(quantity, "value", float, path)
    unit = _get(quantity, "unit", str, path) or _get(quantity, "code", str, path)
    return (None if value is None else _num_text(value)), unit


def _kind(system: str | None, code: str | None, cfg: dict) -> str:
    """CPT E/M (99202-99499) -> em; any other CPT code -> admin (96360-96549 in practice); a
    HCPCS Level II, NDC or uncoded line -> drug."""
    if system == cfg["cpt"] and code:
        return "em" if code[:5].isdigit() and "99202" <= code[:5] <= "99499" else "admin"
    return "drug"


def _claim_lines(res: dict, where: str, cfg: dict) -> tuple[list[ChargeLine], dict[int, list[str]]]:
    """The items of a Claim or ExplanationOfBenefit, and item sequence -> administration ids it names."""
    claim_type = _first_code(_get(res, "type", dict, ""), "type.")[1]
    coverage = None
    for i, ins in enumerate(_get(res, "insurance", list, "") or []):
        if isinstance(ins, dict) and (i == 0 or ins.get("focal") is True):
            t, coverage = _split_ref(ins.get("coverage"), f"insurance[{i}].coverage")
            _expect(t, ("Coverage",), f"insurance[{i}].coverage")
            if ins.get("focal") is True:
                break
    _, patient = _split_ref(res.get("patient"), "patient")
    info: dict[int, str] = {}
    for i, sup in enumerate(_get(res, "supportingInfo", list, "") or []):
        if not isinstance(sup, dict):
            raise Invalid(f"supportingInfo[{i}] must be an object")
        t, ident = _split_ref(sup.get("valueReference"), f"supportingInfo[{i}].valueReference")
        if t == ADMINISTRATION and ident is not None:
            info[_get(sup, "sequence", int, f"supportingInfo[{i}].", required=True)] = ident
    lines, links = [], {}
    for i, item in enumerate(_get(res, "item", list, "") or []):
        p = f"item[{i}]."
        if not isinstance(item, dict):
            raise Invalid(f"item[{i}] must be an object")
        product = _get(item, "productOrService", dict, p, required=True)
        system, code = _first_code(product, p + "productOrService.")
        units, _ = _quantity_text(_get(item, "quantity", dict, p), p + "quantity.")
        encounters = _get(item, "encounter", list, p) or []
        encounter = None
        if encounters:
            t, encounter = _split_ref(encounters[0], p + "encounter[0]")
            _expect(t, ("Encounter",), p + "encounter[0]")
        ndc = ndc_qty = ndc_unit = None
        for j, detail in enumerate(_get(item, "detail", list, p) or []):  # the NDC detail, else the first
            dp = f"{p}detail[{j}]."
            if not isinstance(detail, dict):
                raise Invalid(f"{dp[:-1]} must be an object")
            _, ndc = _first_code(_get(detail, "productOrService", dict, dp), dp + "productOrService.", {cfg["ndc"]})
            if ndc or j == 0:
                ndc_qty, ndc_unit = _quantity_text(_get(detail, "quantity", dict, dp), dp + "quantity.")
            if ndc:
                break
        if ndc is None and system == cfg["ndc"]:
            ndc = code
        when = _get(item, "servicedDate", str, p)
        if when is None:
            period = _get(item, "servicedPeriod", dict, p)
            when = _get(period, "start", str, p + "servicedPeriod.") if period else None
        modifiers = [
            c for m in _get(item, "modifier", list, p) or [] for c in [_first_code(m, p + "modifier.")[1]] if c
        ]
        line = ChargeLine(
            where=f"{where} item[{i}]",
            kind=_kind(system, code, cfg),
            code=code if system != cfg["ndc"] else None,
            modifiers=modifiers,
            units=units,
            ndc=ndc,
            ndc_qty=ndc_qty,
            ndc_unit=ndc_unit,
            pos=_first_code(_get(item, "locationCodeableConcept", dict, p), p + "locationCodeableConcept.")[1],
            claim_type=claim_type,
            coverage=coverage,
            encounter=encounter,
            dos=when[:10] if when else None,
            patient=patient,
            claim_key=where,
            description=_concept_text(product, p + "productOrService."),
        )
        lines.append(line)
        named = [info[s] for s in _get(item, "informationSequence", list, p) or [] if s in info]
        if named:
            links[len(lines) - 1] = named
    return lines, links


def _charge_item(res: dict, where: str, cfg: dict) -> tuple[ChargeLine, list[str]]:
    concept = _get(res, "code", dict, "", required=True)
    system, code = _first_code(concept, "code.")
    units, _ = _quantity_text(_get(res, "quantity", dict, ""), "quantity.")
    t, encounter = _split_ref(res.get("context"), "context")
    _expect(t, ("Encounter", "EpisodeOfCare"), "context")
    _, patient = _split_ref(res.get("subject"), "subject")
    when = _get(res, "occurrenceDateTime", str, "")
    if when is None:
        period = _get(res, "occurrencePeriod", dict, "")
        when = _get(period, "start", str, "occurrencePeriod.") if period else None
    _, ndc = _first_code(_get(res, "productCodeableConcept", dict, ""), "productCodeableConcept.", {cfg["ndc"]})
    services = []
    for i, ref in enumerate(_get(res, "service", list, "") or []):
        t, ident = _split_ref(ref, f"service[{i}]")
        if t == ADMINISTRATION and ident is not None:
            services.append(ident)
    line = ChargeLine(
        where=where,
        kind=_kind(system, code, cfg),
        code=code,
        modifiers=[],
        units=units,
        ndc=ndc,
        ndc_qty=None,
        ndc_unit=None,
        pos=None,
        claim_type=None,
        coverage=None,
        encounter=encounter if t == "Encounter" else None,
        dos=when[:10] if when else None,
        patient=patient,
        claim_key=where,
        description=_concept_text(concept, "code."),
    )
    return line, services


def build_index(files: dict[str, list[Path]], cfg: dict) -> Index:
    index = Index(types={t for t in files if t in SUPPORTING or t == ADMINISTRATION})
    for kind in SUPPORTING:
        for path in files.get(kind, []):
            for number, res, problem, offset in _lines(path, offsets=True):
                where = f"{path.name} line {number}"
                if problem or not isinstance(res, dict) or res.get("resourceType") != kind:
                    continue  # unusable: a reference to it reads as missing from the export
                ident = res.get("id")
                if not isinstance(ident, str):
                    continue
                named = _linked_claim(res) if kind in ("Claim", "ExplanationOfBenefit") else ()
                for admin in named:  # read when (and only if) that administration is: most are other drugs
                    index.deferred[admin] = (*index.deferred.get(admin, ()), (path, offset, number))
                if named:
                    continue
                try:
                    _index_resource(index, kind, ident, res, where, cfg)
                except Invalid as exc:
                    index.problems[(kind, ident)] = f"{where}: {exc}"
                    for admin in _administrations_named(res) if kind in CHARGE_TYPES else ():
                        index.charge_problems[admin] = f"{where}: {exc}"
    return index


def _linked_claim(res: dict) -> list[str]:
    """The administrations a claim names, when every one of its items names one of them through
    informationSequence (such a claim is parsed only when its administration is read); else []."""
    named = {}
    for sup in res.get("supportingInfo") or []:
        value = sup.get("valueReference") if isinstance(sup, dict) else None
        target = value.get("reference") if isinstance(value, dict) else None
        if isinstance(target, str) and target.startswith(ADMINISTRATION + "/"):
            named[sup.get("sequence")] = target[len(ADMINISTRATION) + 1 :]
    items = res.get("item") if isinstance(res.get("item"), list) else None
    if not named or not items:
        return []
    for item in items:
        sequences = item.get("informationSequence") if isinstance(item, dict) else None
        if not isinstance(sequences, list) or not any(isinstance(q, int) and q in named for q in sequences):
            return []
    return list(dict.fromkeys(named.values()))


def _deferred_lines(index: Index, admin: str, cfg: dict) -> list[ChargeLine]:
    """The lines of the claims deferred for `admin` that name it."""
    lines = []
    for path, offset, number in index.deferred.pop(admin, ()):
        where = f"{path.name} line {number}"
        try:
            found, links = _claim_lines(_read_at(index.handles, path, offset), where, cfg)
        except Invalid as exc:
            raise Invalid(f"its charge line: {where}: {exc}") from None
        lines += [line for i, line in enumerate(found) if admin in links.get(i, ())]
    return lines


def _administrations_named(res: dict) -> list[str]:
    """Administration ids a charge resource names, read leniently (the resource itself is broken)."""
    refs = [s.get("valueReference") for s in res.get("supportingInfo") or [] if isinstance(s, dict)]
    refs += res.get("service") or [] if isinstance(res.get("service"), list) else []
    prefix = ADMINISTRATION + "/"
    return [
        r["reference"][len(prefix) :]
        for r in refs
        if isinstance(r, dict) and isinstance(r.get("reference"), str) and r["reference"].startswith(prefix)
    ]


def _index_resource(index: Index, kind: str, ident: str, res: dict, where: str, cfg: dict) -> None:
    if kind == "Medication":
        index.medications[ident] = (res, f"{where}: Medication.")
    elif kind == "MedicationRequest":
        ins = _get(res, "insurance", list, "") or []
        index.requests[ident] = (
            _split_ref(res.get("requester"), "requester"),
            _split_ref(ins[0], "insurance[0]") if ins else (None, None),
        )
    elif kind == "Practitioner":
        npi = None
        for i, ident_ in enumerate(_get(res, "identifier", list, "") or []):
            if isinstance(ident_, dict) and ident_.get("system") == cfg["npi"]:
                npi = _get(ident_, "value", str, f"identifier[{i}].")
                break
        index.practitioners[ident] = npi
    elif kind == "PractitionerRole":
        index.roles[ident] = _split_ref(res.get("practitioner"), "practitioner")
    elif kind == "Encounter":
        refs = []
        for i, dx in enumerate(_get(res, "diagnosis", list, "") or []):
            if isinstance(dx, dict):
                refs.append(_split_ref(dx.get("condition"), f"diagnosis[{i}].condition"))
        index.encounters[ident] = tuple(refs)
    elif kind == "Condition":
        codes = [c for s, c, _ in _codings(_get(res, "code", dict, "") or {}, "code.") if s in cfg["icd10"] and c]
        index.conditions[ident] = tuple(codes)
    elif kind == "Coverage":
        index.coverages[ident] = (_payer_type(res, cfg), _payer_id(res))
    elif kind == "ChargeItem":
        line, services = _charge_item(res, where, cfg)
        _place(index, line, services)
    else:  # Claim, ExplanationOfBenefit
        lines, links = _claim_lines(res, where, cfg)
        for i, line in enumerate(lines):
            _place(index, line, links.get(i, []))


def _place(index: Index, line: ChargeLine, admins: list[str]) -> None:
    if admins:
        for admin in admins:
            index.linked[admin].append(line)
    elif line.encounter and line.dos:
        index.by_day[(line.encounter, line.dos)].append(line)
    elif line.kind == "drug":
        index.by_day[("", "")].append(line)  # linkable to nothing: reported


# --- one administration -----------------------------------------------------------------------


class _Resolver:
    def __init__(self, index: Index):
        self.index = index

    def medication(self, target: str) -> tuple[dict, str]:
        kind, ident = _split_ref({"reference": target}, "medicationReference")
        _expect(kind, ("Medication",), "medicationReference")
        return self.lookup("Medication", ident, "medicationReference", self.index.medications)

    def lookup(self, kind: str, ident: str | None, element: str, table: dict):
        """The indexed entry `element` names; Invalid when the export lacks it or could not read it."""
        problem = self.index.problems.get((kind, ident))
        if problem:
            raise Invalid(f"{element} -> {problem}")
        if kind not in self.index.types:
            if kind == "Medication":
                raise Invalid("medicationReference names a Medication but the export has no Medication file")
            return None
        if ident not in table:
            raise Invalid(f"{element} names {_a(kind)} that is not in the export")
        return table[ident]


def _resolve(res: dict, row: dict, index: Index, resolver: _Resolver, cfg: dict) -> list[ChargeLine]:
    """Fill the columns that come from referenced resources; return the administration's linked lines."""
    kind, ident = _split_ref(res.get("request"), "request")
    _expect(kind, ("MedicationRequest",), "request")
    coverage = None
    if ident is not None:
        request = resolver.lookup("MedicationRequest", ident, "request", index.requests)
        if request is not None:
            (rkind, rid), (ckind, cid) = request
            element = "request -> MedicationRequest.requester"
            if rkind == "PractitionerRole":
                role = resolver.lookup("PractitionerRole", rid, element, index.roles)
                element += " -> PractitionerRole.practitioner"
                rkind, rid = role if role is not None else (None, None)
                _expect(rkind, ("Practitioner",), element)
            if rkind == "Practitioner":
                row["ordering_provider_npi"] = resolver.lookup("Practitioner", rid, element, index.practitioners)
            if ckind == "Coverage":
                coverage = (cid, "request -> MedicationRequest.insurance[0]")
    kind, ident = _split_ref(res.get("context"), "context")
    _expect(kind, ("Encounter",), "context")
    encounter = resolver.lookup("Encounter", ident, "context", index.encounters) if ident else None
    if row.get("diagnosis_codes") is None:
        row["diagnosis_codes"] = _diagnoses(res, encounter, index, resolver)
    problem = index.charge_problems.get(row["admin_id"])
    if problem:
        raise Invalid(f"its charge line: {problem}")
    lines = index.linked.pop(row["admin_id"], []) + _deferred_lines(index, row["admin_id"], cfg)
    if lines:
        drugs = [line for line in lines if line.kind == "drug"]
        if len(drugs) > 1:
            raise Invalid(
                f"{len(drugs)} drug charge lines name this administration ({drugs[0].where}, {drugs[1].where})"
            )
        claim = next((ln for ln in lines if ln.kind in ("drug", "admin") and ln.coverage), None)
        if claim is not None:
            coverage = (claim.coverage, f"{claim.where.split(' item')[0]}: insurance.coverage")
    if coverage is not None:
        payer_type, payer_id = resolver.lookup("Coverage", coverage[0], coverage[1], index.coverages) or (None, None)
        if row.get("payer_type") is None:
            row["payer_type"] = payer_type
        if row.get("payer_id") is None:
            row["payer_id"] = payer_id
    return lines


def _diagnoses(res: dict, encounter: tuple | None, index: Index, resolver: _Resolver) -> str | None:
    """reasonReference Conditions, else the Encounter's diagnosis Conditions (ICD-10-CM codes)."""
    codes: list[str] = []
    for i, ref in enumerate(_get(res, "reasonReference", list, "") or []):
        kind, ident = _split_ref(ref, f"reasonReference[{i}]")
        if kind == "Condition":
            codes += resolver.lookup("Condition", ident, f"reasonReference[{i}]", index.conditions) or ()
    if not codes and encounter:
        for i, (kind, ident) in enumerate(encounter):
            if kind == "Condition":
                element = f"context -> Encounter.diagnosis[{i}].condition"
                codes += resolver.lookup("Condition", ident, element, index.conditions) or ()
    return ";".join(codes) if codes else None


def apply_lines(row: dict, lines: list[ChargeLine]) -> None:
    """Charge columns from an administration's lines: its drug line, its administration line, and
    the E/M lines (code-modifier, as the canonical same_day_em_codes)."""
    drug = next((ln for ln in lines if ln.kind == "drug"), None)
    admin = next((ln for ln in lines if ln.kind == "admin"), None)
    ems = [ln for ln in lines if ln.kind == "em"]
    head = drug or admin or (ems[0] if ems else None)
    if head is None:
        return
    values = {"place_of_service": head.pos, "claim_type": head.claim_type}
    if drug is not None:
        values |= {
            "charge_hcpcs": drug.code,
            "charge_units": drug.units,
            "charge_modifiers": ";".join(drug.modifiers) or None,
            "charge_ndc_qty": drug.ndc_qty,
            "charge_ndc_unit": drug.ndc_unit,
        }
    if admin is not None:
        values["admin_cpt"] = admin.code
    if ems:
        values["same_day_em_codes"] = ";".join("-".join([ln.code or "", *ln.modifiers]) for ln in ems) or None
    for column, value in values.items():
        if row.get(column) is None:  # an extension on the administration says it explicitly
            row[column] = value


# --- the reader -------------------------------------------------------------------------------


def read_fhir_bulk(path: Path, keep: pl.Expr | None = None, mapping: str = "fhir") -> Extract:
    cfg = _bulk_config(mapping)
    files = export_files(path)
    index = build_index(files, cfg)
    try:
        return _read(path, files, index, cfg, keep)
    finally:
        for fh in index.handles.values():
            fh.close()


def _read(path: Path, files: dict, index: Index, cfg: dict, keep: pl.Expr | None) -> Extract:
    resolver = _Resolver(index)
    contract = load_contract()
    columns = [c for c in contract.names]
    has_charges = any(files.get(t) for t in CHARGE_TYPES)
    on_days: list[dict] = []  # administrations on an encounter-day that has lines no reference links
    outside = _medications_outside(index, cfg, keep, resolver)
    kept: list[pl.DataFrame] = []
    held: list[pl.DataFrame] = []
    skipped = 0
    seen: set[str] = set()
    json_lines = 0
    for mpath in files[ADMINISTRATION]:
        buffer: dict[str, list] = {c: [] for c in [*columns, "source_row", "_reason"]}
        for number, res, problem in _lines(mpath):
            row: dict = {}
            reason = problem
            if res is not None:
                json_lines += 1
                if outside and _outside(res, outside):  # another medication: counted, never materialised
                    skipped += 1
                    index.linked.pop(res.get("id"), None)
                    index.deferred.pop(res.get("id"), None)
                    day = _day_of(res)
                    if day in index.by_day:  # still a candidate for its encounter-day's lines
                        on_days.append({"source_file": "", "source_row": 0, "ndc": None, "day": day, "linked": True})
                    continue
                try:
                    parse_resource(res, cfg, seen, row, resolver.medication)
                    lines = _resolve(res, row, index, resolver, cfg)
                    apply_lines(row, lines)
                    day = (row.get("encounter_id") or "", (row.get("admin_time") or "")[:10])
                    if day in index.by_day:  # lines on this encounter-day await linking
                        on_days.append(
                            {
                                "source_file": mpath.name,
                                "source_row": number,
                                "ndc": row.get("ndc"),
                                "day": day,
                                "linked": bool(lines),
                            }
                        )
                except Invalid as exc:
                    reason = str(exc)
            for c in columns:
                buffer[c].append(row.get(c))
            buffer["source_row"].append(number)
            buffer["_reason"].append(None if reason is None else f"line {number}: {reason}")
            if len(buffer["source_row"]) >= CHUNK:
                skipped += _flush(buffer, mpath, keep, kept, held)
        skipped += _flush(buffer, mpath, keep, kept, held)
    if json_lines == 0:
        raise FileRejected(path, "not a Bulk Data export: no MedicationAdministration line is JSON")
    frame = pl.concat(kept, how="vertical")  # a JSON line was read, so a chunk was flushed
    frame = _link_by_day(frame, on_days, index)
    present = {"charge_hcpcs": has_charges or "charge_hcpcs" in seen, "admin_cpt": has_charges or "admin_cpt" in seen}
    frame = frame.with_columns(pl.lit(v).alias(f"has_{c}") for c, v in present.items() if f"has_{c}" in frame.columns)
    for admin in list(index.deferred):  # claims naming an administration the export does not hold
        try:
            index.linked[admin] += _deferred_lines(index, admin, cfg)
        except Invalid:
            pass  # unreadable and about no administration in the export: nothing to report it on
    unlinked = _unlinked_lines(index, frame.columns, present)
    quarantine = pl.concat([*held, *unlinked], how="vertical") if held or unlinked else None
    if quarantine is not None:
        quarantine = quarantine.with_columns(pl.lit(v).alias(f"has_{c}") for c, v in present.items())
    return Extract(path=path, source_format=FORMAT, frame=frame, quarantine=quarantine, rows_skipped=skipped)


def _medications_outside(index: Index, cfg: dict, keep: pl.Expr | None, resolver: _Resolver) -> set[str]:
    """Ids of the readable Medications that `keep` (B12 scope) excludes. Scope is decided by the
    medication's name, NDC and RxNorm code alone, so an administration of one of them is skipped
    before its references are resolved: in an all-medication export that is most of the work."""
    from b12pipeline.ingest.fhir import _medication

    if keep is None or not index.medications:
        return set()
    ids, rows = [], []
    for ident in index.medications:
        row: dict = {}
        try:
            _medication({"medicationReference": {"reference": f"Medication/{ident}"}}, row, cfg, resolver.medication)
        except Invalid:
            continue  # its administrations take the full path and are quarantined with the reason
        ids.append(ident)
        rows.append(row)
    names = load_contract().names
    raw = pl.DataFrame({c: [r.get(c) for r in rows] for c in names}, schema=dict.fromkeys(names, pl.String))
    frame, _ = canonicalise(raw, Path("Medication.ndjson"))
    inside = frame.select(keep.alias("keep")).to_series().to_list()
    return {ident for ident, k in zip(ids, inside, strict=True) if not k}


def _outside(res: dict, outside: set[str]) -> bool:
    med = res.get("medicationReference")
    target = med.get("reference") if isinstance(med, dict) else None
    return (
        res.get("resourceType") == ADMINISTRATION
        and isinstance(target, str)
        and target.startswith("Medication/")
        and target[11:] in outside
    )


def _day_of(res: dict) -> tuple[str, str] | None:
    """(encounter id, date of service) of an administration, read leniently."""
    ctx = res.get("context")
    ref_text = ctx.get("reference") if isinstance(ctx, dict) else None
    when = res.get("effectiveDateTime")
    if when is None and isinstance(res.get("effectivePeriod"), dict):
        when = res["effectivePeriod"].get("start")
    if not isinstance(ref_text, str) or not isinstance(when, str):
        return None
    return ref_text.rsplit("/", 1)[-1], when[:10]


def _bulk_config(mapping: str) -> dict:
    cfg = dict(_config(mapping))
    from b12pipeline.ingest.mapping import load_mapping

    m = load_mapping(mapping)
    systems = (m.raw.get("fhir") or {}).get("systems") or {}
    cfg.update(
        npi=systems.get("npi"),
        sopt=systems.get("sopt"),
        cpt=systems.get("cpt"),
        hcpcs=systems.get("hcpcs"),
        payer=m.values["payer_type"].map if "payer_type" in m.values else {},
    )
    return cfg


def _flush(buffer: dict[str, list], path: Path, keep: pl.Expr | None, kept: list, held: list) -> int:
    """One chunk -> canonical rows (only those `keep` wants) and quarantined rows; empties the buffer."""
    if not buffer["source_row"]:
        return 0
    columns = [c for c in buffer if c not in ("source_row", "_reason")]
    raw = pl.DataFrame({c: buffer[c] for c in columns}, schema={c: pl.String for c in columns})
    frame, _ = canonicalise(raw, path)
    frame = frame.with_columns(pl.Series("source_row", buffer["source_row"], dtype=pl.Int64))
    frame, bad = split_quarantine(frame, pl.Series("r", buffer["_reason"], dtype=pl.String), CHECK)
    for values in buffer.values():
        values.clear()
    if bad is not None:
        held.append(bad)
    if keep is None:
        kept.append(frame)
        return 0
    rows = frame.filter(keep)
    kept.append(rows)
    return frame.height - rows.height


def _link_by_day(frame: pl.DataFrame, on_days: list[dict], index: Index) -> pl.DataFrame:
    """Encounter + DOS linking of the lines no reference links (docs/decisions.md). A drug line with
    an NDC goes to the one administration of its encounter-day with that NDC; a drug line without
    one, and an administration-code line, to the one administration of the day. Two candidates, or
    two lines for one administration, link nothing: the lines stay unlinked (drug lines are
    reported). E/M lines are facts of the day: every unlinked administration of the day gets them."""
    if not on_days:
        return frame
    ndc11 = _ndc11([a["ndc"] for a in on_days] + [ln.ndc for a in on_days for ln in index.by_day[a["day"]]])
    days: dict[tuple, list[dict]] = defaultdict(list)
    for admin in on_days:
        days[admin["day"]].append(admin)
    taken: dict[tuple, list[ChargeLine]] = defaultdict(list)
    for day, admins in days.items():
        lines = index.by_day[day]
        offers: dict[tuple, list[ChargeLine]] = defaultdict(list)
        for ln in lines:
            if ln.kind == "em":
                continue
            if ln.kind == "drug" and ln.ndc:
                candidates = [a for a in admins if a["ndc"] and ndc11.get(a["ndc"]) == ndc11.get(ln.ndc)]
            else:
                candidates = admins
            if len(candidates) == 1 and not candidates[0]["linked"]:
                offers[(candidates[0]["source_file"], candidates[0]["source_row"], ln.kind)].append(ln)
        for (file, row, _), offered in offers.items():
            if len(offered) == 1:  # two drug (or two administration) lines for one administration: neither
                taken[(file, row)].append(offered[0])
                lines.remove(offered[0])
        ems = [ln for ln in lines if ln.kind == "em"]
        for admin in admins:
            if ems and not admin["linked"]:
                taken[(admin["source_file"], admin["source_row"])] += ems
    updates = []
    for (file, row), chosen in taken.items():
        values: dict = {}
        apply_lines(values, chosen)
        updates.append({"source_file": file, "source_row": row, **values})
    if not updates:
        return frame
    schema = {"source_file": pl.String, "source_row": pl.Int64, **{c: pl.String for c in CHARGE_COLUMNS}}
    return frame.update(pl.DataFrame(updates, schema=schema), on=["source_file", "source_row"], how="left")


def _ndc11(values: list[str | None]) -> dict[str, str | None]:
    """NDC text -> its 11-digit form, by the same rule as the facts (normalize.ndc_parts)."""
    from b12pipeline.normalize import ndc_parts

    texts = sorted({v for v in values if v})
    frame = pl.DataFrame({"ndc": texts}, schema={"ndc": pl.String})
    return dict(zip(texts, frame.select(ndc_parts()[0])[:, 0].to_list(), strict=True))


def _unlinked_lines(index: Index, columns: list[str], present: dict) -> list[pl.DataFrame]:
    """Drug lines no administration took: charges without a documented dose, quarantined with their place."""
    rows = []
    for lines in index.linked.values():
        for ln in lines:
            if ln.kind == "drug":
                rows.append((ln, f"{ln.where}: names a MedicationAdministration that is not in the export"))
    for lines in index.by_day.values():
        for ln in lines:
            if ln.kind == "drug":
                rows.append(
                    (
                        ln,
                        f"{ln.where}: drug charge line that links to no administration "
                        "(a charge without a documented dose)",
                    )
                )
    if not rows:
        return []
    data = []
    for ln, reason in rows:
        file, _, rest = ln.where.partition(" line ")
        data.append(
            {
                "patient_id": ln.patient,
                "encounter_id": ln.encounter,
                "admin_time": ln.dos,
                "ndc": ln.ndc,
                "medication_name": ln.description,  # decides, with the NDC, whether it is a B12 line
                "place_of_service": ln.pos,
                "claim_type": ln.claim_type,
                "charge_hcpcs": ln.code,
                "charge_units": ln.units,
                "charge_modifiers": ";".join(ln.modifiers) or None,
                "charge_ndc_qty": ln.ndc_qty,
                "charge_ndc_unit": ln.ndc_unit,
                "source_file": file,
                "source_row": int(rest.split()[0]),
                "failure_reasons": reason,
            }
        )
    frame = pl.DataFrame(data, infer_schema_length=None)
    exprs = []
    for c in columns:
        if c in frame.columns:
            exprs.append(pl.col(c).cast(pl.Int64 if c == "source_row" else pl.String))
        elif c.startswith("has_"):
            exprs.append(pl.lit(False).alias(c))
        else:
            exprs.append(pl.lit(None, dtype=pl.String).alias(c))
    exprs += [pl.lit([CHECK], dtype=pl.List(pl.String)).alias("failed_expectations"), pl.col("failure_reasons")]
    return [frame.select(exprs)]
