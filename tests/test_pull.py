"""Pulling the night: from a real PostgreSQL server (Clarity-shaped tables) and a real OpenSSH server.

The pulled night must give the same findings as the same rows from a CSV, a second pull of the same
night must change nothing, a file still being written must not be taken, an unknown host key must be
refused, and the source's password must appear nowhere the run writes or prints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from b12pipeline.archive import archive_file
from b12pipeline.queues import read_queue

PROJECT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "b12pipeline")
CANARY_PASSWORD = "canary-Pw-9f3Kq7zX"
NIGHT = dt.date(2024, 4, 30)

pytestmark = pytest.mark.slow


def _findings(out: Path) -> pl.DataFrame:
    found = read_queue(out / "queues")
    keep = ["finding_id", "rule_id", "admin_id", "queue", "severity", "message", "expected", "actual"]
    return found.select([c for c in keep if c in found.columns]).sort("finding_id")


def _tree_digest(root: Path, part: str) -> str:
    digest = hashlib.sha256()
    for p in sorted((root / part).rglob("*")):
        if p.is_file():
            digest.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return digest.hexdigest()


def _sources_file(folder: Path, sources: dict) -> Path:
    path = folder / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": sources}))
    return path


@pytest.fixture(scope="module")
def clarity_rows(tmp_path_factory) -> pl.DataFrame:
    from tests.clarity_tables import loadable

    folder = tmp_path_factory.mktemp("synth")
    target = folder / "night.clarity.csv"
    subprocess.run(
        [CLI, "synth", "--rows", "2000", "--seed", "5", "--format", "clarity", "--out", str(target)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    rows = loadable(pl.read_csv(target, infer_schema=False))
    assert rows.height > 1500  # the comparison is over most of a realistic night with seeded defects
    return rows


@pytest.fixture
def clarity_db(postgres_url, clarity_rows):
    import psycopg

    from tests.clarity_tables import load

    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        load(conn, clarity_rows)
    return postgres_url


def test_sql_pull_gives_the_csv_findings_and_a_second_pull_changes_nothing(
    prefect_harness, clarity_db, clarity_rows, tmp_path, monkeypatch
):
    from flows.nightly import nightly_flow
    from flows.pull import pull_flow
    from tests.clarity_tables import as_flat_csv

    monkeypatch.setenv("B12_TEST_PG_PASSWORD", CANARY_PASSWORD)  # the test server trusts 127.0.0.1
    sources = _sources_file(
        tmp_path,
        {
            "clarity": {
                "kind": "sql",
                "url": clarity_db,
                "password_env": "B12_TEST_PG_PASSWORD",
                "query": "clarity.sql",
                "lookback_days": 150,
                "batch_rows": 97,  # several batches even on a small night
            }
        },
    )
    csv = tmp_path / "night.clarity.csv"
    as_flat_csv(clarity_rows).write_csv(csv)
    by_csv = tmp_path / "by_csv"
    nightly_flow(extracts=[str(csv)], out=str(by_csv), night=NIGHT)

    pulled = tmp_path / "pulled"
    first = pull_flow(source="clarity", out=str(pulled), sources_file=str(sources), night=NIGHT)
    assert first["status"] == "processed" and first["fetched"] == 1
    manifest = (pulled / "runs" / first["run_id"] / "manifest.json").read_text()
    assert '"rows_read": %d' % clarity_rows.height in manifest

    expected, got = _findings(by_csv), _findings(pulled)
    assert expected.height >= 10
    extra = got.join(expected, on=got.columns, how="anti", nulls_equal=True)
    missing = expected.join(got, on=got.columns, how="anti", nulls_equal=True)
    assert got.equals(expected), f"pulled only:\n{extra.rows()}\nCSV only:\n{missing.rows()}"

    _assert_password_nowhere(pulled)

    archived = [p for p in (pulled / "archive").rglob("*.parquet")]
    assert len(archived) == 1 and not any((pulled / "incoming" / "clarity").iterdir())
    before = _tree_digest(pulled, "queues") + _tree_digest(pulled, "history")
    second = pull_flow(source="clarity", out=str(pulled), sources_file=str(sources), night=NIGHT)
    assert second["status"] == "nothing new" and second["run_id"] is None
    assert _tree_digest(pulled, "queues") + _tree_digest(pulled, "history") == before


def _cli_env(**extra) -> dict:
    """The CLI against the test harness's Prefect API (no temporary server to start per call)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def _assert_password_nowhere(out: Path) -> None:
    """Not in any file the run wrote (manifests, reports, logs, worklog, archive) nor in Prefect's API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    leaks = [str(p) for p in out.rglob("*") if p.is_file() and CANARY_PASSWORD.encode() in p.read_bytes()]
    assert leaks == []

    async def from_api():
        await APILogHandler.aflush()
        async with get_client() as client:
            logs = await client.read_logs()
            runs = await client.read_flow_runs()
            return [log.message for log in logs] + [repr(r.parameters) for r in runs]

    texts = asyncio.run(from_api())
    assert texts and not [t for t in texts if CANARY_PASSWORD in t]


def test_clearing_incoming_hashes_only_files_the_landing_flow_did_not(tmp_path, monkeypatch):
    """Processed files leave incoming/ by the checksums the landing flow computed, not hashed again."""
    from b12pipeline import files, pull
    from b12pipeline.paths import OutputLayout

    out = tmp_path / "out"
    incoming = pull.incoming_dir(out, "drop")
    incoming.mkdir(parents=True)
    for name, text in (("a.csv", "x\n1\n"), ("b.csv", "x\n2\n"), ("c.csv", "x\n3\n")):
        (incoming / name).write_text(text)
    real = files.sha256_file
    for name in ("a.csv", "b.csv"):  # processed: their bytes are in the archive
        archive_file(incoming / name, real(incoming / name), OutputLayout(out).archive, "2024-03-01")
    hashed: list[str] = []
    monkeypatch.setattr(files, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    scanned = {"a.csv": real(incoming / "a.csv"), "c.csv": real(incoming / "c.csv")}  # b.csv came later
    assert pull.clear_processed(out, "drop", scanned) == 2
    assert hashed == ["b.csv"] and [p.name for p in incoming.iterdir()] == ["c.csv"]


def test_unreachable_database_fails_with_one_line_and_no_password(prefect_harness, tmp_path):
    sources = _sources_file(
        tmp_path,
        {
            "clarity": {
                "kind": "sql",
                "url": f"postgresql+psycopg://b12@127.0.0.1:{_closed_port()}/clarity",
                "password_env": "B12_TEST_PG_PASSWORD",
                "query": "clarity.sql",
                "retries": 1,
                "retry_delay_seconds": 0,
            }
        },
    )
    env = _cli_env(B12_TEST_PG_PASSWORD=CANARY_PASSWORD)
    done = subprocess.run(
        [CLI, "pull", "--source", "clarity", "--sources", str(sources), "--out", str(tmp_path / "out"),
         "--night", NIGHT.isoformat()],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 5, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any("source clarity" in line and "cannot connect" in line for line in lines), done.stderr
    assert "Traceback" not in done.stderr and CANARY_PASSWORD not in done.stdout + done.stderr
    assert not any((tmp_path / "out" / "incoming" / "clarity").glob("*.parquet"))


def test_a_password_in_the_sources_file_is_refused(tmp_path):
    sources = _sources_file(
        tmp_path,
        {"clarity": {"kind": "sql", "url": "postgresql+psycopg://u:Hunter2Canary@db/x", "query": "clarity.sql"}},
    )
    done = subprocess.run(
        [CLI, "pull", "--source", "clarity", "--sources", str(sources), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "carries a password" in done.stderr and "Hunter2Canary" not in done.stderr
    assert not (tmp_path / "out").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- SFTP ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd():
    from tests.sshd_server import SshServer

    why = SshServer.unavailable()
    if why:
        pytest.skip(why)
    with SshServer.start() as server:
        yield server


def _sftp_source(server, remote: Path, **extra) -> dict:
    return {
        "kind": "sftp",
        "host": "127.0.0.1",
        "port": server.port,
        "user": server.user,
        "key_file": str(server.key_file),
        "known_hosts": str(server.known_hosts),
        "remote_dir": str(remote),
        "pattern": "emar_*.csv",
        "stable_seconds": 1,
        "retries": 0,
        **extra,
    }


def test_sftp_pull_takes_complete_files_and_leaves_one_still_growing(prefect_harness, sshd, tmp_path):
    from flows.pull import pull_flow

    remote = sshd.root / "drop1"
    remote.mkdir()
    fixture = PROJECT / "data" / "fixtures" / "emar_2024-03-01.csv"
    (remote / "emar_2024-03-01.csv").write_bytes(fixture.read_bytes())
    (remote / "notes.txt").write_text("not an extract")
    growing = remote / "emar_2024-03-02.csv"
    growing.write_bytes(fixture.read_bytes()[:200])
    stop = threading.Event()

    def keep_writing():
        with open(growing, "ab") as fh:
            while not stop.is_set():
                fh.write(b"x")
                fh.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        sources = _sftp_source(sshd, remote, move_to="processed")
        out = tmp_path / "out"
        result = pull_flow(
            source="drop",
            out=str(out),
            sources_file=str(_sources_file(tmp_path, {"drop": sources})),
            night=dt.date(2024, 3, 1),
        )
    finally:
        stop.set()
        writer.join()
    assert result["fetched"] == 1 and result["status"] == "processed"
    archived = sorted(p.name for p in (out / "archive").rglob("*.csv"))
    assert archived == ["emar_2024-03-01.csv"]
    copy = next((out / "archive").rglob("emar_2024-03-01.csv"))
    assert copy.read_bytes() == fixture.read_bytes()  # byte for byte
    assert (remote / "processed" / "emar_2024-03-01.csv").exists() and growing.exists()
    assert not (out / "rejected").exists()


def test_sftp_unknown_host_key_is_refused_and_not_retried(prefect_harness, sshd, tmp_path):
    remote = sshd.root / "drop2"
    remote.mkdir()
    (remote / "emar_2024-03-01.csv").write_bytes((PROJECT / "data" / "fixtures" / "emar_2024-03-01.csv").read_bytes())
    impostor = tmp_path / "known_hosts"
    impostor.write_text(sshd.other_host_key_line())
    # One retry would wait a minute: the run finishing well inside that shows the refusal was final.
    source = _sftp_source(sshd, remote, known_hosts=str(impostor), retries=1, retry_delay_seconds=60)
    sources = _sources_file(tmp_path, {"drop": source})
    started = time.monotonic()
    done = subprocess.run(
        [CLI, "pull", "--source", "drop", "--sources", str(sources), "--out", str(tmp_path / "out"),
         "--night", "2024-03-01"],
        env=_cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert "host key" in done.stderr and "refused" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # a refused key is not retried
    assert not list((tmp_path / "out").rglob("emar_*.csv"))


def test_served_pull_deployment_processes_the_scheduled_night(prefect_harness, landing, tmp_path):
    """`serve --source` schedules the pull like `nightly`: a folder source, through a real Prefect runner."""
    import asyncio
    import json

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from flows.pull import pull_deployment

    sources = _sources_file(tmp_path, {"share": {"kind": "landing", "path": str(landing)}})
    out = tmp_path / "out"
    deployment = pull_deployment("share", str(out), str(sources), "30 22 * * *", "America/New_York", "t", None)
    runner = Runner(name="b12-test-pull-runner", pause_on_shutdown=False, limit=1)
    runner.add_deployment(deployment)
    scheduled = dt.datetime(2024, 3, 3, 3, 30, tzinfo=dt.timezone.utc)  # 22:30 on 2024-03-02 in New York
    flow_run = run_deployment("b12-pull/t", scheduled_time=scheduled, timeout=0)
    asyncio.run(runner.start(run_once=True))

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(flow_run.id)

    assert asyncio.run(read()).state.is_completed()
    manifests = [json.loads(p.read_text()) for p in (out / "runs").glob("*/manifest.json")]
    assert [m["night"] for m in manifests] == ["2024-03-02"]
    assert sorted(i["file"] for i in manifests[0]["inputs"]) == sorted(p.name for p in landing.iterdir())
    assert sorted(p.name for p in landing.iterdir())  # the source folder is read, never emptied


def test_the_sql_server_and_postgresql_queries_select_the_same_columns():
    import re

    def columns(name: str) -> list[str]:
        text = (PROJECT / "schemas" / "sources" / name).read_text()
        text = "\n".join(line.split("--")[0] for line in text.splitlines())
        select = text[text.index("SELECT") + 6 : text.index("FROM MAR_ADMIN_INFO")]
        return [re.split(r"\s+AS\s+|\.", item.strip())[-1] for item in select.split(",") if item.strip()]

    mssql, postgres = columns("clarity.sql"), columns("clarity.postgresql.sql")
    assert mssql == postgres and len(mssql) == 32 and mssql[:2] == ["ORDER_MED_ID", "LINE"]


def test_a_batch_is_written_as_text_exactly_as_cell_by_cell():
    import datetime as dt
    import decimal

    from b12pipeline.pull.sql import as_text, text_column

    columns = [
        [decimal.Decimal("1000.00"), decimal.Decimal("1.50"), decimal.Decimal("-0.00"), None, decimal.Decimal("10")],
        [dt.datetime(2024, 3, 1, 8, 5, 7, 123), None],
        [dt.date(2024, 3, 1), None],
        [1, None, 3],
        [1000.0, 1.5],
        ["a", None, " b "],
        [None, None],
        [1, "mixed"],
        [dt.datetime(2024, 3, 1, 8, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5)))],
    ]
    for values in columns:
        assert text_column(values).to_pylist() == [as_text(v) for v in values], values
    assert [as_text(v) for v in columns[0]] == ["1000", "1.5", "0", None, "10"]
