"""A served deployment runs the night of its *scheduled* date, through a real Prefect runner."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from conftest import fixture_identifiers
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runner import Runner

from flows.nightly import landing_deployment

pytestmark = pytest.mark.slow


async def _read_flow_run(flow_run_id):
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def test_served_deployment_processes_the_scheduled_night(prefect_harness, landing, tmp_path):
    out = tmp_path / "out"
    # An evening slot in New York: 22:30 EST on 2024-03-02 is 03:30 UTC on 2024-03-03.
    deployment = landing_deployment(str(landing), str(out), "30 22 * * *", "America/New_York", name="test-serve")
    runner = Runner(name="b12-test-runner", pause_on_shutdown=False, limit=1)
    runner.add_deployment(deployment)
    scheduled = dt.datetime(2024, 3, 3, 3, 30, tzinfo=dt.timezone.utc)
    flow_run = run_deployment("b12-nightly-landing/test-serve", scheduled_time=scheduled, timeout=0)
    assert flow_run.state.is_scheduled()

    # One poll of the runner: the run is due (its slot is in the past), so it executes now and waits.
    asyncio.run(runner.start(run_once=True))

    finished = asyncio.run(_read_flow_run(flow_run.id))
    assert finished.state.is_completed(), finished.state
    manifests = [json.loads(p.read_text()) for p in (out / "runs").glob("*/manifest.json")]
    assert [m["night"] for m in manifests] == ["2024-03-02"]  # the scheduled date in New York, not UTC
    m = manifests[0]
    assert m["run_id"].startswith("night-2024-03-02-")
    assert sorted(i["file"] for i in m["inputs"]) == sorted(p.name for p in landing.iterdir())
    assert m["findings"]["total"] > 0
    assert (out / m["run_report"]).is_file()
    # Every fixture file (the all-rules one too) went through: still no identifier in the run record.
    ids = fixture_identifiers()
    for path in (out / "runs").rglob("*"):
        if path.is_file() and path.suffix in (".html", ".json"):
            text = path.read_text(errors="replace")
            assert not [i for i in ids if i in text], path


def test_landing_flow_with_nothing_new_does_not_start_a_night(prefect_harness, landing, tmp_path):
    from flows.nightly import landing_flow

    out = tmp_path / "out"
    first = landing_flow(str(landing), str(out), night=dt.date(2024, 3, 2))
    again = landing_flow(str(landing), str(out), night=dt.date(2024, 3, 3))
    assert first["status"] == "processed" and first["files"] == len(list(landing.iterdir()))
    # Each landing file's checksum as scanned, so a caller (the pull) need not hash it again.
    assert again.pop("checksums") == first["checksums"] and sorted(first["checksums"]) == sorted(
        p.name for p in landing.iterdir()
    )
    assert again == {
        "night": "2024-03-03",
        "run_id": None,
        "status": "nothing new",
        "files": 0,
        "already_processed": first["files"],
        "ignored": [],
    }
    assert len(list((out / "runs").glob("*/manifest.json"))) == 1
