"""What people do to findings (status, owner, reason, comment, deferred-until), and the audit trail.

Every interface (CLI, Excel import, the review web app) goes through `apply_edits`: one transaction,
each change checked against the finding as it is now, one audit row per field changed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from b12pipeline.worklog.lifecycle import utc_now
from b12pipeline.worklog.models import CLOSED_STATUSES, EDITABLE_FIELDS, INTERFACES, PERSON_STATUSES, audit, finding
from b12pipeline.worklog.store import read_connection, write_transaction


@dataclass
class Edit:
    """A person's change to one finding. Fields not in `changes` are left as they are; a value of
    None clears the field. `expected_revision` (an export's) refuses the edit if the finding changed
    since; `label` names the edit in a refusal (e.g. "row 7")."""

    finding_id: str
    changes: dict
    expected_revision: int | None = None
    label: str = ""


@dataclass
class EditOutcome:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (label or finding id, why)


def apply_edits(
    engine: Engine,
    edits: list[Edit],
    *,
    actor: str,
    interface: str,
    reasons: tuple[str, ...],
    at: dt.datetime | None = None,
    all_or_nothing: bool = False,
) -> EditOutcome:
    """Apply `edits` in one transaction. Refused edits are reported and skipped (or, with
    `all_or_nothing`, nothing is written when any is refused)."""
    if interface not in INTERFACES:
        raise ValueError(f"unknown interface {interface!r}")
    at = at or utc_now()
    outcome = EditOutcome()
    try:
        _apply_edits(engine, edits, actor, interface, reasons, at, all_or_nothing, outcome)
    except _RolledBack:
        outcome.changed = []
    return outcome


class _RolledBack(Exception):
    """Raised inside the transaction to undo it (all-or-nothing with a refusal)."""


def _apply_edits(engine, edits, actor, interface, reasons, at, all_or_nothing, outcome: EditOutcome) -> None:
    with write_transaction(engine) as conn:
        current = _current(conn, [e.finding_id for e in edits])
        updates: list[dict] = []
        audits: list[dict] = []
        for edit in edits:
            name = edit.label or edit.finding_id
            row = current.get(edit.finding_id)
            if row is None:
                outcome.refused.append((name, "unknown finding id"))
                continue
            if edit.expected_revision is not None and edit.expected_revision != row["revision"]:
                outcome.refused.append((name, _changed_since(conn, edit.finding_id, row)))
                continue
            after, why = _checked(row, edit.changes, reasons)
            if why:
                outcome.refused.append((name, why))
                continue
            diff = [f for f in EDITABLE_FIELDS if after[f] != row[f]]
            if not diff:
                outcome.unchanged.append(edit.finding_id)
                continue
            closed_on = row["closed_on"]
            if "status" in diff:
                closed_on = at.date() if after["status"] in CLOSED_STATUSES else None
            updates.append(
                {
                    "b_id": edit.finding_id,
                    **{f"b_{f}": after[f] for f in EDITABLE_FIELDS},
                    "b_closed_on": closed_on,
                    "b_revision": row["revision"] + 1,
                }
            )
            audits.extend(
                {
                    "finding_id": edit.finding_id,
                    "at": at,
                    "actor": actor,
                    "interface": interface,
                    "field": f,
                    "before": _text(row[f]),
                    "after": _text(after[f]),
                    "cause": None,
                }
                for f in diff
            )
            row.update(after, revision=row["revision"] + 1, closed_on=closed_on)  # a later edit of the same id
            outcome.changed.append(edit.finding_id)
        if all_or_nothing and outcome.refused:
            raise _RolledBack
        if updates:
            conn.execute(
                update(finding)
                .where(finding.c.finding_id == bindparam("b_id"))
                .values(
                    **{f: bindparam(f"b_{f}") for f in EDITABLE_FIELDS},
                    closed_on=bindparam("b_closed_on"),
                    revision=bindparam("b_revision"),
                ),
                updates,
            )
            conn.execute(insert(audit), audits)


def set_findings(
    engine: Engine,
    finding_ids: list[str],
    *,
    actor: str,
    interface: str,
    reasons: tuple[str, ...],
    at: dt.datetime | None = None,
    **changes,
) -> EditOutcome:
    """The same change (status=, owner=, reason=, comment=, deferred_until=) to every id."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    edits = [Edit(i, dict(changes)) for i in dict.fromkeys(finding_ids)]
    return apply_edits(engine, edits, actor=actor, interface=interface, reasons=reasons, at=at)


def check_changes(changes: dict, reasons: tuple[str, ...]) -> str:
    """Why `changes` can never apply, whatever the finding ("" when they may): for the CLI's usage check."""
    probe = {f: None for f in EDITABLE_FIELDS} | {"status": "open", "revision": 0, "closed_on": None}
    return _checked(probe, changes, reasons)[1]


def _checked(row: dict, changes: dict, reasons: tuple[str, ...]) -> tuple[dict, str]:
    """The finding's editable fields after `changes`, or why they cannot apply."""
    after = {f: row[f] for f in EDITABLE_FIELDS}
    after.update(changes)
    status = after["status"]
    if "status" in changes:
        if status not in PERSON_STATUSES:
            return after, f"unknown status (a person sets one of: {', '.join(PERSON_STATUSES)})"
        if status != "deferred" and "deferred_until" not in changes:
            after["deferred_until"] = None
        if status != "dismissed" and "reason" not in changes:
            after["reason"] = None
    if after["deferred_until"] is not None and not isinstance(after["deferred_until"], dt.date):
        return after, "deferred until is not a date (YYYY-MM-DD)"
    if status == "deferred" and after["deferred_until"] is None:
        return after, "status deferred needs a deferred-until date"
    if after["deferred_until"] is not None and status != "deferred":
        return after, "a deferred-until date needs status deferred"
    if status == "dismissed" and not after["reason"]:
        return after, f"status dismissed needs a reason ({', '.join(reasons)})"
    if after["reason"] and after["reason"] not in reasons:
        return after, f"unknown reason (the site's reasons: {', '.join(reasons)})"
    for f in ("owner", "comment", "reason"):
        if after[f] == "":
            after[f] = None
    return after, ""


def _current(conn: Connection, ids: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    unique = list(dict.fromkeys(ids))
    cols = [finding.c.finding_id, *[finding.c[f] for f in EDITABLE_FIELDS], finding.c.revision, finding.c.closed_on]
    for start in range(0, len(unique), 5000):  # bounded IN lists
        for r in conn.execute(select(*cols).where(finding.c.finding_id.in_(unique[start : start + 5000]))).mappings():
            out[r["finding_id"]] = dict(r)
    return out


def _changed_since(conn: Connection, finding_id: str, row: dict) -> str:
    last = conn.execute(
        select(audit.c.actor, audit.c.interface, audit.c.at)
        .where(audit.c.finding_id == finding_id)
        .order_by(audit.c.id.desc())
        .limit(1)
    ).first()
    who = f" by {last.actor} via {last.interface}" if last else ""
    return f"changed since the export{who} (now {row['status']})"


def _text(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def history(engine: Engine, finding_id: str) -> list[dict]:
    """The finding's audit trail, oldest first: at, actor, interface, field, before, after, cause."""
    cols = [audit.c.at, audit.c.actor, audit.c.interface, audit.c.field, audit.c.before, audit.c.after, audit.c.cause]
    with read_connection(engine) as conn:
        rows = conn.execute(select(*cols).where(audit.c.finding_id == finding_id).order_by(audit.c.id)).mappings()
        return [{**r, "at": as_utc(r["at"])} for r in rows]


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
