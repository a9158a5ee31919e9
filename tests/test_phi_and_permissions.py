"""PHI stays in the data stores: canary identifiers never reach logs, Prefect artifacts, run records or
any report; output is owner-only; telemetry is off as Prefect and GX themselves see it.

One night of canary extracts (ids like CANARYPAT123...) runs through the real flow under the session
Prefect harness, and once through the CLI. Everything outside the data stores (queues, quarantine,
history, archive, rejected, staging: the places identifiers belong) is scanned, so a report or GX
docs site added later under <out> is covered by this test as soon as it is written.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

CANARY = "CANARY"
ID_PREFIX = {
    "patient_id": "CANARYPAT123",
    "encounter_id": "CANARYENC456",
    "admin_id": "CANARYADM789",
    "order_id": "CANARYORD000",
}
# Codes no mapping lists, in the Clarity code columns: their rows are quarantined as unmapped.
CANARY_CODE = {"ROUTE_C": "CANARYROUTE", "MAR_ACTION_C": "CANARYACTION"}
DATA_STORES = {"queues", "quarantine", "history", "archive", "rejected", "staging"}
CLI = str(Path(sys.executable).parent / "b12pipeline")


def _canary_ids(frame: pl.DataFrame) -> pl.DataFrame:
    i = pl.int_range(pl.len()).cast(pl.String)
    return frame.with_columns([(pl.lit(prefix) + i).alias(col) for col, prefix in ID_PREFIX.items()])


def write_canary_landing(fixtures: Path, folder: Path) -> Path:
    """The bundled fixtures with canary identifiers, plus a file rejected at a row holding them."""
    folder.mkdir(parents=True, exist_ok=True)
    csv = _canary_ids(pl.read_csv(fixtures / "emar_2024-03-01.csv", infer_schema=False))
    csv.write_csv(folder / "night_a.csv")
    _canary_ids(pl.read_parquet(fixtures / "emar_2024-03-02.parquet")).write_parquet(folder / "night_b.parquet")
    text = (folder / "night_a.csv").read_text().splitlines()
    # An unclosed quote before a canary id: Polars' own error message quotes that row.
    broken = text[:3] + ['"' + text[3]] + text[4:]
    (folder / "night_c.csv").write_text("\n".join(broken) + "\n")
    # No header and another delimiter: the first row, read as the header, is patient data.
    (folder / "night_d.csv").write_text("\n".join(line.replace(",", ";") for line in text[1:]) + "\n")
    _write_clarity_canaries(fixtures / "sources" / "emar_2024-03-01.clarity.csv", folder)
    _write_fhir_canaries(fixtures / "sources" / "emar_2024-03-01.fhir.ndjson", folder / "night_f.ndjson")
    return folder


def _write_clarity_canaries(source: Path, folder: Path) -> None:
    """A Clarity extract with canary MRNs and CSNs, read fine, and canary codes in two mapped code
    columns (the unmapped-code quarantine reason could quote them); and one with a ragged row (Polars'
    parse error quotes that row)."""
    lines = source.read_text().splitlines()
    rows = [lines[0]] + [
        line.replace("MRN004", "CANARYMRN").replace("CSN000", "CANARYCSN").replace("MAR-10", "CANARYORD")
        for line in lines[1:]
    ]
    cells = list(csv.reader(rows))
    for row, column in ((1, "ROUTE_C"), (2, "MAR_ACTION_C")):
        cells[row][cells[0].index(column)] = CANARY_CODE[column]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(cells)
    rows = buffer.getvalue().splitlines()
    (folder / "night_e.csv").write_text("\n".join(rows) + "\n")
    ragged = rows[:2] + [rows[2] + ",extra,fields"] + rows[3:]
    (folder / "night_g.csv").write_text("\n".join(ragged) + "\n")


def _write_fhir_canaries(source: Path, target: Path) -> None:
    """FHIR resources with canary identifiers, and canaries in the elements a reason could quote
    (status, statusReason, resourceType, route code, medicationReference)."""
    resources = [json.loads(line) for line in source.read_text().splitlines()]
    for i, res in enumerate(resources):
        res["id"] = f"CANARYADM{i}"
        res["subject"] = {"reference": f"Patient/CANARYPAT{i}"}
    resources[1]["status"] = "CANARYSTATUS"
    resources[2]["status"] = "not-done"
    resources[2]["statusReason"] = [{"text": "Given by CANARY NURSE"}]
    resources[3]["medicationReference"] = {"reference": "#CANARYMED"}
    resources[4]["resourceType"] = "CANARYTYPE"
    target.write_text("".join(json.dumps(r) + "\n" for r in resources))


def _scan(paths) -> list[str]:
    hits = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if CANARY.encode() in data or CANARY.lower().encode() in data.lower():
            hits.append(str(p))
    return hits


def _outside_data_stores(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] not in DATA_STORES]


@pytest.fixture(scope="module")
def canary_night(prefect_harness, tmp_path_factory):
    """Run the canary night through the flow; collect logs, artifacts and every file written."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    from flows.nightly import nightly_flow

    root = tmp_path_factory.mktemp("phi")
    fixtures = Path(__file__).resolve().parent.parent / "data" / "fixtures"
    landing = write_canary_landing(fixtures, root / "landing")
    out = root / "out"
    started = time.time()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    logging.getLogger().addHandler(keep)
    for name in ("prefect", "great_expectations", "b12pipeline"):
        logging.getLogger(name).addHandler(keep)
    try:
        state = nightly_flow(
            extracts=[str(p) for p in sorted(landing.iterdir())],
            out=str(out),
            night=__import__("datetime").date(2024, 3, 2),
            return_state=True,
        )
    finally:
        for name in ("", "prefect", "great_expectations", "b12pipeline"):
            logging.getLogger(name).removeHandler(keep)
    manifest = state.result()
    flow_run_id = state.state_details.flow_run_id

    async def from_api():
        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()  # log lines are shipped in the background, in batches
        async with get_client() as client:
            logs = []
            for _ in range(50):  # and stored asynchronously by the server
                logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
                if any("rejected" in log.message for log in logs):
                    break
                await asyncio.sleep(0.2)
            artifacts = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            run = await client.read_flow_run(flow_run_id)
            return logs, artifacts, run

    logs, artifacts, flow_run = asyncio.run(from_api())
    return {
        "out": out,
        "landing": landing,
        "manifest": manifest,
        "records": records,
        "logs": logs,
        "artifacts": artifacts,
        "flow_run": flow_run,
        "started": started,
        "root": root,
    }


