"""Ingest: one reader per source format, each returning the canonical frame.

The canonical frame has every contract column as text (stripped; empty -> null), plus
`source_file`, `source_row` (1-based data row, header not counted) and one `has_<column>` flag per
presence-tracked column. A file that cannot be read into it raises FileRejected, naming the file
and what is wrong; the caller moves it aside and goes on with the night.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from b12pipeline.contract import Contract, load_contract
from b12pipeline.limits import LONG_VALUE_CHECK, current_limits, file_problem, frame_problem, long_values


class FileRejected(Exception):
    """The whole file cannot be read into the contract. str() is the operator-facing message."""

    def __init__(self, path: Path | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Extract:
    """A file read into the canonical frame."""

    path: Path
    source_format: str
    frame: pl.DataFrame
    ignored_columns: list[str] = field(default_factory=list)
    # Rows the reader could not map into the contract (an unparseable FHIR line, an unknown MAR
    # action code): canonical columns (what could be read) + failed_expectations + failure_reasons.
    # They count as rows read and flow to the quarantine output beside validation's rows.
    quarantine: pl.DataFrame | None = None
    # Rows read but not materialised because the caller's `keep` filter (B12 scope) excluded them.
    rows_skipped: int = 0

    @property
    def rows(self) -> int:
        return self.frame.height + self.quarantined_rows + self.rows_skipped

    @property
    def quarantined_rows(self) -> int:
        return 0 if self.quarantine is None else self.quarantine.height

    def quarantine_in_scope(self, scope: pl.Expr) -> pl.DataFrame | None:
        """Reader-quarantined rows that are B12 rows, or whose medication could not be read at all
        (an unparseable line might be a B12 dose: it is kept rather than counted out of scope)."""
        if not self.quarantined_rows:
            return None
        unreadable = pl.all_horizontal(pl.col(c).is_null() for c in ("medication_name", "ndc", "rxnorm_code"))
        return self.quarantine.filter(scope | unreadable)


def split_quarantine(frame: pl.DataFrame, reasons: pl.Series, check: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Split a canonical frame on a reader's per-row reason (null = fine) into (rows, quarantine)."""
    bad = reasons.is_not_null()
    if not bad.any():
        return frame, None
    held = frame.filter(bad).with_columns(
        pl.lit([check], dtype=pl.List(pl.String)).alias("failed_expectations"),
        reasons.filter(bad).alias("failure_reasons"),
    )
    return frame.filter(~bad), held


