"""Shared test fixtures: one Prefect test harness per session (a throwaway SQLite-backed API)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import b12pipeline  # noqa: F401  (telemetry defaults before prefect)

PROJECT = Path(__file__).resolve().parent.parent
FIXTURES = PROJECT / "data" / "fixtures"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


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
