"""Reading the worklog for views, exports, the run report and rule statistics."""

from __future__ import annotations

import datetime as dt

import polars as pl
from sqlalchemy import Connection, Engine, func, select

from b12pipeline.worklog.models import OPEN_WORK, audit, finding
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


def _lifecycle_frame(conn: Connection, as_of: dt.date | None = None) -> pl.DataFrame:
    """Findings counted by queue, rule, status, reason, first seen, closed on and (given `as_of`)
    whether a deferral is due: a GROUP BY, so a 100k-finding worklog comes back as a few hundred rows.
    Column `n` is the count; the statistics below weight by it."""
    keys = [finding.c[c] for c in ("queue", "rule_id", "status", "reason", "first_seen_night", "closed_on")]
    due = (finding.c.deferred_until <= as_of) if as_of is not None else (finding.c.deferred_until.is_(None))
    query = select(*keys, due.label("due"), func.count().label("n")).group_by(*keys, due)
    rows = conn.execute(query).all()
    schema = {c.name: STATE_SCHEMA[c.name] for c in keys} | {"due": pl.Boolean, "n": pl.Int64}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.with_columns(pl.col("due").fill_null(False))


def rule_stats_frame(states: pl.DataFrame) -> pl.DataFrame:
    """Per rule: raised, open, fixed, dismissed (and by reason), auto-resolved, median days to close,
    precision = fixed / (fixed + dismissed as false positive), null until a coder decided one."""
    from b12pipeline.worklog.models import CLOSED_STATUSES

    if "n" not in states.columns:
        states = states.with_columns(pl.lit(1, pl.Int64).alias("n"))
    status = pl.col("status")
    count = lambda cond: pl.col("n").filter(cond).sum().cast(pl.Int64)  # noqa: E731
    closed_days = (pl.col("closed_on") - pl.col("first_seen_night")).dt.total_days().repeat_by("n").explode()
    stats = states.group_by("rule_id").agg(
        pl.col("n").sum().cast(pl.Int64).alias("raised"),
        count(~status.is_in(CLOSED_STATUSES)).alias("open"),
        count(status == "fixed").alias("fixed"),
        count(status == "dismissed").alias("dismissed"),
        count((status == "dismissed") & (pl.col("reason") == FALSE_POSITIVE)).alias("false_positive"),
        count(status == "resolved").alias("auto_resolved"),
        closed_days.filter(status.is_in(CLOSED_STATUSES).repeat_by("n").explode())
        .median()
        .alias("median_days_to_close"),
    )
    reasons = (
        states.filter(status == "dismissed")
        .group_by("rule_id", "reason")
        .agg(pl.col("n").sum().alias("len"))
        .sort("reason")
        .group_by("rule_id", maintain_order=True)
        .agg(
            pl.format("{} {}", pl.col("reason").fill_null("(none)"), "len").str.join(", ").alias("dismissed_by_reason")
        )
    )
    decided = pl.col("fixed") + pl.col("false_positive")
    return (
        stats.join(reasons, on="rule_id", how="left")
        .with_columns(
            pl.col("dismissed_by_reason").fill_null(""),
            pl.when(decided > 0).then(pl.col("fixed") / decided).otherwise(None).alias("precision"),
        )
        .sort("rule_id")
    )


def rule_stats(engine: Engine) -> pl.DataFrame:
    with read_connection(engine) as conn:
        return rule_stats_frame(_lifecycle_frame(conn))


def backlog_snapshot(conn: Connection, night_date: dt.date, since: dt.datetime | None) -> dict:
    """The open backlog per queue as of `night_date` (counts and age buckets), what was closed since
    `since` (the previous night's update), and the rules' effectiveness: counts only, for the run report."""
    from b12pipeline.worklog.models import CLOSED_STATUSES, audit

    states = _lifecycle_frame(conn, night_date)
    due = (pl.col("status") == "deferred") & pl.col("due")
    open_work = states.filter(pl.col("status").is_in(OPEN_WORK) | due).with_columns(
        (pl.lit(night_date) - pl.col("first_seen_night")).dt.total_days().alias("age")
    )
    backlog = {}
    for (queue,), group in open_work.group_by(["queue"]):
        n, ages = group["n"], group["age"]
        backlog[queue] = {
            "open": int(n.sum()),
            "new": int(n.filter(group["status"] == "new").sum()),
            "reopened": int(n.filter(group["status"] == "reopened").sum()),
            "in_progress": int(n.filter(group["status"] == "in_progress").sum()),
            "age_days": {label: int(n.filter((ages >= lo) & (ages <= hi)).sum()) for label, lo, hi in AGE_BUCKETS},
            "oldest_days": int(group.select(pl.col("age").max()).item()),
        }
    deferred = states.filter((pl.col("status") == "deferred") & ~due).group_by("queue").agg(pl.col("n").sum())
    closed_query = select(audit.c.after, func.count()).where(
        audit.c.field == "status", audit.c.after.in_(CLOSED_STATUSES)
    )
    if since is not None:
        closed_query = closed_query.where(audit.c.at > since)
    closed = {s: 0 for s in CLOSED_STATUSES} | dict(conn.execute(closed_query.group_by(audit.c.after)).all())
    stats = rule_stats_frame(states)
    return {
        "as_of": night_date.isoformat(),
        "backlog": dict(sorted(backlog.items())),
        "deferred_not_due": dict(deferred.iter_rows()),
        "closed_since_previous_night": closed,
        "rules": stats.to_dicts(),
    }


FALSE_POSITIVE = "false positive"
AGE_BUCKETS = (("0-7", 0, 7), ("8-30", 8, 30), ("31-90", 31, 90), ("over 90", 91, 10**6))


def worklog_stamp(engine: Engine) -> tuple:
    """Changes whenever the worklog does (every change writes an audit row; a night may insert
    findings): two cheap aggregate reads, so a view can cache `read_states` until it moves."""
    with read_connection(engine) as conn:
        last_audit = conn.execute(select(func.max(audit.c.id))).scalar()
        rows = conn.execute(select(func.count()).select_from(finding)).scalar()
    return (last_audit, rows)