def test_canary_night_really_carries_the_canaries(canary_night):
    """The scan can fail: the identifiers are in the data stores, where they belong."""
    out = canary_night["out"]
    assert _scan(p for p in out.rglob("*.parquet") if p.relative_to(out).parts[0] in ("queues", "quarantine"))
    m = canary_night["manifest"]
    status = {i["file"]: i["status"] for i in m["inputs"]}
    assert status == {
        "night_a.csv": "processed",
        "night_b.parquet": "processed",
        "night_c.csv": "rejected",
        "night_d.csv": "rejected",
        "night_e.csv": "processed",
        "night_f.ndjson": "processed",
        "night_g.csv": "rejected",
    }
    assert {i["source_format"] for i in m["inputs"] if i["status"] == "processed"} >= {"clarity", "fhir"}
    assert m["totals"]["quarantined"] >= 6 and m["findings"]["total"] > 0


def test_no_identifier_in_run_records_reports_or_any_file_outside_the_data_stores(canary_night):
    out = canary_night["out"]
    written = _outside_data_stores(out)
    assert any(p.name == "manifest.json" for p in written) and any(p.name == "validation.json" for p in written)
    # the HTML run report and the GX Data Docs site are among the files scanned
    assert any(p.name == "report.html" for p in written)
    assert any("validation" in p.relative_to(out).parts[2:3] and p.suffix == ".html" for p in written)
    assert _scan(written) == []
    # the rejected files' reasons name the row but never quote it, nor a header made of data
    rejected = {i["file"]: i["error"] for i in canary_night["manifest"]["inputs"] if i["status"] == "rejected"}
    assert "data row" in rejected["night_c.csv"] and "delimiter" in rejected["night_d.csv"]
    assert "data row 2" in rejected["night_g.csv"]
    assert not [e for e in rejected.values() if CANARY.lower() in e.lower()]
    assert _scan((out / "rejected").glob("*.error.txt")) == []


