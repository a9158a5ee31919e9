"""The walking skeleton end to end: the CLI runs the real Prefect flow (test harness) with real GX."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.engine.evaluate import FINDING_COLUMNS
from b12pipeline.queues import read_queue

pytestmark = pytest.mark.usefixtures("prefect_harness")
SPEC_COLUMNS = [
    "finding_id",
    "queue",
    "rule_id",
    "rule_version",
    "ruleset_version",
    "severity",
    "message",
    "expected",
    "actual",
    "admin_id",
    "patient_id",
    "encounter_id",
    "service_date",
    "admin_time",
    "medication_name",
    "ndc11",
    "dose_mcg",
    "route",
    "payer_type",
    "payer_id",
    "payer_override",
    "reference_versions",
    "source_file",
    "source_row",
    "run_id",
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_run_writes_every_queue_column_and_a_rerun_changes_nothing(tmp_path, fixtures_dir):
    out = tmp_path / "out"
    args = ["run", "--extract", str(fixtures_dir / "emar_2024-03-01.csv"), "--out", str(out), "--night", "2024-03-01"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    part = next((out / "queues" / "coding").glob("service_date=2024-03-01/*.parquet"))
    written = pl.read_parquet(part, hive_partitioning=False)
    assert set(written.columns) | {"service_date"} == set(SPEC_COLUMNS)  # date lives in the partition path
    assert list(FINDING_COLUMNS) == SPEC_COLUMNS
    found = read_queue(out / "queues")
    assert set(zip(found["admin_id"], found["rule_id"], strict=True)) == {
        ("MAR-1003-1", "UNITS-001"),
        ("MAR-1003-1", "UNITS-003"),
        ("MAR-1004-1", "UNITS-002"),
        ("MAR-1005-1", "CODE-001"),
        ("MAR-1006-1", "DOC-001"),
    }
    units = found.filter(pl.col("rule_id") == "UNITS-001").row(0, named=True)
    assert units["expected"] == "J3420 x 2" and units["actual"] == "J3420 x 1"
    assert units["ndc11"] == "69680012130" and units["dose_mcg"] == 2000.0 and units["source_row"] == 3
    bytes_before = {p: p.read_bytes() for p in (out / "queues").rglob("*.parquet")}

    second = invoke(*args)
    assert second.exit_code == 0, second.output
    again = read_queue(out / "queues")
    assert again["finding_id"].to_list() == found["finding_id"].to_list()
    assert again["finding_id"].is_unique().all()
    assert {p: p.read_bytes() for p in (out / "queues").rglob("*.parquet")} == bytes_before


def test_a_rejected_file_does_not_stop_the_good_one(tmp_path, fixtures_dir):
    bad = tmp_path / "no_admin_id.csv"
    pl.read_csv(fixtures_dir / "emar_2024-03-01.csv", infer_schema=False).drop("admin_id").write_csv(bad)
    out = tmp_path / "out"
    result = invoke(
        "run",
        "--extract",
        str(bad),
        "--extract",
        str(fixtures_dir / "emar_2024-03-01.csv"),
        "--out",
        str(out),
        "--night",
        "2024-03-01",
    )
    assert result.exit_code == 1
    assert "no_admin_id.csv" in result.output and "admin_id" in result.output
    (kept,) = (out / "rejected").glob("no_admin_id-*.csv")  # the checksum in the name: never overwritten
    assert kept.read_bytes() == bad.read_bytes()
    assert "missing required column(s) admin_id" in kept.with_name(f"{kept.name}.error.txt").read_text()
    assert read_queue(out / "queues").height == 5  # the good file was processed
    assert bad.exists()  # `run` copies aside; it never deletes the user's file
    quarantine = pl.read_parquet(out / "quarantine" / "**" / "*.parquet", hive_partitioning=False)
    reasons = dict(zip(quarantine["admin_id"], quarantine["failure_reasons"], strict=True))
    assert "admin_time" in reasons["MAR-1009-1"] and "dose_value is negative" in reasons["MAR-1010-1"]


def test_nightly_picks_up_only_new_landing_files_and_records_the_run(tmp_path, landing):
    out = tmp_path / "out"
    first = invoke("nightly", "--landing", str(landing), "--out", str(out), "--night", "2024-03-02")
    assert first.exit_code == 0, first.output
    manifests = list((out / "runs").glob("*/manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    t = manifest["totals"]
    assert t["rows_read"] == t["in_scope"] + t["out_of_scope"] + t["quarantined"]
    assert {i["file"] for i in manifest["inputs"]} == {p.name for p in landing.iterdir()}
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    assert manifest["findings"]["total"] == sum(manifest["findings"]["per_queue"].values()) > 0
    assert (out / manifest["validation_report"]).is_file()
    again = invoke("nightly", "--landing", str(landing), "--out", str(out), "--night", "2024-03-03")
    assert again.exit_code == 0 and "nothing new" in again.output


def test_flow_artifacts_hold_counts_not_identifiers(tmp_path, fixtures_dir):
    import datetime as dt

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.nightly import nightly_flow

    manifest = nightly_flow(
        extracts=[str(fixtures_dir / "emar_2024-03-01.csv")], out=str(tmp_path / "o"), night=dt.date(2024, 3, 1)
    )
    assert manifest["totals"]["quarantined"] == 2

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["b12-nightly-summary", "b12-nightly-findings-per-rule"])
                )
            )

    import asyncio

    found = asyncio.run(artifacts())
    assert {a.key for a in found} == {"b12-nightly-summary", "b12-nightly-findings-per-rule"}
    text = " ".join(str(a.data) for a in found)
    ids = pl.read_csv(fixtures_dir / "emar_2024-03-01.csv", infer_schema=False)
    for column in ("admin_id", "patient_id", "encounter_id", "order_id"):
        for value in ids[column].drop_nulls().unique():
            assert value not in text


def test_a_corrections_night_that_moves_administrations_re_runs_to_the_same_state(tmp_path, fixtures_dir):
    """Corrections moving two administrations to the next date (one to another patient), run twice for
    the same night through the CLI: the second run exits 0 with the same queues, history and worklog
    (it was exit 1: the worklog inserted the moved findings a second time)."""
    from sqlalchemy import func, select

    from b12pipeline.worklog import open_worklog, read_states
    from b12pipeline.worklog.models import audit
    from tests.worklog_support import corrections_moving_admins

    out = tmp_path / "out"
    night1 = invoke(
        "run", "--extract", str(fixtures_dir / "emar_2024-03-01.csv"), "--out", str(out), "--night", "2024-03-01"
    )
    assert night1.exit_code == 0, night1.output
    moved = corrections_moving_admins(tmp_path / "emar_corrections.csv")
    args = ["run", "--extract", str(moved), "--out", str(out), "--night", "2024-03-02"]

    def state() -> tuple:
        engine = open_worklog(out)
        with engine.connect() as conn:
            audited = conn.execute(select(func.count()).select_from(audit)).scalar()
        files = {p: p.read_bytes() for part in ("history", "queues") for p in sorted((out / part).rglob("*.parquet"))}
        return read_states(engine).sort("finding_id"), audited, files

    first = invoke(*args)
    assert first.exit_code == 0, first.output
    states, audited, files = state()
    queued = read_queue(out / "queues").select("finding_id", "admin_id", "service_date").sort("finding_id")
    moved_dates = queued.filter(pl.col("admin_id").is_in(["MAR-1004-1", "MAR-1006-1"]))["service_date"]
    assert moved_dates.dt.day().to_list() == [2, 2]
    assert states.height == 5 and states["finding_id"].to_list() == queued["finding_id"].to_list()
    assert states["service_date"].to_list() == queued["service_date"].to_list()  # the worklog follows the move

    second = invoke(*args)
    assert second.exit_code == 0, second.output
    again_states, again_audited, again_files = state()
    assert again_states.equals(states) and again_audited == audited
    assert again_files == files
