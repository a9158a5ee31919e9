"""CMS quarterly tables: read the files a site downloads each quarter into versioned reference tables.

    b12pipeline reference import KIND FILE --rules DIR [--quarter 2026Q1]

KIND            CMS file                                  table written under rules/reference/cms/
hcpcs           HCPCS quarterly (annual) record file      hcpcs.csv
asp-crosswalk   ASP NDC-HCPCS crosswalk                   asp_crosswalk.csv
noc-crosswalk   NOC NDC-HCPCS crosswalk                   noc_crosswalk.csv
mue             MUE table, practitioner or outpatient     mue_practitioner.csv / mue_facility.csv
                hospital (facility) services

Each table has a `<table>.version.yaml` beside it: the source quarter, the file name, its SHA-256,
the row count and `version` (quarter + checksum prefix), which every finding that used the table
carries. The published CSVs carry a preamble (title, copyright lines) before the header and the ASP
files are Latin-1: the header is found by its expected columns, and a file whose header is not there
is refused naming the column that was expected. Tables are CSV so the ruleset_version hashes them.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from b12pipeline.files import write_text_atomic

CMS_FOLDER = "cms"
PREAMBLE_MAX_LINES = 40  # published files carry a few title/copyright lines before the header


class CmsFileError(ValueError):
    """A CMS file cannot be imported; the message names the file and what was expected."""


@dataclass(frozen=True)
class Layout:
    kind: str
    required: tuple[tuple[str, ...], ...]  # per column: accepted header spellings (first is the documented one)
    columns: tuple[str, ...]  # our column names, in the same order as `required`


LAYOUTS = {
    "hcpcs": Layout(
        "hcpcs",
        (("HCPC", "HCPCS"), ("LONG DESCRIPTION",), ("SHORT DESCRIPTION",)),
        ("hcpcs", "long_description", "short_description"),
    ),
    "asp-crosswalk": Layout(
        "asp-crosswalk",
        (
            ("HCPCS",),
            ("Short Description",),
            ("Labeler Name",),
            ("NDC2",),
            ("Drug Name",),
            ("HCPCS Dosage",),
            ("PKG SIZE",),
            ("PKG QTY",),
            ("BILLUNITS",),
            ("BILLUNITSPKG",),
        ),
        (
            "hcpcs",
            "short_description",
            "labeler",
            "ndc2",
            "drug_name",
            "hcpcs_dosage",
            "pkg_size",
            "pkg_qty",
            "bill_units",
            "bill_units_pkg",
        ),
    ),
    "noc-crosswalk": Layout(
        "noc-crosswalk",
        (("Drug Generic Name",), ("Labeler Name",), ("NDC2",)),
        ("drug_generic_name", "labeler", "ndc2"),
    ),
    "mue": Layout(
        "mue",
        (
            ("HCPCS/CPT Code",),
            (
                "Practitioner Services MUE Values",
                "Outpatient Hospital Services MUE Values",
                "Facility Services MUE Values",
            ),
            ("MUE Adjudication Indicator",),
            ("MUE Rationale",),
        ),
        ("hcpcs", "mue", "mai_text", "rationale"),
    ),
}
TABLES = ("hcpcs", "asp_crosswalk", "noc_crosswalk", "mue_practitioner", "mue_facility")


def _norm(header: str) -> str:
    return " ".join(header.replace("\ufeff", "").split()).lower()


def _decode(data: bytes, path: Path) -> tuple[str, str]:
    """Text and encoding: UTF-8 when it decodes, else Latin-1 (CMS's ASP files); never fails."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _header_row(rows: list[list[str]], layout: Layout, path: Path) -> int:
    """Index of the header row: the first row (within the preamble limit) with the first expected
    column; then every expected column must be there, else the file is refused naming the first missing."""
    first = {_norm(s) for s in layout.required[0]}
    for i, row in enumerate(rows[:PREAMBLE_MAX_LINES]):
        if first & {_norm(c) for c in row}:
            return i
    raise CmsFileError(
        f"{path.name}: not a {layout.kind} file: no header with column {layout.required[0][0]!r} "
        f"in the first {PREAMBLE_MAX_LINES} lines"
    )


def read_cms_file(kind: str, path: Path) -> tuple[pl.DataFrame, dict]:
    """The file's rows in our column names (all text) and facts about the file (encoding, preamble)."""
    if kind not in LAYOUTS:
        raise CmsFileError(f"unknown kind {kind!r}; one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[kind]
    data = path.read_bytes()
    text, encoding = _decode(data, path)
    rows = list(csv.reader(io.StringIO(text)))
    at = _header_row(rows, layout, path)
    header = [_norm(c) for c in rows[at]]
    picks, found_names = [], []
    for spellings, _ in zip(layout.required, layout.columns, strict=True):
        match = next((header.index(_norm(s)) for s in spellings if _norm(s) in header), None)
        if match is None:
            raise CmsFileError(
                f"{path.name}: header on line {at + 1} has no column {spellings[0]!r}"
                + (f" (or {', '.join(repr(s) for s in spellings[1:])})" if len(spellings) > 1 else "")
                + f": not the documented {layout.kind} layout"
            )
        picks.append(match)
        found_names.append(rows[at][match].strip())
    body = [r for r in rows[at + 1 :] if any(c.strip() for c in r)]
    short = [i for i, r in enumerate(body, start=at + 2) if len(r) <= max(picks)]
    if short:
        raise CmsFileError(f"{path.name}: line {short[0]}: fewer columns than the header")
    frame = pl.DataFrame(
        {col: [r[i].strip() for r in body] for col, i in zip(layout.columns, picks, strict=True)},
        schema={c: pl.String for c in layout.columns},
    )
    if frame.height == 0:
        raise CmsFileError(f"{path.name}: no rows after the header")
    info = {
        "encoding": encoding,
        "preamble_lines": at,
        "columns": found_names,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return frame, info


def _ndc11(col: str) -> pl.Expr:
    """NDC2 is the 11-digit NDC written 5-4-2 with hyphens."""
    return pl.col(col).str.replace_all(r"[^0-9]", "")


def shape_table(kind: str, frame: pl.DataFrame, info: dict, path: Path) -> dict[str, pl.DataFrame]:
    """Our table(s) from the file's rows, checked: {table name: frame}."""
    if kind == "hcpcs":
        # A long description continues over rows with the same code (SEQNUM order): join them.
        table = (
            frame.with_columns(pl.col("hcpcs").str.to_uppercase())
            .group_by("hcpcs", maintain_order=True)
            .agg(
                pl.col("long_description").str.join(" ").alias("long_description"),
                pl.col("short_description").first(),
            )
        )
        # The record file lists modifiers too (2 characters, RECID 7).
        _check(table, path, "hcpcs", r"^(?:[A-Z0-9]{5}|[A-Z0-9]{2})$", "a 5-character HCPCS code or a modifier")
        return {"hcpcs": table.sort("hcpcs")}
    if kind in ("asp-crosswalk", "noc-crosswalk"):
        table = frame.with_columns(_ndc11("ndc2").alias("ndc11"))
        _check(table, path, "ndc11", r"^\d{11}$", "an 11-digit NDC (NDC2)")
        if kind == "asp-crosswalk":
            table = table.with_columns(pl.col("hcpcs").str.to_uppercase())
            _check(table, path, "hcpcs", r"^[A-Z0-9]{5}$", "a 5-character HCPCS code")
            for col in ("pkg_size", "pkg_qty", "bill_units", "bill_units_pkg"):
                _check(table, path, col, r"^\d*\.?\d+$", "a number")
            return {
                "asp_crosswalk": table.select("ndc11", *[c for c in table.columns if c != "ndc11"]).sort(
                    "ndc11", "hcpcs"
                )
            }
        return {"noc_crosswalk": table.select("ndc11", *[c for c in table.columns if c != "ndc11"]).sort("ndc11")}
    # mue: the value column says which table it is
    facility = "outpatient" in _norm(info["columns"][1]) or "facility" in _norm(info["columns"][1])
    table = frame.with_columns(
        pl.col("hcpcs").str.to_uppercase(), pl.col("mai_text").str.extract(r"^\s*([123])\b").alias("mai")
    )
    _check(table, path, "hcpcs", r"^[A-Z0-9]{5}$", "a 5-character HCPCS/CPT code")
    _check(table, path, "mue", r"^\d+$", "a whole number of units")
    _check(table, path, "mai", r"^[123]$", "an MUE Adjudication Indicator 1, 2 or 3", source="mai_text")
    table = table.select("hcpcs", "mue", "mai", "rationale").sort("hcpcs")
    return {"mue_facility" if facility else "mue_practitioner": table}


def _check(table: pl.DataFrame, path: Path, col: str, pattern: str, what: str, source: str | None = None) -> None:
    bad = table.with_row_index("_row").filter(~pl.col(col).fill_null("").str.contains(pattern))
    if bad.height:
        raise CmsFileError(
            f"{path.name}: {bad.height} row(s) where {source or col} is not {what} "
            f"(first: data row {bad['_row'][0] + 1})"
        )


_QUARTER = re.compile(r"^(\d{4})Q([1-4])$")
_MONTHS = {
    m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
}


def quarter_from_name(name: str) -> str | None:
    """'2026Q1' from file names such as ASP_NDC-HCPCS_Crosswalk_2026Q1.csv, HCPC2026_JAN_ANWEB.csv."""
    low = name.lower()
    m = re.search(r"(20\d\d)[ _-]?q([1-4])", low) or re.search(r"q([1-4])[ _-]?(20\d\d)", low)
    if m:
        year, q = (m.group(1), m.group(2)) if len(m.group(1)) == 4 else (m.group(2), m.group(1))
        return f"{year}Q{q}"
    m = re.search(r"(20\d\d)[ _-]?(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)", low) or re.search(
        r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*[ _-]?(20\d\d)", low
    )
    if m:
        year, month = (m.group(1), m.group(2)) if m.group(1).isdigit() else (m.group(2), m.group(1))
        return f"{year}Q{(_MONTHS[month[:3]] - 1) // 3 + 1}"
    return None


def quarter_start(quarter: str) -> dt.date:
    m = _QUARTER.match(quarter)
    if not m:
        raise CmsFileError(f"quarter {quarter!r} is not YYYYQn (e.g. 2026Q1)")
    return dt.date(int(m.group(1)), 3 * int(m.group(2)) - 2, 1)


def import_cms_file(kind: str, path: Path, rules_directory: Path, quarter: str | None = None) -> list[dict]:
    """Validate FILE as KIND and write its table(s) and version files under rules/reference/cms/."""
    path = Path(path)
    quarter = quarter or quarter_from_name(path.name)
    if quarter is None:
        raise CmsFileError(f"{path.name}: the source quarter is not in the file name: give --quarter YYYYQn")
    quarter_start(quarter)  # refuse a malformed quarter before writing anything
    frame, info = read_cms_file(kind, path)
    folder = Path(rules_directory) / "reference" / CMS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for table, rows in shape_table(kind, frame, info, path).items():
        meta = {
            "table": table,
            "kind": kind,
            "quarter": quarter,
            "version": f"{quarter}-{info['sha256'][:8]}",
            "source_file": path.name,
            "sha256": info["sha256"],
            "encoding": info["encoding"],
            "preamble_lines": info["preamble_lines"],
            "source_columns": info["columns"],
            "rows": rows.height,
        }
        write_text_atomic(folder / f"{table}.csv", rows.write_csv())
        (folder / f"{table}.version.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        written.append(meta)
    return written


@dataclass(frozen=True)
class CmsTable:
    name: str
    frame: pl.DataFrame
    version: str
    quarter: str


def load_cms_tables(reference_directory: Path) -> dict[str, CmsTable]:
    """The imported CMS tables (absent ones are simply not there: the rules that need them do not fire)."""
    folder = Path(reference_directory) / CMS_FOLDER
    tables = {}
    for name in TABLES:
        csv_path, meta_path = folder / f"{name}.csv", folder / f"{name}.version.yaml"
        if not csv_path.is_file() or not meta_path.is_file():
            continue
        meta = yaml.safe_load(meta_path.read_text()) or {}
        frame = pl.read_csv(csv_path, infer_schema=False)
        tables[name] = CmsTable(name, frame, str(meta.get("version", "")), str(meta.get("quarter", "")))
    return tables


def stale_tables(tables: dict[str, CmsTable], night: dt.date, max_age_quarters: int) -> list[str]:
    """One line per table whose source quarter began more than `max_age_quarters` quarters before the night."""
    out = []
    for t in tables.values():
        start = quarter_start(t.quarter)
        age = (night.year - start.year) * 4 + ((night.month - 1) // 3) - ((start.month - 1) // 3)
        if age > max_age_quarters:
            out.append(
                f"reference table {t.name} is from {t.quarter}, {age} quarters before {night} "
                f"(reference_max_age_quarters {max_age_quarters}): import the current CMS file"
            )
    return out


def reference_warnings(rules_directory: Path | str | None, night: dt.date) -> list[str]:
    """The night's warnings about stale CMS tables (site setting reference_max_age_quarters), logged
    too. Counts and quarters only: nothing from a patient row."""
    import logging

    from b12pipeline.config import load_site_config
    from b12pipeline.paths import rules_dir

    folder = Path(rules_directory) if rules_directory else rules_dir()
    cfg = load_site_config(folder / "site.yaml")
    lines = stale_tables(load_cms_tables(folder / "reference"), night, cfg.reference_max_age_quarters)
    for line in lines:
        logging.getLogger("b12pipeline.reference").warning(line)
    return lines
