"""The rules folder `make bench` measures the rule stage with: the project's rules plus payer
overrides that match synthetic rows and CMS tables for the synthetic products, so the payer-specific
masks and the crosswalk/MUE rules (NDC-006, UNITS-004, MUE-001) do real work on every row.

Benchmark data only, written under the bench work folder: the crosswalk and MUE rows below are
stated for the measurement (derived from rules/reference/products.csv), not CMS values, and never
reach rules/.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from b12pipeline.cms import import_cms_file
from b12pipeline.paths import rules_dir

PAYERS = {
    # condition-level setting + a severity change, matched by payer type (12% of synthetic rows)
    "bench-medicaid.yaml": """\
title: Bench Medicaid group
match: {payer_type: medicaid}
citations: ["bench/bench_rules.py (benchmark payer group)"]
settings: {jwjz_payers: [medicare, medicaid], covered_dx_payers: [medicare, medicaid]}
rules: {NDC-001: {severity: warning}}
cases:
  fires: [{_rule: NDC-001, _severity: warning, payer_type: medicaid, ndc: null}]
  passes: [{_rule: NDC-001, payer_type: medicaid}]
""",
    # a rule off, a severity change and derived settings (covered diagnoses, a window), by payer type
    "bench-commercial.yaml": """\
title: Bench commercial group
match: {payer_type: commercial}
citations: ["bench/bench_rules.py (benchmark payer group)"]
settings: {frequency_payers: [commercial], frequency_window_days: 28, covered_dx_prefixes: [D51, E53.8]}
rules: {DX-001: {enabled: false}, UNITS-003: {severity: warning}}
cases:
  fires:
    - {_rule: UNITS-003, _severity: warning, payer_type: commercial,
       dose_value: "2000", charge_units: "2", charge_ndc_qty: "2"}
  passes: [{_rule: DX-001, payer_type: commercial, diagnosis_codes: null}]
""",
}


def build_bench_rules(work: Path) -> Path:
    """<work>/bench-rules: a copy of rules/ with the bench payer files and CMS tables imported."""
    folder = Path(work) / "bench-rules"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(rules_dir(), folder)
    for name, text in PAYERS.items():
        (folder / "payers" / name).write_text(text)
    products = list(csv.DictReader(open(folder / "reference" / "products.csv", encoding="utf-8")))
    asp = Path(work) / "bench_asp_crosswalk_2026Q1.csv"
    with open(asp, "w", newline="", encoding="latin-1") as fh:
        fh.write("Bench ASP NDC-HCPCS crosswalk (stated for the benchmark)\n")
        out = csv.writer(fh)
        out.writerow(
            ["HCPCS", "Short Description", "Labeler Name", "NDC2", "Drug Name", "HCPCS Dosage"]
            + ["PKG SIZE", "PKG QTY", "BILLUNITS", "BILLUNITSPKG"]
        )
        for p in products:
            if p["ingredient"] != "cyanocobalamin" or not p["ml_per_container"] or not p["mcg_per_ml"]:
                continue
            ml, mcg = float(p["ml_per_container"]), float(p["mcg_per_ml"])
            ndc2 = f"{p['ndc11'][:5]}-{p['ndc11'][5:9]}-{p['ndc11'][9:]}"
            units = ml * mcg / 1000
            out.writerow(
                ["J3420", "Vitamin b12 injection", p["labeler"], ndc2, "Cyanocobalamin", "UP TO 1000 MCG"]
                + [f"{ml:g}", "1", f"{units:g}", f"{units:g}"]
            )
    noc = Path(work) / "bench_noc_crosswalk_2026Q1.csv"
    noc.write_text("Drug Generic Name,Drug Brand Name,Labeler Name,NDC2\nHydroxocobalamin,,Actavis,00591-2888-30\n")
    mue = Path(work) / "bench_mue_practitioner_2026Q1.csv"
    mue.write_text(
        "HCPCS/CPT Code,Practitioner Services MUE Values,MUE Adjudication Indicator,MUE Rationale\n"
        "J3420,1,3 Date of Service Edit: Clinical,stated for the benchmark\n"
    )
    import_cms_file("asp-crosswalk", asp, folder)
    import_cms_file("noc-crosswalk", noc, folder)
    import_cms_file("mue", mue, folder)
    return folder