def canonicalise(
    raw: pl.DataFrame | pl.LazyFrame,
    path: Path,
    contract: Contract | None = None,
) -> tuple[pl.DataFrame | pl.LazyFrame, list[str]]:
    """Shape an all-text frame (eager or lazy) into the canonical frame; reject it if a required
    column is absent. A lazy frame must already carry `source_row` (the reader's row index)."""
    contract = contract or load_contract()
    names = raw.collect_schema().names() if isinstance(raw, pl.LazyFrame) else raw.columns
    rename = {c: c.strip().lower() for c in names if c != "source_row" or isinstance(raw, pl.DataFrame)}
    if len(set(rename.values())) != len(rename):
        raise FileRejected(path, "duplicate column names (compared case-insensitively)")
    raw = raw.rename(rename)
    present = set(rename.values())
    missing = [c for c in contract.required_in_file if c not in present]
    if missing:
        hint = ""
        if len(rename) == 1:  # never quoted: in a file without a header, the "header" is patient data
            hint = " (the header was read as one column: is the delimiter ','?)"
        raise FileRejected(path, f"missing required column(s) {', '.join(missing)}{hint}")
    ignored = [c for c in rename.values() if c not in contract.columns]
    exprs = []
    for name in contract.names:
        if name in present:
            col = pl.col(name).cast(pl.String).str.strip_chars()
            exprs.append(pl.when(col == "").then(None).otherwise(col).alias(name))
        else:
            exprs.append(pl.lit(None, dtype=pl.String).alias(name))
    exprs.append(pl.lit(path.name).alias("source_file"))
    if isinstance(raw, pl.LazyFrame):
        exprs.append(pl.col("source_row").cast(pl.Int64))
    else:
        exprs.append((pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias("source_row"))
    for name in contract.presence_tracked:
        exprs.append(pl.lit(name in present).alias(f"has_{name}"))
    return raw.select(exprs), ignored


def collect_kept(frame: pl.LazyFrame, keep: pl.Expr | None) -> tuple[pl.DataFrame, int]:
    """Materialise only the rows that satisfy `keep` (streaming), and count the rest.

    A nightly extract may hold every medication: keeping 5% of 5M rows instead of all of them is
    what holds an all-medication night within a few GB."""
    if keep is None:
        return frame.collect(), 0
    kept, total = pl.collect_all([frame.filter(keep), frame.select(pl.len())], engine="streaming")
    return kept, int(total.item()) - kept.height


def read_extract(path: Path | str, source: str | None = None, keep: pl.Expr | None = None) -> Extract:
    """Read one extract file in the format named by `source`, else by its extension.

    `keep` (an expression over canonical columns): only the rows that satisfy it are returned; the
    rest are counted in `rows_skipped`. The CSV and Parquet readers apply it while streaming, so the
    other rows are never materialised; for the other readers it is applied here."""
    from b12pipeline.ingest import canonical, fhir, fhirbulk, sourcemapped

    path = Path(path)
    if path.is_symlink():  # never followed: its target may be anywhere (docs/decisions.md)
        raise FileRejected(path, "a symbolic link; extracts are read only from regular files (not followed)")
    if source is None and fhirbulk.recognise(path):  # a Bulk Data folder or its manifest
        source = fhirbulk.FORMAT
    if source and source.lower() == fhirbulk.FORMAT:
        if not path.exists():
            raise FileRejected(path, "no such folder or manifest")
        extract = fhirbulk.read_fhir_bulk(path, keep)
        problem = frame_problem(extract.frame, load_contract().names, current_limits())
        if problem:
            raise FileRejected(path, problem)
        return extract
    if not path.is_file():
        raise FileRejected(path, "no such file")
    fmt = (source or canonical.format_from_suffix(path)).lower()

    if source is None and fmt == "csv":
        fmt = sourcemapped.recognise(path) or fmt  # a Clarity-style header is read as clarity
    readers = {"csv": canonical.read_csv, "parquet": canonical.read_parquet}
    limits = current_limits()
    problem = file_problem(path, fmt, limits)
    if problem:
        raise FileRejected(path, problem)
    if fmt in readers:
        frame, ignored, skipped = readers[fmt](path, keep)
        extract = Extract(path=path, source_format=fmt, frame=frame, ignored_columns=ignored, rows_skipped=skipped)
    else:
        if fmt == "fhir":
            extract = fhir.read_fhir(path)
        elif fmt in sourcemapped.delimited_names():
            extract = sourcemapped.read_mapped(path, fmt)
        else:
            known = sorted(set(readers) | {"fhir", fhirbulk.FORMAT} | set(sourcemapped.delimited_names()))
            raise FileRejected(path, f"unknown source format {fmt!r}; expected one of {', '.join(known)}")
        extract.frame, extract.rows_skipped = collect_kept(extract.frame.lazy(), keep)
    problem = frame_problem(extract.frame, load_contract().names, limits)
    if problem:
        raise FileRejected(path, problem)
    delimiter = {"csv": ","}.get(fmt) or (
        sourcemapped.load_mapping(fmt).delimiter if fmt in sourcemapped.delimited_names() else None
    )
    reasons, problem = long_values(extract.frame, load_contract().names, limits, delimiter)
    if problem:
        raise FileRejected(path, problem)
    if reasons is not None:
        extract.frame, held = split_quarantine(extract.frame, reasons, LONG_VALUE_CHECK)
        # The over-long values are not copied into quarantine (one can be hundreds of MB): the
        # archived file keeps them; the reason names the column.
        held = held.with_columns(
            pl.when(pl.col(c).str.len_bytes() > limits.max_field_bytes).then(None).otherwise(pl.col(c)).alias(c)
            for c in load_contract().names
            if held.schema.get(c) == pl.String
        )
        extract.quarantine = (
            held if extract.quarantine is None else pl.concat([extract.quarantine, held], how="diagonal_relaxed")
        )
    return extract
