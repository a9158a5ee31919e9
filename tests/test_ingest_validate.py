"""Ingest and validation on real file shapes: canonical CSV and typed Parquet, real GX."""

from __future__ import annotations

import json

import polars as pl
import pytest

from b12pipeline.ingest import FileRejected
from b12pipeline.ingest.read import read_extract
from b12pipeline.pipeline import stage_file
from b12pipeline.validate import SuiteError, SuiteRunner, validate

NIGHT_CSV = "emar_2024-03-01.csv"


def test_csv_reads_every_contract_column_as_text_with_lineage(fixtures_dir):
    ex = read_extract(fixtures_dir / NIGHT_CSV)
    frame = ex.frame
    assert ex.source_format == "csv"
    assert frame.height == 16
    assert frame["source_row"].to_list() == list(range(1, 17))
    assert set(frame["source_file"]) == {NIGHT_CSV}
    assert all(
        dtype == pl.String
        for name, dtype in frame.schema.items()
        if name not in ("source_row", "has_charge_hcpcs", "has_admin_cpt")
    )
    # an empty cell is null, not ""
    assert frame.filter(pl.col("admin_id") == "MAR-1004-1")["dose_value"].to_list() == [None]


def test_parquet_typed_columns_become_the_same_text(fixtures_dir):
    frame = read_extract(fixtures_dir / "emar_2024-03-02.parquet", time_zone="America/New_York").frame
    first = frame.row(0, named=True)
    # tz-aware timestamp: written in the site's time zone, with its offset; floats and dates as text
    assert first["admin_time"] == "2024-03-02T09:00:00-05:00"
    assert first["dose_value"] == "1000.0"
    assert first["expiration_date"] == "2025-06-30"


def test_missing_required_column_rejects_the_file_naming_file_and_column(tmp_path, fixtures_dir):
    bad = tmp_path / "no_admin_id.csv"
    pl.read_csv(fixtures_dir / NIGHT_CSV, infer_schema=False).drop("admin_id").write_csv(bad)
    with pytest.raises(FileRejected) as err:
        read_extract(bad)
    assert "no_admin_id.csv" in str(err.value) and "admin_id" in str(err.value)


def test_wrong_delimiter_is_named_in_the_rejection(tmp_path, fixtures_dir):
    bad = tmp_path / "semicolons.csv"
    pl.read_csv(fixtures_dir / NIGHT_CSV, infer_schema=False).write_csv(bad, separator=";")
    with pytest.raises(FileRejected, match="delimiter"):
        read_extract(bad)


def test_bad_rows_are_quarantined_with_the_failed_expectations(fixtures_dir):
    frame = read_extract(fixtures_dir / NIGHT_CSV).frame
    outcome = validate(frame)
    assert outcome.rows == frame.height  # nothing lost
    q = {r["admin_id"]: r for r in outcome.quarantine.iter_rows(named=True)}
    assert set(q) == {"MAR-1009-1", "MAR-1010-1", "MAR-1016-1"}
    assert q["MAR-1009-1"]["failed_expectations"] == ["expect_column_values_to_match_regex(admin_time)"]
    assert "admin_time" in q["MAR-1009-1"]["failure_reasons"]
    assert q["MAR-1010-1"]["failed_expectations"] == ["expect_column_values_to_match_regex(dose_value)"]
    assert "negative" in q["MAR-1010-1"]["failure_reasons"]
    assert q["MAR-1010-1"]["source_row"] == 10


def test_a_real_calendar_check_catches_what_a_regex_cannot():
    frame = pl.DataFrame(
        {
            "admin_id": ["A1"],
            "patient_id": ["P"],
            "encounter_id": ["E"],
            "admin_time": ["2024-02-30T10:00:00"],
            "mar_action": ["Given"],
            "medication_name": ["cyanocobalamin"],
        }
    )
    from b12pipeline.contract import load_contract

    full = frame.with_columns(
        [pl.lit(None, dtype=pl.String).alias(c) for c in load_contract().names if c not in frame.columns]
    )
    outcome = validate(full)
    assert outcome.quarantine["failed_expectations"].to_list() == [["b12_admin_time_is_a_calendar_time(admin_time)"]]


