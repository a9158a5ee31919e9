"""The finding lifecycle, computed from what an evaluation produced (never from the wall clock).

A night calls `update_night`: findings first seen the night before become `open`, deferrals due by
tonight return to `open`, then `apply_evaluation` compares the findings of every re-evaluated date
with the worklog:

- produced, known              -> what the worklog copies from the finding (COPIED: rule version,
                                  severity, queue) takes the produced value, one audit row per field
- produced, unknown            -> inserted as `new` (first seen = this night and run)
- produced, `resolved`         -> `reopened` (it came back)
- produced, `fixed` but absent since -> `reopened` (the fix did not hold)
- produced, `dismissed` under another rule version -> `reopened` (the rule changed: review again)
- not produced, still open work (new/open/reopened/in_progress/deferred) -> `resolved`
- anything else holds (a dismissal or a fix holds while the evaluation still produces it)

A finding is one administration under one rule (its id), not a date: produced on an evaluated date
while the worklog holds it on another (a correction moved the administration), it is that finding,
moved there (`service_date` audited), and then judged as above, never inserted a second time.

Work is set-based (a handful of statements per night, whatever the number of findings) so a night
with 100k open findings adds little to its run time (bench/run_bench.py measures it).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl
from sqlalchemy import Connection, Engine, Table, and_, bindparam, func, insert, literal, select, update

from b12pipeline.worklog.models import OPEN_STATUSES, audit, finding
from b12pipeline.worklog.models import night as nights
from b12pipeline.worklog.queries import backlog_snapshot
from b12pipeline.worklog.store import write_transaction

NIGHT_ACTOR = "b12pipeline"
KEY_COLUMNS = ("finding_id", "queue", "rule_id", "rule_version", "severity", "service_date")
# What the worklog copies from a finding that a later evaluation may produce differently for the same
# id (a rule's new version changes its severity, or moves the rule to another queue). The rule id is
# part of the finding id; the service date is a move (audited on its own, above the status rules).
COPIED = ("rule_version", "severity", "queue")


@dataclass
class LifecycleCounts:
    """What one update changed: counts only (safe for logs, artifacts and reports)."""

    new: int = 0
    reopened: int = 0
    resolved: int = 0
    returned: int = 0  # deferred findings due again
    aged: int = 0  # new -> open
    rule_version_changed: int = 0
    # After a night: the backlog per queue, what closed since the previous night, rule effectiveness
    # (counts only: queries.backlog_snapshot). Empty for other re-evaluations.
    snapshot: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def utc_now() -> dt.datetime:
    """When a change is recorded (a record only: no decision reads it)."""
    return dt.datetime.now(dt.timezone.utc)


def update_night(
    engine: Engine,
    findings: pl.DataFrame,
    dates: list[dt.date],
    *,
    night: dt.date,
    run_id: str,
    at: dt.datetime | None = None,
) -> LifecycleCounts:
    """A night's whole lifecycle update, in one transaction. Re-running the same night is a no-op."""
    at = at or utc_now()
    with write_transaction(engine) as conn:
        counts = LifecycleCounts()
        counts.aged = _night_transition(
            conn, finding.c.status == "new", finding.c.first_seen_night < night, "open", at, run_id, "seen before"
        )
        counts.returned = _night_transition(
            conn,
            finding.c.status == "deferred",
            finding.c.deferred_until <= night,
            "open",
            at,
            run_id,
            "deferral due",
        )
        evaluated = _apply(conn, findings, dates, night, run_id, "night", NIGHT_ACTOR, run_id, None, at)
        for key in ("new", "reopened", "resolved", "rule_version_changed"):
            setattr(counts, key, getattr(evaluated, key))
        previous = conn.execute(
            select(func.max(nights.c.at)).where(nights.c.night < night, nights.c.run_id != run_id)
        ).scalar()
        counts.snapshot = backlog_snapshot(conn, night, previous)
        if conn.execute(select(nights.c.run_id).where(nights.c.run_id == run_id)).first() is None:
            conn.execute(
                insert(nights).values(
                    run_id=run_id,
                    night=night,
                    interface="night",
                    at=at,
                    new=counts.new,
                    reopened=counts.reopened,
                    resolved=counts.resolved,
                    returned=counts.returned,
                )
            )
    return counts


