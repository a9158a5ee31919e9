"""Coders' queue commands on a real two-night run: list, show, and exports Excel and CSV open correctly."""

from __future__ import annotations

import csv
import datetime as dt

import openpyxl
import polars as pl
import pytest
from typer.testing import CliRunner

from b12pipeline.cli import app
from b12pipeline.export import CODER_COLUMNS, select_findings
from b12pipeline.queues import read_queue


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_xlsx_export_opens_with_readable_headers_and_every_finding(two_nights, tmp_path):
    out, _ = two_nights
    expected = read_queue(out / "queues", "coding")
    assert expected.height > 0, "the fixture nights must leave findings in the coding queue"
    target = tmp_path / "coding.xlsx"
    result = invoke("queue", "export", "coding", "--out", str(out), "--format", "xlsx", "--to", str(target))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(target).active
    rows = list(ws.iter_rows(values_only=True))
    header = rows[0]
    assert header == tuple(CODER_COLUMNS.values())
    assert {"Date of service", "Patient ID", "Encounter ID", "Problem", "Expected", "Actual", "Rule"} <= set(header)
    assert len(rows) - 1 == expected.height
    body = [dict(zip(header, r, strict=True)) for r in rows[1:]]
    assert sorted(r["Administration ID"] for r in body) == sorted(expected["admin_id"].to_list())
    assert {r["Rule"] for r in body} == set(expected["rule_id"].to_list())
    assert all(isinstance(r["Date of service"], dt.datetime) for r in body)  # a real date, sortable in Excel
    assert ws.freeze_panes == "A2" and ws.auto_filter.ref.startswith("A1:")
    for idx, name in enumerate(header, start=1):
        width = ws.column_dimensions[openpyxl.utils.get_column_letter(idx)].width
        assert width >= len(name), f"column {name!r} narrower than its heading"
    assert ws["A1"].font.bold


def test_csv_export_filters_by_rule_and_keeps_readable_headers(two_nights, tmp_path):
    out, _ = two_nights
    rule = read_queue(out / "queues", "coding")["rule_id"][0]
    target = tmp_path / "units.csv"
    result = invoke("queue", "export", "coding", "--out", str(out), "--to", str(target), "--rule", rule.lower())
    assert result.exit_code == 0, result.output
    with open(target, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = read_queue(out / "queues", "coding").filter(pl.col("rule_id") == rule)
    assert len(rows) == expected.height
    assert {r["Rule"] for r in rows} == {rule}
    assert list(rows[0].keys()) == list(CODER_COLUMNS.values())


def test_queue_list_counts_per_night_severity_and_rule(two_nights):
    out, _ = two_nights
    result = invoke("queue", "list", "--out", str(out))
    assert result.exit_code == 0, result.output
    found = read_queue(out / "queues")
    for rule in found["rule_id"].unique().to_list():
        assert rule in result.output
    for day in found["service_date"].unique().to_list():
        assert day.isoformat() in result.output


def test_queue_show_filters_by_date_and_rule(two_nights):
    out, _ = two_nights
    found = read_queue(out / "queues", "coding")
    first = found.row(0, named=True)
    result = invoke(
        "queue",
        "show",
        "coding",
        "--out",
        str(out),
        "--rule",
        first["rule_id"],
        "--date",
        first["service_date"].isoformat(),
    )
    assert result.exit_code == 0, result.output
    picked = select_findings(out / "queues", "coding", first["service_date"], first["rule_id"])
    assert f"{picked.height} finding(s)" in result.output
    assert first["admin_id"] in result.output
    others = found.filter(pl.col("rule_id") != first["rule_id"])
    for admin_id in others["admin_id"].to_list():
        assert admin_id not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("queue", "show", "billing"),
        ("queue", "export", "coding", "--to", "x.pdf"),
        ("queue", "show", "coding", "--date", "2024-02-30"),
    ],
)
def test_queue_usage_errors_exit_2(two_nights, args):
    out, _ = two_nights
    result = invoke(*args, "--out", str(out))
    assert result.exit_code == 2, result.output


