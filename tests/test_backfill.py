"""Backfill after a rules change: equals a first run with the new rules; diff report; Dask scale-out."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from history_support import (
    FIRST_DOS,
    LAST_DOS,
    copy_out,
    queue_files,
    queue_frame,
    without_run_id,
)
from typer.testing import CliRunner

from b12pipeline.backfill import diff_markdown
from b12pipeline.cli import app


@pytest.fixture(scope="module")
def runs(shipped_nights, changed_rules_nights, tmp_path_factory) -> dict:
    """Nights D1..D5 with the shipped rules, and a fresh run of D1..D5 with the changed rules (shared
    with the history and deploy tests: read or copied, never changed)."""
    old = shipped_nights["out"]
    return {
        "tmp": tmp_path_factory.mktemp("backfill"),
        "rules_b": changed_rules_nights["rules"],
        "old": old,
        "fresh": changed_rules_nights["out"],
        "old_queue": queue_frame(old),
    }


@pytest.fixture(scope="module")
def backfilled(runs) -> dict:
    """`b12pipeline backfill` over every date of service, with the changed rules, on a copy of the nights."""
    out = copy_out(runs["old"], runs["tmp"] / "backfilled")
    result = CliRunner().invoke(
        app,
        [
            "backfill",
            "--from",
            FIRST_DOS.isoformat(),
            "--to",
            LAST_DOS.isoformat(),
            "--out",
            str(out),
            "--rules",
            str(runs["rules_b"]),
            "--chunk-days",
            "30",
        ],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (out / "runs").iterdir() if p.name.startswith("backfill-")]
    return {"out": out, "run_dir": run_dir, "output": result.output}


def test_backfill_equals_a_first_run_with_the_new_rules(runs, backfilled):
    got = queue_frame(backfilled["out"])
    want = queue_frame(runs["fresh"])
    assert without_run_id(got).equals(without_run_id(want))
    assert got["ruleset_version"].unique().to_list() == want["ruleset_version"].unique().to_list()
    assert set(got["run_id"]) == {backfilled["run_dir"].name}
    # The rules change did change something, or this test would prove nothing.
    assert not without_run_id(runs["old_queue"]).equals(without_run_id(want))


def test_diff_lists_exactly_the_findings_that_changed(runs, backfilled):
    old = set(runs["old_queue"]["finding_id"])
    new = set(queue_frame(runs["fresh"])["finding_id"])
    detail = pl.read_parquet(backfilled["run_dir"] / "diff_findings.parquet")
    by_change = {c: set(detail.filter(pl.col("change") == c)["finding_id"]) for c in ("new", "resolved", "unchanged")}
    assert by_change == {"new": new - old, "resolved": old - new, "unchanged": old & new}
    assert by_change["new"] and by_change["resolved"] and by_change["unchanged"]
    # Only FREQ-001 changed: the commercial patient's early dose is new, the 96-day one is resolved.
    changed = detail.filter(pl.col("change") != "unchanged")
    assert set(changed["rule_id"]) == {"FREQ-001"}
    assert "admin_id" not in detail.columns and "patient_id" not in detail.columns
    summary = pl.read_parquet(backfilled["run_dir"] / "diff.parquet")
    freq = summary.filter(pl.col("rule_id") == "FREQ-001").row(0, named=True)
    assert (freq["new"], freq["resolved"], freq["unchanged"]) == (1, 1, 1)
    old_version = runs["old_queue"]["ruleset_version"].unique().to_list()
    assert summary["previous_ruleset_versions"].unique().to_list() == old_version
    assert summary["ruleset_version"].unique().to_list() != old_version
    dup = summary.filter(pl.col("rule_id") == "DUP-001").row(0, named=True)
    assert (dup["new"], dup["resolved"], dup["unchanged"]) == (0, 0, 2)


def test_diff_markdown_and_run_record_carry_counts_only(runs, backfilled):
    import json

    manifest = json.loads((backfilled["run_dir"] / "manifest.json").read_text())
    assert manifest["kind"] == "backfill" and manifest["diff"]["total"]["new"] == 1
    assert manifest["task_runner"] == "ThreadPoolTaskRunner"  # the default stays Prefect's pool
    text = diff_markdown(manifest) + json.dumps(manifest) + backfilled["output"]
    identifiers = pl.concat([runs["old_queue"], queue_frame(runs["fresh"])])
    for column in ("admin_id", "patient_id", "encounter_id", "finding_id"):
        leaked = [v for v in identifiers[column].unique().to_list() if v and v in text]
        assert not leaked, f"{column} values in the report"
    assert "| FREQ-001 | 1 | 1 | 1 |" in diff_markdown(manifest)


def test_backfill_replaces_exactly_the_dates_in_range(runs, tmp_path):
    from flows.deploy import deploy_rules

    out = copy_out(runs["old"], tmp_path / "out")
    before = queue_files(out)
    deploy_rules(runs["rules_b"], str(out), dt.date(2024, 3, 6), dt.date(2024, 3, 6))
    after = queue_files(out)
    outside = {k for k in before if "service_date=2024-03-06" not in k}
    assert {k: after[k] for k in outside} == {k: before[k] for k in outside}
    day = queue_frame(out).filter(pl.col("service_date") == dt.date(2024, 3, 6))
    want = queue_frame(runs["fresh"]).filter(pl.col("service_date") == dt.date(2024, 3, 6))
    assert without_run_id(day).equals(without_run_id(want))


def test_backfill_with_unchanged_rules_changes_nothing_but_run_ids(runs, tmp_path):
    from flows.backfill import run_backfill

    out = copy_out(runs["old"], tmp_path / "out")
    first = run_backfill(FIRST_DOS, LAST_DOS, str(out))
    assert first["diff"]["total"]["new"] == first["diff"]["total"]["resolved"] == 0
    assert without_run_id(queue_frame(out)).equals(without_run_id(runs["old_queue"]))
    files = queue_files(out)
    again = run_backfill(FIRST_DOS, LAST_DOS, str(out))  # same history, same rules
    assert again["run_id"] == first["run_id"] and queue_files(out) == files


def test_backfill_usage_errors(tmp_path):
    runner = CliRunner()
    assert (
        runner.invoke(app, ["backfill", "--from", "2024-03-08", "--to", "2024-03-01", "--out", str(tmp_path)]).exit_code
        == 2
    )
    assert (
        runner.invoke(app, ["backfill", "--from", "2024-03-01", "--to", "2024-03-08", "--out", str(tmp_path)]).exit_code
        == 2
    )  # no history there
    (tmp_path / "history").mkdir()
    result = runner.invoke(
        app,
        [
            "backfill",
            "--from",
            "2024-03-01",
            "--to",
            "2024-03-08",
            "--out",
            str(tmp_path),
            "--workers",
            "2",
            "--dask-address",
            "tcp://127.0.0.1:8786",
        ],
    )
    assert result.exit_code == 2
    assert (
        runner.invoke(app, ["backfill", "--from", "2024-13-01", "--to", "2024-03-08", "--out", str(tmp_path)]).exit_code
        == 2
    )


@pytest.mark.slow
def test_backfill_on_a_local_dask_cluster_equals_the_default_runner(runs, backfilled):
    from flows.deploy import deploy_rules

    out = copy_out(runs["old"], runs["tmp"] / "dask")
    manifest = deploy_rules(runs["rules_b"], str(out), FIRST_DOS, LAST_DOS, chunk_days=30, workers=2)
    assert manifest["chunks"] == 5
    assert manifest["run_id"] == backfilled["run_dir"].name  # same history, same rules, same run
    assert queue_files(out) == queue_files(backfilled["out"])  # byte for byte, run_id included
    assert manifest["task_runner"] == "DaskTaskRunner"
    assert (manifest["diff"]["total"]["new"], manifest["diff"]["total"]["resolved"]) == (1, 1)
