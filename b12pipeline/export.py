"""Work queues for people: per-night summaries, a coder's view, CSV and Excel exports.

Coders work a queue by patient and encounter, so their exports carry the identifiers (that is their
job); this module never logs a row, and the run reports (report.py, report_html.py) never call it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from b12pipeline.engine.rulefile import SEVERITIES
from b12pipeline.files import owner_only_written_into_place
from b12pipeline.queues import read_queue

# The worklog's columns come first with fixed headings: a coder edits Status, Owner, Reason, Comment
# and Deferred until, and `queue import` reads them back by these names (b12pipeline/worklog/excel.py).
WORKLOG_HEADINGS: dict[str, str] = {
    "finding_id": "Finding ID",
    "status": "Status",
    "owner": "Owner",
    "reason": "Reason",
    "comment": "Comment",
    "deferred_until": "Deferred until",
    "first_seen_night": "First seen",
    "days_open": "Days open",
}
# Then what to fix first, what the claim says, who, and lineage.
# The hidden sheet `queue import` reads back (b12pipeline/worklog/excel.py): finding id, revision and
# the editable values as exported, so an edit can be told from a change made in the worklog since.
REVISION_SHEET = "worklog"
EDITABLE = {
    "status": "Status",
    "owner": "Owner",
    "reason": "Reason",
    "comment": "Comment",
    "deferred_until": "Deferred until",
}
REVISION_HEADINGS = ["Finding ID", "Revision", *EDITABLE.values()]
CODER_COLUMNS: dict[str, str] = {
    **WORKLOG_HEADINGS,
    "service_date": "Date of service",
    "severity": "Severity",
    "rule_id": "Rule",
    "rule_title": "Rule title",
    "message": "Problem",
    "expected": "Expected",
    "actual": "Actual",
    "payer_type": "Payer",
    "charge_hcpcs": "Billed HCPCS",
    "charge_units": "Billed units",
    "charge_modifiers": "Modifiers",
    "diagnosis_codes": "Diagnoses",
    "patient_id": "Patient ID",
    "encounter_id": "Encounter ID",
    "admin_id": "Administration ID",
    "admin_time": "Administered at",
    "medication_name": "Medication",
    "ndc11": "NDC (11-digit)",
    "dose_mcg": "Dose (mcg)",
    "route": "Route",
    "payer_id": "Payer id",
    "payer_override": "Payer rules file",
    "queue": "Queue",
    "rule_citation": "Citation",
    "source_file": "Source file",
    "source_row": "Source row",
    "rule_version": "Rule version",
    "reference_versions": "Reference tables",
    "ruleset_version": "Ruleset version",
    "run_id": "Run ID",
}
MAX_WIDTH = 60  # characters; longer cells wrap in Excel instead of pushing the sheet sideways


def select_findings(
    queues_root: Path, queue: str | None = None, day: dt.date | None = None, rule: str | None = None
) -> pl.DataFrame:
    """Findings of one queue (or all), optionally one date of service and one rule."""
    found = read_queue(queues_root, queue)
    if day is not None:
        found = found.filter(pl.col("service_date") == day)
    if rule is not None:
        found = found.filter(pl.col("rule_id") == rule.upper())
    severity_rank = pl.col("severity").replace_strict(
        {s: i for i, s in enumerate(SEVERITIES)}, default=len(SEVERITIES), return_dtype=pl.Int32
    )
    return found.sort(pl.col("service_date"), severity_rank, "rule_id", "patient_id", "admin_id")


def night_summary(queues_root: Path, queue: str | None = None) -> pl.DataFrame:
    """One row per (service_date, queue): total, a count per severity, and the rules that fired."""
    found = read_queue(queues_root, queue)
    keys = ["service_date", "queue"]
    severity_counts = [(pl.col("severity") == s).sum().cast(pl.Int64).alias(s) for s in SEVERITIES]
    totals = found.group_by(keys).agg(pl.len().cast(pl.Int64).alias("findings"), *severity_counts)
    per_rule = (
        found.group_by([*keys, "rule_id"])
        .len()
        .sort("rule_id")
        .group_by(keys, maintain_order=True)
        .agg(pl.format("{} x{}", "rule_id", "len").str.join(", ").alias("rules"))
    )
    return totals.join(per_rule, on=keys, how="left").sort("service_date", "queue", descending=[True, False])


def coder_view(findings: pl.DataFrame) -> pl.DataFrame:
    """Findings with readable headings, in the order a coder reads them."""
    return findings.select([pl.col(c).alias(h) for c, h in CODER_COLUMNS.items()])


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...), +cmd|...).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(view: pl.DataFrame) -> pl.DataFrame:
    """Every text cell that a spreadsheet would run as a formula gets a leading apostrophe (OWASP
    CSV-injection guidance): shown as the text it is, never evaluated."""
    starts = "^[" + "".join("\\" + c if c in "-^]\\" else c for c in FORMULA_START) + "]"
    return view.with_columns(
        pl.when(pl.col(c).str.contains(starts)).then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
        for c, dtype in view.schema.items()
        if dtype == pl.String
    )


def export_csv(findings: pl.DataFrame, target: Path) -> int:
    """CSV with readable headings and a UTF-8 BOM, so Excel shows accented names correctly."""
    view = neutralise_formulas(coder_view(findings))
    target.parent.mkdir(parents=True, exist_ok=True)
    with owner_only_written_into_place(target) as fh:
        fh.write("\ufeff".encode())
        view.write_csv(fh, datetime_format="%Y-%m-%d %H:%M", date_format="%Y-%m-%d")
    return view.height


def export_xlsx(findings: pl.DataFrame, target: Path, sheet: str = "findings") -> int:
    """An Excel workbook a coder can sort and filter: bold frozen header, autofilter, sized columns.

    `findings` is a worklog view (b12pipeline/worklog/view.py); a hidden sheet keeps each finding's
    worklog revision and exported values, so `queue import` can tell an edit from a change made by
    someone else since the export."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font
    from openpyxl.utils import get_column_letter

    view = coder_view(findings)
    wb = Workbook()
    ws = wb.active
    ws.title = sheet[:31]
    ws.append(view.columns)
    for row in view.iter_rows():
        append_as_text(ws, row)
    for cell in ws[1]:
        cell.font = Font(bold=True)
        cell.alignment = Alignment(vertical="top", wrap_text=True)
    ws.freeze_panes = "A2"
    if view.columns:
        ws.auto_filter.ref = f"A1:{get_column_letter(len(view.columns))}{max(view.height + 1, 1)}"
    widths = _column_widths(view)
    formats = {pl.Date: "yyyy-mm-dd", pl.Datetime: "yyyy-mm-dd hh:mm"}
    for idx, (name, dtype) in enumerate(view.schema.items(), start=1):
        letter = get_column_letter(idx)
        ws.column_dimensions[letter].width = widths[name]
        fmt = formats.get(dtype.base_type())
        wrap = widths[name] >= MAX_WIDTH
        if fmt or wrap:
            for (cell,) in ws.iter_rows(min_row=2, min_col=idx, max_col=idx):
                if fmt:
                    cell.number_format = fmt
                if wrap:
                    cell.alignment = Alignment(wrap_text=True, vertical="top")
    add_revision_sheet(wb, findings)
    target.parent.mkdir(parents=True, exist_ok=True)
    with owner_only_written_into_place(target) as fh:
        wb.save(fh)
    return view.height


