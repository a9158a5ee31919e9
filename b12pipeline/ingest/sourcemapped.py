"""Reader for delimited site extracts described by a source mapping (e.g. Epic Clarity-style)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from b12pipeline.ingest import Extract, FileRejected, canonicalise, split_quarantine
from b12pipeline.ingest.mapping import SourceMapping, apply_mapping, available_mappings, load_mapping

UNMAPPED_CHECK = "source_value_is_mapped"


def delimited_names() -> list[str]:
    return [m.name for m in available_mappings("delimited")]


def _header(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.readline(64 * 1024).decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def recognise(path: Path) -> str | None:
    """The delimited mapping whose signature columns the file's header carries, if any."""
    line = _header(path)
    for mapping in available_mappings("delimited"):
        if mapping.matches_header(line.split(mapping.delimiter)):
            return mapping.name
    return None


def read_mapped(path: Path, name: str) -> Extract:
    mapping = load_mapping(name)
    raw = _read_text(path, mapping)
    header = {c.strip().upper() for c in raw.columns}
    missing = [c for c in mapping.required_source_columns() if c.upper() not in header]
    if missing:
        hint = ""
        if raw.width == 1:
            hint = f" (the header was read as one column: is the delimiter {mapping.delimiter!r}?)"
        raise FileRejected(path, f"not a {name} extract: missing required column(s) {', '.join(missing)}{hint}")
    known = {c.upper() for c in mapping.columns} | {c.upper() for d in mapping.derived.values() for c in d["join"]}
    ignored = [c for c in raw.columns if c.strip().upper() not in known]
    try:
        mapped, reasons = apply_mapping(raw, mapping)
    except pl.exceptions.PolarsError as exc:
        from b12pipeline.ingest.canonical import scrub

        raise FileRejected(path, f"cannot apply the {name} mapping: {scrub(exc)}") from None
    frame, _ = canonicalise(mapped, path)
    frame, held = split_quarantine(frame, reasons, f"{UNMAPPED_CHECK}({name})")
    return Extract(path=path, source_format=name, frame=frame, ignored_columns=ignored, quarantine=held)


def _read_text(path: Path, mapping: SourceMapping) -> pl.DataFrame:
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet_as_text(path, mapping)
    try:
        return pl.read_csv(
            path,
            separator=mapping.delimiter,
            infer_schema=False,
            encoding="utf8-lossy",
            raise_if_empty=True,
            truncate_ragged_lines=False,
        )
    except pl.exceptions.NoDataError:
        raise FileRejected(path, "the file is empty (no header row)") from None
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError) as exc:
        # Polars' message quotes the row it failed on (identifiers): say where, never what.
        from b12pipeline.ingest.canonical import csv_problem, scrub

        why = csv_problem(path, mapping.delimiter) or scrub(exc)
        raise FileRejected(path, f"not a readable {mapping.name} extract: {why}") from None


def _read_parquet_as_text(path: Path, mapping: SourceMapping) -> pl.DataFrame:
    """The same source columns as Parquet (what a SQL pull writes): every column read as text."""
    try:
        raw = pl.read_parquet(path, glob=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise FileRejected(path, f"not a readable {mapping.name} Parquet file ({type(exc).__name__})") from None
    nested = [c for c, t in raw.schema.items() if t.is_nested()]
    if nested:
        raise FileRejected(path, f"column(s) {', '.join(nested)} are nested (struct or list), not text")
    if raw.height == 0 and raw.width == 0:
        raise FileRejected(path, "the file is empty (no columns)")
    return raw.select(pl.col(c).cast(pl.String) for c in raw.columns)