def apply_evaluation(
    engine: Engine,
    findings: pl.DataFrame,
    dates: list[dt.date],
    *,
    night: dt.date,
    cause: str,
    interface: str = "deploy",
    actor: str = NIGHT_ACTOR,
    rule_ids: list[str] | None = None,
    run_id: str | None = None,
    at: dt.datetime | None = None,
) -> LifecycleCounts:
    """Apply a re-evaluation of `dates` (e.g. after a rule deployment) with `cause` recorded on each change.

    `findings` are every finding the re-evaluation produced on `dates` (only `rule_ids` when given:
    findings of other rules are then left alone). A finding it no longer produces is resolved."""
    with write_transaction(engine) as conn:
        return _apply(conn, findings, dates, night, run_id or cause, interface, actor, cause, rule_ids, at or utc_now())


def _night_transition(
    conn: Connection, where_status, where_due, to: str, at: dt.datetime, run_id: str, why: str
) -> int:
    """Move every row matching both conditions to `to`, with one audit row each (two statements)."""
    status_before = finding.c.status
    conn.execute(
        insert(audit).from_select(
            ["finding_id", "at", "actor", "interface", "field", "before", "after", "cause"],
            select(
                finding.c.finding_id,
                literal(at, audit.c.at.type),
                literal(NIGHT_ACTOR),
                literal("night"),
                literal("status"),
                status_before,
                literal(to),
                literal(f"{run_id}: {why}"),
            ).where(and_(where_status, where_due)),
        )
    )
    result = conn.execute(
        update(finding).where(and_(where_status, where_due)).values(status=to, revision=finding.c.revision + 1)
    )
    return result.rowcount or 0


def _existing(conn: Connection, dates: list[dt.date], rule_ids: list[str] | None) -> pl.DataFrame:
    """The worklog rows of `dates` (only `rule_ids` when given)."""
    mark = _mark(conn)
    as_param = (lambda d: d.isoformat()) if conn.dialect.name == "sqlite" else (lambda d: d)
    where = f"service_date IN ({', '.join([mark] * len(dates))})"
    params: list = [as_param(d) for d in dates]
    if rule_ids is not None:
        where += f" AND rule_id IN ({', '.join([mark] * len(rule_ids))})"
        params += list(rule_ids)
    return _read_rows(conn, where, params)


def _existing_elsewhere(conn: Connection, ids: list[str]) -> pl.DataFrame:
    """The worklog rows of `ids` whatever their date: a correction that moves an administration to
    another date of service moves its findings (same id) there. Their ids go as one parameter (a JSON
    array on SQLite, an array on PostgreSQL), so a night with many new findings is still one query."""
    if not ids:
        return _read_rows(conn, "1 = 0", [])
    if conn.dialect.name == "sqlite":
        return _read_rows(conn, "finding_id IN (SELECT value FROM json_each(?))", [json.dumps(ids)])
    return _read_rows(conn, f"finding_id = ANY({_mark(conn)})", [ids])


