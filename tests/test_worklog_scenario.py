"""Coders work a queue across three nights, on SQLite and on a real PostgreSQL server:

night 1 -> every finding is new; a coder dismisses two (CLI) and fixes one (Excel import); night 2
re-runs the same extract -> the statuses hold and nothing is new; night 3 brings a corrected row for one
open finding -> it is resolved automatically; `queue history` shows every step with who and when.
Also the Excel round trip's refusals (a conflicting edit, bad sheets).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import openpyxl
import polars as pl
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.worklog import history, open_worklog, read_states
from b12pipeline.worklog.models import audit
from tests.worklog_support import NIGHT1_CSV, NightSeries, corrections_moving_admins

N1, N2, N3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)


# Each module evaluates its nights once per session (~15 s) before its first test.
pytestmark = pytest.mark.slow


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


@pytest.fixture(scope="session")
def three_nights(tmp_path_factory) -> NightSeries:
    root = tmp_path_factory.mktemp("three_nights")
    corrected = root / "emar_2024-03-03_corrected.csv"
    rows = pl.read_csv(NIGHT1_CSV, infer_schema=False).filter(pl.col("admin_id") == "MAR-1006-1")
    rows.with_columns(pl.lit("AR24117").alias("lot_number")).write_csv(corrected)  # the missing lot, documented
    return NightSeries(root, [(NIGHT1_CSV, N1), (NIGHT1_CSV, N2), (corrected, N3)])


@pytest.fixture
def night1(worklog_url, three_nights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert three_nights.replay(out, 0)["new"] == 5
    ids = dict(read_states(open_worklog(out)).select("rule_id", "finding_id").iter_rows())
    return out, ids


def statuses(out: Path) -> dict[str, str]:
    return dict(read_states(open_worklog(out)).select("rule_id", "status").iter_rows())


def export(out: Path, target: Path, *args: str) -> list[list]:
    result = invoke("queue", "export", "coding", "--out", str(out), "--to", str(target), *args)
    assert result.exit_code == 0, result.output
    return [list(r) for r in openpyxl.load_workbook(target).worksheets[0].iter_rows(values_only=True)]


def edit(target: Path, changes: dict[tuple[str, str], object]) -> None:
    """Edit cells by (finding id, heading), as a coder does in Excel."""
    wb = openpyxl.load_workbook(target)
    ws = wb.worksheets[0]
    header = [c.value for c in ws[1]]
    for row in ws.iter_rows(min_row=2):
        for (fid, heading), value in changes.items():
            if row[0].value == fid:
                row[header.index(heading)].value = value
    wb.save(target)


def audit_rows(out: Path) -> int:
    with open_worklog(out).connect() as conn:
        return conn.execute(select(func.count()).select_from(audit)).scalar()


def test_three_nights_of_coding_work(night1, three_nights, tmp_path):
    out, ids = night1
    assert set(statuses(out).values()) == {"new"}
    for rule, reason in (("UNITS-003", "false positive"), ("UNITS-002", "payer exception")):
        result = invoke(
            "queue", "set", ids[rule], "--status", "dismissed", "--reason", reason, "--out", str(out), "--as", "ana"
        )
        assert result.exit_code == 0, result.output
    sheet = tmp_path / "coding.xlsx"
    rows = export(out, sheet)
    assert rows[0][:8] == [
        "Finding ID",
        "Status",
        "Owner",
        "Reason",
        "Comment",
        "Deferred until",
        "First seen",
        "Days open",
    ]
    assert {r[0] for r in rows[1:]} == {ids["CODE-001"], ids["UNITS-001"]}  # the open work; dismissed are done
    edit(sheet, {(ids["CODE-001"], "Status"): "fixed", (ids["CODE-001"], "Comment"): "rebilled as J3490"})
    imported = invoke("queue", "import", str(sheet), "--out", str(out), "--as", "ben")
    assert imported.exit_code == 0, imported.output
    assert "changed 1, unchanged 1, refused 0" in imported.output

    night2 = three_nights.replay(out, 1)  # the same extract again
    assert night2["new"] == 0 and night2["resolved"] == 0
    assert night2["snapshot"]["closed_since_previous_night"] == {"fixed": 1, "dismissed": 2, "resolved": 0}
    assert night2["snapshot"]["backlog"]["coding"]["open"] == 1  # UNITS-001
    after2 = statuses(out)
    assert after2 == {
        "UNITS-003": "dismissed",
        "UNITS-002": "dismissed",
        "CODE-001": "fixed",
        "UNITS-001": "open",
        "DOC-001": "open",
    }
    assert "new" not in after2.values()
    assert "no findings" in invoke("queue", "show", "coding", "--out", str(out), "--new").output

    night3 = three_nights.replay(out, 2)  # MAR-1006-1 corrected: its lot number is documented now
    assert night3["resolved"] == 1
    snap = night3["snapshot"]
    assert snap["closed_since_previous_night"] == {"fixed": 0, "dismissed": 0, "resolved": 1}
    assert snap["backlog"] == {
        "coding": {
            "open": 1,
            "new": 0,
            "reopened": 0,
            "in_progress": 0,
            "age_days": {"0-7": 1, "8-30": 0, "31-90": 0, "over 90": 0},
            "oldest_days": 2,
        }
    }
    assert statuses(out) == {**after2, "DOC-001": "resolved"}

    steps = history(open_worklog(out), ids["DOC-001"])
    assert [(s["actor"], s["interface"], s["before"], s["after"]) for s in steps] == [
        ("b12pipeline", "night", None, "new"),
        ("b12pipeline", "night", "new", "open"),
        ("b12pipeline", "night", "open", "resolved"),
    ]
    assert [s["cause"].split(":")[0] for s in steps] == [three_nights.nights[k][2] for k in range(3)]
    fixed = history(open_worklog(out), ids["CODE-001"])
    assert [(s["actor"], s["interface"], s["field"], s["after"]) for s in fixed] == [
        ("b12pipeline", "night", "status", "new"),
        ("ben", "excel", "status", "fixed"),
        ("ben", "excel", "comment", "rebilled as J3490"),
    ]
    assert all(s["at"].tzinfo is not None for s in fixed)
    stats = {r["rule_id"]: r for r in snap["rules"]}
    assert (stats["CODE-001"]["fixed"], stats["CODE-001"]["precision"]) == (1, 1.0)
    assert (stats["UNITS-003"]["false_positive"], stats["UNITS-003"]["precision"]) == (1, 0.0)
    assert stats["UNITS-002"]["dismissed_by_reason"] == "payer exception 1" and stats["UNITS-002"]["precision"] is None
    assert (stats["DOC-001"]["auto_resolved"], stats["DOC-001"]["median_days_to_close"]) == (1, 2.0)
    assert (stats["UNITS-001"]["raised"], stats["UNITS-001"]["open"]) == (1, 1)
    shown = invoke("rules", "stats", "--out", str(out))
    assert shown.exit_code == 0, shown.output
    for rule in ("CODE-001", "UNITS-003", "DOC-001", "100%", "0%"):
        assert rule in shown.output
    printed = invoke("queue", "history", ids["UNITS-003"], "--out", str(out))
    assert printed.exit_code == 0
    assert "ana via cli" in printed.output and "new -> dismissed" in printed.output


@pytest.fixture(scope="session")
def moved_nights(tmp_path_factory) -> NightSeries:
    """Night 1, then a corrections extract moving two administrations to the next date (one to another
    patient) run for night 2, and the same extract run again for night 2."""
    root = tmp_path_factory.mktemp("moved_nights")
    moved = corrections_moving_admins(root / "emar_2024-03-02_corrections.csv")
    return NightSeries(root, [(NIGHT1_CSV, N1), (moved, N2), (moved, N2)])


def worklog_dates_match_queues(out: Path) -> bool:
    from b12pipeline.queues import read_queue

    queued = read_queue(out / "queues").select("finding_id", "service_date")
    held = read_states(open_worklog(out)).select("finding_id", pl.col("service_date").alias("held"))
    joined = queued.join(held, on="finding_id", how="full")
    return joined.height == held.height and (joined["service_date"] == joined["held"]).all()


def test_a_night_that_moves_findings_to_another_date_can_be_re_run(worklog_url, moved_nights, tmp_path):
    """A moved administration keeps its finding (same id, status and history) on its new date; running
    the same corrections again for the same night changes nothing (it was a unique violation, exit 1)."""
    out = tmp_path / "out"
    out.mkdir()
    assert moved_nights.replay(out, 0)["new"] == 5
    ids = dict(read_states(open_worklog(out)).select("rule_id", "finding_id").iter_rows())
    dismissed = invoke(
        "queue", "set", ids["UNITS-002"], "--status", "dismissed", "--reason", "payer exception", "--out", str(out)
    )
    assert dismissed.exit_code == 0, dismissed.output

    first = moved_nights.replay(out, 1)
    assert (first["new"], first["resolved"], first["reopened"]) == (0, 0, 0)
    assert worklog_dates_match_queues(out)
    states = read_states(open_worklog(out))
    assert dict(states.select("rule_id", "status").iter_rows()) == {
        "UNITS-001": "open",
        "UNITS-003": "open",
        "CODE-001": "open",
        "UNITS-002": "dismissed",  # the coder's decision moves with the administration
        "DOC-001": "open",
    }
    assert dict(states.select("rule_id", "service_date").iter_rows())["DOC-001"] == N2
    trail = [(s["field"], s["before"], s["after"]) for s in history(open_worklog(out), ids["DOC-001"])]
    assert trail == [("status", None, "new"), ("status", "new", "open"), ("service_date", "2024-03-01", "2024-03-02")]
    audited = audit_rows(out)

    again = moved_nights.replay(out, 2)  # the same extract, the same night: it re-evaluates fewer dates
    assert moved_nights.nights[2][3] != moved_nights.nights[1][3]
    assert {k: v for k, v in again.items() if k != "snapshot"} == {k: 0 for k in again if k != "snapshot"}
    assert again["snapshot"] == first["snapshot"]
    assert read_states(open_worklog(out)).equals(states)
    assert audit_rows(out) == audited
    assert worklog_dates_match_queues(out)


def test_excel_conflicting_edit_is_refused_by_row_and_nothing_else_is_lost(night1, tmp_path):
    out, ids = night1
    sheet = tmp_path / "coding.xlsx"
    rows = export(out, sheet)
    row_of = {r[0]: n for n, r in enumerate(rows[1:], start=2)}
    # after the export, someone else takes CODE-001
    assert invoke("queue", "set", ids["CODE-001"], "--owner", "carl", "--out", str(out), "--as", "carl").exit_code == 0
    edit(
        sheet,
        {
            (ids["CODE-001"], "Status"): "fixed",
            (ids["UNITS-001"], "Status"): "in progress",
            (ids["UNITS-001"], "Owner"): "ana",
            (ids["UNITS-002"], "Status"): "closed",
        },
    )
    result = invoke("queue", "import", str(sheet), "--out", str(out), "--as", "ana")
    assert result.exit_code == 1
    assert "changed 1, unchanged 1, refused 2" in result.output
    assert f"refused row {row_of[ids['CODE-001']]}: changed since the export by carl via cli" in result.output
    assert f"refused row {row_of[ids['UNITS-002']]}: unknown status" in result.output
    states = read_states(open_worklog(out)).select("rule_id", "status", "owner").rows()
    assert sorted(states) == sorted(
        [
            ("CODE-001", "new", "carl"),
            ("UNITS-001", "in_progress", "ana"),
            ("UNITS-002", "new", None),
            ("UNITS-003", "new", None),
            ("DOC-001", "new", None),
        ]
    )


def _reorder(ws):
    a, b = ws.cell(1, 2).value, ws.cell(1, 3).value
    ws.cell(1, 2).value, ws.cell(1, 3).value = b, a


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_reorder, "columns were reordered (column 2 is 'Owner', expected 'Status')"),
        (lambda ws: ws.delete_cols(4), "column 'Reason' is missing"),
        (lambda ws: ws.cell(2, 5, dt.datetime(2024, 3, 9)), "row 2, column Comment: a date where text is expected"),
        (lambda ws: ws.cell(2, 6, "next week"), "row 2, column Deferred until: not a date"),
    ],
)
def test_bad_sheets_are_one_line_and_change_nothing(night1, tmp_path, spoil, message):
    out, ids = night1
    sheet = tmp_path / "coding.xlsx"
    export(out, sheet)
    edit(sheet, {(ids["UNITS-001"], "Status"): "fixed"})  # a good edit that must not land either
    wb = openpyxl.load_workbook(sheet)
    spoil(wb.worksheets[0])
    wb.save(sheet)
    before = audit_rows(out)
    result = invoke("queue", "import", str(sheet), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert audit_rows(out) == before and set(statuses(out).values()) == {"new"}


def test_a_file_that_is_not_xlsx_is_refused(night1, tmp_path):
    out, _ = night1
    fake = tmp_path / "coding.xlsx"
    fake.write_text("Finding ID,Status\n")
    result = invoke("queue", "import", str(fake), "--out", str(out))
    assert result.exit_code == 1 and "not an Excel workbook" in result.output


def test_csv_export_carries_the_same_columns_and_every_status(night1, tmp_path):
    import csv

    out, ids = night1
    invoke("queue", "set", ids["UNITS-003"], "--status", "dismissed", "--reason", "false positive", "--out", str(out))
    target = tmp_path / "all.csv"
    assert invoke("queue", "export", "coding", "--out", str(out), "--to", str(target), "--status", "all").exit_code == 0
    with open(target, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    xlsx_header = export(out, tmp_path / "c.xlsx")[0]
    assert list(rows[0].keys()) == xlsx_header
    assert sorted(r["Status"] for r in rows) == ["dismissed", "new", "new", "new"]
    assert {r["Payer"] for r in rows} == {"medicare"} and all(r["Rule title"] and r["Citation"] for r in rows)


def test_a_re_evaluation_after_a_rules_change_resolves_with_its_cause(night1):
    """What `backfill` (and a rule deployment) calls: the re-evaluated dates' queues as written, with a cause."""
    from b12pipeline.queues import read_queue, write_queue_partitions
    from b12pipeline.worklog import apply_evaluation_from_queues

    out, ids = night1
    found = read_queue(out / "queues")
    kept = found.filter(pl.col("rule_id") != "DOC-001")  # the new rules no longer raise DOC-001
    write_queue_partitions(kept, out / "queues", [N1])
    counts = apply_evaluation_from_queues(out, [N1], night=N2, cause="backfill b-1")
    assert (counts["resolved"], counts["new"]) == (1, 0)
    assert statuses(out)["DOC-001"] == "resolved" and statuses(out)["UNITS-001"] == "new"
    last = history(open_worklog(out), ids["DOC-001"])[-1]
    assert (last["interface"], last["cause"], last["after"]) == ("deploy", "backfill b-1", "resolved")


