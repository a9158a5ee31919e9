#!/usr/bin/env python3
"""Parse speed of FHIR R4 MedicationAdministration NDJSON: our strict reader vs fhir.resources.

    python bench/fhir_parse.py FILE.ndjson            # our reader (b12pipeline.ingest.fhir)
    python bench/fhir_parse.py FILE.ndjson --model    # fhir.resources (R4B models), if installed

Make a file with: b12pipeline synth --rows 100000 --seed 5 --format fhir --out /tmp/x.ndjson
The numbers behind docs/decisions.md ("FHIR reader: strict parser, not fhir.resources").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def ours(path: Path) -> None:
    from b12pipeline.ingest.fhir import read_fhir

    t = time.perf_counter()
    ext = read_fhir(path)
    dt = time.perf_counter() - t
    print(
        f"b12pipeline strict reader: {ext.rows:,} resources -> canonical frame in {dt:.2f} s "
        f"({ext.rows / dt:,.0f}/s), quarantined {ext.quarantined_rows}"
    )


def model(path: Path) -> None:
    try:
        from fhir.resources.R4B.medicationadministration import MedicationAdministration
    except ImportError:
        print("fhir.resources is not installed (pip install fhir.resources) - skipped")
        return
    lines = path.read_bytes().splitlines()
    t = time.perf_counter()
    bad = 0
    for line in lines:
        try:
            MedicationAdministration.model_validate_json(line)
        except Exception:
            bad += 1
    dt = time.perf_counter() - t
    print(
        f"fhir.resources R4B model_validate_json: {len(lines):,} resources in {dt:.2f} s "
        f"({len(lines) / dt:,.0f}/s), invalid {bad} (validation only: no columns extracted yet)"
    )


if __name__ == "__main__":
    target = Path(sys.argv[1])
    (model if "--model" in sys.argv else ours)(target)
