"""Reading the worklog for views, exports, the run report and rule statistics."""

from __future__ import annotations

import datetime as dt

import polars as pl
from sqlalchemy import Engine, select

from b12pipeline.worklog.models import finding
from b12pipeline.worklog.store import read_connection

STATE_SCHEMA = {
    "finding_id": pl.String,
    "queue": pl.String,
    "rule_id": pl.String,
    "rule_version": pl.String,
    "severity": pl.String,
    "service_date": pl.Date,
    "status": pl.String,
    "owner": pl.String,
    "reason": pl.String,
    "comment": pl.String,
    "deferred_until": pl.Date,
    "first_seen_night": pl.Date,
    "first_seen_run": pl.String,
    "present": pl.Boolean,
    "closed_on": pl.Date,
    "revision": pl.Int64,
}


def read_states(engine: Engine, ids: list[str] | None = None, queue: str | None = None) -> pl.DataFrame:
    """Worklog rows (all, or these finding ids, or one queue) as a frame with STATE_SCHEMA."""
    query = select(*[finding.c[c] for c in STATE_SCHEMA])
    if queue is not None:
        query = query.where(finding.c.queue == queue)
    with read_connection(engine) as conn:
        if ids is None:
            rows = conn.execute(query).all()
        else:
            unique = list(dict.fromkeys(ids))
            rows = []
            for start in range(0, len(unique), 5000):
                rows.extend(conn.execute(query.where(finding.c.finding_id.in_(unique[start : start + 5000]))).all())
    return pl.DataFrame(rows, schema=STATE_SCHEMA, orient="row")


def backlog_by_queue(engine: Engine, queue: str | None, *, as_of: dt.date) -> pl.DataFrame:
    """Per queue: open work, of which new tonight, reopened, in progress, deferred (not yet due),
    and the age in days of the oldest open finding (first seen -> as_of)."""
    from b12pipeline.worklog.view import OPEN_WORK

    states = read_states(engine, queue=queue)
    due = (pl.col("status") == "deferred") & (pl.col("deferred_until") <= as_of)
    open_work = pl.col("status").is_in(OPEN_WORK) | due
    count = lambda cond: cond.sum().cast(pl.Int64)  # noqa: E731
    return (
        states.group_by("queue")
        .agg(
            count(open_work).alias("open"),
            count(pl.col("status") == "new").alias("new"),
            count(pl.col("status") == "reopened").alias("reopened"),
            count(pl.col("status") == "in_progress").alias("in_progress"),
            count((pl.col("status") == "deferred") & ~due).alias("deferred"),
            (pl.lit(as_of) - pl.col("first_seen_night").filter(open_work).min()).dt.total_days().alias("oldest_days"),
        )
        .sort("queue")
    )
