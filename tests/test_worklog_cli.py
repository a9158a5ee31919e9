"""`queue set / history / show / list` on a real night, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.worklog import history, open_worklog, read_states
from b12pipeline.worklog.queries import backlog_by_queue
from tests.worklog_support import NIGHT1_CSV, NightTemplate

N1 = dt.date(2024, 3, 1)


# Each module evaluates its nights once per session (~15 s) before its first test.
pytestmark = pytest.mark.slow


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


@pytest.fixture(scope="session")
def night1_template(tmp_path_factory):
    return NightTemplate(tmp_path_factory.mktemp("night1") / "out", NIGHT1_CSV, N1)


@pytest.fixture
def night1(worklog_url, night1_template, tmp_path):
    out = tmp_path / "out"
    counts = night1_template.replay(out)
    assert counts["new"] == 5
    states = read_states(open_worklog(out))
    return out, dict(states.select("rule_id", "finding_id").iter_rows())


def test_set_by_ids_records_the_person_and_history_prints_it(night1):
    out, ids = night1
    result = invoke(
        "queue",
        "set",
        ids["UNITS-003"],
        "--status",
        "dismissed",
        "--reason",
        "false positive",
        "--out",
        str(out),
        "--as",
        "ana",
        "--comment",
        "label allows it",
    )
    assert result.exit_code == 0, result.output
    assert "changed 1, unchanged 0, refused 0" in result.output
    steps = history(open_worklog(out), ids["UNITS-003"])
    assert [(s["actor"], s["interface"], s["field"], s["after"]) for s in steps] == [
        ("b12pipeline", "night", "status", "new"),
        ("ana", "cli", "status", "dismissed"),
        ("ana", "cli", "reason", "false positive"),
        ("ana", "cli", "comment", "label allows it"),
    ]
    shown = invoke("queue", "history", ids["UNITS-003"], "--out", str(out))
    assert shown.exit_code == 0 and "ana" in shown.output and "dismissed" in shown.output


def test_set_without_as_records_the_os_user(night1):
    import getpass

    out, ids = night1
    assert invoke("queue", "set", ids["CODE-001"], "--owner", "bo", "--out", str(out)).exit_code == 0
    assert history(open_worklog(out), ids["CODE-001"])[-1]["actor"] == getpass.getuser()


def test_set_where_counts_asks_and_changes_nothing_when_declined(night1):
    out, ids = night1
    declined = invoke(
        "queue",
        "set",
        "--where",
        "queue=coding,severity=error",
        "--status",
        "in_progress",
        "--out",
        str(out),
        input="n\n",
    )
    assert declined.exit_code == 0 and "3 finding(s) match" in declined.output and "nothing changed" in declined.output
    assert set(read_states(open_worklog(out))["status"]) == {"new"}
    done = invoke(
        "queue",
        "set",
        "--where",
        "severity=error",
        "--status",
        "in_progress",
        "--owner",
        "ana",
        "--out",
        str(out),
        "--yes",
    )
    assert done.exit_code == 0 and "changed 3" in done.output
    states = read_states(open_worklog(out))
    assert sorted(states.filter(states["status"] == "in_progress")["rule_id"]) == ["CODE-001", "UNITS-001", "UNITS-002"]


def test_show_filters_by_status_owner_and_new(night1):
    out, ids = night1
    invoke("queue", "set", ids["UNITS-001"], "--status", "in_progress", "--owner", "ana", "--out", str(out))
    invoke("queue", "set", ids["UNITS-002"], "--status", "fixed", "--out", str(out))
    default = invoke("queue", "show", "coding", "--out", str(out), "--limit", "0")
    assert "3 finding(s)" in default.output and "MAR-1004-1" not in default.output  # fixed is not open work
    mine = invoke("queue", "show", "coding", "--out", str(out), "--owner", "ana")
    assert "1 finding(s)" in mine.output and "MAR-1003-1" in mine.output
    new = invoke("queue", "show", "coding", "--out", str(out), "--new")
    assert "2 finding(s)" in new.output
    fixed = invoke("queue", "show", "coding", "--out", str(out), "--status", "fixed")
    assert "1 finding(s)" in fixed.output and "MAR-1004-1" in fixed.output
    assert invoke("queue", "list", "--out", str(out)).exit_code == 0
    backlog = backlog_by_queue(open_worklog(out), None, as_of=N1 + dt.timedelta(days=3))
    assert backlog.select("queue", "open", "new", "in_progress", "oldest_days").rows() == [
        ("coding", 3, 2, 1, 3),
        ("documentation", 1, 1, 0, 3),
    ]


def test_bad_requests_are_one_line_with_their_exit_codes(night1):
    out, ids = night1
    cases = [
        (("queue", "set", ids["CODE-001"], "--status", "dismissed"), 2, "needs a reason"),
        (("queue", "set", ids["CODE-001"], "--status", "done"), 2, "unknown status"),
        (("queue", "set", ids["CODE-001"], "--until", "tomorrow", "--status", "deferred"), 2, "not a date"),
        (("queue", "set", "--status", "fixed"), 2, "finding ids or --where"),
        (("queue", "set", "--where", "colour=red", "--status", "fixed"), 2, "--where"),
        (("queue", "set", "0000notanid", "--status", "fixed"), 1, "unknown finding id"),
        (("queue", "history", "0000notanid"), 2, "no finding"),
        (("queue", "show", "coding", "--status", "closed"), 2, "unknown status"),
    ]
    for args, code, text in cases:
        result = invoke(*args, "--out", str(out))
        assert result.exit_code == code, (args, result.output)
        assert text in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert set(read_states(open_worklog(out))["status"]) == {"new"}
