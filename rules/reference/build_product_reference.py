#!/usr/bin/env python3
"""Build rules/reference/products.csv from the verbatim FDA rows in rules/reference/sources/.

One output row per NDC the pipeline may meet on a MAR row: every package NDC, and every inner
(unit-of-use) NDC that the package description names in parentheses. Columns:

    ndc11, ndc_level (package|inner), product_ndc, ingredient, mcg_per_ml, ml_per_container,
    container_type (single_dose|multi_dose|unknown), labeler, source

Why the choices:
- strength is parsed with its unit ("1000 ug/mL", "2 mg/mL"): never assume 1000 mcg/mL.
- container type comes from the innermost container text: "VIAL, MULTI-DOSE" -> multi_dose,
  "VIAL, SINGLE-DOSE"/"SINGLE-USE" -> single_dose, a plain "VIAL" -> unknown (the listing does not
  say; the site formulary overlay or the pharmacy product master decides).
- ml_per_container is the volume of the innermost container ("30 mL in 1 VIAL").

Run: python rules/reference/build_product_reference.py  (rewrites products.csv; deterministic)
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "sources"
OUT = HERE / "products.csv"
COLUMNS = [
    "ndc11",
    "ndc_level",
    "product_ndc",
    "ingredient",
    "mcg_per_ml",
    "ml_per_container",
    "container_type",
    "labeler",
    "source",
]

_HYPHENATED = re.compile(r"^(\d{4,5})-(\d{3,4})-(\d{1,2})$")


def ndc11(hyphenated: str) -> str:
    """4-4-2 / 5-3-2 / 5-4-1 -> 5-4-2 without hyphens (the contract's NDC 11 rule)."""
    m = _HYPHENATED.match(hyphenated.strip())
    if not m:
        raise ValueError(f"not a hyphenated NDC: {hyphenated!r}")
    a, b, c = m.groups()
    if len(a) + len(b) + len(c) != 10:
        raise ValueError(f"not a 10-digit NDC: {hyphenated!r}")
    return a.zfill(5) + b.zfill(4) + c.zfill(2)


def ingredient(active: str, generic: str) -> str:
    text = f"{active} {generic}".lower()
    for name in ("hydroxocobalamin", "methylcobalamin", "cyanocobalamin"):
        if name in text:
            return name
    raise ValueError(f"not a B12 ingredient: {active!r}")


def mcg_per_ml(strength: str) -> str:
    m = re.match(r"^\s*([\d.]+)\s*(ug|mcg|mg)\s*/\s*mL\s*$", strength or "", re.I)
    if not m:
        return ""
    value = float(m.group(1)) * (1000 if m.group(2).lower() == "mg" else 1)
    return f"{value:g}"


def container(description: str) -> tuple[str, str]:
    """(ml_per_container, container_type) from the innermost 'N mL in 1 <CONTAINER>' clause."""
    inner = description.split("/")[-1]
    vol = re.search(r"([\d.]+)\s*mL in 1 ([A-Z ,\-]+)", inner)
    ml = f"{float(vol.group(1)):g}" if vol else ""
    kind = (vol.group(2) if vol else inner).upper()
    if "MULTI-DOSE" in kind:
        ctype = "multi_dose"
    elif "SINGLE-DOSE" in kind or "SINGLE-USE" in kind:
        ctype = "single_dose"
    else:
        ctype = "unknown"
    return ml, ctype


def build() -> list[dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    with open(SOURCES / "fda_ndc_b12_packages.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            ml, ctype = container(rec["package_description"])
            base = {
                "product_ndc": rec["product_ndc"],
                "ingredient": ingredient(rec["active_ingredient"], rec["generic_name"]),
                "mcg_per_ml": mcg_per_ml(rec["strength"]),
                "ml_per_container": ml,
                "container_type": ctype,
                "labeler": rec["labeler_name"],
                "source": rec["source_url"],
            }
            rows.setdefault(
                ndc11(rec["package_ndc"]), {"ndc11": ndc11(rec["package_ndc"]), "ndc_level": "package", **base}
            )
            for inner in re.findall(r"\((\d{4,5}-\d{3,4}-\d{1,2})\)", rec["package_description"]):
                key = ndc11(inner)
                if key not in rows:
                    rows[key] = {"ndc11": key, "ndc_level": "inner", **base}
    with open(SOURCES / "fda_drug_shortage_cyanokit.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            key = ndc11(rec["package_ndc"])
            rows.setdefault(
                key,
                {
                    "ndc11": key,
                    "ndc_level": "package",
                    "product_ndc": rec["product_ndc"],
                    "ingredient": ingredient("", rec["generic_name"]),
                    # Cyanokit is a lyophilised kit for IV infusion: no mcg/mL strength on the listing.
                    "mcg_per_ml": "",
                    "ml_per_container": "",
                    "container_type": "unknown",
                    "labeler": rec["manufacturer_name"],
                    "source": rec["source_url"],
                },
            )
    return [rows[k] for k in sorted(rows)]


def main() -> int:
    rows = build()
    with open(OUT, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} products to {OUT.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