def test_suite_with_a_misspelled_expectation_is_refused(tmp_path):
    from b12pipeline.paths import schemas_dir

    spec = json.loads((schemas_dir() / "expectations/canonical_extract.json").read_text())
    spec["name"] = "typo_suite"
    spec["expectations"].append({"type": "expect_column_values_to_not_be_nul", "kwargs": {"column": "admin_id"}})
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(SuiteError):
        SuiteRunner(path)


def test_a_suite_expectation_that_reads_no_single_column_is_refused(tmp_path):
    """Values are judged per column (validate.py): a table-level expectation cannot be, so the suite
    is refused when it loads, in one line naming the expectation."""
    from b12pipeline.paths import schemas_dir

    spec = json.loads((schemas_dir() / "expectations/canonical_extract.json").read_text())
    spec["expectations"].append({"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}})
    path = tmp_path / "table_level.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(SuiteError, match="expect_table_row_count_to_be_between reads no single column"):
        SuiteRunner(path)


def test_the_shipped_suite_loads_every_expectation():
    from b12pipeline.paths import suite_file

    runner = SuiteRunner(suite_file())
    assert len(runner.suite.expectations) == len(runner.spec["expectations"]) > 10


def test_stage_counts_add_up_and_out_of_scope_rows_are_not_policed(tmp_path, fixtures_dir, rules):
    import datetime as dt

    res = stage_file(fixtures_dir / NIGHT_CSV, tmp_path, "run-test", dt.date(2024, 3, 1), rules)
    assert res.status == "processed"
    assert res.rows_read == res.in_scope + res.out_of_scope + res.quarantined == 16
    # MAR-1016-1 (ondansetron, negative dose) is not B12: counted out of scope, not quarantined
    assert (res.in_scope, res.out_of_scope, res.quarantined) == (10, 4, 2)
    quarantine = pl.read_parquet(tmp_path / "quarantine" / "**" / "*.parquet", hive_partitioning=False)
    assert sorted(quarantine["admin_id"]) == ["MAR-1009-1", "MAR-1010-1"]
    assert {"source_file", "source_row", "failed_expectations", "run_id"} <= set(quarantine.columns)


def test_too_many_failing_rows_rejects_the_whole_file(tmp_path, fixtures_dir, rules):
    import datetime as dt

    bad = tmp_path / "mostly_bad.csv"
    pl.read_csv(fixtures_dir / NIGHT_CSV, infer_schema=False).with_columns(
        pl.lit("yesterday").alias("admin_time")
    ).write_csv(bad)
    res = stage_file(bad, tmp_path / "out", "run-test", dt.date(2024, 3, 1), rules)
    assert res.status == "rejected" and "max_quarantine_share" in res.error
    kept = tmp_path / "out" / "rejected" / res.rejected_as
    assert kept.read_bytes() == bad.read_bytes() and res.rejected_as.startswith("mostly_bad-")
    assert "mostly_bad.csv" in kept.with_name(f"{kept.name}.error.txt").read_text()


def test_gx_checks_each_distinct_value_once_and_every_row_holding_a_failing_value_is_quarantined(fixtures_dir):
    """Forty rows share one malformed dose and one row has another: GX counts two failing values,
    and all 41 rows are quarantined with the row count recorded beside GX's results."""
    frame = validate(read_extract(fixtures_dir / NIGHT_CSV).frame).valid.filter(pl.col("dose_value").is_not_null())
    many = pl.concat([frame.head(1)] * 40).with_columns(
        pl.format("MAR-DUP-{}", pl.int_range(40)).alias("admin_id"), pl.lit("1000 mcg").alias("dose_value")
    )
    other = frame.slice(1, 1).with_columns(pl.lit("one thousand").alias("dose_value"))
    rows = pl.concat([frame.slice(2), many, other])
    outcome = validate(rows)
    name = "expect_column_values_to_match_regex(dose_value)"
    (gx,) = [r for r in outcome.gx_result["results"] if r["expectation_config"]["kwargs"]["column"] == "dose_value"]
    assert gx["result"]["unexpected_count"] == 2 and gx["result"]["element_count"] < rows.height
    held = outcome.quarantine.filter(pl.col("failed_expectations").list.contains(name))
    assert held.height == outcome.unexpected_counts[name] == outcome.gx_result["rows_failing"][name] == 41
    assert outcome.gx_result["rows_checked"] == rows.height == outcome.rows


def test_columns_checked_only_for_presence_and_length_are_validated_once_per_length(fixtures_dir):
    """admin_id (present, at most 128 characters) and encounter_id (present) are checked on one
    value per length: every row whose id is too long or missing is quarantined, whatever its value,
    and no other row; GX saw a handful of values, not one per row."""
    frame = validate(read_extract(fixtures_dir / NIGHT_CSV).frame).valid
    n = frame.height
    rows = frame.with_columns(
        pl.when(pl.int_range(n) % 7 == 0)
        .then(pl.format("{}-{}", pl.lit("X" * 127), pl.int_range(n)))  # over 128 characters, each different
        .otherwise(pl.col("admin_id"))
        .alias("admin_id"),
        pl.when(pl.int_range(n) % 11 == 3).then(None).otherwise(pl.col("encounter_id")).alias("encounter_id"),
    )
    outcome = validate(rows)
    too_long = "expect_column_value_lengths_to_be_between(admin_id)"
    missing = "expect_column_values_to_not_be_null(encounter_id)"
    held = outcome.quarantine
    assert held.filter(pl.col("failed_expectations").list.contains(too_long))["admin_id"].to_list() == [
        a for a in rows["admin_id"].to_list() if len(a) > 128
    ]
    assert held.filter(pl.col("failed_expectations").list.contains(missing)).height == rows["encounter_id"].null_count()
    assert (
        outcome.valid.height
        == rows.filter((pl.col("admin_id").str.len_chars() <= 128) & pl.col("encounter_id").is_not_null()).height
    )
    checked = {
        r["expectation_config"]["kwargs"]["column"]: r["result"]["element_count"]
        for r in outcome.gx_result["results"]
        if r["expectation_config"]["type"] == "expect_column_values_to_not_be_null"
    }
    assert checked["admin_id"] == rows["admin_id"].str.len_chars().n_unique() < n
    assert checked["encounter_id"] == rows["encounter_id"].str.len_chars().n_unique()


@pytest.mark.parametrize("limit", [None, 0])
@pytest.mark.parametrize("one_pass", [True, False], ids=["read once", "read twice"])
def test_scope_judged_once_per_combination_keeps_the_same_rows_in_file_order(
    tmp_path, rules, monkeypatch, limit, one_pass
):
    """The B12 scope decided per distinct NDC/RxNorm/name combination keeps exactly the rows the
    expression keeps row by row, in file order, and counts the rest (also past the combination
    limit, where rows are filtered directly), whether the file is read once (a CSV up to
    ONE_PASS_MAX_BYTES) or twice, streaming (a larger one)."""
    import b12pipeline.ingest as ingest
    from b12pipeline import normalize, synth

    if limit is not None:
        monkeypatch.setattr(ingest, "MAX_SCOPE_COMBINATIONS", limit)
    if not one_pass:
        monkeypatch.setattr(ingest, "ONE_PASS_MAX_BYTES", 0)
    frame = synth.generate(3000, seed=5, b12_share=0.3).frame
    # Blank some scope cells so null keys take part in the combinations.
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("rxnorm_code")).alias("rxnorm_code"),
        pl.when(pl.int_range(pl.len()) % 11 == 0).then(None).otherwise(pl.col("ndc")).alias("ndc"),
    )
    path = tmp_path / "night.csv"
    frame.write_csv(path)
    scope = normalize.b12_scope(rules.reference)
    extract = read_extract(path, keep=scope)
    everything = read_extract(path).frame
    expected = everything.filter(scope)
    assert 0 < expected.height < everything.height
    assert extract.frame.equals(expected)
    assert extract.rows_skipped == everything.height - expected.height