def test_no_identifier_in_quarantine_reasons(canary_night):
    """The quarantine holds the rows (that is its job); its reasons never repeat a value."""
    quarantine = pl.read_parquet(canary_night["out"] / "quarantine" / "**" / "*.parquet")
    reasons = quarantine["failure_reasons"].drop_nulls().to_list()
    assert any("status" in r for r in reasons)  # the FHIR resources with canary elements are there
    # the Clarity rows with canary codes are there, held as unmapped
    held = quarantine.filter(pl.col("failed_expectations").list.contains("source_value_is_mapped(clarity)"))
    assert held.height == len(CANARY_CODE)
    assert [r for r in reasons if CANARY.lower() in r.lower()] == []


def test_no_identifier_in_logs_or_prefect_artifacts(canary_night):
    texts = [r.getMessage() for r in canary_night["records"]]
    texts += [log.message for log in canary_night["logs"]]
    assert canary_night["logs"], "the flow's own log lines should be readable from the API"
    for artifact in canary_night["artifacts"]:
        texts.append(json.dumps(artifact.data, default=str) + str(artifact.description))
    assert {a.key for a in canary_night["artifacts"]} >= {"b12-nightly-summary", "b12-nightly-findings-per-rule"}
    texts.append(json.dumps(canary_night["flow_run"].parameters, default=str))
    leaks = [t[:200] for t in texts if CANARY.lower() in t.lower()]
    assert leaks == []


def test_no_identifier_in_temporary_files_written_during_the_run(canary_night):
    """GX's ephemeral docs folders and other tmp* folders the run created in the temp directory."""
    started = canary_night["started"] - 1
    fresh = []
    for entry in os.scandir(tempfile.gettempdir()):
        if entry.name.startswith("tmp") and entry.is_dir(follow_symlinks=False) and _mtime(Path(entry.path)) >= started:
            for folder, _, files in os.walk(entry.path, onerror=lambda e: None):
                fresh += [Path(folder) / f for f in files if _size(Path(folder) / f) < 5_000_000]
    assert _scan(fresh) == []


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def test_output_is_owner_only(canary_night):
    out = canary_night["out"]
    entries = [out, *out.rglob("*")]
    assert any(p.parent.name == "rejected" for p in entries)  # copies keep no foreign mode either
    loose = [
        f"{oct(stat.S_IMODE(p.stat().st_mode))} {p.relative_to(out)}"
        for p in entries
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert loose == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_cli_output_has_no_identifier(canary_night, tmp_path):
    from prefect.settings import PREFECT_API_URL

    landing = write_canary_landing(Path(__file__).resolve().parent.parent / "data" / "fixtures", tmp_path / "in")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [CLI, "nightly", "--landing", str(landing), "--out", str(tmp_path / "out"), "--night", "2024-03-02"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr  # one file rejected
    assert "night_c.csv" in done.stderr and CANARY not in done.stdout + done.stderr


@pytest.mark.slow  # a child process that imports Prefect and builds a GX context
def test_telemetry_is_off_as_prefect_and_gx_see_it(tmp_path):
    """In a clean environment (make exports these variables, so check without them)."""
    probe = """
import json, importlib.util, os
import b12pipeline
from prefect.settings import get_current_settings
from b12pipeline.validate import suite_runner
ctx = suite_runner().context
print(json.dumps({
    "prefect_server_analytics": get_current_settings().server.analytics_enabled,
    "do_not_track": os.environ.get("DO_NOT_TRACK"),
    "gx_env": os.environ.get("GX_ANALYTICS_ENABLED"),
    "gx_context_analytics": ctx.variables.analytics_enabled,
    "gx_has_analytics_module": importlib.util.find_spec("great_expectations.analytics") is not None,
}))
"""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "GX_ANALYTICS_ENABLED")
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["prefect_server_analytics"] is False
    assert seen["do_not_track"] == "1"
    assert seen["gx_context_analytics"] is False
    assert seen["gx_env"] == "False" or not seen["gx_has_analytics_module"]
