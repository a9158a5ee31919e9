"""Shared test fixtures: one Prefect test harness per session (a throwaway SQLite-backed API)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from pathlib import Path

import pytest

import b12pipeline  # noqa: F401  (telemetry defaults before prefect)

PROJECT = Path(__file__).resolve().parent.parent
FIXTURES = PROJECT / "data" / "fixtures"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# Fixtures that start Prefect's server or run whole nights: every test using one (directly or
# through another fixture) is slow, so `make test-fast` leaves it out without anyone remembering
# to mark it. Tests slow for other reasons carry @pytest.mark.slow themselves.
SLOW_FIXTURES = {"prefect_harness", "runs", "nights_out", "canary_night", "night_100k", "quick"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(scope="session", autouse=True)
def prefect_console_follows_stderr():
    """Prefect configures its logging once per process, when it is first imported, and its console
    handler keeps the `sys.stderr` of that moment. When that moment is inside a CliRunner invoke
    (a command importing Prefect lazily), the handler keeps CliRunner's stream, closed once the
    invoke returns: every later record through it (Prefect's own, or a library's warning reaching
    the root logger, like psycopg's on an aborted pipeline) prints "--- Logging error ---" and a
    traceback into whichever command runs next, and a test asserting "no traceback" fails or not
    depending on which test imported Prefect first. Configured here, before any test, the handler
    writes to the `sys.stderr` of each write instead: each invoke's output holds its own lines."""
    import logging

    import prefect.main  # noqa: F401  (configures Prefect's logging)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}:
        handler.setStream(_CurrentStderr())  # type: ignore[arg-type]
        handler.console.file, handler.console.stderr = None, True  # rich then writes to sys.stderr of the moment
    yield


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's own test harness: a temporary database and API server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def rules():
    from b12pipeline.pipeline import Rules

    return Rules.load()


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    """A landing folder holding copies of the bundled fixture extracts."""
    folder = tmp_path / "landing"
    folder.mkdir()
    for p in FIXTURES.iterdir():
        if p.suffix in (".csv", ".parquet"):
            shutil.copy2(p, folder / p.name)
    return folder


@pytest.fixture(scope="session")
def two_nights(prefect_harness, tmp_path_factory):
    """The fixture extracts run as two nights through the real flow (night 1: CSV, night 2: Parquet).

    Shared by the queue, report and browser tests: returns (out, [manifest night 1, manifest night 2]).
    """
    from flows.nightly import nightly_flow

    out = tmp_path_factory.mktemp("two_nights") / "out"
    manifests = [
        nightly_flow(extracts=[str(FIXTURES / name)], out=str(out), night=night)
        for name, night in (
            ("emar_2024-03-01.csv", dt.date(2024, 3, 1)),
            ("emar_2024-03-02.parquet", dt.date(2024, 3, 2)),
        )
    ]
    return out, manifests


@pytest.fixture(scope="session")
def shipped_nights(prefect_harness, tmp_path_factory) -> dict:
    """The multi-night history fixture (tests/history_support.py) run night by night with the shipped
    rules, once for the history, backfill and deploy tests: `out` after all five nights, `two` and
    `four` copies of it taken after nights 2 and 4, each night's manifest and the queues after each night.
    Read them or work on a copy (history_support.copy_out); never change them."""
    from history_support import NIGHTS, copy_out, queue_frame, run_nights

    root = tmp_path_factory.mktemp("shipped_nights")
    out = root / "out"
    manifests, after = [], []
    for night in NIGHTS:
        manifests += run_nights(out, nights=[night])
        after.append(queue_frame(out))
        if night in (NIGHTS[1], NIGHTS[3]):
            copy_out(out, root / f"after_{len(after)}")
    return {"out": out, "two": root / "after_2", "four": root / "after_4", "manifests": manifests, "after": after}


@pytest.fixture(scope="session")
def changed_rules_nights(prefect_harness, tmp_path_factory) -> dict:
    """The same five nights run fresh with FREQ-001 changed (history_support.changed_rules): what a
    deploy or backfill of that change must reach. `rules` is the changed folder. Read only."""
    from history_support import changed_rules, run_nights

    root = tmp_path_factory.mktemp("changed_rules_nights")
    rules_b = changed_rules(root)
    run_nights(root / "fresh", rules_b)
    return {"rules": rules_b, "out": root / "fresh"}


def fixture_identifiers() -> set[str]:
    """Every patient, encounter, administration and order id in the fixture extracts."""
    import polars as pl

    ids: set[str] = set()
    for p in FIXTURES.iterdir():
        if p.suffix not in (".csv", ".parquet"):
            continue
        frame = pl.read_csv(p, infer_schema=False) if p.suffix == ".csv" else pl.read_parquet(p)
        for col in ("patient_id", "encounter_id", "admin_id", "order_id"):
            if col in frame.columns:
                ids |= {str(v) for v in frame[col].drop_nulls().to_list() if str(v).strip()}
    return ids


# --- databases --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/postgres_server.py); skipped only when it cannot run here."""
    from tests.postgres_server import PostgresServer

    why = PostgresServer.unavailable()
    if why:
        pytest.skip(why)
    with PostgresServer.start() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh database on the session's PostgreSQL server, dropped after the test: its SQLAlchemy URL."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + f"_{os.getpid()}"
    postgres_server.drop_database(name)
    yield postgres_server.create_database(name)
    from b12pipeline.worklog.store import dispose_all

    dispose_all()
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def worklog_url(request, tmp_path, monkeypatch):
    """The worklog's URL on each supported database, set as B12_WORKLOG_URL for every interface."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'worklog.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("B12_WORKLOG_URL", url)
    yield url
    from b12pipeline.worklog.store import dispose_all

    dispose_all()


@pytest.fixture
def worklog_engine(worklog_url):
    from b12pipeline.worklog import open_worklog

    return open_worklog(url=worklog_url)
