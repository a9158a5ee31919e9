"""The supervisor's dashboard: backlog and aging per queue and owner, closed per day, rule precision.

Counts only, computed from the open findings (queues joined with the worklog) and the worklog rows
(closed and resolved findings included). Charts are the run report's inline SVG bars, so the page
needs no script and loads nothing from elsewhere.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from b12pipeline.engine.rulefile import QUEUES
from b12pipeline.report_html import QUEUE_COLOURS, bar_chart
from b12pipeline.worklog import OPEN_STATUSES
from b12pipeline.worklog.queries import rule_stats_frame

AGE_BUCKETS = ((0, 1, "0-1 days"), (2, 7, "2-7 days"), (8, 30, "8-30 days"), (31, 90, "31-90 days"))
OLDEST = "over 90 days"
CLOSED_DAYS = 30


def summary(findings: pl.DataFrame, rows: pl.DataFrame, today: dt.date) -> dict:
    """Everything the dashboard page shows, as plain lists and inline SVG strings."""
    open_work = findings.filter(pl.col("status").is_in(list(OPEN_STATUSES)))
    backlog = _backlog(open_work)
    aging = _aging(open_work, today)
    closed = _closed_per_day(rows, today)
    precision = _precision(rows)
    per_queue = [(q, sum(r["open"] for r in backlog if r["queue"] == q)) for q in QUEUES]
    return {
        "backlog": backlog,
        "aging": aging,
        "closed": closed,
        "precision": precision,
        "charts": [
            bar_chart("backlog", "Open findings per queue", per_queue, QUEUE_COLOURS),
            bar_chart("aging", "Open findings by age (days since first seen)", [(b, n) for b, n in aging]),
            bar_chart(
                "closed-per-day",
                f"Closed per day, last {CLOSED_DAYS} days (fixed, dismissed, resolved)",
                [(d, sum(n.values())) for d, n in closed],
            ),
            bar_chart(
                "precision",
                "Rule precision: fixed / (fixed + dismissed as false positive), %",
                [(r["rule_id"], round(100 * r["precision"])) for r in precision if r["precision"] is not None],
            ),
        ],
    }


def _backlog(open_work: pl.DataFrame) -> list[dict]:
    """Open findings per queue and owner (unassigned as its own row), with the oldest first-seen date."""
    if open_work.height == 0:
        return []
    return (
        open_work.with_columns(pl.col("owner").fill_null("(unassigned)"))
        .group_by("queue", "owner")
        .agg(
            pl.len().alias("open"),
            (pl.col("status") == "in_progress").sum().alias("in_progress"),
            (pl.col("status") == "deferred").sum().alias("deferred"),
            pl.col("first_seen").min().alias("oldest"),
        )
        .sort("queue", "open", "owner", descending=[False, True, False])
        .to_dicts()
    )


def _aging(open_work: pl.DataFrame, today: dt.date) -> list[tuple[str, int]]:
    ages = open_work.select((pl.lit(today) - pl.col("first_seen")).dt.total_days().alias("age"))["age"]
    counts = [(label, int(((ages >= lo) & (ages <= hi)).sum())) for lo, hi, label in AGE_BUCKETS]
    return [*counts, (OLDEST, int((ages > AGE_BUCKETS[-1][1]).sum()))]


def _closed_per_day(rows: pl.DataFrame, today: dt.date) -> list[tuple[str, dict[str, int]]]:
    since = today - dt.timedelta(days=CLOSED_DAYS - 1)
    closed = rows.filter(pl.col("closed_on").is_between(since, today)).group_by("closed_on", "status").len()
    by_day: dict[str, dict[str, int]] = {}
    for r in closed.sort("closed_on").iter_rows(named=True):
        by_day.setdefault(r["closed_on"].isoformat(), {})[r["status"]] = r["len"]
    return list(by_day.items())


def _precision(rows: pl.DataFrame) -> list[dict]:
    """Per rule, as `rules stats` counts it (worklog.queries.rule_stats_frame): raised, fixed,
    dismissed (as false positive and otherwise), auto-resolved, median days to close, precision."""
    stats = rule_stats_frame(rows)
    return stats.with_columns((pl.col("dismissed") - pl.col("false_positive")).alias("dismissed_other")).to_dicts()
