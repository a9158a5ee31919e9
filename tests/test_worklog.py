"""The worklog store: lifecycle across nights, person actions, the audit trail, the schema.

Run on the embedded SQLite and on a real PostgreSQL server the tests start (see conftest.py).
"""

from __future__ import annotations

import datetime as dt
import stat

import polars as pl
import pytest
from sqlalchemy import inspect, text

from b12pipeline.worklog import Edit, apply_edits, apply_evaluation, history, read_states, set_findings, update_night

REASONS = ("false positive", "payer exception", "documented elsewhere")
N1, N2, N3, N4 = (dt.date(2024, 3, d) for d in (1, 2, 3, 4))
DOS = dt.date(2024, 2, 28)


def findings(*ids: str, version: str = "1", day: dt.date = DOS, rule: str = "UNITS-001") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "finding_id": list(ids),
            "queue": ["coding"] * len(ids),
            "rule_id": [rule] * len(ids),
            "rule_version": [version] * len(ids),
            "severity": ["error"] * len(ids),
            "service_date": [day] * len(ids),
        },
        schema={
            "finding_id": pl.String,
            "queue": pl.String,
            "rule_id": pl.String,
            "rule_version": pl.String,
            "severity": pl.String,
            "service_date": pl.Date,
        },
    )


def statuses(engine) -> dict[str, str]:
    return dict(read_states(engine).select("finding_id", "status").iter_rows())


def night(engine, frame: pl.DataFrame, day: dt.date, run: str | None = None, dates=(DOS,)):
    return update_night(engine, frame, list(dates), night=day, run_id=run or f"night-{day}")


def dismiss(engine, finding_id: str):
    """Ana dismisses one finding from the CLI as a false positive."""
    return set_findings(
        engine, [finding_id], actor="ana", interface="cli", reasons=REASONS, status="dismissed", reason="false positive"
    )


def test_lifecycle_new_open_resolved_reopened(worklog_engine):
    counts = night(worklog_engine, findings("a", "b", "c"), N1)
    assert (counts.new, counts.resolved) == (3, 0)
    assert statuses(worklog_engine) == {"a": "new", "b": "new", "c": "new"}
    counts = night(worklog_engine, findings("a", "b", "c"), N2)
    assert (counts.new, counts.aged) == (0, 3)
    assert statuses(worklog_engine) == {"a": "open", "b": "open", "c": "open"}
    again = night(worklog_engine, findings("a", "b", "c"), N2)  # the same night re-run: nothing moves
    moved = {k: v for k, v in again.to_dict().items() if k != "snapshot"}
    assert moved == {k: 0 for k in moved}
    counts = night(worklog_engine, findings("a", "b"), N3)
    assert counts.resolved == 1 and statuses(worklog_engine)["c"] == "resolved"
    counts = night(worklog_engine, findings("a", "b", "c"), N4)
    assert counts.reopened == 1 and statuses(worklog_engine)["c"] == "reopened"
    state = read_states(worklog_engine, ["c"]).row(0, named=True)
    assert state["first_seen_night"] == N1 and state["first_seen_run"] == f"night-{N1}"
    assert [(h["field"], h["before"], h["after"], h["interface"]) for h in history(worklog_engine, "c")] == [
        ("status", None, "new", "night"),
        ("status", "new", "open", "night"),
        ("status", "open", "resolved", "night"),
        ("status", "resolved", "reopened", "night"),
    ]


def test_dates_not_evaluated_are_left_alone(worklog_engine):
    night(worklog_engine, findings("a"), N1)
    night(worklog_engine, findings("z", day=DOS + dt.timedelta(days=1)), N2, dates=[DOS + dt.timedelta(days=1)])
    assert statuses(worklog_engine) == {"a": "open", "z": "new"}