def _fail_audit_inserts(engine, actor: str) -> None:
    """A database-side fault: the audit insert of `actor`'s changes fails, after the findings were
    updated in the same transaction (a crash between the two writes, as the database sees it)."""
    from sqlalchemy import text as sql

    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                sql(
                    "CREATE TRIGGER fail_audit BEFORE INSERT ON worklog_audit "
                    f"WHEN NEW.actor = '{actor}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
            )
        else:
            conn.execute(
                sql(
                    "CREATE FUNCTION fail_audit() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.actor = '{actor}' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            conn.execute(
                sql(
                    "CREATE TRIGGER fail_audit BEFORE INSERT ON worklog_audit "
                    "FOR EACH ROW EXECUTE FUNCTION fail_audit()"
                )
            )


def test_an_import_that_fails_midway_leaves_the_worklog_as_before(night1, tmp_path):
    from sqlalchemy.exc import DBAPIError

    from b12pipeline.worklog import dismiss_reasons
    from b12pipeline.worklog.excel import import_workbook

    out, ids = night1
    sheet = tmp_path / "coding.xlsx"
    export(out, sheet)
    edit(sheet, {(ids["CODE-001"], "Status"): "fixed", (ids["UNITS-001"], "Owner"): "dana"})
    engine = open_worklog(out)
    before = (read_states(engine).sort("finding_id"), audit_rows(out))
    _fail_audit_inserts(engine, "dana")
    with pytest.raises(DBAPIError):
        import_workbook(engine, sheet, actor="dana", reasons=dismiss_reasons())
    assert read_states(engine).sort("finding_id").equals(before[0]) and audit_rows(out) == before[1]
    failed = invoke("queue", "import", str(sheet), "--out", str(out), "--as", "dana")
    assert failed.exit_code == 4 and "nothing changed" in failed.output and "Traceback" not in failed.output
    assert read_states(engine).sort("finding_id").equals(before[0]) and audit_rows(out) == before[1]
    result = import_workbook(engine, sheet, actor="erin", reasons=dismiss_reasons())  # the same file, later
    assert result.changed == 2 and statuses(out)["CODE-001"] == "fixed"
