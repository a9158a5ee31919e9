"""GX and the Polars row masks on text the two regex engines read differently: one cell never stops the night."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl

from b12pipeline.paths import schemas_dir
from b12pipeline.pipeline import stage_file
from b12pipeline.validate import validate

# A Unicode 15 digit (Nag Mundari): Rust's \d and Python's \d disagree on it.
ODD_DIGIT = "\U0001e4f0"


def _night_file(fixtures_dir: Path, folder: Path, name: str, dose: str | None = None) -> Path:
    frame = pl.read_csv(fixtures_dir / "emar_2024-03-01.csv", infer_schema=False)
    if dose is not None:
        frame = frame.with_columns(
            pl.when(pl.col("admin_id") == "MAR-1001-1")
            .then(pl.lit(dose))
            .otherwise(pl.col("dose_value"))
            .alias("dose_value")
        )
    path = folder / name
    frame.write_csv(path)
    return path


def test_an_odd_unicode_digit_is_quarantined_and_the_file_is_processed(fixtures_dir, tmp_path, rules):
    path = _night_file(fixtures_dir, tmp_path, "odd_digit.csv", dose=ODD_DIGIT)
    result = stage_file(path, tmp_path / "out", "run-t", dt.date(2024, 3, 1), rules)
    assert result.status == "processed", result.error
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine" / "**" / "*.parquet")
    row = quarantine.filter(pl.col("admin_id") == "MAR-1001-1").row(0, named=True)
    assert row["failed_expectations"] == ["expect_column_values_to_match_regex(dose_value)"]


def test_when_the_validators_disagree_the_row_is_held_with_both_verdicts(fixtures_dir, tmp_path):
    """A suite written with \\d (Unicode in both engines, but not the same Unicode): the row the
    engines disagree on goes to quarantine naming both verdicts; the other rows are unaffected."""
    spec = json.loads((schemas_dir() / "expectations/canonical_extract.json").read_text())
    spec["name"] = "unicode_digits"
    for exp in spec["expectations"]:
        if exp["kwargs"].get("column") == "dose_value" and exp["type"].endswith("match_regex"):
            exp["kwargs"]["regex"] = r"^\d+(?:\.\d+)?$"
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(spec))
    from b12pipeline.ingest.read import read_extract

    frame = read_extract(_night_file(fixtures_dir, tmp_path, "f.csv", dose=ODD_DIGIT)).frame
    outcome = validate(frame, suite)
    assert outcome.rows == frame.height
    held = outcome.quarantine.filter(pl.col("admin_id") == "MAR-1001-1").row(0, named=True)
    (verdict,) = [n for n in held["failed_expectations"] if n.startswith("validators_disagree")]
    assert "GX" in verdict and "Polars" in verdict
    assert "held for review" in held["failure_reasons"]
    assert "MAR-1002-1" in outcome.valid["admin_id"].to_list()


def test_a_night_with_an_odd_digit_processes_every_file(prefect_harness, fixtures_dir, tmp_path):
    from flows.nightly import nightly_flow

    landing = tmp_path / "landing"
    landing.mkdir()
    odd = _night_file(fixtures_dir, landing, "a_odd.csv", dose=ODD_DIGIT)
    good = landing / "b_good.parquet"
    shutil.copy(fixtures_dir / "emar_2024-03-02.parquet", good)
    manifest = nightly_flow(extracts=[str(odd), str(good)], out=str(tmp_path / "out"), night=dt.date(2024, 3, 2))
    assert [i["status"] for i in manifest["inputs"]] == ["processed", "processed"]
    assert manifest["totals"]["quarantined"] >= 3
