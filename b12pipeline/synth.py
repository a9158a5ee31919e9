"""Seeded synthetic eMAR extracts with labelled defects (docs/synth.md).

`generate(rows, seed, ...)` returns the canonical (all-text) frame and the labels frame
(admin_id, rule_id): the findings the catalog must produce on it. Labels are true by construction:

* Clean rows are built to fire no rule: given cyanocobalamin (or hydroxocobalamin on J3490) from a
  real product of rules/reference/products.csv, dose 100-1000 mcg charged as ceil(dose/1000) units
  with the matching NDC quantity in mL, IM/SC with a site, a covered ICD-10-CM diagnosis, a valid
  (Luhn) NPI, lot and future expiry, 96372 in an office (or an institutional claim in POS 22),
  single-dose vials given whole with JZ and zero documented waste, multi-dose vials without JW/JZ.
* Patient histories: a loading phase (weekly to day 56) then monthly doses 31-38 days apart, or
  monthly maintenance only; non-given actions (Held, Refused, ...) on the morning of a dose day.
  So FREQ-001 and DUP-001 cannot fire by accident.
* A defect is one recipe applied to one clean given row (a recipe changes only what its rule
  reads, and carries everything else a neighbouring rule would read back to clean values), or a
  structural defect: FREQ-001 = one maintenance gap of a Medicare patient shortened to 10-25 days;
  DUP-001 = a second charting of a dose 5-55 minutes later. Structural patients get no other
  defect, and rows that anchor a duplicate are never changed, so no recipe can mask one.

Everything is numpy / polars column work: 1M rows in a few seconds (make bench).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from b12pipeline.contract import load_contract
from b12pipeline.paths import rules_dir

DEFAULT_START = dt.date(2024, 1, 2)

CYANO_NAME = "cyanocobalamin 1,000 mcg/mL injection solution"
CYANO_2000_NAME = "cyanocobalamin 2,000 mcg/mL injection solution"
HYDROXO_NAME = "hydroxocobalamin 1,000 mcg/mL injection solution"
HYDROXO_NDC = "0591-2888-30"
MULTI_DOSE_NDC = "0517-0031-25"  # reference: multi_dose, 1000 mcg/mL
MULTI_DOSE_10ML_NDC = "0404-9786-10"  # reference: multi_dose 10 mL, 1000 mcg/mL
SINGLE_DOSE_NDC = "72603-650-25"  # reference: 1 mL, 1000 mcg/mL, container unknown -> extract says
COVERED_DX = [
    "D51.0",
    "D51.1",
    "D51.3",
    "D51.8",
    "D51.9",
    "E53.8",
    "K90.0",
    "K50.90",
    "Z98.84",
    "Z90.3",
    "D51.0;E53.8",
    "D51.9;K90.0",
]
UNCOVERED_DX = ["R53.83", "E55.9", "R20.2", "R41.3"]
INVALID_DX = ["D51", "E53.9X", "K90.9Z"]
IM_SITES = [
    "left deltoid",
    "right deltoid",
    "left vastus lateralis",
    "right vastus lateralis",
    "left ventrogluteal",
    "right ventrogluteal",
]
SC_SITES = ["left abdomen", "right abdomen", "left upper arm", "right upper arm"]
NOT_GIVEN = ["Held", "Refused", "Missed", "Not Given"]
PAYERS = (["medicare", "commercial", "medicaid", "self_pay", "other"], [0.55, 0.27, 0.12, 0.03, 0.03])
# Other medications in the same nightly extract (counted, never evaluated).
OTHER_MEDS = [  # name, rxnorm, dose, unit, route, hcpcs
    ("ondansetron 4 mg/2 mL injection", "312086", "4", "mg", "IV", "J2405"),
    ("ketorolac 30 mg/mL injection", None, "30", "mg", "IM", "J1885"),
    ("ceftriaxone 1 g injection", "1665021", "1", "g", "IM", "J0696"),
    ("methylprednisolone acetate 40 mg/mL injection", None, "40", "mg", "IM", "J1030"),
    ("medroxyprogesterone acetate 150 mg/mL injection", None, "150", "mg", "IM", "J1050"),
    ("testosterone cypionate 200 mg/mL injection", None, "200", "mg", "IM", "J1071"),
    ("enoxaparin 40 mg/0.4 mL injection", None, "40", "mg", "SC", "J1650"),
    ("heparin 5,000 unit/mL injection", "1361615", "5000", "units", "SC", None),
    ("metoprolol tartrate 25 mg tablet", "866924", "25", "mg", "PO", None),
]
STRUCTURAL = ("FREQ-001", "DUP-001")


@dataclass
class SynthResult:
    frame: pl.DataFrame  # canonical contract columns, all text
    labels: pl.DataFrame  # admin_id, rule_id
    counts: dict = field(default_factory=dict)


# --- products ------------------------------------------------------------------------------------


def _hyphenated(ndc11: str, product_ndc: str) -> str:
    labeler, product = product_ndc.split("-")
    package_len = 10 - len(labeler) - len(product)
    return f"{product_ndc}-{ndc11[-package_len:]}"


def _products() -> pl.DataFrame:
    """Cyanocobalamin package NDCs of the reference, with the container the extract will state."""
    ref = pl.read_csv(rules_dir() / "reference" / "products.csv", infer_schema=False)
    ref = ref.filter(
        (pl.col("ndc_level") == "package")
        & (pl.col("ingredient") == "cyanocobalamin")
        & pl.col("mcg_per_ml").is_not_null()
        & pl.col("ml_per_container").is_not_null()
    )
    rows = []
    for r in ref.iter_rows(named=True):
        conc, ml = float(r["mcg_per_ml"]), float(r["ml_per_container"])
        stated = None
        if r["container_type"] == "unknown":  # the pharmacy product master knows what the FDA listing omits
            stated = "single_dose" if ml == 1 and conc == 1000 else "multi_dose"
        container = stated or r["container_type"]
        rows.append(
            {
                "ndc": _hyphenated(r["ndc11"], r["product_ndc"]),
                "ndc11": r["ndc11"],
                "conc": conc,
                "stated_container": stated,
                "single": container == "single_dose",
                "name": CYANO_NAME if conc == 1000 else CYANO_2000_NAME,
                "rxnorm": "309594" if conc == 1000 else None,
            }
        )
    return pl.DataFrame(rows)


def npis(rng: np.random.Generator, n: int, valid: bool = True) -> np.ndarray:
    """Type-1 NPIs (first digit 1) whose tenth digit is the Luhn check over "80840" + nine digits."""
    d = rng.integers(0, 10, size=(n, 9))
    d[:, 0] = 1
    doubled = d[:, 0::2] * 2
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    total = 24 + doubled.sum(axis=1) + d[:, 1::2].sum(axis=1)
    check = (10 - total % 10) % 10
    if not valid:
        check = (check + rng.integers(1, 10, size=n)) % 10
    digits = np.concatenate([d, check[:, None]], axis=1)
    return np.array(["".join(map(str, row)) for row in digits])


# --- schedules -----------------------------------------------------------------------------------


def _schedules(rng: np.random.Generator, n_events: int, days: int, n_freq: int) -> pl.DataFrame:
    """Given-dose events (patient, event index, day index) for enough patients to cover n_events,
    cut at exactly n_events by dropping the tail of the last patient (cross-row facts look only
    backwards, so cutting a tail never changes an earlier row's facts). `freq` marks the one event
    per FREQ patient whose preceding gap was shortened."""
    k = days // 7 + 3
    per_patient = max(1.0, min(k, days / 40))
    p = int(n_events / per_patient * 1.5) + 20
    loading = rng.random(p) < 0.3
    start = np.where(loading, rng.integers(0, days, p), rng.integers(0, min(days, 35), p))
    gaps = rng.integers(31, 39, size=(p, k))
    gaps[loading, 1:9] = 7  # weekly loading to day 56, then monthly
    gaps[:, 0] = 0
    day = start[:, None] + np.cumsum(gaps, axis=1)
    payer_idx = rng.choice(len(PAYERS[0]), size=p, p=PAYERS[1])
    # FREQ-001 patients (Medicare): shorten the first gap that starts past the loading phase, i.e.
    # from an event at least 56 days after the first, to 10-25 days. Chosen among patients well
    # inside the cut so their shortened event survives it.
    cutoff = int(np.searchsorted(np.cumsum((day < days).sum(axis=1)), n_events)) + 1
    eligible = (day[:, :-1] - day[:, :1] >= 56) & (day[:, 1:] < days)
    pool = np.nonzero((payer_idx == 0) & eligible.any(axis=1) & (np.arange(p) < int(cutoff * 0.8)))[0]
    idx = np.sort(rng.choice(pool, size=min(n_freq, pool.size), replace=False))
    j = np.argmax(eligible, axis=1) + 1
    gaps[idx, j[idx]] = rng.integers(10, 26, idx.size)
    day = start[:, None] + np.cumsum(gaps, axis=1)
    freq_event = np.zeros(day.shape, dtype=bool)
    freq_event[idx, j[idx]] = True
    freq_patient = np.zeros(p, dtype=bool)
    freq_patient[idx] = True
    pi, ei = np.nonzero(day < days)
    events = pl.DataFrame({"_patient": pi, "_event": ei, "_day": day[pi, ei], "_freq": freq_event[pi, ei]})
    events = events.head(n_events)
    patients = pl.DataFrame(
        {"_patient": np.arange(p), "payer_type": np.array(PAYERS[0])[payer_idx], "_freq_patient": freq_patient}
    )
    return events.join(patients, on="_patient", how="left")


def _text(name: str, values) -> pl.Series:
    return pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.String)


def _pick(rng: np.random.Generator, values: list, n: int, p: list[float] | None = None) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = [values[i] for i in rng.choice(len(values), size=n, p=p)] if n else []
    return out


def _b12_rows(
    rng: np.random.Generator, events: pl.DataFrame, n_notgiven: int, n_dup: int, start: dt.date
) -> pl.DataFrame:
    products = _products()
    patients = events.select("_patient", "payer_type", "_freq_patient").unique("_patient").sort("_patient")
    n = patients.height
    hydroxo = rng.random(n) < 0.05
    prod = rng.integers(0, products.height, n)
    single = products["single"].to_numpy()[prod] & ~hydroxo
    dose = np.where(single | hydroxo, 1000, rng.choice([1000, 500, 100], size=n, p=[0.85, 0.1, 0.05]))
    route = _pick(rng, ["IM", "SC"], n, [0.7, 0.3])
    institutional = rng.random(n) < 0.15
    pat = patients.with_columns(
        pl.Series("_hydroxo", hydroxo),
        pl.Series("_single", single),
        pl.Series("_dose", dose),
        pl.Series("ndc", np.where(hydroxo, HYDROXO_NDC, products["ndc"].to_numpy()[prod]).astype(str)),
        pl.Series("_bare", rng.random(n) < 0.2),
        pl.Series("_conc", np.where(hydroxo, 1000.0, products["conc"].to_numpy()[prod])),
        pl.Series("medication_name", np.where(hydroxo, HYDROXO_NAME, products["name"].to_numpy()[prod]).astype(str)),
        _text("rxnorm_code", np.where(hydroxo, "317106", products["rxnorm"].to_numpy()[prod])),
        _text("container_type", np.where(hydroxo, np.array(None), products["stated_container"].to_numpy()[prod])),
        _text("route", route),
        pl.Series("_unit_style", rng.choice(3, size=n, p=[0.8, 0.15, 0.05])),
        _text("diagnosis_codes", _pick(rng, COVERED_DX, n)),
        pl.Series("ordering_provider_npi", npis(rng, 60)[rng.integers(0, 60, n)], dtype=pl.String),
        pl.Series("claim_type", np.where(institutional, "institutional", "professional"), dtype=pl.String),
        pl.Series("place_of_service", np.where(institutional, "22", "11"), dtype=pl.String),
        pl.Series("patient_id", [f"MRN{10_000_000 + i:08d}" for i in range(n)], dtype=pl.String),
        pl.Series("order_id", (400_000_000 + rng.permutation(n * 7)[:n]).astype(str), dtype=pl.String),
    )
    rows = events.join(pat, on="_patient", how="left")
    m = rows.height
    minute = rng.integers(8 * 60, 17 * 60, m)
    sites = np.where(rows["route"].to_numpy() == "IM", _pick(rng, IM_SITES, m), _pick(rng, SC_SITES, m))
    rows = rows.with_columns(
        (pl.lit(start) + pl.duration(days=pl.col("_day"))).alias("_date"),
        pl.Series("_minute", minute),
        _text("site", sites),
        pl.Series("administered_by", [f"RN{v}" for v in rng.integers(1000, 1100, m)], dtype=pl.String),
        pl.Series(
            "lot_number",
            [
                f"{a}{b:05d}"
                for a, b in zip(_pick(rng, ["AR", "FK", "ZY", "NS", "VT"], m), rng.integers(0, 100_000, m), strict=True)
            ],
            dtype=pl.String,
        ),
        pl.Series("_exp_days", rng.integers(90, 700, m)),
        pl.Series("_exp_month", rng.random(m) < 0.1),
        _text("same_day_em_codes", _pick(rng, [None, "99213-25", "99214-25"], m, [0.8, 0.15, 0.05])),
        pl.Series("encounter_id", (7_000_000_000 + rng.permutation(m * 3)[:m]).astype(str), dtype=pl.String),
        pl.lit(False).alias("_dup"),
        pl.lit(False).alias("_anchor"),
        pl.lit(True).alias("_given"),
        pl.lit("Given").alias("mar_action"),
    )
    # Non-given actions and duplicate chartings come from patients without a FREQ defect.
    free = np.nonzero(~rows["_freq_patient"].to_numpy())[0]
    chosen = rng.choice(free, size=min(free.size, n_notgiven + n_dup), replace=False)
    held_idx, dup_idx = chosen[:n_notgiven], chosen[n_notgiven:]
    anchor = np.zeros(m, dtype=bool)
    anchor[dup_idx] = True
    rows = rows.with_columns(pl.Series("_anchor", anchor))
    held = rows[held_idx].with_columns(
        (pl.col("_minute") - pl.Series(rng.integers(30, 91, held_idx.size))).alias("_minute"),
        _text("mar_action", _pick(rng, NOT_GIVEN, held_idx.size)),
        pl.lit(False).alias("_given"),
        pl.lit(False).alias("_anchor"),
        pl.lit(None, pl.String).alias("site"),
        pl.lit(None, pl.String).alias("lot_number"),
    )
    dups = rows[dup_idx].with_columns(
        (pl.col("_minute") + pl.Series(rng.integers(5, 56, dup_idx.size))).alias("_minute"),
        pl.lit(True).alias("_dup"),
        pl.lit(False).alias("_anchor"),
    )
    rows = pl.concat([rows, held, dups], how="diagonal_relaxed")
    return _render_b12(rows)


def _render_b12(rows: pl.DataFrame) -> pl.DataFrame:
    """Typed per-row facts -> contract text (doses, charges, NDC quantity, times, ids)."""
    given = pl.col("_given")
    dose_mcg = pl.col("_dose").cast(pl.Float64)
    style = pl.col("_unit_style")
    dose_text = (
        pl.when(style == 1)
        .then(_num(dose_mcg / pl.col("_conc")))
        .when(style == 2)
        .then(_num(dose_mcg / 1000))
        .otherwise(_num(dose_mcg))
    )
    unit_text = pl.when(style == 1).then(pl.lit("mL")).when(style == 2).then(pl.lit("mg")).otherwise(pl.lit("mcg"))
    ndc11_bare = pl.col("ndc").str.replace_all("-", "")  # only used for 11-character shapes
    ndc_text = pl.when(pl.col("_bare") & (ndc11_bare.str.len_chars() == 11)).then(ndc11_bare).otherwise(pl.col("ndc"))
    time = pl.col("_date").cast(pl.Datetime("us")) + pl.duration(minutes=pl.col("_minute"))
    exp = pl.col("_date") + pl.duration(days=pl.col("_exp_days"))
    rows = rows.sort("_patient", "_date", "_minute").with_columns(
        (pl.col("_patient").cum_count().over("_patient")).alias("_line")
    )
    return rows.with_columns(
        pl.concat_str(pl.col("order_id"), pl.col("_line").cast(pl.String), separator="-").alias("admin_id"),
        time.dt.strftime("%Y-%m-%dT%H:%M:%S").alias("admin_time"),
        ndc_text.alias("ndc"),
        pl.when(given).then(dose_text).otherwise(None).alias("dose_value"),
        pl.when(given).then(unit_text).otherwise(None).alias("dose_unit"),
        pl.lit(None, pl.String).alias("concentration_mcg_per_ml"),
        pl.lit(None, pl.String).alias("container_volume_ml"),
        pl.when(given)
        .then(pl.when(pl.col("_exp_month")).then(exp.dt.strftime("%Y-%m")).otherwise(exp.dt.strftime("%Y-%m-%d")))
        .alias("expiration_date"),
        pl.when(given & pl.col("_single")).then(pl.lit("0")).alias("waste_mcg"),
        pl.when(given)
        .then(pl.when(pl.col("_hydroxo")).then(pl.lit("J3490")).otherwise(pl.lit("J3420")))
        .alias("charge_hcpcs"),
        pl.when(given).then((dose_mcg / 1000).ceil().cast(pl.Int64).cast(pl.String)).alias("charge_units"),
        pl.when(given & pl.col("_single")).then(pl.lit("JZ")).alias("charge_modifiers"),
        pl.when(given).then(_num((dose_mcg / pl.col("_conc")).round(3))).alias("charge_ndc_qty"),
        pl.when(given).then(pl.lit("ML")).alias("charge_ndc_unit"),
        pl.when(given).then(pl.lit("96372")).alias("admin_cpt"),
        pl.when(given).then(pl.col("same_day_em_codes")).alias("same_day_em_codes"),
        pl.col("_date").alias("_service_date"),
    )


def _num(expr: pl.Expr) -> pl.Expr:
    """A float as the text a clinician's system would write: 1000, 0.5, 0.333."""
    return (
        pl.when(expr == expr.round(0))
        .then(expr.cast(pl.Int64).cast(pl.String))
        .otherwise(expr.round(3).cast(pl.String))
    )


def _other_rows(rng: np.random.Generator, n: int, start: dt.date, days: int) -> pl.DataFrame:
    if n <= 0:
        return pl.DataFrame()
    meds = pl.DataFrame(
        OTHER_MEDS,
        schema=["medication_name", "rxnorm_code", "dose_value", "dose_unit", "route", "_hcpcs"],
        orient="row",
    ).with_row_index("_med")
    given = rng.random(n) < 0.93
    frame = pl.DataFrame(
        {
            "_med": rng.integers(0, meds.height, n).astype(np.uint32),
            "_given": given,
            "_not_given": _text("_not_given", _pick(rng, NOT_GIVEN, n)),
            "_day": rng.integers(0, days, n),
            "_minute": rng.integers(0, 24 * 60, n),
            "_order": 300_000_000 + rng.integers(0, 90_000_000, n),
            "patient_id": [f"MRN{v:08d}" for v in rng.integers(20_000_000, 29_999_999, n)],
            "encounter_id": (8_000_000_000 + rng.permutation(n * 3)[:n]).astype(str),
            "administered_by": [f"RN{v}" for v in rng.integers(1000, 1100, n)],
            "payer_type": _text("payer_type", _pick(rng, PAYERS[0], n, PAYERS[1])),
        }
    ).join(meds, on="_med", how="left")
    time = (pl.lit(start) + pl.duration(days=pl.col("_day"))).cast(pl.Datetime("us")) + pl.duration(
        minutes=pl.col("_minute")
    )
    charged = pl.col("_given") & pl.col("_hcpcs").is_not_null()
    return frame.with_columns(
        # other medications' order ids come from their own range; the row number keeps lines unique
        pl.concat_str(
            pl.col("_order").cast(pl.String), (pl.int_range(pl.len()) + 1).cast(pl.String), separator="-"
        ).alias("admin_id"),
        pl.col("_order").cast(pl.String).alias("order_id"),
        time.dt.strftime("%Y-%m-%dT%H:%M:%S").alias("admin_time"),
        pl.when(pl.col("_given")).then(pl.lit("Given")).otherwise(pl.col("_not_given")).alias("mar_action"),
        pl.when(charged).then(pl.col("_hcpcs")).alias("charge_hcpcs"),
        pl.when(charged).then(pl.lit("1")).alias("charge_units"),
        pl.when(~charged | (pl.col("route") == "PO"))
        .then(None)
        .when(pl.col("route") == "IV")
        .then(pl.lit("96374"))
        .otherwise(pl.lit("96372"))
        .alias("admin_cpt"),
        pl.lit("11").alias("place_of_service"),
        pl.lit("professional").alias("claim_type"),
    )


# --- defect recipes ------------------------------------------------------------------------------
# One recipe per row rule: the columns it sets on a clean given cyanocobalamin row. A list is a set
# of variants (one is picked per row); a callable builds an expression. Each recipe also resets
# whatever a neighbouring rule would read (product, dose, NDC quantity, modifiers, waste) to values
# that are clean for that product, so the row fires exactly the recipe's rule.

_MULTI = {
    "ndc": MULTI_DOSE_NDC,
    "medication_name": CYANO_NAME,
    "rxnorm_code": "309594",
    "dose_value": "1000",
    "dose_unit": "mcg",
    "container_type": None,
    "concentration_mcg_per_ml": None,
    "charge_hcpcs": "J3420",
    "charge_units": "1",
    "charge_modifiers": None,
    "waste_mcg": None,
    "charge_ndc_qty": "1",
    "charge_ndc_unit": "ML",
}
_NO_NDC = {**_MULTI, "container_type": "multi_dose", "concentration_mcg_per_ml": "1000"}
_SINGLE = {
    **_MULTI,
    "ndc": SINGLE_DOSE_NDC,
    "container_type": "single_dose",
    "charge_modifiers": "JZ",
    "waste_mcg": "0",
    "claim_type": "professional",
    "place_of_service": "11",
}
_HALF_SINGLE = {**_SINGLE, "dose_value": "500", "charge_ndc_qty": "0.5"}


def _expired(_: int) -> pl.Expr:
    return (pl.col("_service_date") - pl.duration(days=pl.col("_v") % 90 + 1)).dt.strftime("%Y-%m-%d")


def _bad_dx(_: int) -> pl.Expr:
    invalid = _variants(INVALID_DX)
    return pl.concat_str(pl.col("diagnosis_codes"), invalid, separator=";")


RECIPES: list[tuple[str, dict]] = [
    ("CHG-001", {"mar_action": NOT_GIVEN}),
    (
        "CHG-002",
        {
            "charge_hcpcs": None,
            "charge_units": None,
            "charge_modifiers": None,
            "charge_ndc_qty": None,
            "charge_ndc_unit": None,
        },
    ),
    ("CODE-001", {**_MULTI, "ndc": HYDROXO_NDC, "medication_name": HYDROXO_NAME, "rxnorm_code": "317106"}),
    ("CODE-002", {"charge_hcpcs": ["J3490", "J3590"]}),
    ("CODE-003", {"route": ["PO", "intranasal", "sublingual"], "site": None}),
    ("UNITS-001", {**_MULTI, "charge_units": ["2", "3"]}),
    ("UNITS-002", {"dose_value": None, "dose_unit": None, "charge_ndc_qty": None}),
    (
        "UNITS-003",
        {
            **_MULTI,
            "ndc": MULTI_DOSE_10ML_NDC,
            "dose_value": ["2000", "1500"],
            "charge_units": "2",
            "charge_ndc_qty": None,
        },
    ),
    ("ADMIN-001", {"admin_cpt": [None, "96374", "96401"]}),
    ("ADMIN-002", {"route": ["IV", "IV push"]}),
    ("ADMIN-003", {"payer_type": "medicare", "same_day_em_codes": ["99211", "99211-25"]}),
    ("ADMIN-004", {"same_day_em_codes": ["99213", "99214", "99213-59"]}),
    ("ADMIN-005", {"claim_type": "professional", "place_of_service": ["22", "19", "21"]}),
    ("MOD-001", {**_MULTI, "charge_modifiers": "JZ", "waste_mcg": "0"}),
    ("MOD-002", {**_SINGLE, "charge_modifiers": None, "payer_type": "medicare"}),  # JW/JZ: jwjz_payers
    ("MOD-003", {**_HALF_SINGLE, "charge_modifiers": "JW", "waste_mcg": "500"}),
    ("MOD-004", {**_HALF_SINGLE, "charge_modifiers": "JZ", "waste_mcg": "500"}),
    ("MOD-005", {**_MULTI, "ndc": SINGLE_DOSE_NDC}),
    ("NDC-001", {**_NO_NDC, "ndc": None, "payer_type": "medicaid"}),
    ("NDC-002", {**_NO_NDC, "ndc": ["0517-0031-2", "51700312", "0517003125", "05l7-0031-25"]}),
    ("NDC-003", {**_NO_NDC, "ndc": ["99207-0101-10", "99207-0102-25", "99251-311-30"]}),
    ("NDC-004", {**_MULTI, "ndc": HYDROXO_NDC, "charge_hcpcs": "J3490"}),
    ("NDC-005", {**_MULTI, "charge_ndc_unit": ["UN", "ME"], "charge_ndc_qty": "1"}),
    ("DX-001", {"diagnosis_codes": None, "payer_type": "commercial"}),
    ("DX-002", {"diagnosis_codes": _bad_dx}),
    ("DX-003", {"payer_type": "medicare", "diagnosis_codes": UNCOVERED_DX}),
    ("DOC-001", {"lot_number": None}),
    ("DOC-002", {"expiration_date": None}),
    ("DOC-003", {"site": None}),
    ("DOC-004", {"administered_by": None}),
    ("DOC-005", {"ordering_provider_npi": lambda _: pl.col("_bad_npi")}),
    ("DOC-006", {"expiration_date": _expired}),
    ("DOC-007", {**_HALF_SINGLE, "waste_mcg": None}),
]


def _variants(values: list) -> pl.Expr:
    expr = pl.lit(values[-1], dtype=pl.String)
    for i, v in reversed(list(enumerate(values[:-1]))):
        expr = pl.when(pl.col("_v") % len(values) == i).then(pl.lit(v, dtype=pl.String)).otherwise(expr)
    return expr


def _value(spec) -> pl.Expr:
    if callable(spec):
        return spec(0)
    if isinstance(spec, list):
        return _variants(spec)
    return pl.lit(spec, dtype=pl.String)


def _apply_recipes(rng: np.random.Generator, rows: pl.DataFrame, n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply n row defects spread evenly over the recipes; return the rows and every label."""
    m = rows.height
    candidates = np.nonzero(
        (rows["_given"] & ~rows["_hydroxo"] & ~rows["_freq_patient"] & ~rows["_anchor"] & ~rows["_dup"]).to_numpy()
    )[0]
    n = max(0, min(n, candidates.size))
    chosen = rng.choice(candidates, size=n, replace=False)
    recipe = np.full(m, -1)
    recipe[chosen] = np.resize(rng.permutation(len(RECIPES)), n) if n else []
    bad_npi = npis(rng, 20, valid=False)
    bad_npi = np.concatenate([bad_npi, ["123456789", "12345678901", "1234567890"]])
    rows = rows.with_columns(
        pl.Series("_recipe", recipe),
        pl.Series("_v", rng.integers(0, 1 << 30, m)),
        pl.Series("_bad_npi", bad_npi[rng.integers(0, bad_npi.size, m)], dtype=pl.String),
    )
    touched: dict[str, pl.Expr] = {}
    for k, (_, overrides) in enumerate(RECIPES):
        for col, spec in overrides.items():
            base = touched.get(col, pl.col(col).cast(pl.String))
            touched[col] = pl.when(pl.col("_recipe") == k).then(_value(spec)).otherwise(base)
    rows = rows.with_columns([e.alias(c) for c, e in touched.items()])
    rule_of = {k: rule for k, (rule, _) in enumerate(RECIPES)}
    recipe_labels = rows.filter(pl.col("_recipe") >= 0).select(
        "admin_id", pl.col("_recipe").replace_strict(rule_of, return_dtype=pl.String).alias("rule_id")
    )
    labels = pl.concat(
        [
            recipe_labels,
            rows.filter("_dup").select("admin_id", pl.lit("DUP-001").alias("rule_id")),
            rows.filter("_freq").select("admin_id", pl.lit("FREQ-001").alias("rule_id")),
        ]
    )
    return rows, labels


# --- the generator -------------------------------------------------------------------------------


def generate(
    rows: int,
    seed: int = 0,
    defect_rate: float = 0.05,
    b12_share: float = 0.25,
    start: dt.date = DEFAULT_START,
    days: int = 120,
) -> SynthResult:
    """A seeded synthetic extract of `rows` rows and the findings it must produce (labels)."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if not 0 <= defect_rate <= 1 or not 0 < b12_share <= 1:
        raise ValueError("defect_rate must be in [0, 1] and b12_share in (0, 1]")
    if days < 1:
        raise ValueError("days must be at least 1")
    rng = np.random.default_rng(seed)
    n_b12 = max(1, round(rows * b12_share))
    n_defects = round(n_b12 * defect_rate)
    per_rule = n_defects / (len(RECIPES) + len(STRUCTURAL))
    n_dup = int(round(per_rule))
    n_notgiven = round(n_b12 * 0.04)
    n_given = max(1, n_b12 - n_notgiven - n_dup)
    events = _schedules(rng, n_given, days, n_freq=int(round(per_rule)))
    b12 = _b12_rows(rng, events, n_notgiven, n_dup, start)
    n_freq = int(b12["_freq"].sum())
    b12, labels = _apply_recipes(rng, b12, n_defects - n_freq - n_dup)
    others = _other_rows(rng, rows - b12.height, start, days)
    contract = load_contract()
    frames = [
        f.select(
            [pl.col(c).cast(pl.String) if c in f.columns else pl.lit(None, pl.String).alias(c) for c in contract.names]
        )
        for f in (b12, others)
        if f.height
    ]
    frame = pl.concat(frames, rechunk=True)
    # Administration ids carry the seed, so extracts of different seeds never share one (a shared id
    # would silently supersede the other night's row when both are run into one --out).
    seeded = pl.concat_str(pl.lit(f"S{seed}-"), pl.col("admin_id")).alias("admin_id")
    frame, labels = frame.with_columns(seeded), labels.with_columns(seeded)
    # a nightly extract is not sorted by patient (sort by a random key: faster than a row gather)
    frame = frame.with_columns(pl.Series("_k", rng.permutation(frame.height))).sort("_k").drop("_k")
    labels = labels.sort("admin_id", "rule_id")
    counts = {
        "rows": frame.height,
        "b12_rows": b12.height,
        "other_rows": others.height,
        "labels": labels.height,
        "labels_per_rule": dict(sorted(labels.group_by("rule_id").len().iter_rows())),
    }
    return SynthResult(frame=frame, labels=labels, counts=counts)