def test_a_finding_moved_to_another_date_is_the_same_finding(worklog_engine):
    """A correction moves an administration to another date: its findings (same ids) move with it,
    whether or not their old date is evaluated again, and a re-run of that night changes nothing."""
    later = DOS + dt.timedelta(days=1)
    night(worklog_engine, findings("a", "b", "c"), N1)
    night(worklog_engine, findings("a", "b"), N2)  # c resolved
    counts = night(worklog_engine, findings("b", "c", day=later), N3, dates=[later])  # b and c moved
    assert (counts.new, counts.reopened, counts.resolved) == (0, 1, 0)
    states = read_states(worklog_engine).sort("finding_id")
    assert dict(states.select("finding_id", "service_date").iter_rows()) == {"a": DOS, "b": later, "c": later}
    assert statuses(worklog_engine) == {"a": "open", "b": "open", "c": "reopened"}
    assert [(h["field"], h["before"], h["after"]) for h in history(worklog_engine, "c")][-2:] == [
        ("service_date", DOS.isoformat(), later.isoformat()),
        ("status", "resolved", "reopened"),
    ]
    again = night(worklog_engine, findings("b", "c", day=later), N3, dates=[later])
    assert (again.new, again.reopened, again.resolved) == (0, 0, 0)
    assert read_states(worklog_engine).sort("finding_id").equals(states)
    # Their old date evaluated again: they are not there any more, and not resolved for it.
    night(worklog_engine, findings("a"), N4, dates=[DOS])
    assert statuses(worklog_engine) == {"a": "open", "b": "open", "c": "reopened"}


def test_person_decisions_hold_and_rule_version_reopens_a_dismissal(worklog_engine):
    night(worklog_engine, findings("a", "b", "c"), N1)
    assert dismiss(worklog_engine, "a").changed == ["a"]
    set_findings(worklog_engine, ["b"], actor="ben", interface="excel", reasons=REASONS, status="fixed")
    night(worklog_engine, findings("a", "b", "c"), N2)
    assert statuses(worklog_engine) == {"a": "dismissed", "b": "fixed", "c": "open"}
    # a fix the data confirms (gone), then undone in the data (back): reopened
    night(worklog_engine, findings("a", "c"), N3)
    assert statuses(worklog_engine)["b"] == "fixed"
    night(worklog_engine, findings("a", "b", "c", version="2"), N4)
    assert statuses(worklog_engine) == {"a": "reopened", "b": "reopened", "c": "open"}
    assert read_states(worklog_engine, ["c"])["rule_version"].to_list() == ["2"]


def test_deferred_returns_to_open_when_due_by_the_night_date(worklog_engine):
    night(worklog_engine, findings("a"), N1)
    set_findings(
        worklog_engine, ["a"], actor="ana", interface="cli", reasons=REASONS, status="deferred", deferred_until=N3
    )
    night(worklog_engine, findings("a"), N2)
    assert statuses(worklog_engine)["a"] == "deferred"
    counts = night(worklog_engine, findings("a"), N3)
    assert counts.returned == 1 and statuses(worklog_engine)["a"] == "open"


def test_refusals_name_why_and_change_nothing(worklog_engine):
    night(worklog_engine, findings("a", "b"), N1)
    cases = {
        "status": {"status": "done"},
        "reason": {"status": "dismissed"},
        "until": {"status": "deferred"},
        "bad reason": {"status": "dismissed", "reason": "bored"},
        "until without deferred": {"deferred_until": N3},
    }
    for label, changes in cases.items():
        out = apply_edits(
            worklog_engine, [Edit("a", changes, label=label)], actor="x", interface="cli", reasons=REASONS
        )
        assert [name for name, _ in out.refused] == [label] and not out.changed
    out = set_findings(worklog_engine, ["nope"], actor="x", interface="cli", reasons=REASONS, status="fixed")
    assert out.refused == [("nope", "unknown finding id")]
    assert statuses(worklog_engine) == {"a": "new", "b": "new"}
    assert len(history(worklog_engine, "a")) == 1


def test_expected_revision_refuses_a_stale_edit_and_names_who_changed_it(worklog_engine):
    night(worklog_engine, findings("a", "b"), N1)
    revs = dict(read_states(worklog_engine).select("finding_id", "revision").iter_rows())
    set_findings(worklog_engine, ["a"], actor="ana", interface="web", reasons=REASONS, owner="ana")
    out = apply_edits(
        worklog_engine,
        [Edit("a", {"status": "fixed"}, revs["a"], "row 2"), Edit("b", {"status": "fixed"}, revs["b"], "row 3")],
        actor="ben",
        interface="excel",
        reasons=REASONS,
    )
    assert out.changed == ["b"]
    assert out.refused[0][0] == "row 2" and "ana via web" in out.refused[0][1]
    assert statuses(worklog_engine) == {"a": "new", "b": "fixed"}


