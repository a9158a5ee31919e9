"""The Excel round trip: a coder edits Status, Owner, Reason, Comment and Deferred until in an export,
and `queue import` applies the edits to the worklog in one transaction.

The export carries a hidden sheet (`worklog`) with each finding's revision and the values exported.
A row whose editable cells equal the exported ones is unchanged. An edited row is refused, naming the
row, when the finding changed since the export (someone else, or the night), when its status is not
one a person sets, or when its finding id is not in the export; the other rows still apply. A sheet
whose columns were changed, reordered or removed, a date typed into a text column, or a file that is
not an xlsx export is refused whole (`ImportRefused`, one line) and nothing changes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from b12pipeline import progress
from b12pipeline.export import CODER_COLUMNS, EDITABLE, REVISION_HEADINGS, REVISION_SHEET
from b12pipeline.worklog.actions import Edit, EditOutcome, apply_edits

TEXT_FIELDS = ("status", "owner", "reason", "comment")


class ImportRefused(ValueError):
    """The whole file is refused; str() is one line naming the file, and the row and column when
    there is one (never a cell's value)."""


@dataclass
class ImportSummary:
    rows: int
    outcome: EditOutcome
    unchanged_rows: int

    @property
    def changed(self) -> int:
        return len(self.outcome.changed)

    @property
    def unchanged(self) -> int:
        return self.unchanged_rows + len(self.outcome.unchanged)

    @property
    def refused(self) -> list[tuple[str, str]]:
        return self.outcome.refused


def _headings() -> list[str]:
    return list(CODER_COLUMNS.values())


def read_edits(path: Path) -> tuple[list[Edit], int, int]:
    """The edits in an export: (edits, data rows, rows left unchanged). Raises ImportRefused."""
    from zipfile import BadZipFile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    name = path.name
    try:
        wb = load_workbook(path, data_only=True)
    except (BadZipFile, InvalidFileException, KeyError, OSError, ValueError):
        raise ImportRefused(f"{name}: not an Excel workbook (.xlsx) written by `queue export`") from None
    if REVISION_SHEET not in wb.sheetnames:
        raise ImportRefused(f"{name}: no hidden '{REVISION_SHEET}' sheet: not a `queue export` file; export again")
    sheet = next((ws for ws in wb.worksheets if ws.title != REVISION_SHEET), None)
    if sheet is None:
        raise ImportRefused(f"{name}: no findings sheet")
    rows = sheet.iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
    while header and header[-1] == "":
        header.pop()
    expected = _headings()
    if header != expected:
        raise ImportRefused(
            f"{name}: {_column_problem(header, expected)}; nothing changed "
            "(edit only Status, Owner, Reason, Comment and Deferred until; keep every column where it is)"
        )
    exported = _exported(wb[REVISION_SHEET], name)
    col = {h: i for i, h in enumerate(header)}
    edits: list[Edit] = []
    total = unchanged = 0
    for number, row in enumerate(rows, start=2):
        if row is None or all(v in (None, "") for v in row):
            continue
        total += 1
        finding_id = _cell_text(row, col["Finding ID"], name, number, "Finding ID")
        values = {f: _cell(row, col[h], f, name, number) for f, h in EDITABLE.items()}
        label = f"row {number}"
        before = exported.get(finding_id or "")
        if before is None:
            edits.append(Edit(finding_id or "", {}, -1, label))  # refused: not in this export
            continue
        changes = {f: v for f, v in values.items() if v != before["values"][f]}
        if not changes:
            unchanged += 1
            continue
        edits.append(Edit(finding_id, changes, before["revision"], label))
    return edits, total, unchanged


def import_workbook(
    engine, path: Path, *, actor: str, reasons: tuple[str, ...], at: dt.datetime | None = None
) -> ImportSummary:
    """Apply an edited export (one transaction). Raises ImportRefused for a file refused whole."""
    edits, total, unchanged = read_edits(path)
    progress.step(f"read {path.name}: {total:,} row(s), {len(edits):,} edited")
    outside = [e for e in edits if e.expected_revision == -1]
    outcome = apply_edits(
        engine, [e for e in edits if e.expected_revision != -1], actor=actor, interface="excel", reasons=reasons, at=at
    )
    outcome.refused = [(e.label, "unknown finding id (not in this export)") for e in outside] + outcome.refused
    outcome.refused.sort(key=lambda r: int(r[0].split()[-1]) if r[0].split()[-1].isdigit() else 0)
    progress.step(f"applied in one transaction: {len(outcome.changed):,} changed")
    return ImportSummary(rows=total, outcome=outcome, unchanged_rows=unchanged)


def _column_problem(header: list[str], expected: list[str]) -> str:
    missing = [h for h in expected if h not in header]
    if missing:
        return f"column '{missing[0]}' is missing"
    extra = [h for h in header if h not in expected]
    if extra:
        return f"column '{extra[0]}' is not one `queue export` writes"
    for i, (got, want) in enumerate(zip(header, expected, strict=False)):
        if got != want:
            return f"columns were reordered (column {i + 1} is '{got}', expected '{want}')"
    return "the columns changed"


def _exported(ws, name: str) -> dict[str, dict]:
    rows = ws.iter_rows(values_only=True)
    if [str(h) if h is not None else "" for h in next(rows, ())][: len(REVISION_HEADINGS)] != REVISION_HEADINGS:
        raise ImportRefused(f"{name}: the hidden '{REVISION_SHEET}' sheet was changed; export again")
    out = {}
    for row in rows:
        if not row or row[0] is None:
            continue
        values = {f: _normal(row[2 + i], f) for i, f in enumerate(EDITABLE)}
        out[str(row[0])] = {"revision": int(row[1]), "values": values}
    return out


def _normal(value, field: str):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if field == "deferred_until":
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        return dt.date.fromisoformat(str(value).strip()[:10])
    text = str(value).strip()
    return text.lower().replace(" ", "_") if field == "status" else text


def _cell_text(row, index: int, name: str, number: int, heading: str):
    value = row[index] if index < len(row) else None
    if isinstance(value, (dt.date, dt.datetime)):
        raise ImportRefused(f"{name} row {number}, column {heading}: a date where text is expected; nothing changed")
    return None if value is None else str(value).strip()


def _cell(row, index: int, field: str, name: str, number: int):
    heading = EDITABLE[field]
    value = row[index] if index < len(row) else None
    if field in TEXT_FIELDS:
        _cell_text(row, index, name, number, heading)
    try:
        return _normal(value, field)
    except ValueError:
        raise ImportRefused(
            f"{name} row {number}, column {heading}: not a date (YYYY-MM-DD); nothing changed"
        ) from None