def add_revision_sheet(workbook, view: pl.DataFrame) -> None:
    """The hidden sheet `queue import` checks edits against (finding id, revision, exported values)."""
    ws = workbook.create_sheet(REVISION_SHEET)
    ws.append(REVISION_HEADINGS)
    cols = ["finding_id", "revision", *EDITABLE]
    for row in view.select(cols).iter_rows():
        append_as_text(ws, row)
    ws.sheet_state = "hidden"


def append_as_text(ws, row) -> None:
    """Append a row of values; text is stored as text, never as a formula (openpyxl makes any text
    starting with "=" a formula; values come from extracts and coders)."""
    ws.append(list(row))
    for cell in ws[ws.max_row]:
        if cell.data_type == "f":
            cell.data_type = "s"


def _column_widths(view: pl.DataFrame) -> dict[str, float]:
    """Width per column from its heading and longest value (dates are 10/16 characters wide)."""
    longest: tuple | list = [0] * len(view.columns)
    if view.height:
        longest = view.select([pl.col(c).cast(pl.String).str.len_chars().max().alias(c) for c in view.columns]).row(0)
    fixed = {pl.Date: 10, pl.Datetime: 16}
    return {
        name: float(min(MAX_WIDTH, max(len(name), fixed.get(dtype.base_type(), n or 0)) + 2))
        for (name, dtype), n in zip(view.schema.items(), longest, strict=True)
    }
