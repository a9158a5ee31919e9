"""Nights for the worklog tests: the night's library calls in the flow's order, without Prefect
(the flow itself is covered by test_nightly_flow.py), so each test runs on SQLite and PostgreSQL fast."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from b12pipeline.files import sha256_file
from b12pipeline.pipeline import Rules, apply_staged, make_run_id, stage_file
from b12pipeline.worklog import update_night_from_queues

PROJECT = Path(__file__).resolve().parent.parent
NIGHT1_CSV = PROJECT / "data" / "fixtures" / "emar_2024-03-01.csv"


def evaluate_night(out: Path, extract: Path, night: dt.date) -> tuple[str, list[str]]:
    """stage -> apply (queues written); returns the run id and the dates it re-evaluated."""
    rules = Rules.load()
    run_id = make_run_id(night, [sha256_file(extract)], rules.ruleset.version)
    staged = stage_file(extract, out, run_id, night, rules)
    applied = apply_staged([staged.staged] if staged.staged else [], out, rules, run_id)
    return run_id, applied["dates"]


def run_night(out: Path, extract: Path, night: dt.date) -> dict:
    """A whole night as flows/nightly.py runs it; returns the worklog counts."""
    run_id, dates = evaluate_night(out, extract, night)
    return update_night_from_queues(out, night, run_id, dates)


class NightTemplate:
    """A night evaluated once per session; `replay(out)` copies its output root (without any worklog)
    and applies the night's lifecycle update to the worklog the test is using."""

    def __init__(self, root: Path, extract: Path, night: dt.date):
        self.root, self.night = root, night
        self.run_id, self.dates = evaluate_night(root, extract, night)

    def replay(self, out: Path) -> dict:
        shutil.copytree(self.root, out, ignore=shutil.ignore_patterns("worklog.sqlite*", ".lock"))
        return update_night_from_queues(out, self.night, self.run_id, self.dates)


class NightSeries:
    """Several nights evaluated once per session on one output root, a snapshot kept after each;
    `replay(out, k)` puts night k's queues and history in `out` and applies its lifecycle update."""

    def __init__(self, root: Path, nights: list[tuple[Path, dt.date]]):
        self.nights = []
        work = root / "work"
        for k, (extract, night) in enumerate(nights):
            run_id, dates = evaluate_night(work, extract, night)
            snapshot = root / f"after-{k}"
            shutil.copytree(work, snapshot, ignore=shutil.ignore_patterns("worklog.sqlite*", ".lock"))
            self.nights.append((snapshot, night, run_id, dates))

    def replay(self, out: Path, k: int) -> dict:
        snapshot, night, run_id, dates = self.nights[k]
        for part in ("queues", "history"):
            shutil.rmtree(out / part, ignore_errors=True)
            shutil.copytree(snapshot / part, out / part)
        return update_night_from_queues(out, night, run_id, dates)


def corrections_moving_admins(target: Path) -> Path:
    """A corrections extract for the fixture night: MAR-1006-1 (DOC-001) moves to the next date of
    service, MAR-1004-1 (UNITS-002) too and to another patient. Same admin ids, so the same findings."""
    import polars as pl

    rows = pl.read_csv(NIGHT1_CSV, infer_schema=False).filter(pl.col("admin_id").is_in(["MAR-1004-1", "MAR-1006-1"]))
    rows.with_columns(
        pl.col("admin_time").str.replace("2024-03-01", "2024-03-02"),
        pl.when(pl.col("admin_id") == "MAR-1004-1")
        .then(pl.lit("MRN00499999"))
        .otherwise(pl.col("patient_id"))
        .alias("patient_id"),
    ).write_csv(target)
    return target