def test_history_records_who_when_and_every_field(worklog_engine):
    night(worklog_engine, findings("a"), N1)
    at = dt.datetime(2024, 3, 1, 15, 30, tzinfo=dt.timezone.utc)
    set_findings(
        worklog_engine,
        ["a"],
        actor="ana",
        interface="cli",
        reasons=REASONS,
        at=at,
        status="in_progress",
        owner="ana",
        comment="called the unit",
    )
    steps = history(worklog_engine, "a")
    assert [(s["field"], s["after"]) for s in steps[1:]] == [
        ("status", "in_progress"),
        ("owner", "ana"),
        ("comment", "called the unit"),
    ]
    assert {(s["actor"], s["interface"], s["at"]) for s in steps[1:]} == {("ana", "cli", at)}


def test_apply_evaluation_records_its_cause_and_keeps_other_rules(worklog_engine):
    night(worklog_engine, pl.concat([findings("a", "b"), findings("r", rule="DX-003")]), N1)
    counts = apply_evaluation(
        worklog_engine, findings("a"), [DOS], night=N2, cause="deployment UNITS-001 v2", rule_ids=["UNITS-001"]
    )
    assert counts.resolved == 1
    assert statuses(worklog_engine) == {"a": "new", "b": "resolved", "r": "new"}
    last = history(worklog_engine, "b")[-1]
    assert (last["interface"], last["cause"], last["after"]) == ("deploy", "deployment UNITS-001 v2", "resolved")


