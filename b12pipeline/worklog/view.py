"""A coder's view of the work: each finding's facts (the queues), what people decided (the worklog),
and what a coder needs to decide without opening another system (payer, billed charge, diagnoses,
the rule's title and citation, from history and the rule files). Used by `queue show/set/export`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from b12pipeline.worklog.models import OPEN_WORK, STATUSES
from b12pipeline.worklog.queries import read_states

UNTRACKED = "untracked"  # in a queue, not in the worklog (written before it existed, or by a backfill)
CONTEXT_COLUMNS = ("payer_type", "charge_hcpcs", "charge_units", "charge_modifiers", "diagnosis_codes")
KEYS = ("queue", "rule_id", "rule_version", "severity", "service_date")
FILTER_KEYS = ("queue", "status", "owner", "severity", "payer", "rule", "date", "new")


class FilterError(ValueError):
    """A filter that cannot be read; the message names it."""


def work_view(out: Path | str, engine, queue: str | None, *, as_of: dt.date, rules_dir=None) -> pl.DataFrame:
    """Every finding of `queue` (or all queues) in the queues or the worklog, with its state and context."""
    from b12pipeline.paths import OutputLayout
    from b12pipeline.queues import read_queue

    layout = OutputLayout(Path(out))
    facts = read_queue(layout.queues, queue)
    states = read_states(engine, queue=queue).rename({k: f"{k}_wl" for k in KEYS})
    both = facts.join(states, on="finding_id", how="full", coalesce=True)
    both = both.with_columns([pl.coalesce(k, f"{k}_wl").alias(k) for k in KEYS]).drop([f"{k}_wl" for k in KEYS])
    closed_or_now = (
        pl.when(pl.col("status").is_in(OPEN_WORK + ("deferred",))).then(pl.lit(as_of)).otherwise("closed_on")
    )
    both = both.with_columns(
        pl.col("status").fill_null(UNTRACKED),
        (closed_or_now - pl.col("first_seen_night")).dt.total_days().alias("days_open"),
        (pl.col("status") == "new").fill_null(False).alias("new_tonight"),
    )
    both = _with_context(both, layout.history)
    return _with_rule_text(both, rules_dir).sort("service_date", "rule_id", "finding_id")


def _with_context(view: pl.DataFrame, history_root: Path) -> pl.DataFrame:
    from b12pipeline.history import read_history

    # Findings written since the queues carry payer_type keep their own; older ones take history's.
    empty = view.with_columns([pl.lit(None, pl.String).alias(c) for c in CONTEXT_COLUMNS if c not in view.columns])
    dated = view["service_date"].drop_nulls()
    if dated.is_empty():
        return empty
    rows = read_history(history_root, min(dated), max(dated))
    if rows is None:
        return empty
    have = [c for c in CONTEXT_COLUMNS if c in rows.columns]
    context = rows.select("admin_id", *[pl.col(c).cast(pl.String) for c in have]).unique("admin_id", keep="last")
    context = context.with_columns([pl.lit(None, pl.String).alias(c) for c in CONTEXT_COLUMNS if c not in have])
    shared = [c for c in CONTEXT_COLUMNS if c in view.columns]
    joined = view.join(context, on="admin_id", how="left", suffix="_history")
    return joined.with_columns([pl.coalesce(c, f"{c}_history").alias(c) for c in shared]).drop(
        [f"{c}_history" for c in shared]
    )


def _with_rule_text(view: pl.DataFrame, rules_dir) -> pl.DataFrame:
    from b12pipeline.rulesets import load_ruleset

    rules = load_ruleset(Path(rules_dir) if rules_dir else None).rules
    titles = {r.id: r.title for r in rules}
    citations = {r.id: "; ".join(r.citations) for r in rules}
    return view.with_columns(
        pl.col("rule_id").replace_strict(titles, default=None, return_dtype=pl.String).alias("rule_title"),
        pl.col("rule_id").replace_strict(citations, default=None, return_dtype=pl.String).alias("rule_citation"),
    )


def parse_where(text: str | None) -> dict[str, str]:
    """`status=open,owner=ana,rule=UNITS-001` -> a filter dict (keys: FILTER_KEYS)."""
    found: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in FILTER_KEYS or not value.strip():
            raise FilterError(f"--where {part.strip()!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
        found[key] = value.strip()
    return found


def filter_work(view: pl.DataFrame, filters: dict, *, as_of: dt.date) -> pl.DataFrame:
    """The findings matching `filters` (show's flags or --where). Without a status filter: the open
    work (new, open, reopened, in progress, and deferred whose date has come)."""
    status = filters.get("status")
    if filters.get("new") in (True, "yes", "true", "1"):
        status = "new"
    if status in (None, "", "open-work"):
        keep = pl.col("status").is_in(OPEN_WORK + (UNTRACKED,)) | (
            (pl.col("status") == "deferred") & (pl.col("deferred_until") <= as_of)
        )
    elif status == "all":
        keep = pl.lit(True)
    else:
        wanted = [s.strip() for s in str(status).split("|")]
        unknown = [s for s in wanted if s not in (*STATUSES, UNTRACKED)]
        if unknown:
            raise FilterError(f"unknown status {unknown[0]!r}; statuses are {', '.join(STATUSES)}, open-work, all")
        keep = pl.col("status").is_in(wanted)
    if filters.get("queue"):
        keep &= pl.col("queue") == filters["queue"]
    if filters.get("owner"):
        keep &= pl.col("owner").str.to_lowercase() == str(filters["owner"]).lower()
    if filters.get("severity"):
        keep &= pl.col("severity") == str(filters["severity"]).lower()
    if filters.get("payer"):
        keep &= pl.col("payer_type").str.to_lowercase() == str(filters["payer"]).lower()
    if filters.get("rule"):
        keep &= pl.col("rule_id") == str(filters["rule"]).upper()
    if filters.get("date"):
        day = filters["date"]
        if not isinstance(day, dt.date):
            try:
                day = dt.date.fromisoformat(str(day))
            except ValueError:
                raise FilterError(f"date {day!r} is not a date (YYYY-MM-DD)") from None
        keep &= pl.col("service_date") == day
    return view.filter(keep.fill_null(False))


__all__ = ["FilterError", "filter_work", "parse_where", "work_view"]
