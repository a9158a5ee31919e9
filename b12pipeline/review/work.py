"""People's decisions on findings, as the review app needs them: the only module that talks to the worklog.

Everything goes through the worklog's public API (b12pipeline.worklog), so the web app, the CLI and
the Excel import share one store and one audit log; every change made here is recorded with the
signed-in person as the actor and `web` as the interface.

The states of every finding (100k rows at scale) are read once and kept until the worklog changes:
`worklog_stamp` is one cheap query, so a page pays the full read only after someone changed something.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from b12pipeline import worklog
from b12pipeline.worklog.queries import worklog_stamp
from b12pipeline.worklog.view import UNTRACKED

STATUSES = (*worklog.STATUSES, UNTRACKED)
# What each action sets; `assign` and `comment` change only their own field.
ACTION_STATUS = {"start": "in_progress", "fix": "fixed", "dismiss": "dismissed", "defer": "deferred", "reopen": "open"}
ACTIONS = ("assign", "start", "fix", "dismiss", "defer", "comment", "reopen")
MAX_TEXT = 2000


class ChangeError(ValueError):
    """A change that cannot apply; `field` names the form field, `conflict` marks a stale edit."""

    def __init__(self, field_name: str, message: str, conflict: bool = False):
        super().__init__(message)
        self.field = field_name
        self.message = message
        self.conflict = conflict


@dataclass
class WorkView:
    out: Path
    rules_dir: Path | None = None
    statuses: tuple[str, ...] = STATUSES
    _stamp: tuple | None = None
    _states: pl.DataFrame | None = None
    _raw: pl.DataFrame | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def engine(self):
        return worklog.open_worklog(self.out)

    def states(self) -> pl.DataFrame:
        """One row per finding the worklog knows: status, owner, reason, comment, until, first seen, revision."""
        return self._read()[1]

    def rows(self) -> pl.DataFrame:
        """The worklog's rows as stored (closed and resolved findings included): for the dashboard."""
        return self._read()[0]

    def _read(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        stamp = worklog_stamp(self.engine)
        with self._lock:
            if self._raw is None or self._states is None or stamp != self._stamp:
                self._raw = worklog.read_states(self.engine)
                self._states, self._stamp = _decisions(self._raw), stamp
            return self._raw, self._states

    def history(self, finding_id: str) -> list[dict]:
        return worklog.history(self.engine, finding_id)

    def reasons(self) -> tuple[str, ...]:
        return worklog.dismiss_reasons(self.rules_dir)

    def change(
        self, finding_ids: list[str], changes: dict, actor: str, expected_revision: int | None = None
    ) -> worklog.EditOutcome:
        """Apply one person's `changes` to `finding_ids` (a stale `expected_revision` refuses it)."""
        edits = [worklog.Edit(i, dict(changes), expected_revision) for i in dict.fromkeys(finding_ids)]
        return worklog.apply_edits(self.engine, edits, actor=actor, interface="web", reasons=self.reasons())


def _decisions(states: pl.DataFrame) -> pl.DataFrame:
    """The worklog rows the pages join to the queues; `is_new` is the status `new` (new tonight)."""
    return states.select(
        "finding_id",
        "status",
        "owner",
        "reason",
        "comment",
        "deferred_until",
        "closed_on",
        pl.col("first_seen_night").alias("first_seen"),
        pl.col("revision").cast(pl.Int64).alias("version"),
        (pl.col("status") == "new").alias("is_new"),
    )


def with_work(findings: pl.DataFrame, states: pl.DataFrame) -> pl.DataFrame:
    """Findings joined with their decisions; one the worklog does not track (written before it existed,
    or by a backfill) is `untracked`, as in `queue show`."""
    joined = findings.join(states, on="finding_id", how="left", maintain_order="left")
    return joined.with_columns(pl.col("status").fill_null(UNTRACKED), pl.col("is_new").fill_null(False))


def parse_change(body: dict, reasons: tuple[str, ...]) -> dict:
    """The worklog change a JSON body or form asks for (status, owner, reason, comment, until).

    ChangeError names the first field that cannot be used, so the form can point at it.
    """
    allowed = {"status", "owner", "reason", "comment", "until"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ChangeError(unknown[0], f"unknown field; fields are {', '.join(sorted(allowed))}")
    changes: dict = {}
    for key in ("owner", "comment", "reason"):
        if key in body:
            value = body[key]
            if value is not None and not isinstance(value, str):
                raise ChangeError(key, "must be text")
            value = (value or "").strip()
            if len(value) > MAX_TEXT:
                raise ChangeError(key, f"at most {MAX_TEXT} characters")
            changes[key] = value or None
    if "status" in body:
        status = body["status"]
        if status not in worklog.PERSON_STATUSES:
            raise ChangeError("status", f"unknown status; a person sets one of {', '.join(worklog.PERSON_STATUSES)}")
        changes["status"] = status
    if "until" in body:
        value = body["until"]
        if value in (None, ""):
            changes["deferred_until"] = None
        else:
            try:
                changes["deferred_until"] = dt.date.fromisoformat(str(value))
            except ValueError:
                raise ChangeError("until", "not a date (YYYY-MM-DD)") from None
    if changes.get("status") == "deferred" and not changes.get("deferred_until"):
        raise ChangeError("until", "deferring needs a date")
    if changes.get("status") == "dismissed" and not changes.get("reason"):
        raise ChangeError("reason", f"dismissing needs a reason ({', '.join(reasons)})")
    if changes.get("reason") and changes["reason"] not in reasons:
        raise ChangeError("reason", f"unknown reason; the site's reasons are {', '.join(reasons)}")
    if not changes:
        raise ChangeError("status", "nothing to change")
    return changes


def action_body(form: dict) -> dict:
    """A form's action (assign, start, fix, dismiss, defer, comment, reopen) as a change body."""
    action = form.get("action", "")
    if action not in ACTIONS:
        raise ChangeError("action", f"unknown action; actions are {', '.join(ACTIONS)}")
    body: dict = {}
    if action in ACTION_STATUS:
        body["status"] = ACTION_STATUS[action]
    if action == "assign":
        if not form.get("owner", "").strip():
            raise ChangeError("owner", "assigning needs an owner")
        body["owner"] = form["owner"]
    if action == "dismiss":
        body["reason"] = form.get("reason", "")
    if action == "defer":
        body["until"] = form.get("until", "")
    if form.get("comment", "").strip():
        body["comment"] = form["comment"]
    elif action == "comment":
        raise ChangeError("comment", "write a comment")
    return body