HOSTILE_CELLS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_exports_never_carry_a_live_formula_and_are_owner_only(two_nights, tmp_path):
    """Identifiers and messages come from extracts: a cell a spreadsheet would run is stored as text."""
    import stat

    from b12pipeline.export import export_csv, export_xlsx
    from b12pipeline.worklog import open_worklog
    from b12pipeline.worklog.view import work_view

    out, _ = two_nights
    view = work_view(out, open_worklog(out), "coding", as_of=dt.date(2024, 3, 2))
    found = view.head(len(HOSTILE_CELLS))
    assert found.height == len(HOSTILE_CELLS)
    text_columns = [c for c in CODER_COLUMNS if found.schema[c] == pl.String]
    hostile = found.with_columns(pl.Series(c, HOSTILE_CELLS) for c in text_columns)
    csv_path, xlsx_path = tmp_path / "q.csv", tmp_path / "q.xlsx"
    export_csv(hostile, csv_path)
    export_xlsx(hostile, xlsx_path)
    for path in (csv_path, xlsx_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        cells = [cell for row in list(csv.reader(fh))[1:] for cell in row]
    assert cells and not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert '\'=HYPERLINK("http://x","y")' in cells
    ws = openpyxl.load_workbook(xlsx_path).active
    body = [cell for row in ws.iter_rows(min_row=2) for cell in row]
    assert not [c.coordinate for c in body if c.data_type == "f"]
    assert HOSTILE_CELLS[0] in [c.value for c in body]  # shown as the text it is


def test_queue_show_quarantine_lists_held_rows_with_their_reasons(two_nights):
    import polars as pl

    out, manifests = two_nights
    held = pl.concat([pl.read_parquet(p) for p in sorted((out / "quarantine").rglob("*.parquet"))])
    assert held.height == sum(m["totals"]["quarantined"] for m in manifests) > 0
    result = invoke("queue", "show", "quarantine", "--out", str(out))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{held.height:,} row(s)" in text
    for r in held.iter_rows(named=True):
        assert f"{r['source_file']} row {r['source_row']}" in text
        assert r["admin_id"] in text and " ".join(r["failure_reasons"].split()) in text


def test_reading_chosen_dates_gives_those_dates_rows_of_the_whole_queue(two_nights):
    """read_queue(dates=...) lists only those dates' folders; the rows and their order are the
    whole queue's rows on those dates (a date with no partition gives none)."""
    out, _ = two_nights
    every = read_queue(out / "queues")
    days = sorted(set(every["service_date"]))
    assert len(days) > 1
    for chosen in ([days[0]], [days[-1], days[0], dt.date(1999, 1, 1)], []):
        for queue in (None, "coding", "medical_necessity"):
            expected = every.filter(pl.col("service_date").is_in(chosen))
            if queue:
                expected = expected.filter(pl.col("queue") == queue)
            assert read_queue(out / "queues", queue, dates=chosen).equals(expected)
    assert read_queue(out / "queues", dates=days).height == every.height > 0


def test_an_export_that_fails_leaves_the_folder_as_it_was(tmp_path):
    """A failed write removes its temporary file (an export folder is the user's: no later run
    cleans it) and leaves an earlier export in place."""
    import stat

    from b12pipeline.files import owner_only_written_into_place

    target = tmp_path / "coding.xlsx"
    target.write_bytes(b"yesterday's export")
    with pytest.raises(RuntimeError), owner_only_written_into_place(target) as fh:
        fh.write(b"half a workbook")
        raise RuntimeError("the disk filled up")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coding.xlsx"]
    assert target.read_bytes() == b"yesterday's export"
    with owner_only_written_into_place(target) as fh:
        fh.write(b"today's export")
    assert target.read_bytes() == b"today's export" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coding.xlsx"]