def test_schema_is_the_migrations_head_and_matches_the_models(worklog_engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from b12pipeline.worklog.models import metadata

    with worklog_engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert {"worklog_finding", "worklog_audit", "worklog_night"} <= set(inspect(worklog_engine).get_table_names())


def test_embedded_worklog_is_owner_only_and_in_wal_mode(tmp_path, monkeypatch):
    from b12pipeline.worklog import open_worklog

    monkeypatch.delenv("B12_WORKLOG_URL", raising=False)
    engine = open_worklog(tmp_path)
    night(engine, findings("a"), N1)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    files = list(tmp_path.glob("worklog.sqlite*"))
    assert len(files) >= 2  # the database and its -wal
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    engine.dispose()


@pytest.mark.parametrize("interface", ["email"])
def test_unknown_interface_is_a_programming_error(worklog_engine, interface):
    with pytest.raises(ValueError):
        apply_edits(worklog_engine, [], actor="x", interface=interface, reasons=REASONS)


def test_a_worklog_at_the_first_migration_upgrades_and_keeps_its_rows(worklog_url):
    """A site's database from an earlier version: opened by a newer one, it is migrated in place."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from b12pipeline.worklog.store import MIGRATIONS, dispose_all, open_worklog

    old = create_engine(worklog_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            text(
                "INSERT INTO worklog_finding (finding_id, queue, rule_id, rule_version, severity, service_date, "
                "status, first_seen_night, first_seen_run, present, revision) VALUES "
                "('a', 'coding', 'UNITS-001', '1', 'error', :d, 'open', :d, 'r', :t, 1)"
            ),
            {"d": DOS, "t": True},
        )
    old.dispose()
    dispose_all()
    engine = open_worklog(url=worklog_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    assert statuses(engine) == {"a": "open"}
    night(engine, findings("a"), N2)
    assert statuses(engine) == {"a": "open"}


def test_an_edit_during_a_night_waits_for_it_and_both_land_in_the_audit_log(worklog_engine):
    """The night holds the write lock for its whole update; a coder's edit meanwhile waits (no
    'database is locked' error, no lost update) and applies on top of what the night decided."""
    import threading

    from b12pipeline.worklog.lifecycle import _apply
    from b12pipeline.worklog.store import write_transaction

    night(worklog_engine, findings("a", "b"), N1)
    done: list = []
    with write_transaction(worklog_engine) as conn:
        _apply(conn, findings("a"), [DOS], N2, "night-2", "night", "b12pipeline", "night-2", None, utc())
        coder = threading.Thread(
            target=lambda: done.append(
                set_findings(worklog_engine, ["b"], actor="ana", interface="excel", reasons=REASONS, owner="ana")
            )
        )
        coder.start()
        coder.join(1.0)
        assert coder.is_alive() and not done  # waiting for the night's transaction
    coder.join(60)
    assert done and done[0].changed == ["b"]
    state = read_states(worklog_engine, ["b"]).row(0, named=True)
    assert (state["status"], state["owner"]) == ("resolved", "ana")
    assert [(h["interface"], h["field"], h["after"]) for h in history(worklog_engine, "b")] == [
        ("night", "status", "new"),
        ("night", "status", "resolved"),
        ("excel", "owner", "ana"),
    ]


def utc() -> dt.datetime:
    return dt.datetime(2024, 3, 2, 3, 0, tzinfo=dt.timezone.utc)


def test_a_new_rule_version_updates_what_the_worklog_copies_from_the_finding(worklog_engine):
    """A rule's new version that changes a finding's severity (or moves the rule to another queue):
    the worklog row takes the new values, one audit row per field changed, the coder's decisions
    stay, and a re-run of that night changes nothing more."""
    night(worklog_engine, findings("a", "b", "c"), N1)
    set_findings(
        worklog_engine, ["a"], actor="ana", interface="cli", reasons=REASONS, status="in_progress", owner="ana"
    )
    dismiss(worklog_engine, "c")
    tonight = findings("a", "b", "c", version="2").with_columns(
        pl.when(pl.col("finding_id") == "b").then(pl.lit("documentation")).otherwise("queue").alias("queue"),
        pl.lit("warning").alias("severity"),
    )
    counts = night(worklog_engine, tonight, N2)
    states = read_states(worklog_engine).sort("finding_id")
    assert states.select("finding_id", "queue", "rule_version", "severity", "status", "owner").rows() == [
        ("a", "coding", "2", "warning", "in_progress", "ana"),
        ("b", "documentation", "2", "warning", "open", None),
        ("c", "coding", "2", "warning", "reopened", None),
    ]
    assert counts.rule_version_changed == 3 and counts.reopened == 1
    changes = [(h["field"], h["before"], h["after"], h["interface"]) for h in history(worklog_engine, "a")][-2:]
    assert changes == [("rule_version", "1", "2", "night"), ("severity", "error", "warning", "night")]
    assert [(h["field"], h["before"], h["after"]) for h in history(worklog_engine, "b")][-3:] == [
        ("rule_version", "1", "2"),
        ("severity", "error", "warning"),
        ("queue", "coding", "documentation"),
    ]
    assert [(h["field"], h["after"]) for h in history(worklog_engine, "c")][-3:] == [
        ("rule_version", "2"),
        ("severity", "warning"),
        ("status", "reopened"),
    ]
    audited = {i: len(history(worklog_engine, i)) for i in "abc"}
    again = night(worklog_engine, tonight, N2)
    assert (again.new, again.reopened, again.resolved, again.rule_version_changed) == (0, 0, 0, 0)
    assert read_states(worklog_engine).sort("finding_id").equals(states)
    assert {i: len(history(worklog_engine, i)) for i in "abc"} == audited


def test_a_failed_statement_never_quotes_its_values(worklog_engine):
    """A database error's text (a traceback, Prefect's task log) shows the SQL, not the values: a
    comment may hold PHI. Here a row missing its required columns carries a comment."""
    from sqlalchemy.exc import IntegrityError

    canary = "CANARY-COMMENT-MRN-0042"
    with pytest.raises(IntegrityError) as failed:
        with worklog_engine.begin() as conn:
            conn.execute(
                text("INSERT INTO worklog_finding (finding_id, comment) VALUES (:id, :comment)"),
                {"id": "f-canary", "comment": canary},
            )
    assert "worklog_finding" in str(failed.value)  # the statement is named ...
    for text_of_error in (str(failed.value), str(failed.value.orig)):  # and in a traceback, the driver's error
        assert canary not in text_of_error and "f-canary" not in text_of_error  # ... its values are not


def test_a_value_the_database_cannot_take_is_not_quoted(postgres_url):
    """A value of the wrong kind is quoted by PostgreSQL on its message's first line ('invalid
    input syntax for type date: "..."'): the worklog replaces that text (SQLite takes any text as a
    date, so it has no such error; its engine has the same hook)."""
    from sqlalchemy.exc import DataError

    from b12pipeline.worklog import open_worklog
    from b12pipeline.worklog.store import REFUSED_VALUE

    canary = "CANARY-MRN-0042"
    with pytest.raises(DataError) as failed:
        with open_worklog(url=postgres_url).begin() as conn:
            conn.execute(text("SELECT CAST(:v AS date)"), {"v": canary})
    for text_of_error in (str(failed.value), str(failed.value.orig)):
        assert canary not in text_of_error
    assert REFUSED_VALUE in str(failed.value.orig)
