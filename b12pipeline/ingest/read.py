"""read_extract: one extract through the reader of its format, within the configured limits."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from b12pipeline.contract import load_contract
from b12pipeline.engine.settings import SiteConfig
from b12pipeline.ingest import (
    Extract,
    FileRejected,
    canonical,
    collect_kept,
    fhir,
    fhirbulk,
    sourcemapped,
    split_quarantine,
)
from b12pipeline.limits import LONG_VALUE_CHECK, Limits, current_limits, file_problem, frame_problem, long_values


def read_extract(
    path: Path | str, source: str | None = None, keep: pl.Expr | None = None, time_zone: str = SiteConfig.time_zone
) -> Extract:
    """Read one extract file in the format named by `source`, else by its extension.

    `time_zone`: the site's (rules/site.yaml); a time-zone-typed Parquet timestamp is written in it.

    `keep` (an expression over canonical columns): only the rows that satisfy it are returned; the
    rest are counted in `rows_skipped`. The CSV and Parquet readers apply it while streaming, so the
    other rows are never materialised; for the other readers it is applied here."""
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
        frame, ignored, skipped = (
            canonical.read_parquet(path, keep, time_zone) if fmt == "parquet" else canonical.read_csv(path, keep)
        )
        extract = Extract(path=path, source_format=fmt, frame=frame, ignored_columns=ignored, rows_skipped=skipped)
    else:
        if fmt == "fhir":
            extract = fhir.read_fhir(path)
        elif fmt in sourcemapped.delimited_names():
            extract = sourcemapped.read_mapped(path, fmt)
        else:
            known = sorted(set(readers) | {"fhir", fhirbulk.FORMAT} | set(sourcemapped.delimited_names()))
            raise FileRejected(path, f"unknown source format {fmt!r}; expected one of {', '.join(known)}")
        extract.frame, extract.rows_skipped = collect_kept(extract.frame.lazy(), keep, whole=True)  # in memory
    problem = frame_problem(extract.frame, load_contract().names, limits)
    if problem:
        raise FileRejected(path, problem)
    delimiter = {"csv": ","}.get(fmt) or (
        sourcemapped.load_mapping(fmt).delimiter if fmt in sourcemapped.delimited_names() else None
    )
    return _quarantine_long_values(extract, limits, delimiter)


def _quarantine_long_values(extract: Extract, limits: Limits, delimiter: str | None) -> Extract:
    """Rows with a value over max_field_bytes go to the reader's quarantine; a long value that
    shows a quoting error rejects the file (limits.long_values)."""
    names = load_contract().names
    reasons, problem = long_values(extract.frame, names, limits, delimiter)
    if problem:
        raise FileRejected(extract.path, problem)
    if reasons is None:
        return extract
    extract.frame, held = split_quarantine(extract.frame, reasons, LONG_VALUE_CHECK)
    if held is None:
        return extract
    # The over-long values are not copied into quarantine (one can be hundreds of MB): the archived
    # file keeps them; the reason names the column.
    held = held.with_columns(
        pl.when(pl.col(c).str.len_bytes() > limits.max_field_bytes).then(None).otherwise(pl.col(c)).alias(c)
        for c in names
        if held.schema.get(c) == pl.String
    )
    extract.quarantine = (
        held if extract.quarantine is None else pl.concat([extract.quarantine, held], how="diagonal_relaxed")
    )
    return extract
