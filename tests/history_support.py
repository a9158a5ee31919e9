"""Shared by test_history.py and test_backfill.py: run the multi-night fixture."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl

PROJECT = Path(__file__).resolve().parent.parent
HISTORY_FIXTURES = PROJECT / "data" / "fixtures" / "history"
NIGHTS = [dt.date(2024, 3, d) for d in range(4, 9)]
FIRST_DOS, LAST_DOS = dt.date(2023, 11, 1), dt.date(2024, 3, 8)


def merge_rows(history: Path, rows: pl.DataFrame) -> list[dt.date]:
    """`rows` merged into `history` as a night merges one extract's rows: staged, then merged."""
    from b12pipeline.history import merge_into_history, stage_rows

    with tempfile.TemporaryDirectory(prefix="b12-staged-") as staged:
        stage_rows(rows, Path(staged))
        return merge_into_history(history, [Path(staged)])


def night_file(night: dt.date) -> Path:
    return HISTORY_FIXTURES / f"emar_{night.isoformat()}.csv"


def run_nights(out: Path, rules_dir: Path | None = None, nights: list[dt.date] = NIGHTS) -> list[dict]:
    """Nights one by one through the real Prefect flow (callers hold the prefect_harness fixture)."""
    from flows.nightly import nightly_flow

    return [
        nightly_flow(
            extracts=[str(night_file(n))], out=str(out), night=n, rules_dir=str(rules_dir) if rules_dir else None
        )
        for n in nights
    ]


def queue_frame(out: Path) -> pl.DataFrame:
    from b12pipeline.queues import read_queue

    return read_queue(out / "queues")


def without_run_id(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop("run_id").sort("service_date", "queue", "rule_id", "admin_id")


def queue_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "queues").rglob("*.parquet"))}


def copy_out(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def changed_rules(tmp: Path) -> Path:
    """A copy of rules/ with FREQ-001 changed: commercial payers too, and a 100-day loading phase."""
    rules = tmp / "rules"
    shutil.copytree(PROJECT / "rules", rules)
    path = rules / "medical_necessity" / "FREQ-001.yaml"
    text = path.read_text()
    version = re.search(r'^version: "(\d+)"$', text, re.MULTILINE)
    assert version, "FREQ-001 has a numeric version"
    bumped = f'version: "{int(version[1]) + 1}"'
    for old, new in (
        (version[0], bumped),  # a changed rule carries a new version (the deploy gates refuse it otherwise)
        ("{field: payer_type, in: {config: frequency_payers}}", "{field: payer_type, in: [medicare, commercial]}"),
        (
            "{field: days_since_first_injection, gt: {config: loading_phase_days}}",
            "{field: days_since_first_injection, gt: 100}",
        ),
        # Its own cases follow the change (a deploy refuses a ruleset whose cases fail).
        (
            '"first injection 57 days before: just past the loading phase"',
            '"first injection 118 days before: past the 100-day loading phase"',
        ),
        ('{admin_time: "2024-01-04T10:00:00"}', '{admin_time: "2023-11-04T10:00:00"}'),
        (
            '{admin_time: "2023-12-01T10:00:00"}\n        - {admin_time: "2024-02-25T10:00:00", route: IV push}',
            '{admin_time: "2023-11-01T10:00:00"}\n        - {admin_time: "2024-02-25T10:00:00", route: IV push}',
        ),
        (
            '"payer not in frequency_payers"\n      payer_type: commercial',
            '"medicaid is not checked"\n      payer_type: medicaid',
        ),
        ("payer_type: commercial}", "payer_type: medicaid}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    assert "commercial" not in text.split("cases:")[1]
    path.write_text(text)
    return rules
