"""The coders' worklog: what people decide about findings, and the lifecycle each night computes.

The Parquet queues stay what a night computes (reproducible facts); this database, keyed by
`finding_id`, holds status, owner, reason, comment and deferred-until, with an append-only audit log
(who, when, what, before -> after, through which interface: cli / excel / web / night / deploy).

Public API (every interface uses these; nothing else touches the tables):

    open_worklog(out=None, url=None) -> Engine   the store of an output root (or B12_WORKLOG_URL), migrated
    worklog_url(out) -> str                      which database that is
    update_night(engine, findings, dates, night=, run_id=)   a night's lifecycle update (one transaction)
    update_night_from_queues(out, night, run_id, dates)      the same, reading the queues the night wrote
    apply_evaluation(engine, findings, dates, night=, cause=, interface="deploy", rule_ids=None)
                                                 a re-evaluation (e.g. a rule deployment) with its cause
    apply_evaluation_from_queues(out, dates, night=, cause=, interface="deploy", rule_ids=None)
                                                 the same, reading the queues the re-evaluation wrote
                                                 (`backfill` calls it with cause "backfill <run id>")
    set_findings(engine, ids, actor=, interface=, reasons=, status=, owner=, reason=, comment=, deferred_until=)
    apply_edits(engine, [Edit(...)], actor=, interface=, reasons=)   per-finding edits, conflict-checked
    history(engine, finding_id) -> list[dict]    the audit trail, oldest first
    read_states(engine, ids=None) -> polars frame   the worklog rows (for views and exports)
    dismiss_reasons(rules_dir=None) -> tuple     the site's dismissal reasons (rules/site.yaml)

Statuses, interfaces and the tables are in `models`. Comments may hold PHI: never log or report them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from b12pipeline.worklog.actions import Edit, EditOutcome, apply_edits, history, set_findings
from b12pipeline.worklog.lifecycle import KEY_COLUMNS, LifecycleCounts, apply_evaluation, update_night
from b12pipeline.worklog.models import (
    CLOSED_STATUSES,
    INTERFACES,
    OPEN_STATUSES,
    PERSON_STATUSES,
    STATUSES,
)
from b12pipeline.worklog.queries import read_states
from b12pipeline.worklog.store import WorklogError, open_worklog, worklog_url

__all__ = [
    "CLOSED_STATUSES",
    "INTERFACES",
    "OPEN_STATUSES",
    "PERSON_STATUSES",
    "STATUSES",
    "Edit",
    "EditOutcome",
    "LifecycleCounts",
    "WorklogError",
    "apply_edits",
    "apply_evaluation",
    "apply_evaluation_from_queues",
    "dismiss_reasons",
    "history",
    "open_worklog",
    "read_states",
    "set_findings",
    "update_night",
    "update_night_from_queues",
    "worklog_url",
]


def update_night_from_queues(out: Path | str, night: dt.date, run_id: str, dates: Sequence[str | dt.date]) -> dict:
    """The nightly flow's one call: the findings of the re-evaluated dates, as written to the queues."""
    from b12pipeline.paths import OutputLayout
    from b12pipeline.queues import read_queue

    days = sorted({d if isinstance(d, dt.date) else dt.date.fromisoformat(d) for d in dates})
    findings = read_queue(OutputLayout(Path(out)).queues, dates=days, columns=KEY_COLUMNS)
    return update_night(open_worklog(out), findings, days, night=night, run_id=run_id).to_dict()


def apply_evaluation_from_queues(
    out: Path | str,
    dates: Sequence[str | dt.date],
    *,
    night: dt.date,
    cause: str,
    interface: str = "deploy",
    rule_ids: list[str] | None = None,
    actor: str | None = None,
) -> dict:
    """A re-evaluation of `dates` (already written to the queues) applied to the worklog with `cause`
    (`actor`: who caused it, e.g. the user deploying a ruleset; default the night's actor)."""
    from b12pipeline.paths import OutputLayout
    from b12pipeline.queues import read_queue

    days = sorted({d if isinstance(d, dt.date) else dt.date.fromisoformat(d) for d in dates})
    findings = read_queue(OutputLayout(Path(out)).queues, dates=days, columns=KEY_COLUMNS)
    from b12pipeline.worklog.lifecycle import NIGHT_ACTOR

    counts = apply_evaluation(
        open_worklog(out),
        findings,
        days,
        night=night,
        cause=cause,
        interface=interface,
        rule_ids=rule_ids,
        actor=actor or NIGHT_ACTOR,
    )
    return counts.to_dict()


def dismiss_reasons(rules_dir: Path | str | None = None) -> tuple[str, ...]:
    from b12pipeline.config import load_site_config
    from b12pipeline.paths import rules_dir as default_rules

    return load_site_config(Path(rules_dir or default_rules()) / "site.yaml").dismiss_reasons