def _mark(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _read_rows(conn: Connection, where: str, params: list) -> pl.DataFrame:
    """Worklog rows read through the driver's cursor, not SQLAlchemy rows (a night reads every finding
    of its dates; building 100k Row objects cost more than the query)."""
    sql = (
        "SELECT finding_id, status, rule_version, severity, queue, present, service_date "
        f"FROM worklog_finding WHERE {where}"
    )
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    sqlite = conn.dialect.name == "sqlite"
    frame = pl.DataFrame(
        rows,
        schema={
            "finding_id": pl.String,
            "status": pl.String,
            "old_rule_version": pl.String,
            "old_severity": pl.String,
            "old_queue": pl.String,
            "present": pl.Int8,
            "old_date": pl.String if sqlite else pl.Date,
        },
        orient="row",
    )
    # SQLite hands dates back as ISO text, PostgreSQL as dates.
    old_date = pl.col("old_date").str.to_date("%Y-%m-%d") if sqlite else pl.col("old_date")
    return frame.with_columns(pl.col("present").cast(pl.Boolean), old_date)


def _apply(
    conn: Connection,
    findings: pl.DataFrame,
    dates: list[dt.date],
    night_date: dt.date,
    run_id: str,
    interface: str,
    actor: str,
    cause: str,
    rule_ids: list[str] | None,
    at: dt.datetime,
) -> LifecycleCounts:
    counts = LifecycleCounts()
    dates = sorted(set(dates))
    if not dates:
        return counts
    produced = findings.select(KEY_COLUMNS).filter(pl.col("service_date").is_in(dates))
    if rule_ids is not None:
        produced = produced.filter(pl.col("rule_id").is_in(rule_ids))
    produced = produced.unique("finding_id", keep="first").with_columns(pl.lit(True).alias("produced"))
    existing = _existing(conn, dates, rule_ids)
    # A finding is one administration under one rule, wherever its date: one produced here but held
    # on a date not evaluated now has moved (a correction), and is that finding, not a new one.
    elsewhere = produced.filter(~pl.col("finding_id").is_in(existing["finding_id"].implode()))
    existing = pl.concat([existing, _existing_elsewhere(conn, elsewhere["finding_id"].to_list())])
    existing = existing.with_columns(pl.lit(True).alias("known"))
    both = produced.join(existing, on="finding_id", how="full", coalesce=True).with_columns(
        pl.col("produced").fill_null(False), pl.col("known").fill_null(False)
    )
    base = {"at": at, "actor": actor, "interface": interface}

    # In finding_id order: the key's index (and the audit's) then grows at its end instead of
    # splitting pages all over (a first night of 50k findings into SQLite: 0.66 -> 0.46 s).
    inserts = both.filter(pl.col("produced") & ~pl.col("known")).sort("finding_id")
    if inserts.height:
        _insert_rows(
            conn,
            finding,
            inserts.select(KEY_COLUMNS),
            status="new",
            first_seen_night=night_date,
            first_seen_run=run_id,
            present=True,
            revision=1,
        )
        _insert_rows(
            conn, audit, inserts.select("finding_id"), **base, field="status", before=None, after="new", cause=cause
        )
        counts.new = inserts.height

    again = both.filter(pl.col("produced") & pl.col("known"))
    moved = again.filter(pl.col("service_date") != pl.col("old_date"))
    if moved.height:
        conn.execute(
            update(finding)
            .where(finding.c.finding_id == bindparam("b_id"))
            .values(service_date=bindparam("b_date"), revision=finding.c.revision + 1),
            [{"b_id": i, "b_date": d} for i, d in moved.select("finding_id", "service_date").iter_rows()],
        )
        _insert_audit(conn, moved, "service_date", pl.col("old_date"), pl.col("service_date"), base, cause)
    counts.rule_version_changed = _update_copied(conn, again, base, cause)
    reopen = again.filter(
        (pl.col("status") == "resolved")
        | ((pl.col("status") == "fixed") & ~pl.col("present"))
        | ((pl.col("status") == "dismissed") & (pl.col("rule_version") != pl.col("old_rule_version")))
    )
    if reopen.height:
        conn.execute(
            update(finding)
            .where(finding.c.finding_id == bindparam("b_id"))
            .values(status="reopened", present=True, closed_on=None, revision=finding.c.revision + 1),
            [{"b_id": i} for i in reopen["finding_id"].to_list()],
        )
        _insert_audit(conn, reopen, "status", pl.col("status"), pl.lit("reopened"), base, cause)
        counts.reopened = reopen.height
    back = again.filter(~pl.col("present") & ~pl.col("finding_id").is_in(reopen["finding_id"].implode()))
    if back.height:
        _set_present(conn, back["finding_id"].to_list(), True)

    gone = both.filter(~pl.col("produced") & pl.col("known"))
    resolve = gone.filter(pl.col("status").is_in(OPEN_STATUSES))
    if resolve.height:
        conn.execute(
            update(finding)
            .where(finding.c.finding_id == bindparam("b_id"))
            .values(status="resolved", present=False, closed_on=night_date, revision=finding.c.revision + 1),
            [{"b_id": i} for i in resolve["finding_id"].to_list()],
        )
        _insert_audit(conn, resolve, "status", pl.col("status"), pl.lit("resolved"), base, cause)
        counts.resolved = resolve.height
    vanished = gone.filter(~pl.col("status").is_in(OPEN_STATUSES) & pl.col("present"))
    if vanished.height:
        _set_present(conn, vanished["finding_id"].to_list(), False)
    return counts


def _update_copied(conn: Connection, again: pl.DataFrame, base: dict, cause: str) -> int:
    """Each COPIED field the evaluation produced differently from the worklog row takes the produced
    value, with one audit row per field (two statements per field). Returns how many rule versions
    changed. The coder's own fields (status, owner, reason, comment, deferral) are not touched here."""
    changed_versions = 0
    for column in COPIED:
        changed = again.filter(pl.col(column) != pl.col(f"old_{column}"))
        if not changed.height:
            continue
        conn.execute(
            update(finding)
            .where(finding.c.finding_id == bindparam("b_id"))
            .values({column: bindparam("b_value"), "revision": finding.c.revision + 1}),
            [{"b_id": i, "b_value": v} for i, v in changed.select("finding_id", column).iter_rows()],
        )
        _insert_audit(conn, changed, column, pl.col(f"old_{column}"), pl.col(column), base, cause)
        if column == "rule_version":
            changed_versions = changed.height
    return changed_versions


def _set_present(conn: Connection, ids: list[str], present: bool) -> None:
    """Presence is a fact of the data, not a decision: it is not audited and keeps the revision."""
    conn.execute(
        update(finding).where(finding.c.finding_id == bindparam("b_id")).values(present=present),
        [{"b_id": i} for i in ids],
    )


def _insert_audit(
    conn: Connection, rows: pl.DataFrame, field: str, before: pl.Expr, after: pl.Expr, base: dict, cause: str
) -> None:
    """One audit row per row of `rows` (by its finding_id): `field` went from `before` to `after`."""
    changes = rows.select("finding_id", before.cast(pl.String).alias("before"), after.cast(pl.String).alias("after"))
    _insert_rows(conn, audit, changes, **base, field=field, cause=cause)


def _insert_rows(conn: Connection, table: Table, frame: pl.DataFrame, **constants: Any) -> None:
    """INSERT a row per row of `frame` (its columns by name, and `constants` in every row) as one
    executemany of the driver, each value converted by its column type's own SQLAlchemy bind
    processor, as `conn.execute(insert(table), rows)` would; that builds each row's parameters in
    Python (~12 us a row, and a first night of 50k findings inserts 100k rows). The statement still
    runs through the connection (its error handling, hidden values). The worklog's columns have no
    Python-side defaults for this to skip."""
    if frame.height == 0:
        return
    keys = [*frame.columns, *constants]
    compiled = insert(table).compile(dialect=conn.dialect, column_keys=keys)
    columns: dict[str, Any] = {}
    for key in keys:
        process = table.c[key].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if key in constants:
            value = constants[key] if process is None else process(constants[key])
            columns[key] = itertools.repeat(value, frame.height)
            continue
        values = frame[key].to_list()
        if process is not None:  # once per distinct value: a night's rows share a few dates and codes
            done = {v: process(v) for v in set(values)}
            values = [done[v] for v in values]
        columns[key] = values
    params: list[Any]
    if compiled.positional:
        params = list(zip(*(columns[k] for k in compiled.positiontup or []), strict=True))
    else:
        params = [dict(zip(keys, row, strict=True)) for row in zip(*(columns[k] for k in keys), strict=True)]
    conn.exec_driver_sql(compiled.string, params)
